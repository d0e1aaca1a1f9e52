"""Ports are capacity: ``workload.ports: {http: auto}`` is granted from the ledger.

Two live leases never hold the same port, across processes; the workload gets
its port as ``AICONTRACT_PORT_<NAME>`` and the lease as an endpoint; releasing
(or reclaiming) a lease frees its port. The kernel's choice of port is replaced
by a small pool in some tests, so that every holder is offered the *same* ports
and only the ledger can keep them apart.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import pytest

import aicontract as ac
from aicontract import CapacityUnavailable, Contract, Negotiator, Workload
from aicontract.backends.local import LocalBackend, ledger
from aicontract.errors import ContractError

pytestmark = pytest.mark.anyio

SERVER = str(Path(__file__).parent.parent / "slow_http_server.py")


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports nothing binds now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def offer_only(ports: list[int]) -> None:
    """From now on the kernel 'proposes' only ``ports``, in order, round and round."""
    pool = itertools.cycle(ports)
    ledger.candidate_port = lambda: next(pool)  # type: ignore[attr-defined]


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    ports = free_ports(3)
    pool = itertools.cycle(ports)
    monkeypatch.setattr(ledger, "candidate_port", lambda: next(pool))
    return ports


def auto(**extra: Any) -> Contract:
    return Contract(cpus=1, workload=Workload(ports={"http": "auto"}, **extra))


# -- the contract ----------------------------------------------------------------------------


def test_auto_is_a_port_in_every_format() -> None:
    contract = ac.loads("workload: {ports: {http: auto, metrics: 9100}}", format="yaml")
    assert contract.workload is not None
    assert contract.workload.auto_ports == ("http",)
    assert contract.workload.fixed_ports == {"metrics": 9100}
    assert ac.loads(ac.dumps(contract, format="json"), format="json") == contract


@pytest.mark.parametrize(
    ("ports", "says"),
    [
        ("{http: any}", "ports"),
        ("{http: 0}", "1..65535, or auto"),
        ("{9http: auto}", "AICONTRACT_PORT_<NAME>"),
        ("{'a b': auto}", "AICONTRACT_PORT_<NAME>"),
    ],
)
def test_a_port_is_a_number_or_auto(ports: str, says: str) -> None:
    with pytest.raises(ContractError, match="ports") as caught:
        ac.loads(f"workload: {{ports: {ports}}}", format="yaml")
    assert says in str(caught.value)


# -- granting --------------------------------------------------------------------------------


async def test_two_live_leases_in_one_process_never_share_a_port(
    backend: LocalBackend, pool: list[int]
) -> None:
    negotiator = Negotiator([backend])
    first = await negotiator.acquire(auto())
    second = await negotiator.acquire(auto())
    ports = {first.env["AICONTRACT_PORT_HTTP"], second.env["AICONTRACT_PORT_HTTP"]}
    assert len(ports) == 2  # the pool proposed the first one again; the ledger said no
    assert ports <= {str(p) for p in pool}
    await first.release()
    await second.release()


async def test_a_port_someone_serves_on_is_never_granted(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    busy, free = free_ports(2)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", busy))
        listener.listen()
        pool = itertools.cycle([busy, free])
        monkeypatch.setattr(ledger, "candidate_port", lambda: next(pool))
        lease = await Negotiator([backend]).acquire(auto())
        assert lease.env["AICONTRACT_PORT_HTTP"] == str(free)
        await lease.release()


async def test_release_frees_the_port(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    (only,) = free_ports(1)
    monkeypatch.setattr(ledger, "candidate_port", lambda: only)
    quote = await backend.quote(auto())
    lease = await backend.commit(quote.offers[0], "first")
    assert lease.endpoints == {"http": f"http://127.0.0.1:{only}"}
    with pytest.raises(CapacityUnavailable, match=r"no free port for workload\.ports\.http"):
        await backend.commit(quote.offers[0], "second")
    assert [r.id for r in backend.leases()] == ["first"]
    await lease.release()
    again = await backend.commit(quote.offers[0], "third")
    assert again.env["AICONTRACT_PORT_HTTP"] == str(only)
    await again.release()
    # Released by someone else (``aicontract release``): the port is free too.
    taken = await backend.commit(quote.offers[0], "fourth")
    assert backend.release_by_id(taken.id)
    last = await backend.commit(quote.offers[0], "fifth")
    assert last.env["AICONTRACT_PORT_HTTP"] == str(only)
    await last.release()


async def test_a_dead_holders_port_is_reclaimed(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch, state_dir: Path
) -> None:
    (only,) = free_ports(1)
    holder = textwrap.dedent(
        f"""
        import sys, anyio
        import aicontract as ac
        from aicontract.backends.local import LocalBackend, ledger
        ledger.candidate_port = lambda: {only}
        async def main():
            c = ac.Contract(cpus=1, workload=ac.Workload(ports={{"http": "auto"}}))
            lease = await ac.Negotiator([LocalBackend(ttl=60)]).acquire(c)
            print(lease.env["AICONTRACT_PORT_HTTP"], flush=True)
            sys.stdin.read()
        anyio.run(main)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == str(only)
    finally:
        process.kill()
        process.wait()
    monkeypatch.setattr(ledger, "candidate_port", lambda: only)
    lease = await Negotiator([backend]).acquire(auto())  # its holder is gone: reclaimed
    assert lease.env["AICONTRACT_PORT_HTTP"] == str(only)
    await lease.release()
    assert backend.leases() == []


# -- across processes ------------------------------------------------------------------------


def _holder(
    state_dir: str, inventory: str, ports: list[int], count: int, out: Any, done: Any
) -> None:
    """One process: hold ``count`` auto-port leases at once, say which ports, wait, release."""
    os.environ["AICONTRACT_INVENTORY"] = inventory
    os.environ["AICONTRACT_STATE_DIR"] = state_dir
    offer_only(ports)  # every process is offered the same ports, in the same order

    async def run() -> None:
        negotiator = Negotiator([LocalBackend(ttl=60)], requote_wait_max=0.01)
        # No CPUs: ports are the only thing these leases compete for.
        contract = Contract(start_by="60s", workload=Workload(ports={"http": "auto"}))
        leases = [await negotiator.acquire(contract) for _ in range(count)]
        out.put([lease.env["AICONTRACT_PORT_HTTP"] for lease in leases])
        await anyio.to_thread.run_sync(done.wait, 60)
        for lease in leases:
            await lease.release()
        await negotiator.aclose()

    anyio.run(run)


def test_live_leases_never_share_an_auto_port_across_processes(local_env: Path) -> None:
    processes, each = 3, 4
    ports = free_ports(processes * each + 2)
    ctx = mp.get_context("spawn")
    out, done = ctx.Queue(), ctx.Event()
    workers = [
        ctx.Process(
            target=_holder,
            args=(str(local_env), os.environ["AICONTRACT_INVENTORY"], ports, each, out, done),
        )
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        granted = [port for _ in workers for port in out.get(timeout=120)]
    finally:
        done.set()
        for worker in workers:
            worker.join(60)
    assert [w.exitcode for w in workers] == [0] * processes
    # All held at once (each waited for `done`), all offered the same ports first.
    assert len(granted) == processes * each
    assert len(set(granted)) == len(granted), f"a port was granted twice: {sorted(granted)}"
    assert LocalBackend(state_dir=local_env).leases() == []


# -- the workload gets it --------------------------------------------------------------------


async def test_the_workload_serves_on_its_granted_port(backend: LocalBackend) -> None:
    contract = auto(command=(sys.executable, SERVER, "0"))
    lease = await Negotiator([backend]).acquire(contract)
    port = lease.env["AICONTRACT_PORT_HTTP"]
    assert lease.endpoints == {"http": f"http://127.0.0.1:{port}"}
    assert backend.leases()[0].env["AICONTRACT_PORT_HTTP"] == port  # `aicontract leases` too

    def get() -> str:
        with urllib.request.urlopen(lease.endpoints["http"], timeout=10) as answer:
            return str(answer.read().decode())

    assert await anyio.to_thread.run_sync(get) == port  # the workload read its env
    pid = int(lease.details["pid"])
    await lease.release()
    assert backend.leases() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
