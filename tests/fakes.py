"""A small in-memory backend for negotiator, lease and sync tests.

It does only what a test tells it to: offer what it is given (including offers
that lie about placement or grant, so the negotiator's checks are exercised
rather than trusted), fail commits with queued errors, hang on quotes, and
count every call so tests can assert on them. Time comes from the clock it is
given, so heartbeats and deadlines run in virtual time.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import attrs

from aicontract import (
    Clock,
    Contract,
    Grant,
    Lease,
    LeaseLost,
    Money,
    Offer,
    Quote,
    Rejection,
    VirtualClock,
)
from aicontract.backends.base import Backend

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


@attrs.define(eq=False)
class FakeBackend(Backend):
    """An in-memory backend whose every answer a test chooses.

    ``offers`` are keyword overrides for :func:`make_offer`, one offer each.
    ``available`` switches capacity off (quotes then carry only a rejection).
    ``commit_errors`` are raised by successive commits, one each, before a
    commit succeeds. ``quote_hangs`` makes quotes never answer.
    """

    name: str = "fake"
    clock: Clock = attrs.field(factory=VirtualClock)
    offers: list[dict[str, Any]] = attrs.field(factory=lambda: [{}])
    available: bool = True
    counter_offers: list[dict[str, Any]] = attrs.field(factory=list)
    commit_errors: list[BaseException] = attrs.field(factory=list)
    quote_hangs: bool = False
    ttl: float = 30.0
    renew_error: BaseException | None = None
    on_commit: Callable[[Offer], Awaitable[None]] | None = None
    quotes: int = 0
    commits: list[tuple[str, str]] = attrs.field(factory=list)
    """(offer id, idempotency key) for every commit attempt, failed ones too."""
    renewals: list[float] = attrs.field(factory=list)
    """The clock's time at every successful renewal."""
    releases: list[str] = attrs.field(factory=list)
    abandoned: list[str] = attrs.field(factory=list)
    """Idempotency keys of commits the negotiator gave up on."""
    leases: dict[str, Lease] = attrs.field(factory=dict)
    """Committed leases by idempotency key (a retried key returns the same lease)."""

    async def quote(self, contract: Contract) -> Quote:
        self.quotes += 1
        if self.quote_hangs:
            await anyio.sleep_forever()
        now = self.clock.time()
        counter = tuple(make_offer(self.name, contract, now, **o) for o in self.counter_offers)
        if not self.available:
            return Quote(
                rejections=(
                    Rejection(
                        backend=self.name,
                        requirement="resources.gpus.count",
                        wanted=str(contract.resources.gpus.count if contract.resources.gpus else 0),
                        available="0 free",
                    ),
                ),
                counter_offers=counter,
            )
        offers = tuple(make_offer(self.name, contract, now, **dict(o)) for o in self.offers)
        return Quote(offers=offers, counter_offers=counter)

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:
        self.abandoned.append(idempotency_key)
        self.leases.pop(idempotency_key, None)

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        self.commits.append((offer.id, idempotency_key))
        if self.on_commit is not None:
            await self.on_commit(offer)
        if self.commit_errors:
            raise self.commit_errors.pop(0)
        if idempotency_key in self.leases:
            return self.leases[idempotency_key]
        lease = Lease(
            id=f"{self.name}-lease-{idempotency_key}",
            contract=offer.contract,
            grant=offer.grant,
            backend=self,
            guarantee=offer.guarantee,
            expires_at=self.clock.time() + self.ttl,
            region=offer.region,
            jurisdiction=offer.jurisdiction,
            clock=self.clock,
            details={"offer": offer.id},
        )
        self.leases[idempotency_key] = lease
        return lease

    async def renew(self, lease: Lease) -> float:
        if self.renew_error is not None:
            error, self.renew_error = self.renew_error, None
            raise error
        if lease.id in self.releases:
            raise LeaseLost(lease.id, "released at the backend")
        self.renewals.append(self.clock.time())
        return self.clock.time() + self.ttl

    async def release(self, lease: Lease) -> None:
        self.releases.append(lease.id)


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
