"""Benchmark renegotiation on the local backend: violation → replacement serving.

    .venv/bin/python benchmarks/renegotiation.py [--runs 20]

Each run acquires a monitored lease whose workload is a real process that
starts in well under 100 ms, reports requests far over its p99 objective
until the monitor raises a violation, and times from that violation to the
moment ``lease.current`` is the replacement (committed, its own workload
started, switched; the old lease then drained and released). Printed: p50,
p90 and max over the runs, and a leak check (ledger empty, no workload left).
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

import aicontract
from aicontract import Contract, Negotiator, Objective, Workload
from aicontract.backends.local import LocalBackend

P99 = Objective(sli="latency_p99", op="<=", target="100ms", window="1m")


async def one_run(backend: LocalBackend, pids: list[int]) -> float:
    contract = Contract(
        name="bench",
        cpus=1,
        objectives=[P99],
        on_violation="renegotiate",
        workload=Workload(
            kind="inference", command=(sys.executable, "-c", "import time; time.sleep(60)")
        ),
    )
    violated_at: list[float] = []
    switched_at: list[float] = []
    handle = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
    handle.on_violation(lambda v: violated_at.append(time.perf_counter()))
    handle.on_replaced(lambda old, new: switched_at.append(time.perf_counter()))
    async with handle:
        with anyio.fail_after(30):
            while not switched_at:
                handle.report(latency=0.9)
                await anyio.sleep(0.01)
        pids += [int(handle.details["pid"]), int(handle.current.details["pid"])]
    return switched_at[0] - violated_at[0]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] != "Z"


async def run(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.yaml"
        inventory.write_text("cpus: 4\nmemory: 8GiB\n")
        os.environ["AICONTRACT_INVENTORY"] = str(inventory)
        os.environ["AICONTRACT_STATE_DIR"] = str(Path(tmp) / "state")
        pids: list[int] = []
        async with LocalBackend(state_dir=Path(tmp) / "state") as backend:
            times = [await one_run(backend, pids) for _ in range(runs)]
            leases_left = len(backend.ledger.records())
        await anyio.sleep(0.5)  # let the last SIGTERMs land
        running = sum(alive(pid) for pid in pids)
    times.sort()
    p50 = statistics.median(times)
    p90 = times[max(0, round(0.9 * len(times)) - 1)]
    print(f"violation -> replacement serving, {runs} runs on the local backend:")
    print(f"   p50 {p50 * 1000:.0f} ms   p90 {p90 * 1000:.0f} ms   max {times[-1] * 1000:.0f} ms")
    print(f"   leases left in the ledger: {leases_left}; workload processes left: {running}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    anyio.run(run, args.runs)


if __name__ == "__main__":
    main()
