"""Local backend throughput: acquire+release cycles per second, alone and contended.

    python benchmarks/local_lease.py [--seconds 3] [--processes 16] [--gpus 8]

1. One process, public API (`Negotiator.acquire` + `Lease.release`): cycles/s, the
   median and best 100-cycle round, and the CPU time per cycle.
2. N processes contending for K fake GPUs through the same API: grants/s in all,
   and a check over every grant that no GPU was ever held twice at once.
Figures are printed with the machine they were measured on; nothing is asserted.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import platform
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import anyio

import aicontract as ac
from aicontract.backends.local import LocalBackend
from aicontract.negotiate import Negotiator


def _inventory(directory: Path, gpus: int) -> Path:
    path = directory / "inventory.yaml"
    devices = ", ".join(["{model: H100, memory: 80GiB}"] * gpus)
    path.write_text(f"cpus: 64\nmemory: 512GiB\ngpus: [{devices}]\n")
    return path


async def _cycles(seconds: float) -> tuple[int, float, list[float], float]:
    """Cycles done, seconds taken, each 100-cycle round's rate, and CPU seconds used."""
    negotiator = Negotiator([LocalBackend()])
    contract = ac.Contract(name="bench", gpus=1)
    done, start, cpu = 0, time.perf_counter(), time.process_time()
    deadline = start + seconds
    rates = []
    while time.perf_counter() < deadline:
        began = time.perf_counter()
        for _ in range(100):
            lease = await negotiator.acquire(contract)
            await lease.release()
        rates.append(100 / (time.perf_counter() - began))
        done += 100
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    await negotiator.aclose()
    return done, elapsed, rates, cpu


def _contender(env: dict[str, str], seconds: float, start_at: float, log: str) -> None:
    os.environ.update(env)

    async def run() -> None:
        negotiator = Negotiator([LocalBackend()], requote_wait_max=0.005)
        contract = ac.Contract(name="contend", gpus=1, start_by="60s")
        lines = []
        while time.time() < start_at:
            await anyio.sleep(0.001)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            lease = await negotiator.acquire(contract)
            begin = time.monotonic()
            gpu = lease.env["CUDA_VISIBLE_DEVICES"]
            end = time.monotonic()
            await lease.release()
            lines.append(f"{gpu} {begin!r} {end!r}\n")
        Path(log).write_text("".join(lines))
        await negotiator.aclose()

    anyio.run(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--processes", type=int, default=16)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        env = {
            "AICONTRACT_INVENTORY": str(_inventory(directory, args.gpus)),
            "AICONTRACT_STATE_DIR": str(directory / "state"),
        }
        os.environ.update(env)
        done, elapsed, rates, cpu = anyio.run(_cycles, args.seconds)
        rates.sort()
        print(
            f"one process: {done / elapsed:,.0f} acquire+release cycles/s "
            f"({elapsed / done * 1e6:,.0f} µs per cycle, {done} cycles); 100-cycle rounds:"
            f" median {rates[len(rates) // 2]:,.0f}/s, best {rates[-1]:,.0f}/s;"
            f" CPU {cpu / done * 1e6:,.0f} µs per cycle (on a shared machine the figure"
            " least moved by the others)"
        )

        ctx = mp.get_context("spawn")
        start_at = time.time() + 2.0  # let every interpreter start before the clock runs
        logs = [directory / f"p{i}.log" for i in range(args.processes)]
        workers = [
            ctx.Process(target=_contender, args=(env, args.seconds, start_at, str(log)))
            for log in logs
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for log in logs:
            for line in log.read_text().splitlines():
                gpu, begin, end = line.split()
                intervals[gpu].append((float(begin), float(end)))
        grants = sum(len(v) for v in intervals.values())
        overlaps = 0
        for spans in intervals.values():
            spans.sort()
            overlaps += sum(1 for a, b in itertools.pairwise(spans) if a[1] > b[0])
        print(
            f"{args.processes} processes on {args.gpus} GPUs: {grants / args.seconds:,.0f} "
            f"grants/s in all, over-grants: {overlaps}"
        )


if __name__ == "__main__":
    main()
