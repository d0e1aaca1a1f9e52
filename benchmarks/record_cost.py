"""What the record costs the local acquire+release loop: record on and off, interleaved.

    python benchmarks/record_cost.py [--rounds 8] [--cycles 500]

Runs `Negotiator.acquire` + `Lease.release` on the local backend (fake 8-GPU host),
alternating rounds with the record kept (the default) and with `AICONTRACT_RECORD=off`,
in one process, and reports CPU time per cycle (this process's, so other load on the
machine disturbs it less than wall time) as the median and the minimum of the rounds.
Also counts the record's system calls per cycle. Figures are printed; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import anyio

import aicontract as ac
from aicontract.backends.local import LocalBackend
from aicontract.governance import record as record_module
from aicontract.negotiate import Negotiator


def _inventory(directory: Path, gpus: int) -> Path:
    path = directory / "inventory.yaml"
    devices = ", ".join(["{model: H100, memory: 80GiB}"] * gpus)
    path.write_text(f"cpus: 64\nmemory: 512GiB\ngpus: [{devices}]\n")
    return path


async def _round(cycles: int) -> float:
    """CPU microseconds per acquire+release cycle (after a short warm-up)."""
    negotiator = Negotiator([LocalBackend()])
    contract = ac.Contract(name="bench", gpus=1)
    for _ in range(50):
        lease = await negotiator.acquire(contract)
        await lease.release()
    start = time.process_time()
    for _ in range(cycles):
        lease = await negotiator.acquire(contract)
        await lease.release()
    spent = time.process_time() - start
    await negotiator.aclose()
    return spent / cycles * 1e6


def _syscalls_per_append() -> dict[str, float]:
    """How many times each system call the record makes runs per append (by wrapping os)."""
    counts: dict[str, int] = {}
    real = record_module.os

    class _Counting:
        def __getattr__(self, name: str) -> object:
            value = getattr(real, name)
            if name in (
                "write",
                "pwrite",
                "fstat",
                "lseek",
                "getpid",
                "pread",
                "fsync",
                "fdatasync",
            ):

                def counted(*args: object) -> object:
                    counts[name] = counts.get(name, 0) + 1
                    return value(*args)  # type: ignore[operator]

                return counted
            return value

    real_flock = record_module._flock

    def flock(fd: int, *, exclusive: bool) -> None:
        counts["flock"] = counts.get("flock", 0) + 1
        real_flock(fd, exclusive=exclusive)

    record_module.os = _Counting()  # type: ignore[assignment]
    record_module._flock = flock  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            record = record_module.Record(Path(tmp) / "record.jsonl")
            record.append("grant", 0.0, {"lease": "warm-up"})
            counts.clear()
            for i in range(1000):
                record.append("grant", float(i), {"lease": f"l{i}", "tenant": "t"})
            record.close()
    finally:
        record_module.os = real
        record_module._flock = real_flock
    return {name: count / 1000 for name, count in sorted(counts.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--cycles", type=int, default=500)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}"
    )
    results: dict[str, list[float]] = {"on": [], "off": []}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        os.environ["AICONTRACT_INVENTORY"] = str(_inventory(directory, 8))
        os.environ["AICONTRACT_STATE_DIR"] = str(directory / "state")
        for _ in range(args.rounds):
            for mode in ("on", "off"):
                if mode == "off":
                    os.environ["AICONTRACT_RECORD"] = "off"
                else:
                    os.environ.pop("AICONTRACT_RECORD", None)
                results[mode].append(anyio.run(_round, args.cycles))
    os.environ.pop("AICONTRACT_RECORD", None)
    for mode, values in results.items():
        print(
            f"record {mode:3s}: {statistics.median(values):6.0f} µs CPU per cycle (median),"
            f" {min(values):6.0f} (min) over {args.rounds} rounds of {args.cycles}"
        )
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    low_on, low_off = min(results["on"]), min(results["off"])
    print(
        f"the record costs {on - off:.0f} µs per cycle, {100 * (1 - off / on):.1f}% (medians);"
        f" {low_on - low_off:.0f} µs, {100 * (1 - low_off / low_on):.1f}% (minimums)"
    )
    calls = ", ".join(f"{name} {count:g}" for name, count in _syscalls_per_append().items())
    print(f"system calls per append: {calls}")


if __name__ == "__main__":
    main()
