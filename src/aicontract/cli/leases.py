"""``inventory``, ``quote``, ``acquire``, ``leases``, ``release``: leases from the shell."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import click
import msgspec
from rich.markup import escape
from rich.table import Column, Table

from ..backends.local.backend import LocalBackend, default_state_dir, state_dir_scope
from ..contract import Contract, Workload, encode_quantity
from ..documents import load
from ..errors import BackendError, ConfigError, ContractError, NoOffer
from ..governance.enforce import UsageIndex, record_path
from ..governance.policy import amount
from ..governance.record import Record
from ..leases import Lease, LeaseState
from ..monitor.record import performance_record
from ..negotiate import Negotiator, close_backends, default_backends
from ..negotiate import acquire as acquire_lease
from ..offer import Offer
from ..workload import DEFAULT_GRACE, Supervised, spawn
from .output import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NO,
    friendly,
    messages,
    print_json,
    reading,
    results,
)
from .output import when as _when

console = messages()


def _builtins(value: Any) -> Any:
    """Structs (offers, records, rejections) as JSON-ready builtins, quantities as text."""
    return msgspec.to_builtins(value, enc_hook=encode_quantity)


@contextlib.contextmanager
def _this_host() -> Iterator[LocalBackend]:
    """The local backend, closed (its ledger connection) when the command is done."""
    local = LocalBackend()
    try:
        yield local
    finally:
        anyio.run(local.aclose)


def _offer_json(offer: Offer) -> dict[str, Any]:
    data: dict[str, Any] = _builtins(offer)
    data.pop("contract", None)  # the caller has it: it is the file they passed
    return data


_backend_option = click.option(
    "--backend",
    "-b",
    "backend_names",
    multiple=True,
    help="Backend to ask (repeatable). Default: $AICONTRACT_BACKENDS, else local.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON (never coloured).")


@click.command()
@_json_option
@friendly
def inventory(as_json: bool) -> None:
    """Show what this host offers (or the AICONTRACT_INVENTORY override)."""
    out = results()
    with _this_host() as local:
        inv = local.inventory
    if as_json:
        print_json(inv.describe())
        return
    cpus = f"{inv.cpus} CPU{'' if inv.cpus == 1 else 's'}"
    out.print(
        f"[bold]{escape(inv.source)}[/]: {cpus}, {inv.memory.human()} memory"
        + (f", {inv.disk.human()} free disk" if inv.disk is not None else "")
    )
    table = Table("id", "model", "memory", "compute", "MIG", "NUMA", "NVLink", title="GPUs")
    for gpu in inv.gpus:
        table.add_row(
            gpu.id,
            gpu.model,
            gpu.memory.human(),
            gpu.compute_capability or "-",
            gpu.mig_profile or "-",
            "-" if gpu.numa is None else str(gpu.numa),
            gpu.nvlink_domain or ("yes" if gpu.interconnect == "nvlink" else "-"),
        )
    if inv.gpus:
        out.print(table)
    else:
        # Escaped: rich would read "[nvidia]" as markup and print nothing for it.
        out.print(escape("no GPUs (install aicontract[nvidia] on a host with an NVIDIA driver)"))
    if inv.numa:
        nodes = Table("node", "CPUs", "memory", title="NUMA nodes")
        for node in inv.numa:
            memory = node.memory.human() if node.memory is not None else "-"
            nodes.add_row(str(node.id), _cpu_ranges(node.cpus), memory)
        out.print(nodes)
    if inv.links:
        links = Table("GPUs", "link", title="GPU links")
        for link in inv.links:
            what: str = link.link
            if link.nvlinks:
                generation = f", gen {link.nvlink_generation}" if link.nvlink_generation else ""
                what += f" ({link.nvlinks} links{generation})"
            links.add_row(" - ".join(link.gpus), what)
        out.print(links)
    if inv.nics:
        nics = Table("NIC", "NUMA", "link layer", title="RDMA NICs")
        for nic in inv.nics:
            numa = "-" if nic.numa is None else str(nic.numa)
            nics.add_row(nic.name, numa, nic.link_layer or "-")
        out.print(nics)


def _cpu_ranges(cpus: Sequence[int]) -> str:
    """CPU ids in the kernel's list form: ``0-31,64-95``."""
    parts: list[str] = []
    for cpu in sorted(cpus):
        if parts and cpu == int(parts[-1].rpartition("-")[2]) + 1:
            parts[-1] = f"{parts[-1].partition('-')[0]}-{cpu}"
        else:
            parts.append(str(cpu))
    return ",".join(parts) or "-"


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@_backend_option
@_json_option
@friendly
def quote(file: Path, backend_names: tuple[str, ...], as_json: bool) -> None:
    """Show the offers for a contract FILE, best first, and why other backends declined."""
    out = results()
    with reading(file):
        contract = load(file)
        negotiator = Negotiator(default_backends(backend_names))

        async def ask() -> Any:
            try:
                return await negotiator.quote(contract)
            finally:
                await close_backends(negotiator.backends)

        result = anyio.run(ask)
    # A backend that could not answer at all (a broken ledger, no credentials) is a
    # failure, not a "no": with nothing offered either, the quote exits 2.
    broken = not result.offers and any(r.requirement == "quote" for r in result.rejections)
    if as_json:
        print_json(
            {
                "offers": [_offer_json(o) for o in result.offers],
                "rejections": [_builtins(r) for r in result.rejections],
                "counter_offers": [_offer_json(o) for o in result.counter_offers],
            }
        )
        if broken:
            sys.exit(EXIT_ERROR)
        return
    table = Table("#", "backend", "grant", "where", "guarantee", "price", title="offers")
    if contract.alternatives:  # which of the contract's choices each offer serves
        table.columns.insert(1, Column("for", no_wrap=True))
    for rank, offer in enumerate(result.offers, 1):
        where = offer.region + (f" ({offer.jurisdiction})" if offer.jurisdiction else "")
        grant = msgspec.structs.replace(offer.grant, alternative=None).describe()
        choice = [Contract.choice_name(offer.grant.alternative)] if contract.alternatives else []
        table.add_row(
            str(rank),
            *choice,
            offer.backend,
            grant,
            where,
            offer.guarantee,
            str(offer.price) if offer.price is not None else "-",
        )
    if result.offers:
        out.print(table)
    else:
        out.print("[bold red]no acceptable offer[/]")
    if result.rejections:
        why = Table("backend", "requirement", "wanted", "available", title="declined")
        for r in result.rejections:
            why.add_row(*(escape(v) for v in (r.backend, r.requirement, r.wanted, r.available)))
        out.print(why)
    for offer in result.counter_offers:
        out.print(f"counter-offer: {escape(offer.summary())}", highlight=False)
    if broken:
        sys.exit(EXIT_ERROR)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_backend_option
@_json_option
@click.option(
    "--accept-counter-offer",
    "accept_counter",
    is_flag=True,
    help="When nothing satisfies the contract, take the best counter-offer (it says which).",
)
@click.option(
    "--torchrun",
    is_flag=True,
    help="Run COMMAND (a training script and its arguments) under torchrun, with the"
    " lease's training world: rendezvous, nodes, processes per node.",
)
@friendly
def acquire(
    file: Path,
    command: tuple[str, ...],
    backend_names: tuple[str, ...],
    as_json: bool,
    accept_counter: bool,
    torchrun: bool,
) -> None:
    """Lease what contract FILE asks for, run COMMAND under the lease's env, then release.

    Write the command after ``--``: ``aicontract acquire train.yaml -- python train.py``.
    The command's exit status is passed through. Without a command, holds the
    lease until interrupted (Ctrl-C) or the contract's duration ends.

    With ``--accept-counter-offer``, a contract nothing satisfies takes the best
    counter-offer instead (fewer GPUs, another model) and says what it took.

    With ``--torchrun``, COMMAND is a training script and its arguments:
    ``aicontract acquire train.yaml --torchrun -- train.py --epochs 3`` runs it under
    ``torchrun`` with the lease's world (one process per granted GPU, or
    ``workload.procs_per_node``).
    """
    with reading(file):
        contract = load(file)
        if torchrun:
            contract = _for_torchrun(contract, command)
        # It learns from what monitors saw on this host, as aicontract.acquire() does.
        negotiator = Negotiator(default_backends(backend_names), record=performance_record())
        try:
            status = anyio.run(
                _acquire_and_run, negotiator, contract, command, as_json, accept_counter, torchrun
            )
        except KeyboardInterrupt:
            # The lease was released on the way out (shielded); say so the shell's way:
            # 128 + SIGINT, not 1, which means "no offer".
            console.print("interrupted; lease released", highlight=False)
            status = EXIT_INTERRUPTED
    sys.exit(status)


async def _negotiate(negotiator: Negotiator, contract: Any, accept_counter: bool) -> Lease:
    """The lease for ``contract`` — or for its best counter-offer, when that is allowed."""
    try:
        with console.status(f"negotiating {contract.name!r}…"):
            return await acquire_lease(contract, negotiator=negotiator)
    except NoOffer as exc:
        if not (accept_counter and exc.counter_offers):
            raise
        offer = exc.counter_offers[0]
        console.print(
            f"[yellow]no offer satisfies {escape(contract.name)!r};[/] accepting counter-offer:"
            f" {escape(offer.summary())}",
            highlight=False,
        )
        return await negotiator.commit(offer)


async def _acquire_and_run(
    negotiator: Negotiator,
    contract: Any,
    command: tuple[str, ...],
    as_json: bool,
    accept_counter: bool = False,
    torchrun: bool = False,
) -> int:
    try:
        held = await _negotiate(negotiator, contract, accept_counter)
    except BaseException:
        await close_backends(negotiator.backends)
        raise
    _say_ledger_scope(negotiator)
    try:
        async with held:
            _print_lease(held, as_json)
            if not command:
                return await _hold(held)
            if torchrun:
                command = tuple(_torchrun_command(held, command))
            return await _run(held, command)
    finally:
        await negotiator.aclose()


def _for_torchrun(contract: Contract, command: tuple[str, ...]) -> Contract:
    """``contract`` as a training run ``--torchrun`` can start, or why it cannot be one.

    Checked before negotiating, so nothing is leased for a run that cannot start.
    """
    if not command:
        raise ConfigError(
            "--torchrun needs a training script after --:"
            " aicontract acquire FILE --torchrun -- train.py ARGS"
        )
    if Path(command[0]).name.startswith("python"):
        # torchrun runs the script with its own interpreter: "python" would be the script.
        raise ConfigError(
            f"--torchrun runs a Python script itself: write `--torchrun -- SCRIPT ARGS`"
            f" (or `-- -m MODULE ARGS`), without {command[0]!r} in front"
        )
    if importlib.util.find_spec("torch") is None:
        raise ConfigError(
            f"--torchrun needs PyTorch in the interpreter that runs aicontract ({sys.executable});"
            " install it there (pip install torch) or run torchrun yourself under"
            " `aicontract acquire FILE -- ...`"
        )
    workload = contract.workload
    if workload is None:
        # A training run, said on the command line: its lease gets a world.
        return contract.with_(workload=Workload(kind="training"))
    if workload.kind != "training":
        raise ContractError(
            f"--torchrun starts a training run, and this contract's workload is {workload.kind}",
            path="$.workload.kind",
            value=workload.kind,
            allowed="training, or no workload section",
        )
    return contract


def _torchrun_command(held: Lease, command: tuple[str, ...]) -> list[str]:
    """``torchrun`` running ``command`` (a script and its arguments) in ``held``'s world."""
    if held.world is None:
        raise BackendError(
            held.backend.name,
            f"lease {held.id} has no training world (MASTER_ADDR, MASTER_PORT) for --torchrun;"
            " use a backend that grants one (local does, for workload.kind: training)",
        )
    return held.world.torchrun_command(*command)


def _say_ledger_scope(negotiator: Negotiator) -> None:
    if any(b.name == "local" for b in negotiator.backends) and state_dir_scope() == "user":
        console.print(
            f"note: per-user ledger {default_state_dir()} (AICONTRACT_LEDGER_SCOPE=user):"
            " other users on this host do not see these leases",
            highlight=False,
        )


def _print_lease(held: Lease, as_json: bool) -> None:
    ends_at = held.ends_at
    if as_json:
        print_json({**held.to_dict(), "ends_at": ends_at})
        return
    detail = escape(f"{held.id}: {held.grant.describe()} on {held.backend.name} [{held.guarantee}]")
    console.print(f"[bold green]leased[/] {detail}", highlight=False)
    # Two different ends: the heartbeat's (moves on at every renewal) and the contract's.
    console.print(
        f"  heartbeat: renewed while this runs; lapses at {_when(held.expires_at)}"
        f" if renewals stop ({held.remaining:.0f}s)",
        highlight=False,
    )
    if ends_at is None:
        console.print("  term: no duration; held until released", highlight=False)
    else:
        console.print(f"  term: the contract's duration ends at {_when(ends_at)}", highlight=False)
    for name, url in held.endpoints.items():
        console.print(f"  endpoint {name}: {url}", highlight=False)
    for key in ("CUDA_VISIBLE_DEVICES", "AICONTRACT_CPUS"):
        if key in held.env:
            console.print(f"  {key}={held.env[key]}", highlight=False)
    world = held.world
    if world is not None:
        console.print(
            f"  world: {world.nodes} node(s) x {world.procs_per_node} process(es),"
            f" rendezvous {world.master_addr}:{world.master_port}",
            highlight=False,
        )


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _say_replaced(old: Lease, new: Lease) -> None:
    console.print(
        f"lease {old.id} replaced by {new.id}"
        + "".join(f"; endpoint {k}: {v}" for k, v in new.endpoints.items()),
        highlight=False,
    )


async def _hold(held: Lease) -> int:
    console.print("holding the lease; Ctrl-C to release", highlight=False)
    held.on_replaced(_say_replaced)
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(*_FORWARDED) as signals:
                async for signum in signals:
                    got.append(signum)
                    tg.cancel_scope.cancel()

        tg.start_soon(on_signals)
        # Follow renegotiations: hold while the chain's current lease is active, or while
        # its monitor may still replace a broken one (it stops watching once it is over).
        while held.current.is_active or held.watched:
            await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    if got:
        await held.release()
        console.print(f"{signal.Signals(got[0]).name}; lease released", highlight=False)
        return 128 + got[0]
    last = held.current
    console.print(f"lease {last.id} is {last.state.value}: {last.reason or ''}", highlight=False)
    return 0 if last.state.value == "released" else 3


async def _start(lease: Lease, command: tuple[str, ...], grace: float) -> Supervised:
    """Start ``command`` bound to ``lease``; stopped when the lease is released."""
    if isinstance(lease.backend, LocalBackend):
        return await lease.backend.run(lease, command, stdin=None)  # its release stops it
    cpus = [int(c) for c in lease.env.get("AICONTRACT_CPUS", "").split(",") if c]
    workload = await spawn(command, {**os.environ, **lease.env}, cpus=cpus, grace=grace, stdin=None)
    lease.on_released(workload.stop)  # the lease it ran on went: so does it (a drained one)
    return workload


async def _lost(lease: Lease) -> bool:
    """True when a lease this process thinks active is no longer its own in the ledger."""
    return (
        lease.is_active
        and isinstance(lease.backend, LocalBackend)
        and not await lease.backend.still_held(lease)
    )


async def _cancel_when(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _run(held: Lease, command: tuple[str, ...]) -> int:
    """Run ``command`` bound to the lease; stop it when the lease ends, whatever ends it.

    When a renegotiation replaces the lease, the command is started on the
    replacement before the switch (make-before-break); the old lease's command is
    stopped with it once drained. The exit status is that of the command on the
    lease serving at the end. SIGINT, SIGTERM and SIGHUP go to every running
    workload; once they have exited (or their grace period is over) every lease
    of the chain is released.
    """
    grace = held.contract.terms.stop_grace
    grace_s = grace.seconds if grace is not None else DEFAULT_GRACE
    workloads = {held.id: await _start(held, command, grace_s)}
    chain = {held.id: held}

    async def start_on(new: Lease) -> None:
        console.print(f"starting the command on replacement {new.id}", highlight=False)
        chain[new.id] = new
        workloads[new.id] = await _start(new, command, grace_s)

    held.on_replacement(start_on)
    switched = anyio.Event()

    def on_replaced(old: Lease, new: Lease) -> None:
        nonlocal switched
        _say_replaced(old, new)
        switched.set()
        switched = anyio.Event()

    held.on_replaced(on_replaced)
    got: list[int] = []
    status: int | None = None
    try:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(*_FORWARDED) as signals:
                    async for signum in signals:
                        got.append(signum)
                        running = [w for w in workloads.values() if w.returncode is None]
                        for workload in running:
                            workload.send_signal(signum)
                        # Then release: the workloads have their grace period to finish.
                        with anyio.move_on_after(grace_s):
                            for workload in running:
                                await workload.wait()
                        tg.cancel_scope.cancel()

            async def follow() -> None:
                """Wait for the command on the lease now serving; follow replacements."""
                nonlocal status
                while True:
                    lease, waiting_for_switch = held.current, switched
                    workload = workloads[lease.id]
                    async with anyio.create_task_group() as inner:
                        inner.start_soon(_cancel_when, waiting_for_switch, inner.cancel_scope)
                        code = await workload.wait()
                        inner.cancel_scope.cancel()
                    if held.current is not lease:
                        continue  # replaced meanwhile: the command on the new lease counts
                    if await _lost(lease):
                        # Released or reclaimed by someone else (who stopped its command):
                        # that, not the command, ended the work. Its monitor hears it now
                        # (and replaces it, under on_violation: renegotiate).
                        lease.revoke("released by another process, or its ledger was lost")
                    if lease.is_active or not held.watched:
                        status = code
                        tg.cancel_scope.cancel()
                        return
                    # Broken (revoked, expired) with its monitor still on it: a
                    # replacement may come (on_violation: renegotiate). Wait and see.
                    while held.current is lease and held.watched:
                        await anyio.sleep(0.1)
                    if held.current is lease:
                        status = code
                        tg.cancel_scope.cancel()
                        return

            async def watch_lease() -> None:
                # The lease serving ended, and nothing will replace it: stop.
                while held.current.is_active or held.watched:
                    await anyio.sleep(0.1)
                tg.cancel_scope.cancel()

            tg.start_soon(on_signals)
            tg.start_soon(watch_lease)
            tg.start_soon(follow)
    finally:
        with anyio.CancelScope(shield=True):
            codes: dict[str, int | None] = {}
            for lease_id, workload in workloads.items():
                # A released lease's command was stopped with it (a drained lease's).
                released = chain[lease_id].state == LeaseState.RELEASED
                codes[lease_id] = workload.returncode if released else await workload.stop()
    current = held.current
    if status is None:
        status = codes.get(current.id) or 0
    if got:
        return 128 + got[0]
    if await _lost(current):
        # Released or reclaimed by someone else: that, not the command, ended the work.
        current.revoke("released by another process, or its ledger was lost")
    if not current.is_active:
        console.print(
            f"lease {current.id} {current.state.value}: {current.reason or ''};"
            " its command was stopped",
            highlight=False,
        )
        return 3
    return status


@click.command()
@_json_option
@friendly
def leases(as_json: bool) -> None:
    """List the leases held on this host (any process)."""
    out = results()
    with _this_host() as local:
        records = local.leases()
    budgets = _budgets([r.contract for r in records])
    if as_json:
        listed = _builtins(records)
        for item, budget in zip(listed, budgets, strict=True):
            item["budget"] = (
                None
                if budget is None
                else {
                    "spent": None if budget[0] is None else f"{budget[0]:.2f}",
                    "limit": str(budget[1]),
                    "currency": budget[2],
                }
            )
        print_json(listed)
        return
    if not records:
        out.print("no leases held on this host")
        return
    table = Table("contract", "tenant", "grant", "pid", "devices", "expires in", "budget")
    # Never shorten an id: it is what `aicontract release ID` needs.
    table.columns.insert(0, Column("id", no_wrap=True, min_width=max(len(r.id) for r in records)))
    now = time.time()
    for r, budget in zip(records, budgets, strict=True):
        devices = ", ".join(f"{k}={v}" for k, v in r.details.items() if v)
        table.add_row(
            r.id,
            r.contract.name,
            r.contract.tenant,
            r.grant.describe(),
            str(r.holder_pid or "-"),
            devices,
            f"{r.expires_at - now:.0f}s",
            _spend(budget),
        )
    out.print(table)


def _budgets(contracts: list[Any]) -> list[tuple[Decimal | None, Decimal, str] | None]:
    """Spend against each contract's ``terms.budget`` (``None`` without one), from the record.

    The record is read (never created) only when some lease has a budget; with
    none kept (``AICONTRACT_RECORD=off``) the spend is unknown: ``None``.
    """
    if not any(c.terms.budget for c in contracts):
        return [None] * len(contracts)
    if os.environ.get("AICONTRACT_RECORD") in ("off", "0", "false"):
        return [(None, *amount(c.terms.budget)) if c.terms.budget else None for c in contracts]
    record = Record(record_path())
    index = UsageIndex(record)
    for entry in record.entries():
        index.apply(entry)
    now = time.time()
    return [index.budget(c, now) for c in contracts]


def _spend(budget: tuple[Decimal | None, Decimal, str] | None) -> str:
    if budget is None:
        return "-"
    spent, limit, currency = budget
    return f"{'?' if spent is None else f'{spent:.2f}'}/{limit} {currency}"


@click.command()
@click.argument("lease_ids", nargs=-1, required=True)
@friendly
def release(lease_ids: tuple[str, ...]) -> None:
    """Release leases on this host by id (their holders see them revoked)."""
    out = results()
    with _this_host() as local:
        missing = [i for i in lease_ids if not local.release_by_id(i)]
    for lease_id in lease_ids:
        if lease_id not in missing:
            out.print(f"released {lease_id}")
    if missing:
        console.print(f"no such lease: {', '.join(missing)}", highlight=False)
        sys.exit(EXIT_NO)


COMMANDS = [inventory, quote, acquire, leases, release]
