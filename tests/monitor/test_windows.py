"""Streaming estimators and objective trackers, checked against brute force, in virtual time."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aicontract import Objective, ObjectiveState, Sample
from aicontract.monitor.objectives import EventTracker, GaugeTracker, tracker_for
from aicontract.monitor.sli import (
    SKETCH_ACCURACY,
    SlidingSketch,
    SlidingSums,
    bucket_of,
    bucket_value,
)

T0 = 1_000_000.0


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(st.tuples(st.floats(0, 50), st.floats(0, 1)), min_size=1, max_size=80),
    k=st.integers(1, 10),
)
def test_sliding_sums_match_brute_force(events: list[tuple[float, float]], k: int) -> None:
    sums = SlidingSums(10.0, 10, windows=[3.0, 5.0])
    events.sort()
    for offset, value in events:
        sums.add(T0 + offset, value, 1.0)
    now = T0 + events[-1][0]
    head = math.floor(now / 1.0)
    kept = [(o, v) for o, v in events if head - math.floor((T0 + o) / 1.0) < k]
    a, b = sums.sums(k, now)
    assert b == pytest.approx(len(kept))
    assert a == pytest.approx(sum(v for _, v in kept), abs=1e-6)


def test_sliding_sums_forget_what_left_the_window() -> None:
    sums = SlidingSums(60.0, 12, windows=[10.0])
    for i in range(60):
        sums.add(T0 + i, 1.0)
    assert sums.sums(12, T0 + 59)[1] == 60
    assert sums.sums(2, T0 + 59)[1] == 10  # two 5-second slots
    assert sums.sums(12, T0 + 200) == (0.0, 0.0)  # long after: all gone
    assert not sums.add(T0, 1.0)  # too old to count


def test_sketch_quantiles_within_accuracy() -> None:
    rng = random.Random(7)
    values = [rng.lognormvariate(-3, 1) for _ in range(5000)]
    sketch = SlidingSketch(60.0, 12)
    for i, v in enumerate(values):
        sketch.add(T0 + i * 0.01, v)
    ordered = sorted(values)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[math.ceil(q * len(ordered)) - 1]  # nearest rank
        got = sketch.quantile(q, 12, T0 + 50)
        assert got is not None
        assert abs(got - exact) / exact <= 2 * SKETCH_ACCURACY


def test_buckets_are_bounded() -> None:
    keys = {bucket_of(10.0**e) for e in range(-12, 13)}
    assert max(keys) == bucket_of(1e12) == bucket_of(1e9)
    assert bucket_value(bucket_of(0.0)) == 0.0
    assert bucket_of(float("nan")) == bucket_of(0.0)


def _latency(t: float, value: float) -> Sample:
    return Sample(sli="latency", value=value, at=t)


P99 = Objective(sli="latency_p99", op="<=", target="200ms", window="5m")


def test_one_slow_sample_does_not_fire_a_step_change_fires_fast() -> None:
    tracker = tracker_for(P99, "l1")
    assert isinstance(tracker, EventTracker)
    t = T0
    for _ in range(300):  # 1 Hz, fast: met
        t += 1
        tracker.add(_latency(t, 0.05))
    assert tracker.state == ObjectiveState.MET
    t += 1
    assert tracker.add(_latency(t, 2.0)) is None  # one slow sample
    for _ in range(60):
        t += 1
        tracker.add(_latency(t, 0.05))
    assert tracker.state == ObjectiveState.MET
    step = t
    fired = None
    while fired is None and t < step + 300:
        t += 1
        change = tracker.add(_latency(t, 0.5))
        if change is not None and change.violation is not None:
            fired = change
    assert fired is not None
    assert fired.violation is not None
    assert step < fired.at <= step + 10  # a real breach is seen in seconds, not a window
    assert fired.violation.severity == "critical"
    assert fired.violation.since > step
    cleared = None
    while cleared is None and t < step + 1000:
        t += 1
        change = tracker.add(_latency(t, 0.05))
        if change is not None and change.new == ObjectiveState.MET:
            cleared = change.at
    assert cleared is not None


def test_undetermined_until_enough_samples() -> None:
    tracker = tracker_for(P99, "l1")
    tracker.add(_latency(T0, 0.01))
    assert tracker.state == ObjectiveState.UNDETERMINED
    tracker.add(_latency(T0 + 1, 0.01))
    tracker.add(_latency(T0 + 2, 0.01))
    assert tracker.state == ObjectiveState.MET


def test_availability_burn_rate_and_error_rate_from_availability() -> None:
    avail = tracker_for(Objective(sli="availability", op=">=", target="99%", window="10m"), "l")
    errors = tracker_for(Objective(sli="error_rate", op="<=", target="1%", window="10m"), "l")
    t = T0
    seen: dict[str, list[tuple[float, str]]] = {"availability": [], "error_rate": []}
    for i in range(600):
        t += 1
        sample = Sample(sli="availability", value=0.0 if 300 <= i < 310 else 1.0, at=t)
        for tracker in (avail, errors):
            assert tracker.accepts(sample)
            change = tracker.add(sample)
            if change is not None:
                seen[tracker.objective.sli].append((change.at - T0, change.new.value))
    for changes in seen.values():  # an outage of 10 s: fired during it, cleared after it
        assert [state for _, state in changes] == ["met", "violated", "met"]
        assert 301 <= changes[1][0] <= 311
    assert avail.value(t) == pytest.approx(590 / 600)
    assert errors.value(t) == pytest.approx(10 / 600)


def test_throughput_gauge_with_units() -> None:
    objective = Objective(sli="throughput", op=">=", target="500 tokens/s", window="2m")
    tracker = tracker_for(objective, "l")
    assert isinstance(tracker, GaugeTracker)
    assert not tracker.accepts(Sample(sli="throughput", value=1, at=T0, labels={"unit": "req"}))
    t = T0
    for _ in range(120):
        t += 1
        tracker.add(Sample(sli="throughput", value=600, at=t, labels={"unit": "tokens"}))
    assert tracker.state == ObjectiveState.MET
    step = t
    while tracker.state != ObjectiveState.VIOLATED and t < step + 1000:  # bounded: a bug fails
        t += 1
        tracker.add(Sample(sli="throughput", value=300, at=t))
    assert tracker.state == ObjectiveState.VIOLATED
    # the mean over 2 minutes crosses 500/s once a third of the window is slow
    assert step + 30 <= t <= step + 120


def test_percentile_forms() -> None:
    p999 = tracker_for(Objective(sli="latency_p999", op="<=", target="1s"), "l")
    assert isinstance(p999, EventTracker)
    assert p999.budget == pytest.approx(0.001)
    mean = tracker_for(Objective(sli="ttft_mean", op="<=", target="1s"), "l")
    assert isinstance(mean, GaugeTracker)
    assert mean.sli == "ttft"
