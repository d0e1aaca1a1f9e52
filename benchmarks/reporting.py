"""Benchmark reporting from a workload process: samples/s the client accepts without blocking.

    .venv/bin/python benchmarks/reporting.py [--samples 200000]

A holder (this process) binds a report socket and feeds what arrives to a
real process monitor watching a lease; a workload (a child process started
with the lease's env) calls ``aicontract.report(latency=...)`` in a tight
loop. Printed: the rate at which the child's calls returned, how many
figures it dropped (the holder fell behind: dropped, never blocked), and how
many the monitor took in, and at what rate (from the first sample's arrival
to the last's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import anyio

import aicontract
from aicontract import Contract, Negotiator, Objective
from aicontract.backends.base import Backend
from aicontract.clock import system_clock
from aicontract.leases import Lease
from aicontract.monitor import process_monitor
from aicontract.observation import Observation
from aicontract.offer import Grant, Offer, Quote

WORKLOAD = """
import json, sys, time
import aicontract
from aicontract import reporting
from aicontract.reporting import dropped
flush = getattr(reporting, "flush", lambda: None)  # older clients sent every figure at once
n = int(sys.argv[1])
started = time.perf_counter()
for i in range(n):
    aicontract.report(latency=0.001 * (i % 50))
elapsed = time.perf_counter() - started
flush()  # what waits to share a datagram, so the count below is final
print(json.dumps({"rate": n / elapsed, "dropped": dropped()}))
"""


class OneLease(Backend):
    """Grants every contract at once (nothing is reserved: this measures reporting)."""

    name = "bench"

    async def quote(self, contract: Contract) -> Quote:
        offer = Offer(
            id="o-1",
            backend=self.name,
            contract=contract,
            grant=Grant(cpus=1),
            guarantee="best-effort",
            region="local",
            jurisdiction=None,
            provider="bench",
            isolation="shared",
            price=None,
            expires_at=system_clock.time() + 60,
        )
        return Quote(offers=(offer,))

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        return Lease(
            id="bench-1",
            contract=offer.contract,
            grant=offer.grant,
            backend=self,
            guarantee="best-effort",
            expires_at=system_clock.time() + 3600,
        )

    async def renew(self, lease: Lease) -> float:
        return system_clock.time() + 3600

    async def release(self, lease: Lease) -> None:
        return None

    async def observe(self, lease: Lease) -> Observation:
        return Observation()


async def run(samples: int) -> None:
    contract = Contract(
        name="bench",
        cpus=1,
        objectives=[Objective(sli="latency_p99", op="<=", target="100ms", window="5m")],
    )
    src = str(Path(aicontract.__file__).resolve().parent.parent)
    async with await aicontract.acquire(contract, negotiator=Negotiator([OneLease()])) as lease:
        watch = process_monitor().watches[lease.id]
        env = {**os.environ, **lease.env, "PYTHONPATH": src}
        arrivals: list[float] = []  # the first and the last sample's arrival

        def arrived(sample: object) -> None:
            if arrivals:
                arrivals[-1] = time.perf_counter()
            else:
                arrivals.extend((time.perf_counter(), time.perf_counter()))

        watch.listeners.append(arrived)
        done = await anyio.run_process(
            [sys.executable, "-c", WORKLOAD, str(samples)], env=env, check=True
        )
        result = json.loads(done.stdout)
        with anyio.move_on_after(10):
            while watch.samples_total < samples - result["dropped"]:
                await anyio.sleep(0.01)
        taken = watch.samples_total
        took = arrivals[-1] - arrivals[0] if arrivals else 0.0
        print(f"workload: {samples:,} reports at {result['rate']:,.0f}/s returned (never blocked)")
        print(f"          {result['dropped']:,} dropped because the holder fell behind")
        print(f"holder:   {taken:,} samples taken in by the monitor", end="")
        print(f" ({taken / took:,.0f}/s while they came)" if took > 0 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200_000)
    args = parser.parse_args()
    os.environ.setdefault("AICONTRACT_STATE_DIR", str(Path(os.environ.get("TMPDIR", "/tmp"))))
    started = time.perf_counter()
    anyio.run(run, args.samples)
    print(f"({time.perf_counter() - started:.1f}s in all)")


if __name__ == "__main__":
    main()
