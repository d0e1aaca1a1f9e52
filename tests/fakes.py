"""The one in-memory backend of the test suite (negotiator, lease, sync and monitor tests).

It does only what a test tells it to: offer what it is given (including offers
that lie about placement or grant, so the negotiator's checks are exercised
rather than trusted), fail commits with queued errors, hang on quotes, hold a
fixed number of GPUs and never over-grant them, hand out queued observations,
and record every call so tests can assert on them. Time comes from the clock
it is given, so heartbeats and deadlines run in virtual time.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from aicontract import (
    Backend,
    CapacityUnavailable,
    Clock,
    Contract,
    Grant,
    Lease,
    LeaseLost,
    Money,
    Observation,
    Offer,
    Quote,
    Rejection,
    VirtualClock,
)

_ids = itertools.count(1)


def make_offer(backend: str, contract: Contract, now: float, **overrides: Any) -> Offer:
    """An offer that satisfies a plain contract, with any field overridden.

    ``gpus``/``gpu_model``/``cpus``/... go to the grant; everything else to the offer.
    """
    grant_fields = set(Grant.__struct_fields__)
    grant_kw = {k: overrides.pop(k) for k in list(overrides) if k in grant_fields}
    res = contract.resources
    if res.gpus is not None:
        grant_kw.setdefault("gpus", res.gpus.count.min)
        if res.gpus.models:
            grant_kw.setdefault("gpu_model", res.gpus.models[0])
    if res.cpus is not None and "cpus" not in grant_kw:
        grant_kw["cpus"] = res.cpus.min
    if res.memory is not None and "memory" not in grant_kw:
        grant_kw["memory"] = res.memory.min
    price = overrides.pop("price", Money.per_hour(1))
    fields: dict[str, Any] = {
        "id": f"{backend}-{next(_ids)}",
        "backend": backend,
        "contract": contract,
        "grant": Grant(**grant_kw),
        "guarantee": "allocated",
        "region": "eu-west-1",
        "jurisdiction": "EU",
        "provider": backend,
        "isolation": "shared",
        "price": price,
        "expires_at": now + 60,
    }
    fields.update(overrides)
    return Offer(**fields)


@attrs.define(eq=False, kw_only=True)
class FakeBackend(Backend):
    """An in-memory backend whose every answer a test chooses.

    ``offers`` are keyword overrides for :func:`make_offer`, one offer each.
    ``available`` switches capacity off (quotes then carry only a rejection).
    ``capacity`` gives it that many GPUs: a quote for more than are free is
    refused, and a commit that would lease more than it has raises
    :class:`CapacityUnavailable`, so it never over-grants (``max_in_use``
    records the most it ever had leased). ``commit_errors`` are raised by
    successive commits, one each, before a commit succeeds. ``quote_hangs``
    makes quotes never answer. ``renew_error`` is raised by the next renewal
    only; ``refuse_renewal`` fails every renewal. ``observations`` are handed
    out by :meth:`observe`, one per call. Every commit and release is logged in
    ``events`` in order, and ``on_event`` hooks let a test check invariants at
    those instants.
    """

    name: str = "fake"
    clock: Clock = attrs.field(factory=VirtualClock)
    offers: list[dict[str, Any]] = attrs.field(factory=lambda: [{}])
    available: bool = True
    capacity: int | None = None
    counter_offers: list[dict[str, Any]] = attrs.field(factory=list)
    commit_errors: list[BaseException] = attrs.field(factory=list)
    quote_hangs: bool = False
    ttl: float = 30.0
    renew_error: BaseException | None = None
    refuse_renewal: bool = False
    on_commit: Callable[[Offer], Awaitable[None]] | None = None
    on_event: list[Callable[[str, Lease], None]] = attrs.field(factory=list)
    observations: list[Observation] = attrs.field(factory=list)
    quotes: int = 0
    commits: list[tuple[str, str]] = attrs.field(factory=list)
    """(offer id, idempotency key) for every commit attempt, failed ones too."""
    renewals: list[float] = attrs.field(factory=list)
    """The clock's time at every successful renewal."""
    releases: list[str] = attrs.field(factory=list)
    abandoned: list[str] = attrs.field(factory=list)
    """Idempotency keys of commits the negotiator gave up on."""
    by_key: dict[str, Lease] = attrs.field(factory=dict)
    """Committed leases by idempotency key (a retried key returns the same lease)."""
    leases: dict[str, Lease] = attrs.field(factory=dict)
    """The leases it holds now (committed, not yet released or abandoned), by id."""
    events: list[tuple[str, str, float]] = attrs.field(factory=list)
    """(``"commit"`` or ``"release"``, lease id, clock time), in order."""
    max_in_use: int = 0

    @property
    def in_use(self) -> int:
        """GPUs held by its live leases."""
        return sum(lease.grant.gpus for lease in self.leases.values())

    def endpoint_owner(self, url: str) -> str | None:
        """The id of the live lease publishing ``url``, if any."""
        for lease in self.leases.values():
            if url in lease.endpoints.values():
                return lease.id
        return None

    async def quote(self, contract: Contract) -> Quote:
        self.quotes += 1
        if self.quote_hangs:
            await anyio.sleep_forever()
        now = self.clock.time()
        counter = tuple(make_offer(self.name, contract, now, **o) for o in self.counter_offers)
        gpus = contract.resources.gpus
        free = 0 if not self.available else None
        if self.capacity is not None and self.available:
            wanted = gpus.count.min if gpus is not None else 0
            if wanted > self.capacity - self.in_use:
                free = self.capacity - self.in_use
        if free is not None:
            return Quote(
                rejections=(
                    Rejection(
                        backend=self.name,
                        requirement="resources.gpus.count",
                        wanted=str(gpus.count if gpus else 0),
                        available=f"{free} free",
                    ),
                ),
                counter_offers=counter,
            )
        offers = tuple(make_offer(self.name, contract, now, **dict(o)) for o in self.offers)
        return Quote(offers=offers, counter_offers=counter)

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:
        self.abandoned.append(idempotency_key)
        lease = self.by_key.pop(idempotency_key, None)
        if lease is not None:
            self.leases.pop(lease.id, None)

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        self.commits.append((offer.id, idempotency_key))
        if self.on_commit is not None:
            await self.on_commit(offer)
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        if idempotency_key in self.by_key:
            return self.by_key[idempotency_key]
        if self.capacity is not None and offer.grant.gpus > self.capacity - self.in_use:
            raise CapacityUnavailable(self.name, "taken meanwhile")
        lease_id = f"{self.name}-lease-{idempotency_key}"
        lease = Lease(
            id=lease_id,
            contract=offer.contract,
            grant=offer.grant,
            backend=self,
            guarantee=offer.guarantee,
            expires_at=self.clock.time() + self.ttl,
            region=offer.region,
            jurisdiction=offer.jurisdiction,
            endpoints={"http": f"http://{lease_id}.invalid"},
            clock=self.clock,
            details={"offer": offer.id},
        )
        self.by_key[idempotency_key] = lease
        self.leases[lease_id] = lease
        self.max_in_use = max(self.max_in_use, self.in_use)
        if self.capacity is not None:
            assert self.in_use <= self.capacity
        self._event("commit", lease)
        return lease

    async def renew(self, lease: Lease) -> float:
        if self.renew_error is not None:
            error, self.renew_error = self.renew_error, None
            raise error
        if self.refuse_renewal:
            raise LeaseLost(lease.id, "not renewable here")
        if lease.id in self.releases:
            raise LeaseLost(lease.id, "released at the backend")
        self.renewals.append(self.clock.time())
        return self.clock.time() + self.ttl

    async def release(self, lease: Lease) -> None:
        self.releases.append(lease.id)
        if self.leases.pop(lease.id, None) is not None:
            self._event("release", lease)

    async def observe(self, lease: Lease) -> Observation:
        if self.observations:
            return self.observations.pop(0)
        return Observation()

    def _event(self, kind: str, lease: Lease) -> None:
        self.events.append((kind, lease.id, self.clock.time()))
        for hook in self.on_event:
            hook(kind, lease)


async def drive(
    clock: VirtualClock,
    func: Callable[[], Awaitable[Any]],
    *,
    step: float = 0.5,
    limit: float = 3600.0,
) -> Any:
    """Run ``func`` while moving ``clock`` forward in ``step``s (at most ``limit`` seconds).

    The equivalent of trio's autojump clock for our :class:`VirtualClock`: code
    that sleeps on the clock (retry backoff, re-quote waits) completes at once
    in real time, and the test can still read how much virtual time passed.
    """
    result: list[Any] = []
    errors: list[Exception] = []
    done = anyio.Event()

    async def run() -> None:
        try:
            result.append(await func())
        except Exception as exc:  # re-raised bare below, so pytest.raises sees it
            errors.append(exc)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        elapsed = 0.0
        while not done.is_set():
            if elapsed >= limit:
                tg.cancel_scope.cancel()
                raise AssertionError(f"still running after {limit:g} virtual seconds")
            await clock.advance(step)
            elapsed += step
    if errors:
        raise errors[0]
    return result[0]
