"""``inventory``, ``quote``, ``acquire``, ``leases``, ``release``: leases from the shell."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from ..backends.base import Backend
from ..backends.local.backend import LocalBackend, default_state_dir, state_dir_scope
from ..backends.registry import create_backend
from ..documents import load
from ..errors import AIContractError, NoOffer
from ..leases import Lease
from ..negotiate import Negotiator
from ..workload import DEFAULT_GRACE, spawn

F = TypeVar("F", bound=Callable[..., Any])

console = Console(stderr=True)
out = Console()


def _friendly(func: F) -> F:
    """Turn library errors into one clear message and exit status 2 (1 for NoOffer)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except NoOffer as exc:
            console.print(f"[bold red]no offer[/]: {escape(str(exc))}", highlight=False)
            sys.exit(1)
        except AIContractError as exc:
            console.print(f"error: {exc}", highlight=False, markup=False)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


def _backends(names: Sequence[str]) -> list[Backend]:
    if not names:
        names = [n for n in os.environ.get("AICONTRACT_BACKENDS", "local").split(",") if n]
    return [create_backend(n.strip()) for n in names]


_backend_option = click.option(
    "--backend",
    "-b",
    "backend_names",
    multiple=True,
    help="Backend to ask (repeatable). Default: $AICONTRACT_BACKENDS, else local.",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


@click.command()
@_json_option
@_friendly
def inventory(as_json: bool) -> None:
    """Show what this host offers (or the AICONTRACT_INVENTORY override)."""
    backend = LocalBackend()
    inv = backend.inventory
    if as_json:
        out.print_json(json.dumps(inv.describe()))
        return
    out.print(
        f"[bold]{escape(inv.source)}[/]: {inv.cpus} CPUs, {inv.memory} memory"
        + (f", {inv.disk} free disk" if inv.disk is not None else "")
    )
    table = Table("id", "model", "memory", "compute", "MIG", title="GPUs")
    for gpu in inv.gpus:
        table.add_row(
            gpu.id,
            gpu.model,
            str(gpu.memory),
            gpu.compute_capability or "-",
            gpu.mig_profile or "-",
        )
    if inv.gpus:
        out.print(table)
    else:
        out.print("no GPUs (install aicontract[nvidia] on a host with an NVIDIA driver)")


@click.command()
@click.argument("file", type=click.Path(path_type=Path))
@_backend_option
@_json_option
@_friendly
def quote(file: Path, backend_names: tuple[str, ...], as_json: bool) -> None:
    """Show the offers for a contract FILE, best first, and why other backends declined."""
    contract = load(file)
    negotiator = Negotiator(_backends(backend_names))
    result = anyio.run(negotiator.quote, contract)
    anyio.run(negotiator.aclose)
    # A backend that could not answer at all (a broken ledger) is a failure, not a "no".
    broken = [r for r in result.rejections if r.requirement == "quote"]
    if as_json:
        import msgspec

        from ..contract import encode_quantity

        data = {
            "offers": [msgspec.to_builtins(o, enc_hook=encode_quantity) for o in result.offers],
            "rejections": [msgspec.to_builtins(r) for r in result.rejections],
        }
        for offer in data["offers"]:
            offer.pop("contract", None)
        out.print_json(json.dumps(data))
        if broken and not result.offers:
            sys.exit(2)
        return
    table = Table("#", "backend", "grant", "where", "guarantee", "price", title="offers")
    for rank, offer in enumerate(result.offers, 1):
        where = offer.region + (f" ({offer.jurisdiction})" if offer.jurisdiction else "")
        table.add_row(
            str(rank),
            offer.backend,
            offer.grant.describe(),
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
    if broken and not result.offers:
        sys.exit(2)


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@_backend_option
@_json_option
@_friendly
def acquire(
    file: Path, command: tuple[str, ...], backend_names: tuple[str, ...], as_json: bool
) -> None:
    """Lease what contract FILE asks for, run COMMAND under the lease's env, then release.

    Write the command after ``--``: ``aicontract acquire train.yaml -- python train.py``.
    The command's exit status is passed through. Without a command, holds the
    lease until interrupted (Ctrl-C) or the contract's duration ends.
    """
    contract = load(file)
    negotiator = Negotiator(_backends(backend_names))
    try:
        status = anyio.run(_acquire_and_run, negotiator, contract, command, as_json)
    except KeyboardInterrupt:
        # The lease was released on the way out (shielded); say so the shell's way:
        # 128 + SIGINT, not 1, which means "no offer".
        console.print("interrupted; lease released", highlight=False)
        status = 130
    sys.exit(status)


async def _acquire_and_run(
    negotiator: Negotiator, contract: Any, command: tuple[str, ...], as_json: bool
) -> int:
    _say_ledger_scope(negotiator)
    with console.status(f"negotiating {contract.name!r}…"):
        held = await negotiator.acquire(contract)
    try:
        async with held:
            _print_lease(held, as_json)
            if not command:
                return await _hold(held)
            return await _run(held, command)
    finally:
        await negotiator.aclose()


def _say_ledger_scope(negotiator: Negotiator) -> None:
    if any(b.name == "local" for b in negotiator.backends) and state_dir_scope() == "user":
        console.print(
            f"note: per-user ledger {default_state_dir()} (AICONTRACT_LEDGER_SCOPE=user):"
            " other users on this host do not see these leases",
            highlight=False,
        )


def _print_lease(held: Lease, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(held.to_dict(), default=str))
        return
    detail = escape(
        f"{held.id}: {held.grant.describe()} on {held.backend.name} [{held.guarantee}],"
        f" expires {_when(held.expires_at)}"
    )
    console.print(f"[bold green]leased[/] {detail}", highlight=False)
    for name, url in held.endpoints.items():
        console.print(f"  endpoint {name}: {url}", highlight=False)
    for key in ("CUDA_VISIBLE_DEVICES", "AICONTRACT_CPUS"):
        if key in held.env:
            console.print(f"  {key}={held.env[key]}", highlight=False)


_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _hold(held: Lease) -> int:
    console.print("holding the lease; Ctrl-C to release", highlight=False)
    got: list[int] = []
    async with anyio.create_task_group() as tg:

        async def on_signals() -> None:
            with anyio.open_signal_receiver(*_FORWARDED) as signals:
                async for signum in signals:
                    got.append(signum)
                    tg.cancel_scope.cancel()

        tg.start_soon(on_signals)
        while held.is_active:
            await anyio.sleep(0.2)
        tg.cancel_scope.cancel()
    if got:
        await held.release()
        console.print(f"{signal.Signals(got[0]).name}; lease released", highlight=False)
        return 128 + got[0]
    console.print(f"lease {held.id} is {held.state.value}: {held.reason or ''}", highlight=False)
    return 0 if held.state.value == "released" else 3


async def _run(held: Lease, command: tuple[str, ...]) -> int:
    """Run ``command`` bound to the lease; stop it when the lease ends, whatever ends it.

    SIGINT, SIGTERM and SIGHUP go to the whole workload; once it has exited (or
    its grace period is over) the lease is released.
    """
    grace = held.contract.terms.stop_grace
    grace_s = grace.seconds if grace is not None else DEFAULT_GRACE
    if isinstance(held.backend, LocalBackend):
        workload = await held.backend.run(held, command, stdin=None)
    else:
        cpus = [int(c) for c in held.env.get("AICONTRACT_CPUS", "").split(",") if c]
        workload = await spawn(
            command, {**os.environ, **held.env}, cpus=cpus, grace=grace_s, stdin=None
        )
    got: list[int] = []
    try:
        async with anyio.create_task_group() as tg:

            async def on_signals() -> None:
                with anyio.open_signal_receiver(*_FORWARDED) as signals:
                    async for signum in signals:
                        got.append(signum)
                        workload.send_signal(signum)
                        # Then release: the workload has its grace period to finish.
                        with anyio.move_on_after(grace_s):
                            await workload.wait()
                        tg.cancel_scope.cancel()

            async def watch_lease() -> None:
                while held.is_active and workload.returncode is None:
                    await anyio.sleep(0.1)
                tg.cancel_scope.cancel()

            tg.start_soon(on_signals)
            tg.start_soon(watch_lease)
            await workload.wait()
            tg.cancel_scope.cancel()
    finally:
        status = await workload.stop()
    if got:
        return 128 + got[0]
    if isinstance(held.backend, LocalBackend) and not await held.backend.still_held(held):
        # Released or reclaimed by someone else: that, not the command, ended the work.
        held.revoke("released by another process, or its ledger was lost")
    if not held.is_active:
        console.print(
            f"lease {held.id} {held.state.value}: {held.reason or ''}; its command was stopped",
            highlight=False,
        )
        return 3
    return status


@click.command()
@_json_option
@_friendly
def leases(as_json: bool) -> None:
    """List the leases held on this host (any process)."""
    records = LocalBackend().ledger.records()
    if as_json:
        import msgspec

        from ..contract import encode_quantity

        out.print_json(msgspec.json.encode(records, enc_hook=encode_quantity).decode())
        return
    if not records:
        out.print("no leases held on this host")
        return
    table = Table("contract", "tenant", "grant", "pid", "devices", "expires in")
    # Never shorten an id: it is what `aicontract release ID` needs.
    table.columns.insert(0, Column("id", no_wrap=True, min_width=max(len(r.id) for r in records)))
    now = time.time()
    for r in records:
        devices = ", ".join(f"{k}={v}" for k, v in r.details.items() if v)
        table.add_row(
            r.id,
            r.contract.name,
            r.contract.tenant,
            r.grant.describe(),
            str(r.holder_pid or "-"),
            devices,
            f"{r.expires_at - now:.0f}s",
        )
    out.print(table)


@click.command()
@click.argument("lease_ids", nargs=-1, required=True)
@_friendly
def release(lease_ids: tuple[str, ...]) -> None:
    """Release leases on this host by id (their holders see them revoked)."""
    ledger = LocalBackend().ledger
    missing = [i for i in lease_ids if not ledger.release_as(i)]
    for lease_id in lease_ids:
        if lease_id not in missing:
            out.print(f"released {lease_id}")
    if missing:
        console.print(f"no such lease: {', '.join(missing)}", highlight=False)
        sys.exit(1)


COMMANDS = [inventory, quote, acquire, leases, release]
