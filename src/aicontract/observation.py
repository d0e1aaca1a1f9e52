"""What is observed about a lease: SLI samples, provider faults, objective states, violations.

Both the lease and the monitor speak these words, so they live here, below
both: the lease delivers violations without importing the monitor.
"""

from __future__ import annotations

import enum
import math
from typing import Literal

import msgspec

from .contract import Objective
from .errors import ContractError
from .units import Duration, Rate, Ratio

__all__ = [
    "Fault",
    "ObjectiveState",
    "Observation",
    "Sample",
    "Severity",
    "Violation",
    "figure_problem",
    "format_as",
    "format_sample",
    "format_seconds",
    "format_value",
    "objective_key",
    "reported_figures",
]


# The SLIs objectives read: none of them can be negative (a time, a rate, a fraction).
_NON_NEGATIVE = frozenset(
    {
        "latency",
        "ttft",
        "tpot",
        "throughput",
        "availability",
        "error_rate",
        "gpu_utilization",
        "gpu_memory_utilization",
    }
)


def figure_problem(sli: str, value: float) -> str | None:
    """Why ``value`` cannot be a sample of ``sli`` (``None``: it can).

    NaN and infinities are never measurements (a division by a zero elapsed time, a
    driver's NaN); the SLIs objectives read are never negative either.
    """
    if not math.isfinite(value):
        return "is not a finite number"
    if value < 0 and sli in _NON_NEGATIVE:
        return f"is negative, and {sli} never is"
    return None


def reported_figures(
    sli: str | None, value: float | None, values: dict[str, float]
) -> dict[str, float]:
    """The figures a ``report(sli, value, **values)`` call names, as floats.

    Both report calls (:meth:`Lease.report <aicontract.leases.Lease.report>` and
    :func:`aicontract.report`) read their arguments here, so they refuse the same mistakes.
    """
    if sli is not None:
        if value is None:
            raise TypeError("report(sli, value): give a value")
        values = {sli: value, **values}
    if not values:
        raise TypeError("report() needs at least one figure, e.g. report(throughput=512)")
    figures = {name: float(figure) for name, figure in values.items()}
    for name, figure in figures.items():
        problem = figure_problem(name, figure)
        if problem is not None:
            raise ContractError(
                f"report({name}={figure!r}): the figure {problem}",
                path=f"$.{name}",
                value=figure,
                allowed="a finite number" + (", at least 0" if name in _NON_NEGATIVE else ""),
            )
    return figures


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One timestamped measurement of an SLI (``gpu_utilization``, ``latency``...).

    ``value`` is in base units: seconds for latencies, events per second for
    rates, a fraction of one for ratios, bytes for memory.
    """

    sli: str
    value: float
    at: float
    source: str = "backend"
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """A provider fault that breaks the lease at once (not SLO burn).

    ``kind`` is one of ``holder-lost``, ``workload-exited``, ``node-lost``,
    ``device-error``, ``capacity-revoked``, ``preempted``.
    """

    kind: str
    reason: str
    at: float


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``observe`` call saw.

    ``workload`` is the state of what runs on the lease (``not-ready``, ``ready``,
    ``completed``) when the backend can see it, else ``None``.
    """

    samples: tuple[Sample, ...] = ()
    faults: tuple[Fault, ...] = ()
    workload: str | None = None


Severity = Literal["warning", "critical", "fatal"]
"""``warning``: the budget is spent over the window; ``critical``: it burns fast;
``fatal``: the lease itself is broken (a provider fault)."""


class ObjectiveState(str, enum.Enum):
    """Where one objective stands, apart from its lease's state."""

    UNDETERMINED = "undetermined"
    MET = "met"
    VIOLATED = "violated"


class Violation(msgspec.Struct, frozen=True, kw_only=True):
    """An objective not met over its window — or, with ``objective=None``, a broken lease.

    ``observed`` is the SLI's value over ``window`` seconds in base units
    (seconds, events per second, a fraction of one); ``since`` is when the run
    of bad samples that led here began; ``at`` when it was detected.
    ``burn_rate`` is how many times faster than allowed the error budget burns
    (event objectives only).
    """

    lease_id: str
    objective: Objective | None
    observed: float | None
    window: float
    since: float
    at: float
    severity: Severity
    burn_rate: float | None = None
    reason: str = ""

    @property
    def key(self) -> str:
        """The objective's key (``latency_p99<=200ms/5m``), or ``lease`` for a broken lease."""
        return "lease" if self.objective is None else objective_key(self.objective)

    def describe(self) -> str:
        """One line for logs and tables."""
        if self.objective is None:
            broken = " broken" if self.severity == "fatal" else ""
            return f"lease {self.lease_id}{broken}: {self.reason}"
        obj = self.objective
        value = "no data" if self.observed is None else format_value(obj, self.observed)
        burn = f", budget burning {self.burn_rate:.1f}x" if self.burn_rate is not None else ""
        return (
            f"lease {self.lease_id}: {obj.sli} {obj.op} {obj.target} violated"
            f" ({self.severity}): {value} over {format_seconds(self.window)}{burn}"
        )


def objective_key(objective: Objective) -> str:
    """A short stable name for an objective: ``latency_p99<=200ms/5m``."""
    return f"{objective.sli}{objective.op}{objective.target}/{objective.window}"


def format_seconds(seconds: float) -> str:
    """A span of time for people, written as a :class:`~aicontract.units.Duration` is.

    Rounded to three significant figures first, so 0.41666 s reads ``417ms``
    rather than ``416666667ns``, and 90 s reads ``90s``; whole spans use the
    largest unit that divides them (``5m``, ``1h``).
    """
    if seconds <= 0:
        return "0s"
    seconds = float(f"{seconds:.3g}")  # first round, then pick the unit: 0.9999 is 1s
    if seconds >= 100:
        return _whole(round(seconds))
    for unit, size in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if seconds >= size or unit == "ns":
            shown = float(f"{seconds / size:.3g}")
            if unit == "s" and shown >= 60 and shown.is_integer():
                return _whole(int(shown))
            return f"{shown:g}{unit}"
    return f"{seconds:.3g}s"  # pragma: no cover - the loop always returns


def _whole(seconds: int) -> str:
    # Duration's own form for a whole number of seconds: the largest unit that divides it.
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def format_value(objective: Objective, value: float) -> str:
    """``value`` (in base units) written in the unit of the objective's target."""
    return format_as(objective.target, value)


_SECONDS_WORDS = ("latency", "duration", "seconds", "time", "ttft", "tpot", "delay", "wait")
_RATIO_WORDS = ("utilization", "utilisation", "availability", "ratio", "error_rate", "fraction")
_RATE_WORDS = ("throughput", "per_second", "qps", "rps")


def format_sample(sli: str, value: float, labels: dict[str, str] | None = None) -> str:
    """A sample's ``value`` (base units) for people, its unit read from its name and labels.

    ``latency`` and other times print as durations (``2.11ms``), utilisations
    and availability as percentages, rates (a ``unit`` label or a
    throughput-like name) per second; anything else as a plain number.
    """
    name = sli.lower()
    unit = (labels or {}).get("unit")
    if unit is not None or any(word in name for word in _RATE_WORDS):
        return f"{value:.4g}{f' {unit}' if unit else ''}/s"
    if any(word in name for word in _SECONDS_WORDS):
        return format_seconds(value)
    if any(word in name for word in _RATIO_WORDS):
        return f"{value * 100:.3g}%"
    return f"{value:.4g}"


def format_as(target: object, value: float) -> str:
    """``value`` (in base units) written in the unit of ``target``'s kind."""
    if isinstance(target, Duration):
        return format_seconds(value)
    if isinstance(target, Ratio):
        return f"{value * 100:.3g}%"
    if isinstance(target, Rate):
        unit = f" {target.unit}" if target.unit else ""
        return f"{value:.4g}{unit}/s"
    return f"{value:.4g}"
