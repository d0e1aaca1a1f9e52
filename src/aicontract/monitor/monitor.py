"""The monitor: SLI samples in, objective states and violations out, policies applied.

    backend.observe ─┐
    endpoint probes ─┼─▶ samples ─▶ trackers (one per objective) ─▶ state changes
    lease.report()  ─┘                                              │
                        provider faults ─▶ revoke at once ──────────┤
                                                                    ▼
             violations ─▶ lease.violations() · callbacks · log · metrics ─▶ policy
                                                      (notify · renegotiate · release)

Every lease acquired through ``aicontract.acquire``, ``aicontract.lease``,
``acquire_sync`` or ``aicontract acquire`` whose contract has objectives (or a
policy other than ``notify``) is watched by the process's monitor
(:func:`process_monitor`): started on first need, its loops run inside each
lease's holder (``async with lease``), and it is dropped when its last lease
ends. An explicit monitor runs every lease's loops in its own task group::

    async with Monitor(negotiator) as monitor:
        lease = await monitor.acquire(contract)
        async for violation in lease.violations():
            ...

The monitor attaches to a lease through the lease's one public hook
(:meth:`~aicontract.leases.Lease.attach`); the lease renews itself (a monitor
only runs :meth:`~aicontract.leases.Lease.keep_alive` for a replacement that no
holder holds).

All timing goes through :attr:`Monitor.clock`, so tests run in virtual time.
Memory per lease is constant: fixed windows (:mod:`aicontract.monitor.sli`) and
bounded recent-sample and violation rings.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.from_thread
import anyio.lowlevel
import attrs
import httpx
import msgspec

from ..clock import Clock, system_clock
from ..contract import Contract
from ..errors import AIContractError, ConfigError, LeaseLost, LeaseStateError, NoOffer
from ..leases import Lease, LeaseState, WorkloadState, _to_base
from ..observation import (
    Fault,
    ObjectiveState,
    Observation,
    Sample,
    Violation,
    figure_problem,
    format_value,
    reported_figures,
)
from ..reporting import REPORT_SOCKET_ENV, ReportSocket, report_socket_path
from .objectives import Change, Tracker, tracker_for
from .policies import Policy, PolicyContext, RenegotiationBudget, policy_for
from .probes import EndpointProbe, probe_targets
from .record import PerformanceRecord, placement_of
from .snapshot import (
    LeaseSnapshot,
    MonitorSnapshot,
    ObjectiveSnapshot,
    ViolationSnapshot,
    monitor_dir,
    write_snapshot,
)
from .telemetry import Telemetry, default_telemetry

if TYPE_CHECKING:
    from ..negotiate import Negotiator

__all__ = ["LeaseWatch", "Monitor", "process_monitor", "watch_by_default"]

log = logging.getLogger("aicontract.monitor")

_MAX_SLI_NAMES = 32
_OBSERVE_WORKERS = 16
"""How many leases' observations may be in flight at once (a running monitor's)."""


@attrs.define(eq=False)
class _Reports:
    """One lease's report socket, served while its chain is held."""

    lease: Lease
    socket: ReportSocket
    added: bool
    """True when the holder put the path in the lease's env (taken out again at the end)."""
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)

    def close(self) -> None:
        self.socket.close()
        if self.added and self.lease.env.get(REPORT_SOCKET_ENV) == self.socket.path:
            del self.lease.env[REPORT_SOCKET_ENV]


@attrs.define(eq=False)
class LeaseWatch:
    """What the monitor keeps for one lease — and for its replacements after renegotiation.

    The renegotiation budget belongs to the watch, not to one lease, so a
    replacement does not get a fresh budget. Objective windows start afresh
    with each lease: what the old lease did says little about the new one.
    """

    lease: Lease
    policy: Policy
    budget: RenegotiationBudget
    trackers: list[Tracker] = attrs.field(factory=list)
    by_sli: dict[str, list[Tracker]] = attrs.field(factory=dict)
    last: dict[str, Sample] = attrs.field(factory=dict)
    recent: deque[Sample] = attrs.field(factory=lambda: deque(maxlen=32))
    violations: deque[Violation] = attrs.field(factory=lambda: deque(maxlen=16))
    samples_total: int = 0
    violations_total: int = 0
    renegotiations_total: int = 0
    busy: bool = False
    probe: bool = True
    observe: bool = True
    renew: bool = True
    scope: anyio.CancelScope = attrs.field(factory=anyio.CancelScope)
    listeners: list[Callable[[Sample], None]] = attrs.field(factory=list)
    """Called with every sample this watch takes in (``aicontract watch`` in-process, tests)."""
    negotiator: Negotiator | None = None
    """Who renegotiates this lease (default: the monitor's negotiator)."""
    host: anyio.abc.TaskGroup | None = None
    """Where the loops run when the monitor has no task group: the holder's (see hold)."""
    token: Any = None
    """The host's event loop, so samples reported from another thread are taken there."""
    thread: int | None = None
    done: anyio.Event | None = None
    """Set once the lease and every replacement have ended."""
    fault: Fault | None = None
    """The provider fault behind the lease's revocation, if one was observed."""
    deferred: Violation | None = None
    """A violation that came while the policy was busy (finding a replacement, draining the
    old lease): acted on once it is done, if its lease is still the one serving."""
    ended: bool = False
    unfit: set[str] = attrs.field(factory=set)
    """SLIs whose unfit samples (NaN, inf, negative) were dropped and logged once."""
    reports: dict[str, _Reports] = attrs.field(factory=dict)
    """The sockets workloads report to while the chain is held: one per lease, by id."""
    reports_host: anyio.abc.TaskGroup | None = None
    """Where report sockets are served while the chain is held (see hold)."""
    http: httpx.AsyncClient | None = None
    """The holder's HTTP client for probes, when the monitor has none of its own."""
    clock: Clock = system_clock
    """The clock this watch's loops read (the monitor's, or the lease's for the process's)."""

    @property
    def objectives(self) -> dict[str, ObjectiveState]:
        """Each objective's state."""
        return {t.key: t.state for t in self.trackers}


@attrs.define(eq=False)
class Monitor:
    """Watches leases against their contracts' objectives and applies their policies.

    ``negotiator`` is needed for :meth:`acquire` and the ``renegotiate``
    policy. ``observe_interval`` is how often each lease's backend is asked
    for samples and faults (None: never), each call given up after
    ``observe_timeout`` real seconds; ``probe_interval`` overrides the
    contracts' probe intervals. With ``publish`` the monitor writes a small
    snapshot for ``aicontract watch`` and ``aicontract metrics`` every
    ``publish_interval`` seconds into ``publish_dir`` (default
    :func:`~aicontract.monitor.snapshot.monitor_dir`). A lease that cannot be renewed
    is handed to its policy ``renegotiate_ahead`` seconds (at most a third of
    its term) before it expires.
    """

    negotiator: Negotiator | None = None
    clock: Clock = attrs.field(
        default=attrs.Factory(
            lambda self: self.negotiator.clock if self.negotiator is not None else system_clock,
            takes_self=True,
        )
    )
    observe_interval: float | None = 1.0
    observe_timeout: float = 60.0
    """Real seconds one backend ``observe`` call may take; a call that hangs (a stuck
    provider API) is given up and logged, so the next one still comes."""
    probe_interval: float | None = None
    telemetry: Telemetry = attrs.field(factory=default_telemetry)
    http: httpx.AsyncClient | None = None
    publish: bool = True
    publish_dir: Path | None = None
    publish_interval: float = 5.0
    renegotiate_ahead: float = 120.0
    tracker_options: dict[str, Any] = attrs.field(factory=dict)
    on_idle: Callable[[Monitor], None] | None = None
    """Called when a monitor without its own task group watches no lease any more."""
    ready_timeout: float = 120.0
    """How long a replacement may take to become ready (``terms.start_by`` overrides)."""
    drain: float | None = None
    """Seconds the old lease keeps serving after a switch, so requests in flight finish
    (``None``: each contract's ``terms.drain``, 2 s unless it says otherwise)."""
    leases_clock: bool = False
    """Time each lease by its own clock (the process's monitor watches leases of any clock)."""
    _watches: dict[str, LeaseWatch] = attrs.field(factory=dict, init=False)
    _finished: deque[LeaseSnapshot] = attrs.field(factory=lambda: deque(maxlen=32), init=False)
    _tg: anyio.abc.TaskGroup | None = attrs.field(default=None, init=False)
    _owns_http: bool = attrs.field(default=False, init=False)
    _name: str = attrs.field(factory=lambda: uuid.uuid4().hex[:8], init=False)
    _publish_lock: threading.Lock = attrs.field(factory=threading.Lock, init=False)
    _snapshot_seq: Iterator[int] = attrs.field(factory=itertools.count, init=False)
    _written_seq: int = attrs.field(default=-1, init=False)
    _publisher: LeaseWatch | None = attrs.field(default=None, init=False)
    _observed: dict[str, tuple[LeaseWatch, Lease]] = attrs.field(factory=dict, init=False)
    _draining: dict[str, LeaseWatch] = attrs.field(factory=dict, init=False)
    """Replaced leases still serving their drain, by id (what breaks them is recorded)."""

    # -- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Monitor:
        if self.http is None:
            self.http = httpx.AsyncClient()
            self._owns_http = True
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        if self.publish:
            self._tg.start_soon(self._publish_loop, name="aicontract-monitor-publish")
        if self.observe_interval:
            self._tg.start_soon(
                self._observe_ticker, self.observe_interval, name="aicontract-monitor-observe"
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        tg, self._tg = self._tg, None
        try:
            if tg is not None:
                tg.cancel_scope.cancel()
                await tg.__aexit__(exc_type, exc, tb)
        finally:
            for watch in list(self._watches.values()):
                self._stop(watch)
            if self._owns_http and self.http is not None:
                with anyio.CancelScope(shield=True):
                    await self.http.aclose()
                self.http, self._owns_http = None, False
            if self.publish:
                with contextlib.suppress(OSError):
                    self._snapshot_path().unlink()
        return None

    # -- watching ------------------------------------------------------------------------

    @property
    def watches(self) -> dict[str, LeaseWatch]:
        """The watched leases, by id (a copy)."""
        return dict(self._watches)

    def watch(
        self,
        lease: Lease,
        *,
        policy: Policy | str | None = None,
        probe: bool = True,
        observe: bool = True,
        renew: bool = True,
        negotiator: Negotiator | None = None,
    ) -> LeaseWatch:
        """Start watching ``lease``: its samples, objectives, faults and expiry.

        ``policy`` overrides the contract's ``terms.on_violation``;
        ``negotiator`` (default: the monitor's) is who renegotiates it. Without
        ``probe``/``observe`` the monitor does not probe endpoints or ask the
        backend; without ``renew`` it does not keep a lease no holder holds
        alive (samples still arrive through :meth:`ingest` and
        :meth:`~aicontract.leases.Lease.report`). A monitor without a task
        group of its own runs a lease's loops while its holder holds it.
        """
        if lease.id in self._watches:
            return self._watches[lease.id]
        terms = lease.contract.terms
        if policy is None or isinstance(policy, str):
            policy = policy_for(policy or terms.on_violation)
        watch = LeaseWatch(
            lease=lease,
            policy=policy,
            budget=RenegotiationBudget(terms.max_renegotiations_per_hour),
            probe=probe,
            observe=observe,
            renew=renew,
            negotiator=negotiator,
            clock=lease.clock if self.leases_clock else self.clock,
        )
        with contextlib.suppress(RuntimeError):  # not in an event loop: samples are taken here
            watch.token = anyio.lowlevel.current_token()
            watch.thread = threading.get_ident()
        self._attach(watch, lease)
        return watch

    def unwatch(self, lease: Lease) -> None:
        """Stop watching ``lease`` (its objectives' states stay on the lease)."""
        watch = self._watches.get(lease.current.id)
        if watch is not None:
            self._finish(watch)

    def ingest(self, lease: Lease | str, sample: Sample) -> None:
        """Feed one sample to a watched lease (by object or id)."""
        lease_id = lease if isinstance(lease, str) else lease.current.id
        watch = self._watches.get(lease_id)
        if watch is None:
            raise KeyError(f"lease {lease_id} is not watched by this monitor")
        reported_figures(None, None, {sample.sli: sample.value})  # refuses NaN, inf, negative
        self._ingest(watch, watch.lease, sample)

    async def acquire(self, contract: Contract, *, policy: Policy | str | None = None) -> Lease:
        """Negotiate a lease for ``contract`` and watch it."""
        if self.negotiator is None:
            raise ConfigError("Monitor.acquire needs a negotiator: Monitor(negotiator=...)")
        started = self.clock.monotonic()
        with self.telemetry.span("aicontract.acquire", contract=contract.name):
            try:
                lease = await self.negotiator.acquire(contract)
            except NoOffer as exc:
                self.telemetry.negotiation(
                    contract.name, "no-offer", 0, self.clock.monotonic() - started
                )
                log.info("contract %s: %s", contract.name, exc)
                raise
        self.telemetry.negotiation(contract.name, "leased", 1, self.clock.monotonic() - started)
        self.telemetry.commit(lease)
        self.watch(lease, policy=policy)
        return lease

    def _attach(self, watch: LeaseWatch, lease: Lease) -> None:
        """Make ``lease`` the watch's lease: fresh trackers, sink, listeners, loops."""
        watch.lease = lease
        watch.trackers = [
            tracker_for(o, lease.id, **self.tracker_options) for o in lease.contract.objectives
        ]
        watch.by_sli = {}
        for tracker in watch.trackers:
            for sli in tracker.feeds:
                watch.by_sli.setdefault(sli, []).append(tracker)
        lease.objective_states.update(watch.objectives)
        watch.scope = anyio.CancelScope()
        self._watches[lease.id] = watch
        lease.attach(self)
        lease.on_state_change(self._lease_changed)
        host = self._tg or watch.host
        if host is not None:
            host.start_soon(self._run_lease, watch, lease, name=f"aicontract-watch-{lease.id}")
        else:
            log.debug("lease %s: loops start when it is held; reports are evaluated", lease.id)

    def _stop(self, watch: LeaseWatch) -> None:
        watch.scope.cancel()
        watch.lease.detach(self)

    def _record_of(self, watch: LeaseWatch) -> PerformanceRecord | None:
        negotiator = watch.negotiator or self.negotiator
        return negotiator.record if negotiator is not None else None

    def _learn(self, watch: LeaseWatch, lease: Lease) -> None:
        """Tell the performance record what ``lease``'s placement delivered, before leaving it."""
        record = self._record_of(watch)
        if record is None:
            return
        now, placement = watch.clock.time(), _placement(lease)
        for tracker in watch.trackers:
            value = tracker.value(now)
            if value is not None and tracker.state != ObjectiveState.UNDETERMINED:
                record.observe(placement, tracker.objective, value, now)
        record.save()

    def _finish(self, watch: LeaseWatch) -> None:
        """The lease and its chain are over: forget the watch; idle when it was the last."""
        if watch.ended:
            return
        watch.ended = True
        self._learn(watch, watch.lease)
        if watch.lease.state.is_final and watch.lease.replaced_by is None:
            watch.lease.end_violations()
        if self._watches.get(watch.lease.id) is watch:
            del self._watches[watch.lease.id]
            self._finished.append(self._lease_snapshot(watch))
        self._stop(watch)
        if watch.done is not None:
            watch.done.set()
        if not self._watches and self._tg is None and self.on_idle is not None:
            self.on_idle(self)
        else:
            self._publish_soon()

    # -- the lease's hook (LeaseObserver) ------------------------------------------------

    def take(self, lease: Lease, sample: Sample) -> None:
        """Take one sample reported for ``lease`` (what :meth:`Lease.report` calls).

        Taken on the event loop that runs the lease's loops: a sample reported
        from another thread (a notebook's, with the blocking face) is handed
        to that loop, so trackers and policies only ever run on one thread.
        """
        watch = self._watches.get(lease.id)
        if watch is None:  # it ended a moment ago: nothing is left to evaluate
            log.debug("lease %s is no longer watched; dropping %s sample", lease.id, sample.sli)
            return
        if watch.token is not None and watch.thread != threading.get_ident():
            try:
                anyio.from_thread.run_sync(self._ingest, watch, lease, sample, token=watch.token)
                return
            except RuntimeError:  # that loop is gone: take it here
                pass
        self._ingest(watch, lease, sample)

    async def hold(
        self, lease: Lease, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve the chain's report sockets and run its loops while its holder holds it.

        The lease's socket (``AICONTRACT_REPORT_SOCKET`` in ``lease.env``) is
        bound before this reports itself started, so a process started with the
        lease's env right after ``async with lease`` can report at once; a
        workload its backend started at commit already knows the path and is
        heard from now on. Each replacement gets its own socket when it is
        committed (see :meth:`_switch`). A monitor with its own task group runs
        the loops there; a monitor without one (the process's) runs them here,
        and its replacements' too, until the chain ends.
        """
        watch = self._watches.get(lease.current.id)
        if watch is None or watch.reports_host is not None:
            task_status.started()
            return
        if watch.done is None:
            watch.done = anyio.Event()
        hosting = self._tg is None and watch.host is None
        try:
            async with anyio.create_task_group() as host:
                watch.reports_host = host
                self._open_reports(watch, watch.lease)
                if hosting:
                    if self.http is None and probe_targets(watch.lease):
                        watch.http = httpx.AsyncClient()  # only when there is a probe
                    watch.host = host
                    watch.token = anyio.lowlevel.current_token()
                    watch.thread = threading.get_ident()
                    host.start_soon(self._run_lease, watch, watch.lease)
                    if self.publish:
                        host.start_soon(self._publish_turn, watch)
                task_status.started()
                await watch.done.wait()
                host.cancel_scope.cancel()
        finally:
            watch.reports_host = None
            for reports in list(watch.reports.values()):  # any whose task never ran
                reports.close()
            watch.reports.clear()
            if hosting:
                watch.host = None
                http, watch.http = watch.http, None
                if http is not None:
                    with anyio.CancelScope(shield=True):
                        await http.aclose()

    def _open_reports(self, watch: LeaseWatch, lease: Lease) -> None:
        """Bind ``lease``'s own report socket and serve it, while its chain is held.

        At the path its env names when its backend put one there (the workload
        it started at commit reports there already), else at
        :func:`~aicontract.reporting.report_socket_path`; in a fresh private
        directory when that cannot be bound. What arrives is ``lease``'s alone.
        """
        host = watch.reports_host
        if host is None or lease.id in watch.reports:
            return
        known = lease.env.get(REPORT_SOCKET_ENV)
        try:
            reports = ReportSocket(path=known or report_socket_path(lease.id))
        except OSError as exc:
            try:
                reports = ReportSocket(lease.id)
            except OSError as again:  # workloads cannot report; the lease itself is fine
                log.warning("lease %s: no report socket for its workload: %s", lease.id, again)
                return
            if known:
                log.warning(
                    "lease %s: cannot bind report socket %s (%s); processes started from now"
                    " report to %s, what already runs is not heard",
                    lease.id,
                    known,
                    exc,
                    reports.path,
                )
        entry = _Reports(lease, reports, added=known != reports.path)
        lease.env[REPORT_SOCKET_ENV] = reports.path
        watch.reports[lease.id] = entry
        host.start_soon(self._serve_reports, watch, entry, name=f"aicontract-reports-{lease.id}")

    async def _serve_reports(self, watch: LeaseWatch, entry: _Reports) -> None:
        try:
            with entry.scope:
                await entry.socket.serve(functools.partial(self._reported, watch, entry.lease))
        finally:
            entry.close()
            if watch.reports.get(entry.lease.id) is entry:
                del watch.reports[entry.lease.id]

    def _close_reports(self, watch: LeaseWatch, lease: Lease) -> None:
        """Stop serving ``lease``'s report socket (it was released, or never switched to)."""
        entry = watch.reports.get(lease.id)
        if entry is not None:
            entry.scope.cancel()

    def _reported(
        self,
        watch: LeaseWatch,
        lease: Lease,
        sli: str,
        value: float,
        unit: str | None,
        labels: dict[str, str] | None,
    ) -> None:
        """A figure ``lease``'s workload sent to its socket: as if its holder reported it.

        Only while ``lease`` serves the chain: a replacement not yet switched to
        (its workload is still starting) or a lease being drained after a switch
        counts for no other lease, so its figures are dropped.
        """
        if watch.lease is not lease or not lease.is_active:
            return
        now = watch.clock.time()
        if unit is None and labels is None:  # the common case, in base units: no conversion
            self._ingest(watch, lease, Sample(sli=sli, value=value, at=now, source="workload"))
            return
        try:
            base, extra = _to_base(sli, value, unit)
        except (AIContractError, ValueError) as exc:
            log.debug("lease %s: bad report from the workload: %s", lease.id, exc)
            return
        sample = Sample(
            sli=sli, value=base, at=now, source="workload", labels={**extra, **(labels or {})}
        )
        self._ingest(watch, lease, sample)

    # -- samples -------------------------------------------------------------------------

    def _ingest(self, watch: LeaseWatch, lease: Lease, sample: Sample) -> None:
        if watch.lease is not lease:
            return  # a late sample of a lease that was replaced
        problem = figure_problem(sample.sli, sample.value)
        if problem is not None:
            # A NaN from a driver, an inf from a workload's division by zero: no objective
            # may be decided (nor the windows' arithmetic broken) by it. Said once per SLI.
            if sample.sli not in watch.unfit and len(watch.unfit) < _MAX_SLI_NAMES:
                watch.unfit.add(sample.sli)
                log.warning(
                    "lease %s: dropped %s samples from %s: %r %s",
                    lease.id,
                    sample.sli[:80],
                    sample.source,
                    sample.value,
                    problem,
                )
            return
        watch.samples_total += 1
        watch.recent.append(sample)
        if sample.sli in watch.last or len(watch.last) < _MAX_SLI_NAMES:
            watch.last[sample.sli] = sample
        if self.telemetry.enabled:
            self.telemetry.sample(lease.id, sample)
        for listener in watch.listeners:
            listener(sample)
        for tracker in watch.by_sli.get(sample.sli, ()):
            if tracker.accepts(sample):
                change = tracker.add(sample)
                if change is not None:
                    self._changed(watch, lease, tracker, change)

    def _changed(self, watch: LeaseWatch, lease: Lease, tracker: Tracker, change: Change) -> None:
        lease.objective_states[tracker.key] = change.new
        if self.telemetry.enabled:
            self.telemetry.objective_state(lease.id, tracker.key, change.new)
        record = self._record_of(watch)
        if record is not None and change.new != ObjectiveState.UNDETERMINED:
            placement = _placement(lease)
            value = tracker.value(change.at)
            if value is not None:
                record.observe(placement, tracker.objective, value, change.at)
            if change.violation is not None:
                record.violated(placement, tracker.objective, change.at)
        if change.violation is not None:
            self._violated(watch, lease, change.violation)
        elif change.old == ObjectiveState.VIOLATED:
            value = tracker.value(change.at)
            shown = "no data" if value is None else format_value(tracker.objective, value)
            log.info("lease %s: objective %s met again (%s)", lease.id, tracker.key, shown)
        else:
            log.debug("lease %s: objective %s %s", lease.id, tracker.key, change.new.value)

    def _violated(self, watch: LeaseWatch, lease: Lease, violation: Violation) -> None:
        """Deliver (log, metrics, iterators, callbacks), then start the policy."""
        level = logging.ERROR if violation.severity == "fatal" else logging.WARNING
        self._record(watch, violation, level)
        lease.deliver_violation(violation)
        if lease.replaced_by is not None:
            return
        if watch.busy:
            # Finding a replacement or draining the lease it replaced: acting now would race
            # that (and need room for a third lease). Kept, and acted on once it is done.
            watch.deferred = violation
            return
        self._start_policy(watch, lease, violation)

    def _record(self, watch: LeaseWatch, violation: Violation, level: int) -> None:
        """Count, keep, log and export a violation."""
        watch.violations_total += 1
        watch.violations.append(violation)
        log.log(level, "%s", violation.describe())
        if self.telemetry.enabled:
            self.telemetry.violation(violation)

    def _start_policy(self, watch: LeaseWatch, lease: Lease, violation: Violation) -> None:
        host = self._tg or watch.host
        if host is None:
            log.warning(
                "lease %s: not held, so policy %s not applied (hold it: async with lease)",
                lease.id,
                watch.policy.name,
            )
            return
        watch.busy = True
        host.start_soon(
            self._apply_policy, watch, lease, violation, name=f"aicontract-policy-{lease.id}"
        )

    def _fault(self, watch: LeaseWatch, lease: Lease, fault: Fault) -> None:
        """A provider fault: not SLO burn; the lease is revoked at once, with the reason.

        The violation is raised by the revocation itself (see :meth:`_lease_changed`),
        like any other way a lease can break.
        """
        watch.fault = fault
        lease.revoke(f"{fault.kind}: {fault.reason}")

    async def _apply_policy(self, watch: LeaseWatch, lease: Lease, violation: Violation) -> None:
        switched: list[Lease] = []

        async def switch(old: Lease, new: Lease) -> None:
            await self._switch(watch, old, new)
            switched.append(new)

        context = PolicyContext(
            lease=lease,
            budget=watch.budget,
            negotiator=watch.negotiator or self.negotiator,
            now=watch.clock.time,
            switch=switch,
        )
        try:
            with self.telemetry.span(
                "aicontract.policy",
                policy=watch.policy.name,
                lease=lease.id,
                objective=violation.key,
            ):
                await watch.policy.handle(context, violation)
        except AIContractError as exc:
            log.warning("lease %s: policy %s failed: %s", lease.id, watch.policy.name, exc)
        finally:
            watch.busy = False
            current = watch.lease
            deferred, watch.deferred = watch.deferred, None
            if (
                deferred is not None
                and deferred.lease_id == current.id
                and current.replaced_by is None
                and not current.released_by_holder
                and not watch.ended
                and (self._tg or watch.host) is not None
            ):
                # A breach of the lease now serving came while we were busy (the new lease
                # violated during the drain, or the kept one broke): act on it now.
                log.info(
                    "lease %s: acting on a violation that came during the last policy run: %s",
                    current.id,
                    deferred.describe(),
                )
                self._start_policy(watch, current, deferred)
            elif current.state.is_final and current.replaced_by is None:
                self._finish(watch)  # broken, and nothing replaced it: the chain is over
        if watch.policy.name == "renegotiate" and self.telemetry.enabled:
            self.telemetry.renegotiation(lease.id, "replaced" if switched else "kept")

    async def _switch(self, watch: LeaseWatch, old: Lease, new: Lease) -> None:
        """Make-before-break: once ``new`` is ready, watch it, switch to it, drain, release ``old``.

        Raises (and the policy releases ``new``) when the replacement does not
        become ready in time; the old lease is kept.
        """
        # Its own socket, before anything starts on it: what its workload reports is its
        # own (dropped until the switch), never counted against the lease it replaces.
        self._open_reports(watch, new)
        try:
            await self._before_switch(watch, old, new)
        except BaseException:
            self._close_reports(watch, new)
            raise
        old_scope = watch.scope
        before = self._lease_snapshot(watch)  # what readers of the old id will find
        self._learn(watch, old)
        self._watches.pop(old.id, None)
        self._attach(watch, new)  # from here on, samples for old are dropped
        old.hand_over(new)  # the switch of lease.current: one assignment
        old_scope.cancel()
        self._finished.append(msgspec.structs.replace(before, replaced_by=new.id))
        self._publish_soon()  # `aicontract watch` follows the switch now, not in a few seconds
        how = "" if old.is_active else f" after it was {old.state.value} (no make-before-break)"
        log.info("lease %s replaced by %s%s; endpoints now %s", old.id, new.id, how, new.endpoints)
        if self.telemetry.enabled:
            self.telemetry.commit(new)
        drain = self.drain if self.drain is not None else old.contract.terms.drain_seconds
        if drain > 0 and old.is_active:
            # Requests already sent to the old endpoints finish before it goes away. A
            # breach of the new lease meanwhile is kept (watch.deferred) and acted on after.
            self._draining[old.id] = watch
            try:
                await watch.clock.sleep(drain)
            finally:
                self._draining.pop(old.id, None)
        if old.is_active:
            old.reason = f"replaced by {new.id}"
        await old.release(successors=False)
        self._close_reports(watch, old)

    async def _before_switch(self, watch: LeaseWatch, old: Lease, new: Lease) -> None:
        """Start the holder's work on ``new`` and wait until it is ready to take over."""
        try:
            # What the holder runs on the lease itself (the CLI's command) starts on the
            # replacement now, while the old lease still serves.
            await old.start_replacement(new)
        except Exception as exc:
            raise LeaseLost(new.id, f"its workload could not be started: {exc}") from exc
        if old.is_active:
            await self._until_ready(watch, old, new)
        if not new.is_active:
            raise LeaseLost(new.id, "the replacement is not active; keeping the old lease")
        if old.released_by_holder:
            raise LeaseStateError(old.id, "its holder released it; nothing may replace it")
        watch.renegotiations_total += 1

    def _lease_changed(self, lease: Lease, old: LeaseState, new: LeaseState) -> None:
        if self.telemetry.enabled:
            self.telemetry.lease_state(lease, old, new)
        draining = self._draining.get(lease.id)
        if draining is not None and new.is_final and new != LeaseState.RELEASED:
            self._broke_while_draining(draining, lease, new)
            return
        watch = self._watches.get(lease.id)
        if watch is None or watch.lease is not lease or not new.is_final:
            return
        if lease.replaced_by is not None:
            return
        if new != LeaseState.RELEASED and not lease.released_by_holder:
            # Revoked, expired or failed: a broken lease, not SLO burn. Tell the program,
            # and let the policy act (``renegotiate`` acquires a replacement).
            fault, watch.fault = watch.fault, None
            now = watch.clock.time()
            since = fault.at if fault is not None else now
            self._violated(watch, lease, _broken(lease, since, now, lease.reason or new.value))
            if watch.busy and watch.policy.name == "renegotiate":
                return  # the policy finishes the watch if nothing replaces the lease
        self._finish(watch)

    def _broke_while_draining(self, watch: LeaseWatch, lease: Lease, state: LeaseState) -> None:
        """A replaced lease broke during its drain: recorded for it (log, the watch's
        violations, metrics); nothing to act on, its replacement already serves."""
        now = watch.clock.time()
        replacement = lease.replaced_by.id if lease.replaced_by is not None else "?"
        reason = f"{lease.reason or state.value} (while draining; replaced by {replacement})"
        self._record(watch, _broken(lease, now, now, reason), logging.WARNING)

    # -- loops ---------------------------------------------------------------------------

    async def _run_lease(self, watch: LeaseWatch, lease: Lease) -> None:
        ticked = False
        with watch.scope:
            async with anyio.create_task_group() as tg:
                if watch.observe and self.observe_interval:
                    if self._tg is not None:
                        # One ticker observes every lease of a running monitor: a thousand
                        # leases cost one wake-up a second, not a thousand.
                        self._observed[lease.id] = (watch, lease)
                        ticked = True
                        tg.start_soon(anyio.sleep_forever)  # keeps the scope (and entry) alive
                    else:
                        tg.start_soon(self._observe_loop, watch, lease, self.observe_interval)
                http = self.http or watch.http
                if watch.probe and http is not None:
                    for name, url, probe in probe_targets(lease):
                        prober = EndpointProbe(name, url, probe, http)
                        tg.start_soon(self._probe_loop, watch, lease, prober)
                if watch.renew and not lease.held:
                    # Nobody holds this lease (a replacement, or a lease acquired through
                    # Monitor.acquire): run its own renewal loop, or, when it cannot be
                    # renewed, act before it expires.
                    if lease.contract.terms.renewable:
                        tg.start_soon(lease.keep_alive)
                    else:
                        tg.start_soon(self._expiry_loop, watch, lease)
        if ticked and self._observed.get(lease.id, (None, None))[1] is lease:
            del self._observed[lease.id]

    async def _observe_ticker(self, interval: float) -> None:
        """Every ``interval``, observe every registered lease.

        Observations are handed to a few workers through a queue: a backend that
        answers at once (in memory, a local process table) costs no task switch at
        all; one that waits on the network is observed for several leases at a time.
        """
        queue: deque[tuple[LeaseWatch, Lease]] = deque()
        ready = anyio.Event()

        async def worker() -> None:
            nonlocal ready
            while True:
                while queue:
                    watch, lease = queue.popleft()
                    if lease.is_active and watch.lease is lease:
                        await self._observe_once(watch, lease)
                await ready.wait()

        async with anyio.create_task_group() as workers:
            for n in range(_OBSERVE_WORKERS):
                workers.start_soon(worker, name=f"aicontract-observe-{n}")
            while True:
                await self.clock.sleep(interval)
                queue.extend(self._observed.values())
                ready.set()
                ready = anyio.Event()

    async def _observe_loop(self, watch: LeaseWatch, lease: Lease, interval: float) -> None:
        while lease.is_active:
            await watch.clock.sleep(interval)
            if not lease.is_active or watch.lease is not lease:
                return
            await self._observe_once(watch, lease)

    async def _observe_once(self, watch: LeaseWatch, lease: Lease) -> None:
        """Ask the backend once; faults first, then the workload's state, then samples."""
        observation: Observation | None = None
        try:
            with anyio.move_on_after(self.observe_timeout):
                observation = await lease.backend.observe(lease)
        except Exception as exc:  # a backend's bug must not stop the other leases' loops
            log.warning("lease %s: observe failed: %s", lease.id, exc)
            return
        if observation is None:
            log.warning(
                "lease %s: observe did not answer within %gs; asking again next time",
                lease.id,
                self.observe_timeout,
            )
            return
        if watch.lease is not lease:
            return
        if observation.faults and lease.is_active:
            # A fault breaks the lease: whatever the workload looked like in the same
            # observation (it is often "not ready" for the same reason) comes second.
            self._fault(watch, lease, observation.faults[0])
            return
        if observation.workload is not None:
            lease.set_workload_state(observation.workload)
        for sample in observation.samples:
            self._ingest(watch, lease, sample)

    async def _probe_loop(self, watch: LeaseWatch, lease: Lease, prober: EndpointProbe) -> None:
        interval = self.probe_interval or prober.interval
        while lease.is_active:
            await watch.clock.sleep(interval)
            if not lease.is_active or watch.lease is not lease:
                return
            for sample in await prober.once(watch.clock.time()):
                self._ingest(watch, lease, sample)

    async def _until_ready(self, watch: LeaseWatch, old: Lease, new: Lease) -> None:
        """Wait until the replacement's *own* workload is ready and answers its probe.

        Ready means: the workload its backend started (if any) reports ``ready``,
        and each endpoint the contract's ``workload.probe`` names answers it. An
        endpoint at the very address the old lease serves cannot prove anything
        (the old workload would answer), so it is not counted — its backend's
        word is all there is (give ports as ``auto`` to avoid that).
        """
        workload = new.contract.workload
        probe = workload.probe if workload is not None else None
        targets = []
        http = self.http or watch.http
        if probe is not None and http is not None:
            theirs = set(old.endpoints.values())
            for name, url, how in probe_targets(new):
                if new.endpoints.get(name) in theirs:
                    log.warning(
                        "lease %s: replacement %s serves %s at the same address as the lease it"
                        " replaces; its readiness cannot be probed there",
                        old.id,
                        new.id,
                        url,
                    )
                    continue
                targets.append(EndpointProbe(name, url, how, http))
        if new.workload_state is None and not targets:
            return  # nothing runs on it that could be not ready yet
        start_by = new.contract.terms.start_by
        limit = start_by.seconds if start_by else self.ready_timeout
        deadline = watch.clock.monotonic() + limit
        wait = 0.05
        while True:
            if not new.is_active:
                raise LeaseLost(new.id, "the replacement ended before it was ready")
            if new.workload_state is not None:
                try:
                    seen = await new.backend.observe(new)
                except Exception as exc:
                    log.debug("lease %s: observe failed while starting: %s", new.id, exc)
                else:
                    if seen.faults:
                        fault = seen.faults[0]
                        raise LeaseLost(new.id, f"{fault.kind}: {fault.reason}")
                    if seen.workload is not None:
                        new.set_workload_state(seen.workload)
            ready = new.workload_state in (None, WorkloadState.READY)
            if ready:
                for target in targets:
                    samples = await target.once(watch.clock.time())
                    if not any(s.sli == "availability" and s.value == 1.0 for s in samples):
                        ready = False
                        break
            if ready:
                return
            if watch.clock.monotonic() >= deadline:
                raise LeaseLost(
                    new.id, f"the replacement was not ready within {limit:g}s; keeping {old.id}"
                )
            await watch.clock.sleep(wait)
            wait = min(1.0, wait * 2)

    async def _expiry_loop(self, watch: LeaseWatch, lease: Lease) -> None:
        """A lease that cannot be renewed: warn (the policy acts) ahead of its expiry."""
        ahead = min(self.renegotiate_ahead, (lease.expires_at - lease.created_at) / 3)
        await watch.clock.sleep(max(0.05, lease.remaining - ahead))
        if not lease.is_active or watch.lease is not lease or lease.held:
            return
        ends_at = lease.ends_at
        if ends_at is not None and watch.clock.time() >= ends_at:
            return  # the contract ran its course
        if not watch.busy:
            now = watch.clock.time()
            violation = Violation(
                lease_id=lease.id,
                objective=None,
                observed=lease.remaining,
                window=0.0,
                since=now,
                at=now,
                severity="warning",
                reason=f"expires in {lease.remaining:.0f}s and cannot be renewed",
            )
            self._violated(watch, lease, violation)
        await watch.clock.sleep(max(0.0, lease.remaining))
        if lease.is_active and watch.lease is lease and not lease.held:
            lease.transition(LeaseState.EXPIRED, "not renewed in time")

    # -- publishing ----------------------------------------------------------------------

    def _snapshot_path(self) -> Path:
        directory = self.publish_dir if self.publish_dir is not None else monitor_dir()
        return directory / f"{os.getpid()}-{self._name}.json"

    def _publish_soon(self) -> None:
        """Publish at once after a switch or an end, when this monitor publishes at all."""
        if not self.publish or (self._tg is None and self._publisher is None):
            return
        try:
            self.publish_now()
        except OSError as exc:
            log.warning("cannot publish monitor snapshot: %s", exc)

    def publish_now(self) -> Path:
        """Write the snapshot now (the monitor also does so every ``publish_interval``)."""
        path = self._snapshot_path()
        self._write(path, next(self._snapshot_seq), self.snapshot())
        return path

    def _write(self, path: Path, seq: int, snapshot: MonitorSnapshot) -> None:
        # The periodic writer runs in a worker thread: a snapshot taken before a
        # publish_now() must never land after it and hide the newer one.
        with self._publish_lock:
            if seq < self._written_seq:
                return
            write_snapshot(path, snapshot)
            self._written_seq = seq

    async def _publish_loop(self) -> None:
        path = self._snapshot_path()
        while True:
            seq, snapshot = next(self._snapshot_seq), self.snapshot()
            try:
                await anyio.to_thread.run_sync(self._write, path, seq, snapshot)
            except OSError as exc:
                log.warning("cannot publish monitor snapshot to %s: %s", path, exc)
            await self.clock.sleep(self.publish_interval)

    async def _publish_turn(self, watch: LeaseWatch) -> None:
        """Publish while holding a lease; one holder at a time does it for the monitor."""
        path = self._snapshot_path()
        try:
            while True:
                if self._publisher is None or self._publisher.ended:
                    self._publisher = watch
                if self._publisher is watch:
                    seq, snapshot = next(self._snapshot_seq), self.snapshot()
                    try:
                        await anyio.to_thread.run_sync(self._write, path, seq, snapshot)
                    except OSError as exc:
                        log.warning("cannot publish monitor snapshot to %s: %s", path, exc)
                await watch.clock.sleep(self.publish_interval)
        finally:
            if self._publisher is watch:
                self._publisher = None

    def snapshot(self) -> MonitorSnapshot:
        """Every watched (and recently finished) lease as data."""
        leases = [self._lease_snapshot(w) for w in self._watches.values()]
        return MonitorSnapshot(
            pid=os.getpid(), written_at=self.clock.time(), leases=[*leases, *self._finished]
        )

    def _lease_snapshot(self, watch: LeaseWatch) -> LeaseSnapshot:
        lease, now = watch.lease, watch.clock.time()
        objectives = []
        for tracker in watch.trackers:
            obj = tracker.objective
            value = tracker.value(now)
            objectives.append(
                ObjectiveSnapshot(
                    key=tracker.key,
                    sli=obj.sli,
                    op=obj.op,
                    target=str(obj.target),
                    window=tracker.window,
                    state=tracker.state.value,
                    value=value,
                    display="-" if value is None else format_value(obj, value),
                    changed_at=tracker.changed_at,
                )
            )
        violations = [
            ViolationSnapshot(
                key=v.key,
                severity=v.severity,
                at=v.at,
                since=v.since,
                observed=v.observed,
                text=v.describe(),
            )
            for v in list(watch.violations)[-8:]
        ]
        return LeaseSnapshot(
            id=lease.id,
            backend=lease.backend.name,
            contract=lease.contract.name,
            state=lease.state.value,
            policy=watch.policy.name,
            expires_at=lease.expires_at,
            endpoints=dict(lease.endpoints),
            objectives=objectives,
            last={k: s.value for k, s in watch.last.items()},
            samples_total=watch.samples_total,
            violations_total=watch.violations_total,
            renegotiations_total=watch.renegotiations_total,
            renegotiations_left=watch.budget.remaining(now),
            recent=list(watch.recent)[-8:],
            violations=violations,
            replaced_by=lease.replaced_by.id if lease.replaced_by is not None else None,
            reason=lease.reason,
        )


def _placement(lease: Lease) -> str:
    return placement_of(lease.backend.name, lease.region, lease.grant, lease.contract)


# -- the process's monitor ---------------------------------------------------------------

_process: Monitor | None = None
_process_lock = threading.Lock()


def _forget_after_fork() -> None:
    """A forked child watches its own leases: the parent's monitor (and the leases it
    watches, whose loops run in the parent) stays the parent's."""
    global _process, _process_lock
    _process, _process_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _forget(monitor: Monitor) -> None:
    """The process monitor's last lease ended: drop it (a new one starts on next need)."""
    global _process
    with _process_lock:
        if _process is monitor:
            _process = None
    if monitor.publish:
        # Leave the final states for `aicontract watch` (readers drop the file with
        # the process); the next process monitor writes to the same file.
        with contextlib.suppress(OSError):
            monitor.publish_now()


def process_monitor() -> Monitor:
    """This process's monitor: started on first need, dropped when its last lease ends.

    It has no task group of its own: each lease's loops run in the task that
    holds the lease (``async with lease``, the blocking face's event loop, the
    CLI), so nothing outlives its holder.
    """
    global _process
    with _process_lock:
        if _process is None:
            _process = Monitor(
                on_idle=_forget,
                leases_clock=True,
                publish_interval=1.0,
                publish_dir=monitor_dir(),  # where it started: env changes later do not move it
            )
            _process._name = "process"  # one file per process, whichever monitor is current
        return _process


def watch_by_default(lease: Lease, negotiator: Negotiator | None = None) -> LeaseWatch | None:
    """Watch ``lease`` with the process's monitor when its contract asks for watching.

    That is when it has objectives, or a violation policy other than
    ``notify`` (a revoked lease is then replaced or released). Returns the
    watch, or ``None`` for a lease there is nothing to watch for.
    """
    contract = lease.contract
    if not contract.objectives and contract.terms.on_violation == "notify":
        return None
    return process_monitor().watch(lease, negotiator=negotiator)


def _broken(lease: Lease, since: float, at: float, reason: str) -> Violation:
    """A fatal violation for a lease that broke (revoked, expired, failed), not for SLO burn."""
    return Violation(
        lease_id=lease.id,
        objective=None,
        observed=None,
        window=0.0,
        since=since,
        at=at,
        severity="fatal",
        reason=reason,
    )
