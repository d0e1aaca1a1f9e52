"""Memory per monitored lease stays constant however long it runs."""

from __future__ import annotations

import gc
import logging
import random
import tracemalloc

import pytest
from monitor_support import service_contract

from aicontract import Monitor, Negotiator, Objective, Sample, VirtualClock
from aicontract.monitor.telemetry import Telemetry

pytestmark = pytest.mark.anyio


def _held_by_aicontract() -> int:
    """Bytes allocated by aicontract's own code and still alive.

    tracemalloc counts the whole process; threads left by other tests (a sync
    portal's heartbeats, a test server) would otherwise be charged to this lease.
    """
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*/aicontract/*")]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


OBJECTIVES = (
    Objective(sli="latency_p99", op="<=", target="200ms", window="5m"),
    Objective(sli="availability", op=">=", target="99.9%", window="1h"),
    Objective(sli="throughput", op=">=", target="500/s", window="10m"),
    Objective(sli="latency_max", op="<=", target="2s", window="1m"),
)


async def test_memory_per_lease_is_constant_over_100k_samples(
    negotiator: Negotiator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, "aicontract")  # pytest would keep every log record
    rng = random.Random(1)
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        lease = await monitor.acquire(service_contract(*OBJECTIVES))

        def feed(n: int) -> None:
            for _ in range(n // 3):
                clock.now += 0.5  # 2 Hz of virtual time: windows roll over many times
                at = clock.now
                monitor.ingest(lease, Sample(sli="latency", value=rng.lognormvariate(-3, 1), at=at))
                monitor.ingest(
                    lease, Sample(sli="availability", value=float(rng.random() > 0.001), at=at)
                )
                monitor.ingest(lease, Sample(sli="throughput", value=rng.uniform(400, 700), at=at))

        tracemalloc.start()
        try:
            feed(30_000)  # warm: over an hour, every window full, most buckets seen
            gc.collect()
            warm = _held_by_aicontract()
            feed(100_000)  # 10^5 more samples
            gc.collect()
            after = _held_by_aicontract()
        finally:
            tracemalloc.stop()
        assert monitor.watches[lease.id].samples_total == 3 * (10_000 + 33_333)
        print(f"memory grew by {after - warm} bytes")
        assert after - warm < 16 * 1024, f"grew by {after - warm} bytes"
