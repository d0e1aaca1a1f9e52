"""Streaming estimators for SLIs over sliding time windows, in constant memory.

Every estimator here divides its span (an objective's window) into a fixed
ring of time slots; a sample lands in the slot of its timestamp, and a slot
is cleared and reused when time moves past it. A window of ``k`` slots is the
``k`` most recent ones, the current (partly filled) slot included, so windows
are accurate to one slot. Nothing grows with the number of samples:

* :class:`SlidingSums` — two running sums per window (``bad``/``total`` events
  for availability-style SLIs, ``sum``/``count`` for gauges), updated in
  O(number of windows) per sample, plus per-slot extremes on request.
* :class:`SlidingSketch` — a log-linear histogram per slot (the DDSketch
  mapping: relative accuracy 1 %, a bounded set of buckets) for windowed
  percentiles of latencies.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable

__all__ = ["SKETCH_ACCURACY", "SlidingSketch", "SlidingSums", "bucket_of", "bucket_value"]

SKETCH_ACCURACY = 0.01
"""Relative accuracy of :class:`SlidingSketch` percentiles (1 %)."""

_GAMMA = (1 + SKETCH_ACCURACY) / (1 - SKETCH_ACCURACY)
_LOG_GAMMA = math.log(_GAMMA)
_MIN_VALUE = 1e-9  # below this a value counts as zero (1 ns, 1e-9 of anything)
_MAX_VALUE = 1e9  # above this a value is clamped (31 years, a billion per second)
_ZERO = -(2**31)  # the bucket of zero and of values below _MIN_VALUE
_MAX_KEY = math.ceil(math.log(_MAX_VALUE) / _LOG_GAMMA)


def bucket_of(value: float) -> int:
    """The histogram bucket of ``value`` (bounded: at most ~2,100 distinct buckets)."""
    if not value > _MIN_VALUE:  # also catches NaN
        return _ZERO
    if value >= _MAX_VALUE:
        return _MAX_KEY
    return math.ceil(math.log(value) / _LOG_GAMMA)


def bucket_value(key: int) -> float:
    """The representative value of bucket ``key`` (within 1 % of every value in it)."""
    if key == _ZERO:
        return 0.0
    return 2 * _GAMMA**key / (_GAMMA + 1)


def _slot_counts(span: float, slots: int, windows: Iterable[float]) -> tuple[float, list[int]]:
    if not span > 0 or slots < 1:
        raise ValueError(f"need a positive span and at least one slot, got {span}, {slots}")
    width = span / slots
    ks = {slots}
    for w in windows:
        ks.add(min(slots, max(1, math.ceil(w / width - 1e-9))))
    return width, sorted(ks)


class SlidingSums:
    """Two running sums (``a`` and ``b``) over sliding windows, in a fixed ring of slots.

    ``span`` is the longest window in seconds, cut into ``slots``; ``windows``
    are the other window lengths (seconds) to keep running sums for — each is
    rounded up to whole slots. With ``extremes`` the ring also keeps each
    slot's largest and smallest ``a`` (for ``max``/``min`` SLIs).
    """

    __slots__ = ("_a", "_b", "_hi", "_index", "_ks", "_lo", "_sa", "_sb", "head", "size", "width")

    def __init__(
        self, span: float, slots: int, windows: Iterable[float] = (), *, extremes: bool = False
    ) -> None:
        self.width, self._ks = _slot_counts(span, slots, windows)
        self.size = slots
        self._a = array("d", bytes(8 * slots))
        self._b = array("d", bytes(8 * slots))
        self._hi = array("d", [-math.inf] * slots) if extremes else None
        self._lo = array("d", [math.inf] * slots) if extremes else None
        self._sa = array("d", bytes(8 * len(self._ks)))
        self._sb = array("d", bytes(8 * len(self._ks)))
        self._index = {k: j for j, k in enumerate(self._ks)}
        self.head: int | None = None

    def slots_for(self, seconds: float) -> int:
        """How many slots a window of ``seconds`` covers (rounded up, at least one)."""
        return min(self.size, max(1, math.ceil(seconds / self.width - 1e-9)))

    def _advance(self, index: int) -> None:
        head = self.head
        if head is None or index - head >= self.size:
            self._reset(index)
            return
        a, b, sa, sb, size, ks = self._a, self._b, self._sa, self._sb, self.size, self._ks
        while head < index:
            head += 1
            for j, k in enumerate(ks):
                leaving = (head - k) % size
                sa[j] -= a[leaving]
                sb[j] -= b[leaving]
            pos = head % size
            a[pos] = b[pos] = 0.0
            if self._hi is not None and self._lo is not None:
                self._hi[pos], self._lo[pos] = -math.inf, math.inf
            if pos == 0:  # once per lap, drop the rounding error the running sums gathered
                self.head = head
                self._recompute()
        self.head = head

    def _reset(self, index: int) -> None:
        for arr in (self._a, self._b, self._sa, self._sb):
            for i in range(len(arr)):
                arr[i] = 0.0
        if self._hi is not None and self._lo is not None:
            for i in range(self.size):
                self._hi[i], self._lo[i] = -math.inf, math.inf
        self.head = index

    def _recompute(self) -> None:
        assert self.head is not None
        for j, k in enumerate(self._ks):
            positions = [(self.head - i) % self.size for i in range(k)]
            self._sa[j] = math.fsum(self._a[p] for p in positions)
            self._sb[j] = math.fsum(self._b[p] for p in positions)

    def add(self, at: float, a: float, b: float = 1.0) -> bool:
        """Add ``a`` and ``b`` to the slot of time ``at``; False if ``at`` is past the span."""
        index = math.floor(at / self.width)
        head = self.head
        if head is None or index > head:
            self._advance(index)
            head = index
        age = head - index
        if age >= self.size:
            return False
        pos = index % self.size
        self._a[pos] += a
        self._b[pos] += b
        for j, k in enumerate(self._ks):
            if age < k:
                self._sa[j] += a
                self._sb[j] += b
        if self._hi is not None and self._lo is not None:
            if a > self._hi[pos]:
                self._hi[pos] = a
            if a < self._lo[pos]:
                self._lo[pos] = a
        return True

    def sums(self, k: int, now: float) -> tuple[float, float]:
        """``(a, b)`` summed over the last ``k`` slots as of ``now``."""
        self._advance_to(now)
        if self.head is None:
            return 0.0, 0.0
        j = self._index.get(k)
        if j is not None:
            return max(0.0, self._sa[j]), max(0.0, self._sb[j])
        positions = [(self.head - i) % self.size for i in range(min(k, self.size))]
        return sum(self._a[p] for p in positions), sum(self._b[p] for p in positions)

    def extreme(self, k: int, now: float, *, largest: bool = True) -> float | None:
        """The largest (or smallest) ``a`` added in the last ``k`` slots, or None."""
        if self._hi is None or self._lo is None:
            raise ValueError("this window was built without extremes")
        self._advance_to(now)
        if self.head is None:
            return None
        positions = [(self.head - i) % self.size for i in range(min(k, self.size))]
        if largest:
            hi = max(self._hi[p] for p in positions)
            return None if hi == -math.inf else hi
        lo = min(self._lo[p] for p in positions)
        return None if lo == math.inf else lo

    def _advance_to(self, now: float) -> None:
        index = math.floor(now / self.width)
        if self.head is not None and index > self.head:
            self._advance(index)


class SlidingSketch:
    """Windowed percentiles: a sparse log-linear histogram per time slot.

    Each slot maps a bucket (see :func:`bucket_of`) to a count, so a slot holds
    at most ~2,100 entries whatever the number of samples, and typically a few
    dozen. A percentile merges the last ``k`` slots.
    """

    __slots__ = ("_counts", "head", "size", "width")

    def __init__(self, span: float, slots: int = 12) -> None:
        self.width, _ = _slot_counts(span, slots, ())
        self.size = slots
        self._counts: list[dict[int, int]] = [{} for _ in range(slots)]
        self.head: int | None = None

    def slots_for(self, seconds: float) -> int:
        """How many slots a window of ``seconds`` covers (rounded up, at least one)."""
        return min(self.size, max(1, math.ceil(seconds / self.width - 1e-9)))

    def _advance_to(self, index: int) -> None:
        head = self.head
        if head is None or index - head >= self.size:
            for counts in self._counts:
                counts.clear()
            self.head = index
            return
        while head < index:
            head += 1
            self._counts[head % self.size].clear()
        self.head = head

    def add(self, at: float, value: float) -> bool:
        """Count ``value`` in the slot of time ``at``; False if ``at`` is older than the span."""
        index = math.floor(at / self.width)
        if self.head is None or index > self.head:
            self._advance_to(index)
        assert self.head is not None
        if self.head - index >= self.size:
            return False
        counts = self._counts[index % self.size]
        key = bucket_of(value)
        counts[key] = counts.get(key, 0) + 1
        return True

    def count(self, k: int, now: float) -> int:
        """How many values the last ``k`` slots hold."""
        return sum(sum(c.values()) for c in self._window(k, now))

    def quantile(self, q: float, k: int, now: float) -> float | None:
        """The ``q`` quantile (0..1) of the last ``k`` slots, or None when they are empty."""
        merged: dict[int, int] = {}
        for counts in self._window(k, now):
            for key, n in counts.items():
                merged[key] = merged.get(key, 0) + n
        total = sum(merged.values())
        if not total:
            return None
        # nearest rank: the smallest value that at least a fraction q of the values do not exceed
        rank = max(1, math.ceil(min(max(q, 0.0), 1.0) * total - 1e-9))
        seen = 0
        for key in sorted(merged):
            seen += merged[key]
            if seen >= rank:
                return bucket_value(key)
        return bucket_value(max(merged))  # pragma: no cover - rank < total always stops above

    def _window(self, k: int, now: float) -> list[dict[int, int]]:
        index = math.floor(now / self.width)
        if self.head is None:
            return []
        if index > self.head:
            self._advance_to(index)
        assert self.head is not None
        return [self._counts[(self.head - i) % self.size] for i in range(min(k, self.size))]
