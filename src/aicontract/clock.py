"""One clock for all timing, so tests can run in virtual time.

Everything that reads the time or sleeps (lease expiry, heartbeats, objective
windows, probe intervals, negotiation deadlines) asks a :class:`Clock`. The
default is the system's; tests pass a :class:`VirtualClock` and advance it.
"""

from __future__ import annotations

import math
import time

import anyio
import attrs

__all__ = ["Clock", "SystemClock", "VirtualClock", "system_clock"]


class Clock:
    """Wall time (for expiry stamps others read) and monotonic time (for intervals)."""

    def time(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Sleep for ``seconds`` (cancellable)."""
        await anyio.sleep(seconds)


class SystemClock(Clock):
    """The real clock."""


system_clock = SystemClock()


@attrs.define
class VirtualClock(Clock):
    """A clock that moves only when told to; sleepers wake as it passes their deadline."""

    now: float = 1_000_000.0
    _sleepers: list[tuple[float, anyio.Event]] = attrs.field(factory=list)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0 or math.isnan(seconds):
            await anyio.lowlevel.checkpoint()
            return
        event = anyio.Event()
        entry = (self.now + seconds, event)
        self._sleepers.append(entry)
        try:
            await event.wait()
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    async def advance(self, seconds: float, *, step: float | None = None) -> None:
        """Move time forward, waking sleepers in order and letting them run."""
        target = self.now + seconds
        step = step or seconds
        while self.now < target:
            self.now = min(target, self.now + step)
            for deadline, event in sorted(self._sleepers, key=lambda e: e[0]):
                if deadline <= self.now:
                    event.set()
            for _ in range(10):  # let woken tasks run and schedule their next sleep
                await anyio.lowlevel.checkpoint()
