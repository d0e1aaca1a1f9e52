"""Benchmark the monitor: CPU cost of 1,000 leases at 1 Hz, and detection latency of a step.

    .venv/bin/python benchmarks/monitor.py [--leases 1000] [--seconds 15]

1. CPU: ``--leases`` leases on an in-memory backend whose ``observe`` returns
   one latency and one GPU-utilisation sample per lease per second (two
   objectives each), on the real clock; process CPU time over wall time, as a
   share of one core. Run with telemetry off and publishing off, then with
   publishing on, then with whatever telemetry extras are installed.
2. Detection: in virtual time, 1 Hz samples that step from good to bad; how
   many seconds until the objective is violated, and until it clears once the
   step is undone.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

from aicontract import GPU, Contract, Objective
from aicontract.backends.base import Backend
from aicontract.clock import Clock, VirtualClock, system_clock
from aicontract.errors import CapacityUnavailable
from aicontract.leases import Lease
from aicontract.monitor import Monitor
from aicontract.monitor.objectives import ObjectiveState, tracker_for
from aicontract.monitor.telemetry import Telemetry, default_telemetry
from aicontract.observation import Observation, Sample
from aicontract.offer import Grant, Offer, Quote

OBJECTIVES = (
    Objective(sli="latency_p99", op="<=", target="200ms", window="5m"),
    Objective(sli="gpu_utilization", op=">=", target="20%", window="5m"),
)


class SampleBackend(Backend):
    """Every lease observes one latency and one utilisation sample per call."""

    name = "bench"

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.rng = random.Random(0)

    async def quote(self, contract: Contract) -> Quote:
        return Quote()

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        raise CapacityUnavailable(self.name, "leases are made directly")  # pragma: no cover

    async def renew(self, lease: Lease) -> float:
        return self.clock.time() + 3600

    async def release(self, lease: Lease) -> None:
        return None

    async def observe(self, lease: Lease) -> Observation:
        now = self.clock.time()
        return Observation(
            samples=(
                Sample(sli="latency", value=self.rng.lognormvariate(-4, 0.5), at=now),
                Sample(sli="gpu_utilization", value=self.rng.uniform(0.5, 0.9), at=now),
            )
        )


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()},"
        f" {platform.system()} {platform.release()}"
    )


async def cpu_cost(leases: int, seconds: float, **monitor_options: Any) -> tuple[float, int]:
    """CPU share of one core while monitoring ``leases`` leases; and samples taken."""
    backend = SampleBackend(system_clock)
    contract = Contract(name="bench", gpus=GPU(count=1), objectives=list(OBJECTIVES))
    async with Monitor(observe_interval=1.0, **monitor_options) as monitor:
        for i in range(leases):
            lease = Lease(
                id=f"bench-{i}",
                contract=contract,
                grant=Grant(gpus=1),
                backend=backend,
                guarantee="allocated",
                expires_at=time.time() + 3600,
            )
            monitor.watch(lease, probe=False)
        await anyio.sleep(3)  # let every loop reach its steady state
        before = sum(w.samples_total for w in monitor.watches.values())
        wall0, cpu0 = time.perf_counter(), time.process_time()
        await anyio.sleep(seconds)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        taken = sum(w.samples_total for w in monitor.watches.values()) - before
    return 100 * cpu / wall, taken


def detection(objective: Objective, good: float, bad: float) -> tuple[float, float]:
    """Virtual seconds from a step to the violation, and from undoing it to clearing."""
    tracker = tracker_for(objective, "bench")
    clock = VirtualClock()
    sli = tracker.sli

    def feed(value: float, until: ObjectiveState | None, limit: float) -> float:
        start = clock.now
        while clock.now - start < limit:
            clock.now += 1
            tracker.add(Sample(sli=sli, value=value, at=clock.now))
            if until is not None and tracker.state == until:
                return clock.now - start
        return float("nan")

    feed(good, None, 2 * objective.window.seconds)
    fired = feed(bad, ObjectiveState.VIOLATED, 2 * objective.window.seconds)
    cleared = feed(good, ObjectiveState.MET, 2 * objective.window.seconds)
    return fired, cleared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print(
        f"\n1. CPU, {args.leases} leases x 2 SLIs at 1 Hz, {args.seconds:g} s measured"
        " (share of one core):"
    )
    with tempfile.TemporaryDirectory() as tmp:
        runs = [
            ("telemetry off, publish off", {"telemetry": Telemetry(), "publish": False}),
            (
                "telemetry off, publish on (every 5 s)",
                {"telemetry": Telemetry(), "publish": True, "publish_dir": Path(tmp)},
            ),
            (
                f"installed telemetry ({type(default_telemetry()).__name__}), publish off",
                {"publish": False},
            ),
        ]
        for label, options in runs:
            share, taken = anyio.run(lambda o=options: cpu_cost(args.leases, args.seconds, **o))
            rate = taken / args.seconds
            print(f"   {label:55s} {share:5.1f} %  ({rate:,.0f} samples/s)")
    print("\n2. Detection latency of a step change, 1 Hz samples (virtual seconds):")
    cases = [
        (
            "latency_p99 <= 200ms / 5m, 20 ms -> 500 ms",
            Objective(sli="latency_p99", op="<=", target="200ms", window="5m"),
            0.02,
            0.5,
        ),
        (
            "availability >= 99.9% / 5m, up -> down",
            Objective(sli="availability", op=">=", target="99.9%", window="5m"),
            1.0,
            0.0,
        ),
        (
            "availability >= 99.9% / 1h, up -> down",
            Objective(sli="availability", op=">=", target="99.9%", window="1h"),
            1.0,
            0.0,
        ),
        (
            "error_rate <= 1% / 30m, 0 -> 5% errors",
            Objective(sli="error_rate", op="<=", target="1%", window="30m"),
            0.0,
            0.05,
        ),
        (
            "gpu_utilization >= 50% / 5m, 80% -> 10%",
            Objective(sli="gpu_utilization", op=">=", target="50%", window="5m"),
            0.8,
            0.1,
        ),
    ]
    for label, objective, good, bad in cases:
        fired, cleared = detection(objective, good, bad)
        print(f"   {label:45s} violated after {fired:5.0f} s, cleared {cleared:5.0f} s after")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
