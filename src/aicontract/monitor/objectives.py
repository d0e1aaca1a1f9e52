"""Objectives evaluated over sliding windows: state machines, burn rates, violations.

Each :class:`~aicontract.contract.Objective` gets a tracker with its own state
(``undetermined → met ⇄ violated``), apart from its lease's state.

* **Event objectives** — ``availability``, ``error_rate`` and latency
  percentiles (``latency_p99 <= 200ms`` reads "99 % of requests take at most
  200 ms"): every sample is an event that is good or bad, and the objective
  leaves ``1 - target`` (or ``1 - q``) of events as its error budget. State
  follows multi-window burn-rate alerting (the SRE workbook's pairs, scaled so
  its longest window is the objective's window): a pair fires when the budget
  burns at least ``factor`` times too fast over both its long and its short
  window. The short window makes a real breach fire fast and clear fast; at
  least ``min_bad`` bad events in the long window keep one slow sample from
  firing. The observed value is the windowed percentile (or ratio).
* **Gauge objectives** — ``throughput``, ``gpu_utilization``,
  ``gpu_memory_utilization``, ``latency_mean``/``latency_max``: the mean (or
  max) over the window breaches the target, confirmed by the last twelfth of
  the window.

Memory per tracker is fixed (see :mod:`aicontract.monitor.sli`).
"""

from __future__ import annotations

import functools
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

import attrs

from ..contract import Objective, percentile_of

# ObjectiveState, Violation and their formatting live in aicontract.observation (the
# lease needs them without importing the monitor); re-exported here for old imports.
from ..observation import (
    ObjectiveState,
    Sample,
    Severity,
    Violation,
    format_value,
    objective_key,
)
from ..units import Duration, Rate, Ratio
from .sli import SlidingSketch, SlidingSums

__all__ = [
    "DEFAULT_PAIRS",
    "BurnPair",
    "Change",
    "EventTracker",
    "GaugeTracker",
    "ObjectiveState",
    "Severity",
    "Tracker",
    "Violation",
    "format_value",
    "objective_key",
    "sample_sli",
    "tracker_for",
]


@attrs.frozen
class BurnPair:
    """A multi-window burn-rate rule: fire when both windows burn ``factor`` x too fast.

    Windows are fractions of the objective's window.
    """

    long: float
    short: float
    factor: float
    severity: Severity


DEFAULT_PAIRS: tuple[BurnPair, ...] = (
    # The SRE workbook's pairs for a 30-day budget (1h/5m at 14.4x, 6h/30m at 6x,
    # 3d/6h at 1x), scaled so that the longest window (3d) is the objective's window.
    BurnPair(long=1 / 72, short=1 / 864, factor=14.4, severity="critical"),
    BurnPair(long=1 / 12, short=1 / 144, factor=6.0, severity="critical"),
    BurnPair(long=1.0, short=1 / 12, factor=1.0, severity="warning"),
)
"""Default burn-rate pairs, fastest first."""


@attrs.frozen
class Change:
    """A tracker's state change, with the violation it raised (when it became violated)."""

    old: ObjectiveState
    new: ObjectiveState
    at: float
    violation: Violation | None = None


_PERCENTILE = re.compile(r"^(?P<base>[a-z]+)_p(?P<q>\d{1,5}(\.\d+)?)$")
_STAT = re.compile(r"^(?P<base>[a-z]+)_(?P<stat>mean|max)$")


def sample_sli(objective_sli: str) -> str:
    """The sample SLI an objective reads: ``latency_p99`` reads ``latency`` samples."""
    match = _PERCENTILE.match(objective_sli) or _STAT.match(objective_sli)
    return match["base"] if match else objective_sli


def target_value(objective: Objective) -> float:
    """The objective's target in base units (seconds, per second, fraction)."""
    target = objective.target
    if isinstance(target, Duration):
        return target.seconds
    if isinstance(target, Rate):
        return target.per_second
    if isinstance(target, Ratio):
        return target.fraction
    raise TypeError(f"unsupported target {target!r}")  # pragma: no cover - validated by Objective


def _compare(op: str) -> Callable[[float, float], bool]:
    return {
        "<=": lambda v, t: v <= t,
        "<": lambda v, t: v < t,
        ">=": lambda v, t: v >= t,
        ">": lambda v, t: v > t,
    }[op]


@attrs.define(eq=False)
class Tracker(ABC):
    """One objective's state over its window. Feed it samples; it says when its state changes."""

    objective: Objective
    lease_id: str
    state: ObjectiveState = ObjectiveState.UNDETERMINED
    changed_at: float | None = None
    violation: Violation | None = None
    min_events: int = 3
    also: dict[str, Callable[[float], float]] = attrs.field(factory=dict)
    _onset: float | None = attrs.field(default=None, init=False)
    _last_at: float = attrs.field(default=-math.inf, init=False)

    @functools.cached_property
    def key(self) -> str:
        """The objective's key (computed once: snapshots read it for every lease)."""
        return objective_key(self.objective)

    @functools.cached_property
    def sli(self) -> str:
        """The sample SLI this tracker reads (computed once: every sample asks)."""
        return sample_sli(self.objective.sli)

    @functools.cached_property
    def window(self) -> float:
        """The objective's window in seconds."""
        return self.objective.window.seconds

    @property
    def feeds(self) -> tuple[str, ...]:
        """Every sample SLI this tracker reads (``error_rate`` also reads ``availability``)."""
        return (self.sli, *self.also)

    def accepts(self, sample: Sample) -> bool:
        """True when ``sample`` feeds this objective (same SLI, compatible unit)."""
        if sample.sli != self.sli and sample.sli not in self.also:
            return False
        target = self.objective.target
        unit = sample.labels.get("unit", "")
        return not (isinstance(target, Rate) and unit and target.unit and unit != target.unit)

    def add(self, sample: Sample) -> Change | None:
        """Count ``sample``, re-evaluate, and return the state change if there is one."""
        convert = self.also.get(sample.sli)
        at = sample.at
        bad = self._count(at, sample.value if convert is None else convert(sample.value))
        self._last_at = max(self._last_at, at)
        if bad and self._onset is None:
            self._onset = at
        elif not bad and self.state != ObjectiveState.VIOLATED:
            self._onset = None
            if self.state == ObjectiveState.MET:
                return None  # a good sample cannot start a violation: skip the evaluation
        return self._evaluate(self._last_at)

    def _move(self, new: ObjectiveState, now: float, violation: Violation | None) -> Change | None:
        old = self.state
        if new == old:
            if (
                violation is not None
                and self.violation is not None
                and (_RANK[violation.severity] > _RANK[self.violation.severity])
            ):
                self.violation = violation  # escalate: report again at the higher severity
                return Change(old, new, now, violation)
            return None
        self.state, self.changed_at = new, now
        self.violation = violation if new == ObjectiveState.VIOLATED else None
        if new != ObjectiveState.VIOLATED:
            self._onset = None
        return Change(old, new, now, violation)

    def _violation(
        self,
        now: float,
        observed: float | None,
        window: float,
        severity: Severity,
        burn: float | None,
    ) -> Violation:
        return Violation(
            lease_id=self.lease_id,
            objective=self.objective,
            observed=observed,
            window=window,
            since=self._onset if self._onset is not None else now,
            at=now,
            severity=severity,
            burn_rate=burn,
        )

    @abstractmethod
    def _count(self, at: float, value: float) -> bool:
        """Add a sample's value to the windows; True when it is a bad one."""

    @abstractmethod
    def _evaluate(self, now: float) -> Change | None:
        """Decide the state as of ``now``."""

    @abstractmethod
    def value(self, now: float, window: float | None = None) -> float | None:
        """The SLI over ``window`` seconds (default: the objective's window), or None."""

    @abstractmethod
    def count(self, now: float) -> int:
        """How many samples the objective's window holds."""


_RANK: dict[str, int] = {"warning": 0, "critical": 1, "fatal": 2}


@attrs.define(eq=False)
class EventTracker(Tracker):
    """Availability-style objectives: good and bad events, an error budget, burn-rate pairs.

    ``bad_of(value)`` says how bad one sample is (0 good, 1 bad, or a fraction
    for samples that are ratios already); ``budget`` is the fraction of bad
    events the objective allows. ``quantile`` (latency percentiles) makes the
    observed value a windowed percentile from a sketch.
    """

    budget: float = 0.0
    bad_of: Callable[[float], float] = attrs.field(default=lambda v: 1.0 - v)
    quantile: float | None = None
    pairs: Sequence[BurnPair] = DEFAULT_PAIRS
    min_bad: float = 2.0
    slots: int = 72
    _events: SlidingSums = attrs.field(init=False)
    _sketch: SlidingSketch | None = attrs.field(default=None, init=False)
    _ks: list[tuple[int, int, BurnPair]] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        w = self.window
        windows = [p.long * w for p in self.pairs] + [p.short * w for p in self.pairs]
        self._events = SlidingSums(w, self.slots, windows)
        self._ks = [
            (self._events.slots_for(p.long * w), self._events.slots_for(p.short * w), p)
            for p in self.pairs
        ]
        if self.quantile is not None:
            self._sketch = SlidingSketch(w, 12)

    def _count(self, at: float, value: float) -> bool:
        bad = min(1.0, max(0.0, self.bad_of(value)))
        self._events.add(at, bad, 1.0)
        if self._sketch is not None:
            self._sketch.add(at, value)
        return bad > 0

    def burn_rate(self, k: int, now: float) -> tuple[float, float, float]:
        """``(burn, bad, total)`` over the last ``k`` slots."""
        bad, total = self._events.sums(k, now)
        if total <= 0:
            return 0.0, bad, total
        ratio = bad / total
        if self.budget <= 0:
            return (math.inf if bad > 1e-9 else 0.0), bad, total
        return ratio / self.budget, bad, total

    def _evaluate(self, now: float) -> Change | None:
        for k_long, k_short, pair in self._ks:
            burn_long, bad_long, total_long = self.burn_rate(k_long, now)
            if total_long <= 0 or bad_long < self.min_bad - 1e-9 or burn_long < pair.factor:
                continue
            burn_short, _, total_short = self.burn_rate(k_short, now)
            if total_short <= 0 or burn_short < pair.factor:
                continue
            seconds = k_long * self._events.width
            observed = self.value(now, seconds)
            violation = self._violation(now, observed, seconds, pair.severity, burn_long)
            return self._move(ObjectiveState.VIOLATED, now, violation)
        if self.state == ObjectiveState.VIOLATED:
            # Clear only on evidence: the short windows must hold events, all within budget.
            _, _, total_short = self.burn_rate(self._ks[-1][1], now)
            if total_short <= 0:
                return None
        elif self.state == ObjectiveState.UNDETERMINED and self.count(now) < self.min_events:
            return None
        return self._move(ObjectiveState.MET, now, None)

    def value(self, now: float, window: float | None = None) -> float | None:
        """The percentile (latency) or the good fraction (availability) over ``window``."""
        seconds = self.window if window is None else window
        if self._sketch is not None and self.quantile is not None:
            return self._sketch.quantile(self.quantile, self._sketch.slots_for(seconds), now)
        bad, total = self._events.sums(self._events.slots_for(seconds), now)
        if total <= 0:
            return None
        return bad / total if self.objective.sli == "error_rate" else 1.0 - bad / total

    def count(self, now: float) -> int:
        """How many events the objective's window holds."""
        return round(self._events.sums(self._events.size, now)[1])


@attrs.define(eq=False)
class GaugeTracker(Tracker):
    """Gauge objectives: the mean (or max) over the window against the target.

    A breach over the whole window must be confirmed by the last
    ``1/confirm`` of it, so an objective clears as soon as the recent values
    are back within target.
    """

    stat: Literal["mean", "max"] = "mean"
    confirm: int = 12
    _sums: SlidingSums = attrs.field(init=False)
    _ok: Callable[[float, float], bool] = attrs.field(init=False)
    _target: float = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._sums = SlidingSums(self.window, self.confirm, extremes=self.stat == "max")
        self._ok = _compare(self.objective.op)
        self._target = target_value(self.objective)

    def _count(self, at: float, value: float) -> bool:
        self._sums.add(at, value, 1.0)
        return not self._ok(value, self._target)

    def value(self, now: float, window: float | None = None) -> float | None:
        """The mean (or max) over ``window`` seconds."""
        k = self._sums.slots_for(self.window if window is None else window)
        if self.stat == "max":
            return self._sums.extreme(k, now)
        total, count = self._sums.sums(k, now)
        return total / count if count > 0 else None

    def count(self, now: float) -> int:
        """How many samples the objective's window holds."""
        return round(self._sums.sums(self._sums.size, now)[1])

    def _evaluate(self, now: float) -> Change | None:
        if self.count(now) < self.min_events and self.state == ObjectiveState.UNDETERMINED:
            return None
        whole, recent = self.value(now), self.value(now, self._sums.width)
        if whole is None or recent is None:
            return None
        if not self._ok(whole, self._target) and not self._ok(recent, self._target):
            violation = self._violation(now, whole, self.window, "warning", None)
            return self._move(ObjectiveState.VIOLATED, now, violation)
        return self._move(ObjectiveState.MET, now, None)


def tracker_for(objective: Objective, lease_id: str, **options: Any) -> Tracker:
    """The right tracker for ``objective`` (see the module's description)."""
    sli, op = objective.sli, objective.op
    target = target_value(objective)
    pct = _PERCENTILE.match(sli)
    if pct is not None:
        q = (percentile_of(f"p{pct['q']}") or 99.0) / 100  # validated by the contract
        ok = _compare(op)
        budget = 1.0 - q if op in ("<=", "<") else q
        return EventTracker(
            objective,
            lease_id,
            budget=budget,
            quantile=q,
            bad_of=lambda v: 0.0 if ok(v, target) else 1.0,
            **options,
        )
    if sli == "availability" and op in (">=", ">"):
        return EventTracker(
            objective, lease_id, budget=1.0 - target, bad_of=lambda v: 1.0 - v, **options
        )
    if sli == "error_rate" and op in ("<=", "<"):
        return EventTracker(
            objective,
            lease_id,
            budget=target,
            bad_of=lambda v: v,
            also={"availability": lambda v: 1.0 - v},
            **options,
        )
    stat = _STAT.match(sli)
    return GaugeTracker(
        objective, lease_id, stat="max" if stat and stat["stat"] == "max" else "mean", **options
    )
