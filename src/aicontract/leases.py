"""Leases: committed offers with endpoints, env, expiry and a state machine.

A lease's own state is kept apart from its workload's and its objectives'
(see the design): it can be ``active`` while an objective is violated.

    pending ─▶ active ⇄ renewing
                 │
                 ├─▶ released   (the holder let go)
                 ├─▶ expired    (not renewed in time)
                 ├─▶ revoked    (the provider took it back: node lost, preempted, device error)
                 └─▶ failed     (the backend could not keep it: a renewal was refused)
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.abc
import attrs
import msgspec

from .clock import Clock, system_clock
from .contract import Contract, GuaranteeLevel, encode_quantity
from .errors import LeaseLost, LeaseStateError, TransientBackendError
from .observation import ObjectiveState, Sample, Violation, reported_figures
from .offer import Grant
from .units import Duration
from .world import World

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectSendStream

    from .backends.base import Backend

__all__ = ["Lease", "LeaseObserver", "LeaseRecord", "LeaseState", "WorkloadState"]

log = logging.getLogger("aicontract.lease")


class LeaseState(str, enum.Enum):
    """Where a lease is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    RENEWING = "renewing"
    RELEASED = "released"
    EXPIRED = "expired"
    REVOKED = "revoked"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True for the states a lease never leaves."""
        return self in _FINAL


class WorkloadState(str, enum.Enum):
    """Where the work running on a lease is: its own machine, apart from the lease's.

    A lease can be active while its workload is still starting, and a batch job
    can complete while the lease is still held.
    """

    NOT_READY = "not-ready"
    READY = "ready"
    COMPLETED = "completed"


_FINAL = frozenset({LeaseState.RELEASED, LeaseState.EXPIRED, LeaseState.REVOKED, LeaseState.FAILED})
_ALLOWED: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.PENDING: frozenset({LeaseState.ACTIVE, LeaseState.FAILED, LeaseState.RELEASED}),
    LeaseState.ACTIVE: frozenset({LeaseState.RENEWING} | _FINAL),
    LeaseState.RENEWING: frozenset({LeaseState.ACTIVE} | _FINAL),
}


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as data: what the ledger stores, the CLI prints and other processes read."""

    id: str
    backend: str
    contract: Contract
    grant: Grant
    guarantee: GuaranteeLevel
    state: LeaseState
    created_at: float
    expires_at: float
    region: str = "local"
    jurisdiction: str | None = None
    endpoints: dict[str, str] = msgspec.field(default_factory=dict)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    holder_pid: int | None = None
    reason: str | None = None
    workload_state: str | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)
    world: World | None = None

    def to_json(self) -> bytes:
        """The record as JSON."""
        return msgspec.json.encode(self, enc_hook=encode_quantity)

    @classmethod
    def from_json(cls, data: bytes | str) -> LeaseRecord:
        """Read a record written by :meth:`to_json`."""
        from .contract import decode_quantity

        return msgspec.json.decode(data, type=cls, dec_hook=decode_quantity)


class LeaseObserver(Protocol):
    """What watches a lease — a monitor — through the lease's one public hook.

    :meth:`Lease.attach` it; the lease hands it every sample reported for it
    (:meth:`take`), and runs :meth:`hold` beside its own renewal loop for as
    long as a holder holds the lease (``async with lease``, the blocking face,
    the CLI). The lease renews itself; an observer never does.
    """

    def take(self, lease: Lease, sample: Sample) -> None:
        """Take one sample reported for ``lease`` (the lease now serving the holder)."""
        ...

    async def hold(
        self, lease: Lease, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Run the observer's own loops for ``lease`` while it is held; return when done.

        Call ``task_status.started()`` once ready (say, once a socket is bound):
        ``async with lease`` returns only after every observer has started.
        """
        ...


@attrs.define(eq=False)
class _SinkObserver:
    """A plain function as an observer (what :meth:`Lease.attach_sink` attaches)."""

    sink: Callable[[Sample], None]

    def take(self, lease: Lease, sample: Sample) -> None:
        self.sink(sample)

    async def hold(
        self, lease: Lease, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()


StateListener = Callable[["Lease", LeaseState, LeaseState], None]
ViolationListener = Callable[["Violation"], None]
ReplacementListener = Callable[["Lease", "Lease"], None]
ReplacementStarter = Callable[["Lease"], Awaitable[object]]


@attrs.define(eq=False)
class Lease:
    """Resources reserved for you: granted values, endpoints, env, expiry.

    Use it as ``async with lease:`` (or ``with`` through :func:`aicontract.lease`)
    to keep it renewed — and watched, when a monitor is attached — while the
    block runs, and released when it ends, with every lease that replaced it.
    A monitor attaches through :meth:`attach` (a :class:`LeaseObserver`); the
    lease renews itself (:meth:`keep_alive`).
    """

    id: str
    contract: Contract
    grant: Grant
    backend: Backend
    guarantee: GuaranteeLevel
    expires_at: float
    region: str = "local"
    jurisdiction: str | None = None
    endpoints: dict[str, str] = attrs.field(factory=dict)
    env: dict[str, str] = attrs.field(factory=dict)
    details: dict[str, str] = attrs.field(factory=dict)
    world: World | None = None
    """The training world (nodes, processes per node, rendezvous), when the backend grants one."""
    clock: Clock = attrs.field(default=system_clock, repr=False)
    created_at: float = attrs.field(default=0.0)
    state: LeaseState = LeaseState.ACTIVE
    reason: str | None = None
    _listeners: list[StateListener] = attrs.field(factory=list, repr=False)
    extension: float = 0.0
    """Seconds added to the contract's term by :meth:`extend`; a renegotiation's
    replacement carries what makes it end with its chain's term (less than 0 then)."""
    workload_state: WorkloadState | None = None
    """``None`` when nothing the backend started runs on the lease (you run the work)."""
    _holding: anyio.abc.TaskGroup | None = attrs.field(default=None, repr=False)
    _backend_released: bool = attrs.field(default=False, repr=False)
    replaced_by: Lease | None = attrs.field(default=None, repr=False)
    """The lease that took over from this one after a renegotiation (see :attr:`current`)."""
    objective_states: dict[str, ObjectiveState] = attrs.field(factory=dict, repr=False)
    """Each objective's state (``undetermined``/``met``/``violated``), kept by a monitor."""
    _observers: list[LeaseObserver] = attrs.field(factory=list, repr=False)
    _keeper: anyio.Event | None = attrs.field(default=None, repr=False)
    _holds: int = attrs.field(default=0, repr=False)
    _let_go: bool = attrs.field(default=False, repr=False)
    _violation_listeners: list[ViolationListener] = attrs.field(factory=list, repr=False)
    _violation_streams: list[MemoryObjectSendStream[Violation]] = attrs.field(
        factory=list, repr=False
    )
    _replacement_listeners: list[ReplacementListener] = attrs.field(factory=list, repr=False)
    _replacement_starters: list[ReplacementStarter] = attrs.field(factory=list, repr=False)
    _after_release: list[Callable[[], Awaitable[object]]] = attrs.field(factory=list, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.created_at:
            self.created_at = self.clock.time()

    # -- state ---------------------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> None:
        """Call ``listener(lease, old, new)`` on every state change."""
        self._listeners.append(listener)

    def transition(self, new: LeaseState, reason: str | None = None) -> None:
        """Move to ``new``; refuses moves the state machine does not allow."""
        old = self.state
        if new == old:
            return
        if new not in _ALLOWED.get(old, frozenset()):
            raise LeaseStateError(self.id, f"cannot go from {old.value} to {new.value}")
        self.state, self.reason = new, reason or self.reason
        if log.isEnabledFor(logging.INFO):  # the arguments cost more than the call
            why = f" ({reason})" if reason else ""
            log.info("lease %s: %s -> %s%s", self.id, old.value, new.value, why)
        for listener in list(self._listeners):
            listener(self, old, new)
        if new.is_final and self.replaced_by is None and not self._observers:
            # Ended for good. A watched lease may still be replaced (a revoked lease under
            # ``renegotiate``): its monitor ends the iterators when it knows (end_violations).
            self._close_violation_streams()

    def set_workload_state(self, new: WorkloadState | str) -> None:
        """Record the workload's state: not-ready ⇄ ready → completed.

        A ready workload may stop answering (a pod's readiness probe fails) and
        come back; a completed one never runs again.
        """
        state = WorkloadState(new)
        old = self.workload_state
        if old == WorkloadState.COMPLETED and state != old:
            raise LeaseStateError(
                self.id, f"the workload cannot go from {old.value} back to {state.value}"
            )
        if state != old:
            self.workload_state = state
            log.info("lease %s: workload %s", self.id, state.value)

    @property
    def is_active(self) -> bool:
        """True while the lease holds its resources (``active`` or ``renewing``)."""
        return self.state in (LeaseState.ACTIVE, LeaseState.RENEWING)

    @property
    def remaining(self) -> float:
        """Seconds until expiry (negative once past)."""
        return self.expires_at - self.clock.time()

    @property
    def ends_at(self) -> float | None:
        """When the contract's duration runs out (``None`` when it has none)."""
        duration = self.contract.terms.duration
        if duration is None:
            return None
        return self.created_at + duration.seconds + self.extension

    # -- operations ----------------------------------------------------------------------

    async def renew(self) -> None:
        """Extend the lease's expiry with its backend."""
        if not self.is_active:
            raise LeaseStateError(self.id, f"cannot renew a {self.state.value} lease")
        if self.remaining < 0:
            self.transition(LeaseState.EXPIRED, "expired before renewal")
            raise LeaseLost(self.id, "expired before it could be renewed")
        self.transition(LeaseState.RENEWING)
        try:
            self.expires_at = await self.backend.renew(self)
        except LeaseLost as exc:
            if self.is_active:
                self.transition(LeaseState.REVOKED, str(exc))
            raise
        except BaseException:
            if self.state == LeaseState.RENEWING:
                self.transition(LeaseState.ACTIVE)
            raise
        if self.state == LeaseState.RENEWING:
            self.transition(LeaseState.ACTIVE)

    async def release(self, *, successors: bool = True) -> None:
        """Give the resources back — this lease's and every replacement's. Safe to call twice.

        The handle you hold owns the whole renegotiation chain: releasing it
        releases every lease that replaced it, so no replacement outlives its
        holder. A revoked or expired lease is still released with its backend,
        so what it started (a local workload, a pod, an instance) does not
        outlive it. ``successors=False`` releases this lease alone (a monitor
        retiring a replaced lease does that).
        """
        if successors:
            self._let_go = True  # a renegotiation still under way must not switch to a new lease
        # Nothing may cut a release short: every wait below is shielded. A backend that
        # can release without waiting (the local one, uncontended) needs no shield for it:
        # nothing could interrupt it, and a shield costs more than that release's work.
        if not self._backend_released:
            if not self.backend.release_now(self):
                with anyio.CancelScope(shield=True):
                    await self.backend.release(self)
            self._backend_released = True
        if self._after_release or (successors and self.replaced_by is not None):
            with anyio.CancelScope(shield=True):
                if self._after_release:  # also those registered since (see on_released)
                    await self._after_released()
                if not self.state.is_final:
                    self.transition(LeaseState.RELEASED)
                if successors and self.replaced_by is not None:
                    await self.replaced_by.release()
        elif not self.state.is_final:
            self.transition(LeaseState.RELEASED)

    @property
    def released_by_holder(self) -> bool:
        """True once the holder released this lease's chain (no replacement may take over)."""
        return self._let_go

    def on_released(self, callback: Callable[[], Awaitable[object]]) -> None:
        """Await ``callback()`` once, after the backend has released this lease (or, when
        registered after that, at the next :meth:`release` call).

        :func:`aicontract.acquire` closes the backends it built this way.
        """
        self._after_release.append(callback)

    async def _after_released(self) -> None:
        callbacks, self._after_release = self._after_release, []
        for callback in callbacks:
            try:
                await callback()
            except Exception:
                log.exception("lease %s: an after-release callback failed", self.id)

    async def extend(self, by: Duration | str) -> None:
        """Lengthen the lease's term by ``by`` (the contract must be ``renewable``).

        Heartbeat renewals never carry a lease past its contract's duration;
        extending is how a holder asks for more time, and it is refused when
        the contract says ``renewable: false``.
        """
        terms = self.contract.terms
        if not terms.renewable:
            raise LeaseStateError(self.id, "the contract is not renewable (terms.renewable)")
        if terms.duration is None:
            raise LeaseStateError(self.id, "the contract has no duration to extend")
        if not self.is_active:
            raise LeaseStateError(self.id, f"cannot extend a {self.state.value} lease")
        self.extension += Duration(by).seconds if isinstance(by, str) else by.seconds
        await self.renew()

    def revoke(self, reason: str) -> None:
        """Mark the lease revoked by its provider (a node lost, a device fault)."""
        if self.is_active:
            self.transition(LeaseState.REVOKED, reason)

    def record(self) -> LeaseRecord:
        """The lease as a serialisable :class:`LeaseRecord`."""
        return LeaseRecord(
            id=self.id,
            backend=self.backend.name,
            contract=self.contract,
            grant=self.grant,
            guarantee=self.guarantee,
            state=self.state,
            created_at=self.created_at,
            expires_at=self.expires_at,
            region=self.region,
            jurisdiction=self.jurisdiction,
            endpoints=dict(self.endpoints),
            env=dict(self.env),
            holder_pid=os.getpid(),
            reason=self.reason,
            workload_state=self.workload_state.value if self.workload_state else None,
            details=dict(self.details),
            world=self.world,
        )

    # -- monitoring (see aicontract.monitor) -----------------------------------------------

    @property
    def current(self) -> Lease:
        """The lease now serving this one's holder: itself, or its latest replacement.

        After a make-before-break renegotiation, ``lease.current.endpoints`` are
        the endpoints to use; the switch is one assignment, made only once the
        replacement is active and before this lease is released.
        """
        lease = self
        while lease.replaced_by is not None:
            lease = lease.replaced_by
        return lease

    def attach(self, observer: LeaseObserver) -> None:
        """Let ``observer`` (a monitor) watch this lease: the one hook the monitor uses."""
        if observer not in self._observers:
            self._observers.append(observer)

    def detach(self, observer: LeaseObserver) -> None:
        """Stop ``observer`` watching this lease (no-op when it does not)."""
        if observer in self._observers:
            self._observers.remove(observer)

    @property
    def watched(self) -> bool:
        """True when a monitor watches the lease now serving the holder."""
        return bool(self.current._observers)

    def attach_sink(self, sink: Callable[[Sample], None] | None) -> None:
        """Send :meth:`report` and :meth:`measure` samples to ``sink`` (``None``: stop)."""
        self._observers = [o for o in self._observers if not isinstance(o, _SinkObserver)]
        if sink is not None:
            self._observers.append(_SinkObserver(sink))

    def report(
        self,
        sli: str | None = None,
        value: float | None = None,
        *,
        unit: str | None = None,
        labels: dict[str, str] | None = None,
        **values: float,
    ) -> None:
        """Report figures the program measured: ``lease.report(throughput=512, unit="tokens/s")``.

        Give one ``sli``/``value`` pair or SLIs as keywords. ``unit`` converts to
        base units: a rate (``"tokens/s"``, ``"req/min"``), a time (``"ms"``,
        ``"s"``) or ``"%"``; without it values are in base units (seconds,
        events per second, fractions). Samples go to the lease's monitor; on a
        live lease that no monitor watches this raises
        :class:`~aicontract.LeaseStateError` rather than dropping them (on an
        ended lease they are dropped: nothing is left to evaluate).
        """
        figures = reported_figures(sli, value, values)
        at = self.clock.time()
        for name, raw in figures.items():
            base, extra = _to_base(name, raw, unit)
            self.ingest(
                Sample(
                    sli=name, value=base, at=at, source="user", labels={**extra, **(labels or {})}
                )
            )

    @contextlib.contextmanager
    def measure(self, sli: str = "latency", *, errors: bool = False) -> Iterator[None]:
        """Time the block and report it as ``sli``: ``with lease.measure("latency"): ...``.

        With ``errors``, also report ``availability`` — 1 when the block
        succeeds, 0 when it raises. Time is read from the lease's clock. The
        figure belongs to the lease serving when the block began: when a
        renegotiation replaced it meanwhile, the block used the old lease's
        endpoints, which says nothing about the new one, so it is dropped.
        """
        serving = self.current
        started = self.clock.monotonic()
        ok = False
        try:
            yield
            ok = True
        finally:
            elapsed = self.clock.monotonic() - started
            at = self.clock.time()
            if serving.replaced_by is not None:
                log.debug("lease %s was replaced meanwhile; dropping its %s", serving.id, sli)
            else:
                serving.ingest(Sample(sli=sli, value=elapsed, at=at, source="user"))
                if errors:
                    serving.ingest(
                        Sample(sli="availability", value=float(ok), at=at, source="user")
                    )

    def ingest(self, sample: Sample) -> None:
        """Hand one sample to the monitor watching this lease (raises when none does)."""
        current = self.current
        if current.state.is_final:
            # Nothing is left to evaluate: an ended lease has no objectives to keep.
            log.debug("lease %s has ended; dropping %s sample", current.id, sample.sli)
            return
        if not current._observers:
            raise LeaseStateError(
                current.id,
                f"no monitor watches it, so its {sample.sli!r} sample would be lost; leases"
                " whose contract has objectives are watched when acquired through"
                " aicontract.acquire/lease/acquire_sync, others through Monitor.watch(lease)",
            )
        for observer in list(current._observers):
            observer.take(current, sample)

    def on_violation(self, listener: ViolationListener) -> None:
        """Call ``listener(violation)`` for every violation of this lease (and its successors)."""
        self.current._violation_listeners.append(listener)

    def on_replaced(self, listener: ReplacementListener) -> None:
        """Call ``listener(old, new)`` when a renegotiation replaces the lease."""
        self.current._replacement_listeners.append(listener)

    def on_replacement(self, starter: ReplacementStarter) -> None:
        """Await ``starter(new)`` for every replacement, once it is committed and before the
        switch waits for it to be ready: start there what the holder runs on the lease.

        This is how a holder that runs the work itself (``aicontract acquire FILE --
        CMD``) makes before it breaks: the command starts on the replacement while the
        old lease still serves, and the switch waits for it (the contract's probe). A
        starter that raises refuses the replacement: it is released, the old lease kept.
        """
        self.current._replacement_starters.append(starter)

    async def start_replacement(self, new: Lease) -> None:
        """Run this lease's replacement starters for ``new`` (a monitor calls this)."""
        for starter in list(self._replacement_starters):
            await starter(new)

    async def violations(self, buffer: int = 64) -> AsyncIterator[Violation]:
        """Violations as they happen: ``async for v in lease.violations(): ...``.

        Follows the lease through renegotiations; ends when the lease ends for
        good. At most ``buffer`` violations wait for a slow reader; beyond that
        the newest are dropped (and logged).
        """
        send, receive = anyio.create_memory_object_stream["Violation"](buffer)
        lease = self.current
        if lease.state.is_final:
            send.close()
        else:
            lease._violation_streams.append(send)
        try:
            async with receive:
                async for violation in receive:
                    yield violation
        finally:
            holder = self.current
            if send in holder._violation_streams:
                holder._violation_streams.remove(send)
            send.close()

    def deliver_violation(self, violation: Violation) -> None:
        """Hand ``violation`` to every listener and iterator (a monitor calls this)."""
        for listener in list(self._violation_listeners):
            try:
                listener(violation)
            except Exception:
                log.exception("lease %s: a violation listener failed", self.id)
        for stream in list(self._violation_streams):
            try:
                stream.send_nowait(violation)
            except anyio.WouldBlock:
                log.warning(
                    "lease %s: a slow violations() reader missed: %s", self.id, violation.describe()
                )
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._violation_streams.remove(stream)

    def hand_over(self, new: Lease) -> None:
        """Make ``new`` this lease's successor: listeners, iterators and :attr:`current` move.

        Call only once ``new`` is active; release this lease afterwards
        (make-before-break). Refused once the holder released the chain.
        """
        if not new.is_active:
            raise LeaseStateError(new.id, f"cannot replace {self.id} while {new.state.value}")
        if self._let_go:
            raise LeaseStateError(self.id, "its holder released it; nothing may replace it")
        new._violation_listeners.extend(self._violation_listeners)
        new._violation_streams.extend(self._violation_streams)
        new._replacement_listeners.extend(self._replacement_listeners)
        new._replacement_starters.extend(self._replacement_starters)
        self._violation_streams.clear()
        self.replaced_by = new  # the switch: one assignment
        for listener in list(new._replacement_listeners):
            try:
                listener(self, new)
            except Exception:
                log.exception("lease %s: a replacement listener failed", self.id)

    def end_violations(self) -> None:
        """End every ``violations()`` iterator of this lease (its monitor calls this when the
        lease has ended for good and nothing replaced it)."""
        self._close_violation_streams()

    def _close_violation_streams(self) -> None:
        for stream in self._violation_streams:
            stream.close()
        self._violation_streams.clear()

    # -- keeping it alive ----------------------------------------------------------------

    def renew_interval(self) -> float:
        """How often the heartbeat renews: a third of the time left, at most a minute."""
        return max(0.05, min(60.0, (self.expires_at - self.clock.time()) / 3))

    @property
    def held(self) -> bool:
        """True while :meth:`hold` runs (``async with lease``, the blocking face, the CLI)."""
        return self._holds > 0

    async def hold(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the lease renewed, and its monitor's loops running, until it ends.

        This is what ``async with lease`` runs in the background (started once
        every observer is ready: the report socket is bound); it returns once
        the lease (and any replacement a monitor switched to) has ended, or
        when cancelled. It does not release the lease.
        """
        self._holds += 1
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.keep_alive, name=f"aicontract-heartbeat-{self.id}")
                for observer in list(self._observers):
                    await tg.start(observer.hold, self, name=f"aicontract-watch-{self.id}")
                task_status.started()
        finally:
            self._holds -= 1

    async def keep_alive(self) -> None:
        """Renew the lease until it ends or the surrounding scope is cancelled.

        This is the lease's one renewal loop. Called twice (a holder and a
        monitor), the second call waits and takes over only if the first stops
        while the lease is still active, so a lease is never renewed twice over.
        """
        while self._keeper is not None:
            await self._keeper.wait()
        if not self.is_active:
            return
        self._keeper = keeper = anyio.Event()
        try:
            await self._heartbeat()
        finally:
            self._keeper = None
            keeper.set()

    async def _heartbeat(self) -> None:
        while self.is_active:
            wait = self.renew_interval()
            ends_at = self.ends_at
            if ends_at is not None:
                # Wake at the contract's end, not up to a renewal interval after it.
                wait = max(0.0, min(wait, ends_at - self.clock.time()))
            await self.clock.sleep(wait)
            if not self.is_active:
                return
            ends_at = self.ends_at  # again: extend() may have moved it while we slept
            if ends_at is not None and self.clock.time() >= ends_at:
                log.info("lease %s: contract duration reached; releasing", self.id)
                await self.release(successors=False)
                return
            try:
                await self.renew()
            except LeaseLost:
                log.error("lease %s lost: %s", self.id, self.reason)
                # Whatever the lease started must not outlive it (guarantee 4). Only this
                # lease: a monitor may still replace it (the holder has not let go).
                await self.release(successors=False)
                return
            except TransientBackendError as exc:
                # One 503 must not end the heartbeat: the next try comes sooner (a
                # third of what is left), and renew() marks a lease that ran out as expired.
                log.warning("lease %s: renewal failed, will retry: %s", self.id, exc)

    async def __aenter__(self) -> Lease:
        self._holding = holding = anyio.create_task_group()
        await holding.__aenter__()
        try:
            await holding.start(self.hold, name=f"aicontract-hold-{self.id}")
        except BaseException:
            self._holding = None
            holding.cancel_scope.cancel()
            try:
                # Leave the group where it was entered: exited inside another cancel scope
                # (a shield), asyncio's stack of scopes is left corrupted (RuntimeError).
                with contextlib.suppress(BaseException):
                    await holding.__aexit__(None, None, None)
            finally:
                await self.release()  # shielded from cancellation itself
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # The block's exception is not looked at: it propagates as it is (we return None).
        holding, self._holding = self._holding, None
        self._let_go = True  # from here no renegotiation may switch to a new lease
        try:
            if holding is not None:
                # Stop the heartbeat and the monitor's loops (a renegotiation too) first,
                # so nothing replaces the lease while it is being released. Keep the
                # block's own exception out of the task group: the group would wrap an
                # error in an ExceptionGroup, and would swallow a cancellation (Ctrl-C, an
                # outer deadline) as if it were its own. Returning None lets it propagate.
                holding.cancel_scope.cancel()
                await holding.__aexit__(None, None, None)
        finally:
            await self.release()  # the whole chain: this lease and every replacement

    def __repr__(self) -> str:
        return (
            f"<Lease {self.id} {self.state.value} {self.grant.describe()} on {self.backend.name}"
            f" [{self.guarantee}]>"
        )

    def to_dict(self) -> dict[str, Any]:
        """The lease's record as plain builtins (for JSON output)."""
        data: dict[str, Any] = msgspec.to_builtins(self.record(), enc_hook=encode_quantity)
        return data


_TIME_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0}


def _to_base(sli: str, value: float, unit: str | None) -> tuple[float, dict[str, str]]:
    """A reported figure in base units, and the labels that say what it counts."""
    if not unit:
        return value, {}
    unit = unit.strip()
    if unit == "%":
        return value / 100.0, {}
    if unit in _TIME_UNITS:
        return value * _TIME_UNITS[unit], {}
    from .units import Rate

    per = Rate(f"1{unit}" if unit.startswith("/") else f"1 {unit}")  # ContractError if not a rate
    return value * per.per_second, ({"unit": per.unit} if per.unit else {})
