"""Slurm backend: time from ``acquire`` to a RUNNING job, and REST calls per lease.

    python benchmarks/slurm_lease.py [--sequential 20] [--concurrent 20]

Starts the private Slurm cluster of ``.ci/slurm-cluster.sh`` (munged, slurmctld,
two slurmd with 4 fake H100 each, slurmrestd with JWT; needs root and Debian's
packages), or uses a running one given as ``AICONTRACT_SLURM_DIR``, then:

1. N leases in sequence (1 GPU each): acquire (quote + commit, which returns once
   slurmctld runs the job) then release (until the job is gone).
2. M leases acquired at once (1 CPU each, no GPU, so all 20 fit the 32 CPUs),
   then released.

For each: acquire->RUNNING latency (median, p90, max), release time and REST
calls per lease (every request the client sent). Figures are printed with the
machine they were measured on; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import time
from pathlib import Path

import anyio

import aicontract as ac
from aicontract.backends.slurm import SlurmBackend
from aicontract.negotiate import Negotiator

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / ".ci" / "slurm-cluster.sh"


def _summary(name: str, seconds: list[float]) -> str:
    if not seconds:
        return f"{name}: none"
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"{name}: median {statistics.median(ordered) * 1000:.0f} ms, "
        f"p90 {p90 * 1000:.0f} ms, max {ordered[-1] * 1000:.0f} ms (n={len(ordered)})"
    )


def _env(directory: Path) -> dict[str, str]:
    pairs = (line.partition("=") for line in (directory / "env").read_text().splitlines())
    return {key: value for key, _, value in pairs}


async def _run(env: dict[str, str], sequential: int, concurrent: int) -> None:
    backend = SlurmBackend(
        url=env["SLURMRESTD_URL"], token=env["SLURM_JWT"], user="root", partitions=["gpu"]
    )
    negotiator = Negotiator([backend])
    one_gpu = ac.Contract(name="bench", gpus={"count": 1, "models": ["H100"]}, duration="10m")
    one_cpu = ac.Contract(name="bench", cpus=1, duration="10m", start_by="60s")

    acquire: list[float] = []
    release: list[float] = []
    before = backend.rest.calls
    for _ in range(sequential):
        started = time.perf_counter()
        lease = await negotiator.acquire(one_gpu)
        acquire.append(time.perf_counter() - started)
        started = time.perf_counter()
        await lease.release()
        release.append(time.perf_counter() - started)
    calls = backend.rest.calls - before
    print(_summary(f"sequential acquire->RUNNING ({sequential})", acquire))
    print(_summary("sequential release->gone", release))
    print(f"sequential REST calls per lease (acquire + release): {calls / max(1, sequential):.1f}")

    leases: list[ac.Lease] = []
    times: list[float] = []
    before = backend.rest.calls

    async def one() -> None:
        started = time.perf_counter()
        leases.append(await negotiator.acquire(one_cpu))
        times.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrent):
            tg.start_soon(one)
    wall = time.perf_counter() - started
    acquired_calls = backend.rest.calls - before
    started = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for lease in leases:
            tg.start_soon(lease.release)
    released = time.perf_counter() - started
    print(_summary(f"{concurrent} at once: acquire->RUNNING", times))
    print(
        f"{concurrent} at once: all RUNNING after {wall * 1000:.0f} ms, all gone after"
        f" {released * 1000:.0f} ms more"
    )
    print(
        f"{concurrent} at once: REST calls per lease (acquire + release):"
        f" {(backend.rest.calls - before) / max(1, concurrent):.1f}"
        f" ({acquired_calls / max(1, concurrent):.1f} to acquire)"
    )
    await backend.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--concurrent", type=int, default=20)
    args = parser.parse_args()
    given = os.environ.get("AICONTRACT_SLURM_DIR")
    if given:
        directory = Path(given)
    else:
        out = subprocess.run(
            ["bash", str(SCRIPT), "start"], capture_output=True, text=True, check=True
        ).stdout
        directory = Path(out.strip().splitlines()[-1])
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs;"
        f" python {platform.python_version()}"
    )
    try:
        anyio.run(_run, _env(directory), args.sequential, args.concurrent)
    finally:
        if not given:
            subprocess.run(["bash", str(SCRIPT), "stop", str(directory)], check=False)
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
