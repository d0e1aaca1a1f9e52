"""Renegotiation that learns (issue 11): the performance record and prediction-aware ranking."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from monitor_support import service_contract

from aicontract import Contract, Objective, VirtualClock
from aicontract.monitor import Monitor
from aicontract.monitor.record import PerformanceRecord, placement_of
from aicontract.monitor.telemetry import Telemetry
from aicontract.negotiate import Negotiator
from fakes import FakeBackend, make_offer

P99 = Objective(sli="latency_p99", op="<=", target="200ms", window="5m")
TPUT = Objective(sli="throughput", op=">=", target="100/s", window="5m")
CONTRACT = Contract(name="svc", gpus=1, objectives=[P99])


def where(backend: str, contract: Contract = CONTRACT) -> str:
    """The placement of the fake backend's offers (region and grant as it makes them)."""
    offer = make_offer(backend, contract, 0.0)
    return placement_of(backend, offer.region, offer.grant, contract)


# -- the record never predicts what it has no evidence for ---------------------------------


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(min_value=0, max_value=1e6), max_size=12),
    min_evidence=st.integers(min_value=1, max_value=5),
    age=st.floats(min_value=0, max_value=7200),
    other=st.sampled_from(["b/eu-west-1/-/-", "a/us-east-1/-/-"]),
)
def test_no_prediction_without_evidence(
    values: list[float], min_evidence: int, age: float, other: str
) -> None:
    record = PerformanceRecord(min_evidence=min_evidence, horizon=3600)
    placement = "a/eu-west-1/-/-"
    for i, value in enumerate(values):
        record.observe(placement, P99, value, at=1000.0 + i)
    now = 1000.0 + len(values) + age
    predicted = record.predict(placement, P99, now)
    if len(values) < min_evidence or (values and age > 3600):
        assert predicted is None
    if predicted is not None:
        # only ever a value the evidence supports: within what was measured
        assert min(values) - 1e-6 <= predicted <= max(values) + 1e-6
    # nothing about other placements or other SLIs
    assert record.predict(other, P99, now) is None
    assert record.predict(placement, TPUT, now) is None


def test_the_record_of_local_placements_is_kept_per_host(tmp_path: Path) -> None:
    path = tmp_path / "performance.json"
    record = PerformanceRecord(path=path)
    for i in range(3):
        record.observe("local/local/H100/serving", P99, 0.05, at=100.0 + i)
        record.observe("lambda/us-east-1/H100/serving", P99, 0.07, at=100.0 + i)
    record.save()
    again = PerformanceRecord(path=path)
    assert again.predict("local/local/H100/serving", P99, 110.0) == pytest.approx(0.05)
    assert again.predict("lambda/us-east-1/H100/serving", P99, 110.0) is None  # per process


# -- the negotiator reads it ---------------------------------------------------------------


@pytest.mark.anyio
async def test_an_offer_predicted_to_break_an_objective_is_dropped_with_the_evidence() -> None:
    clock = VirtualClock()
    record = PerformanceRecord()
    for i in range(3):
        record.observe(where("slow"), P99, 0.5, at=clock.time() - 10 + i)
        record.observe(where("fast"), P99, 0.05, at=clock.time() - 10 + i)
    slow, fast = FakeBackend(clock=clock, name="slow"), FakeBackend(clock=clock, name="fast")
    round_ = await Negotiator([slow, fast], clock=clock, record=record).quote(CONTRACT)
    assert [o.backend for o in round_.offers] == ["fast"]
    assert round_.offers[0].details["predicted.latency_p99"] == "50ms"
    [why] = [r for r in round_.rejections if r.backend == "slow"]
    assert why.requirement == "objectives.latency_p99"
    assert why.wanted == "<= 200ms"
    assert why.available == f"predicted 500ms at {where('slow')} (3 measurements)"


@pytest.mark.anyio
async def test_offers_rank_by_predicted_margin_and_a_violated_placement_goes_last() -> None:
    clock = VirtualClock()
    record = PerformanceRecord()
    for i in range(3):
        record.observe(where("near"), P99, 0.19, at=clock.time() - 10 + i)
        record.observe(where("roomy"), P99, 0.02, at=clock.time() - 10 + i)
    backends = [FakeBackend(clock=clock, name=n) for n in ("near", "roomy", "unknown")]
    negotiator = Negotiator(backends, clock=clock, record=record)
    ranked = [o.backend for o in (await negotiator.quote(CONTRACT)).offers]
    assert ranked.index("roomy") < ranked.index("near")
    record.violated(where("roomy"), P99, at=clock.time())
    ranked = [o.backend for o in (await negotiator.quote(CONTRACT)).offers]
    assert ranked[-1] == "roomy"  # it just broke the objective: anywhere else first


@pytest.mark.anyio
async def test_without_a_record_offers_are_ranked_as_before() -> None:
    clock = VirtualClock()
    backends = [FakeBackend(clock=clock, name=n) for n in ("a", "b")]
    plain = await Negotiator(backends, clock=clock).quote(CONTRACT)
    learned = await Negotiator(backends, clock=clock, record=PerformanceRecord()).quote(CONTRACT)
    assert [o.backend for o in plain.offers] == [o.backend for o in learned.offers]


# -- the monitor writes it -----------------------------------------------------------------


@pytest.mark.anyio
async def test_a_violation_marks_its_placement_in_the_record(clock: VirtualClock) -> None:
    record = PerformanceRecord()
    fake = FakeBackend(clock=clock, capacity=2, ttl=3600.0)
    negotiator = Negotiator(backends=[fake], clock=clock, record=record)
    contract = service_contract(Objective(sli="latency_p90", op="<=", target="200ms", window="1m"))
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        lease = await monitor.acquire(contract)
        for _ in range(10):
            await clock.advance(1)
            lease.report(latency=0.9)
        placement = placement_of(fake.name, lease.region, lease.grant, contract)
        await lease.release()
    evidence = record.evidence(placement, "latency_p90")
    assert evidence is not None
    assert evidence.violated_at is not None
    assert evidence.count >= 1
    assert evidence.worst is not None
    assert evidence.worst > 0.2
