"""Samples that are not numbers an SLI can take: NaN, infinities, negative latencies.

A figure like that is a bug in whoever measured it (a division by a zero elapsed
time, a NaN from NVML): the holder's own ``report()`` refuses it with a clear
error, and one that arrives from a backend or a workload's socket is dropped, so
it never decides an objective's state (nor crashes the monitor).
"""

from __future__ import annotations

import math

import pytest
from monitor_support import service_contract, states

from aicontract import (
    ContractError,
    Monitor,
    Negotiator,
    Objective,
    Observation,
    Sample,
    VirtualClock,
)
from aicontract.monitor.telemetry import Telemetry
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

OBJECTIVES = {
    "latency_p90": (Objective(sli="latency_p90", op="<=", target="200ms", window="1m"), 0.05),
    "latency_mean": (Objective(sli="latency_mean", op="<=", target="200ms", window="1m"), 0.05),
    "latency_max": (Objective(sli="latency_max", op="<=", target="200ms", window="1m"), 0.05),
    "throughput": (Objective(sli="throughput", op=">=", target="500/s", window="1m"), 600.0),
    "gpu_utilization": (
        Objective(sli="gpu_utilization", op=">=", target="50%", window="1m"),
        0.9,
    ),
}
BAD = [math.nan, math.inf, -math.inf, -1.0]


def monitor_for(negotiator: Negotiator) -> Monitor:
    return Monitor(negotiator, publish=False, telemetry=Telemetry())


def base(sli: str) -> str:
    return sli.split("_")[0] if sli.startswith("latency") else sli


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("bad", BAD, ids=repr)
async def test_report_refuses_a_figure_no_sli_can_take(
    negotiator: Negotiator, clock: VirtualClock, name: str, bad: float
) -> None:
    objective, good = OBJECTIVES[name]
    sli = base(name)
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(objective))
        for _ in range(30):
            await clock.advance(1)
            lease.report(**{sli: good})
        before = states(lease)
        assert set(before.values()) == {"met"}
        with pytest.raises(ContractError, match=sli):
            lease.report(**{sli: bad})
        assert states(lease) == before
        await lease.release()


@pytest.mark.parametrize("name", list(OBJECTIVES))
@pytest.mark.parametrize("bad", BAD, ids=repr)
async def test_a_backends_unfit_sample_is_dropped(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock, name: str, bad: float
) -> None:
    objective, good = OBJECTIVES[name]
    sli = base(name)
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(objective))
        for _ in range(30):
            await clock.advance(1)
            lease.report(**{sli: good})
        for _ in range(30):
            fake.observations.append(
                Observation(samples=(Sample(sli=sli, value=bad, at=clock.time()),))
            )
            await clock.advance(1)
        assert states(lease) == {objective_key(objective): "met"}
        value = monitor.watches[lease.id].trackers[0].value(clock.time())
        assert value is not None
        assert math.isfinite(value)
        assert value >= 0
        await lease.release()


def objective_key(objective: Objective) -> str:
    from aicontract.observation import objective_key as key

    return key(objective)


async def test_a_figure_of_another_name_may_be_negative(
    negotiator: Negotiator, clock: VirtualClock
) -> None:
    """Only the SLIs objectives read are non-negative; a figure like a loss may not be."""
    objective, _ = OBJECTIVES["throughput"]
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(objective))
        lease.report(loss=-0.5)
        with pytest.raises(ContractError, match="loss"):
            lease.report(loss=math.nan)
        await lease.release()


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_aicontract_report_refuses_them_too_on_its_fast_path(bad: float) -> None:
    import aicontract

    with pytest.raises(ContractError, match="latency"):
        aicontract.report("latency", bad)
    with pytest.raises(ContractError, match="throughput"):
        aicontract.report(throughput=bad)
    aicontract.report("loss", -1.0)  # outside a lease: a no-op
