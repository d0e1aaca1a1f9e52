"""Benchmark make-before-break on the local backend: failed requests across switches.

    .venv/bin/python benchmarks/switch_without_failures.py [--switches 20] [--startup 2] [--drain S]

A monitored lease runs tests/slow_http_server.py (it sleeps ``--startup``
seconds, then serves) on a port granted as ``auto``. A client sends a request
every 10 ms to whatever ``lease.current.endpoints["http"]`` names while the
benchmark forces ``--switches`` renegotiations (latency reported far over a p99
objective; the next breach once the previous old lease is drained), with the
process's monitor (``aicontract.acquire``) and the contract's ``terms.drain``
(2 s unless ``--drain S`` says otherwise) letting requests in flight to the old
lease finish. Printed:
requests sent and failed (with the first errors), switch time p50/max, and a
leak check (leases left in the ledger, workload processes left).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx

import aicontract
from aicontract import Contract, Lease, Negotiator, Objective, Probe, Terms, Workload
from aicontract.backends.local import LocalBackend

SERVER = str(Path(__file__).resolve().parent.parent / "tests" / "slow_http_server.py")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


async def run(switches: int, startup: float, drain: float | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["AICONTRACT_INVENTORY"] = str(Path(tmp) / "inventory.yaml")
        Path(os.environ["AICONTRACT_INVENTORY"]).write_text("cpus: 4\nmemory: 8GiB\n")
        os.environ["AICONTRACT_STATE_DIR"] = str(Path(tmp) / "state")
        contract = Contract(
            name="switch",
            objectives=[Objective(sli="latency_p99", op="<=", target="100ms", window="1m")],
            terms=Terms(
                on_violation="renegotiate",
                max_renegotiations_per_hour=3600,
                start_by="60s",
                drain=None if drain is None else f"{drain:g}s",
            ),
            workload=Workload(
                kind="inference",
                command=(sys.executable, SERVER, str(startup)),
                ports={"http": "auto"},
                probe=Probe(endpoint="http", path="/", interval="1h"),
            ),
        )
        sent = failed = 0
        errors: list[str] = []
        pids: set[int] = set()
        retired: list[Lease] = []
        took: list[float] = []

        async with LocalBackend(state_dir=Path(tmp) / "state") as backend:
            # The process's monitor, as `aicontract.acquire` gives.
            handle = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
            handle.on_replaced(lambda old, new: retired.append(old))
            pids.add(int(handle.details["pid"]))
            async with handle, httpx.AsyncClient(timeout=10) as client:
                done = anyio.Event()

                async def requests() -> None:
                    nonlocal sent, failed
                    while not done.is_set():
                        sent += 1
                        url = handle.current.endpoints["http"]
                        try:
                            (await client.get(url)).raise_for_status()
                        except httpx.HTTPError as exc:
                            failed += 1
                            errors.append(f"{url}: {exc!r}")
                        await anyio.sleep(0.01)

                async with anyio.create_task_group() as tg:
                    tg.start_soon(requests)
                    for n in range(switches):
                        began = time.perf_counter()
                        while len(retired) <= n:
                            handle.report(latency=0.9)
                            await anyio.sleep(0.02)
                        took.append(time.perf_counter() - began)
                        pids.add(int(handle.current.details["pid"]))
                        while not retired[n].state.is_final:
                            await anyio.sleep(0.02)
                    await anyio.sleep(0.2)
                    done.set()
            leases_left = len(backend.leases())
        deadline = time.monotonic() + 10
        while not all(gone(p) for p in pids) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        running = sum(not gone(p) for p in pids)
    how = f"drain {contract.terms.drain_seconds:g} s"
    print(f"{switches} switches of a workload that starts in {startup:g} s (auto port, {how}):")
    print(f"   requests sent {sent}, failed {failed}")
    for error in errors[:5]:
        print(f"     {error}")
    print(f"   breach -> switched: p50 {statistics.median(took):.2f} s, max {max(took):.2f} s")
    print(f"   leases left in the ledger: {leases_left}; workload processes left: {running}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=20)
    parser.add_argument("--startup", type=float, default=2.0)
    parser.add_argument(
        "--drain", type=float, default=None, help="terms.drain in seconds (default: 2)"
    )
    args = parser.parse_args()
    anyio.run(run, args.switches, args.startup, args.drain)


if __name__ == "__main__":
    main()
