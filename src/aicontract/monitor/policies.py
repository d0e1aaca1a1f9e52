"""What to do when an objective is violated: the contract's ``terms.on_violation``.

* ``notify`` (default) — tell the program (iterator, callbacks, log) and nothing else;
* ``renegotiate`` — find a replacement lease that may meet the objective and
  switch to it make-before-break: the new lease is active before the old one is
  released, the switch of :attr:`~aicontract.leases.Lease.current` is one
  assignment, and the program hears the new endpoints through
  :meth:`~aicontract.leases.Lease.on_replaced`;
* ``release`` — give the lease back.

A :class:`RenegotiationBudget` (``terms.max_renegotiations_per_hour``) bounds
renegotiations over any sliding hour, so a flapping SLI cannot loop; when it is
spent the policy falls back to notifying. Attempts count, successful or not.

A policy is any object with a ``name`` and an ``async handle(context, violation)``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import anyio
import attrs
from msgspec.structs import replace

from ..errors import (
    AuthenticationError,
    CapacityUnavailable,
    NoOffer,
    QuotaExceeded,
    TransientBackendError,
)
from ..governance.policy import TERM_LEFT
from ..leases import Lease, LeaseState
from ..observation import Violation
from ..offer import Offer, Rejection

if TYPE_CHECKING:
    from ..negotiate import Negotiator

__all__ = [
    "Notify",
    "Policy",
    "PolicyContext",
    "Release",
    "Renegotiate",
    "RenegotiationBudget",
    "find_replacement",
    "policy_for",
]

log = logging.getLogger("aicontract.monitor")

HOUR = 3600.0


@attrs.define
class RenegotiationBudget:
    """At most ``per_hour`` renegotiations in any sliding hour (memory bounded by ``per_hour``)."""

    per_hour: int
    _spent: deque[float] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self._spent = deque(maxlen=max(1, self.per_hour))

    def _forget(self, now: float) -> None:
        while self._spent and self._spent[0] <= now - HOUR:
            self._spent.popleft()

    def remaining(self, now: float) -> int:
        """How many renegotiations are left in the hour ending ``now``."""
        self._forget(now)
        return max(0, self.per_hour - len(self._spent))

    def spend(self, now: float) -> bool:
        """Take one renegotiation from the budget; False (and nothing taken) when it is spent."""
        if self.remaining(now) <= 0:
            return False
        self._spent.append(now)
        return True

    def next_at(self, now: float) -> float | None:
        """When the next renegotiation will be allowed (``now`` if it is, None if never)."""
        if self.per_hour <= 0:
            return None
        if self.remaining(now) > 0:
            return now
        return self._spent[0] + HOUR


@attrs.define(eq=False)
class PolicyContext:
    """What a policy may act on: the lease, its budget and the monitor's switch."""

    lease: Lease
    budget: RenegotiationBudget
    negotiator: Negotiator | None
    now: Callable[[], float]
    switch: Callable[[Lease, Lease], Awaitable[None]]
    """Make the new lease current (watch it, hand over, then release the old one)."""


class Policy(Protocol):
    """A violation policy: ``notify``, ``renegotiate``, ``release`` or your own."""

    name: str

    async def handle(self, context: PolicyContext, violation: Violation) -> None:
        """Act on ``violation`` (after the program has been told)."""
        ...


@attrs.define
class Notify:
    """Tell the program and do nothing else (the violation was already delivered)."""

    name: str = "notify"

    async def handle(self, context: PolicyContext, violation: Violation) -> None:
        """Nothing to do: delivery and logging happen before any policy runs."""


@attrs.define
class Release:
    """Give the lease back when its contract is broken."""

    name: str = "release"

    async def handle(self, context: PolicyContext, violation: Violation) -> None:
        """Release the lease, recording why."""
        lease = context.lease
        if lease.state.is_final:
            return
        log.warning("lease %s: releasing (policy release): %s", lease.id, violation.describe())
        lease.reason = f"released on violation: {violation.key}"
        await lease.release()


@attrs.define
class Renegotiate:
    """Replace the lease make-before-break, within the renegotiation budget.

    A lease that was revoked, expired or failed is replaced too — there is
    nothing left to make before breaking, so the replacement takes over at once.

    ``prefer_elsewhere`` ranks offers from another backend or region first —
    capacity in the same place is likely to miss the objective the same way.
    """

    name: str = "renegotiate"
    prefer_elsewhere: bool = True

    async def handle(self, context: PolicyContext, violation: Violation) -> None:
        """Acquire a replacement, switch to it, release the old lease."""
        old = context.lease
        now = context.now()
        if context.negotiator is None:
            log.warning("lease %s: cannot renegotiate without a negotiator; notifying", old.id)
            return
        if not context.budget.spend(now):
            at = context.budget.next_at(now)
            log.warning(
                "lease %s: renegotiation budget spent (%d per hour); next allowed %s;"
                " notifying only: %s",
                old.id,
                context.budget.per_hour,
                "never (0 per hour)" if at is None else f"in {max(0.0, at - now):.0f}s",
                violation.describe(),
            )
            return
        try:
            new = await find_replacement(
                context.negotiator, old, prefer_elsewhere=self.prefer_elsewhere
            )
        except NoOffer as exc:
            log.warning("lease %s: no replacement; keeping it: %s", old.id, exc)
            return
        if old.released_by_holder or old.state == LeaseState.RELEASED:
            # The holder let go while we looked: nobody wants the replacement.
            log.info("lease %s ended during renegotiation; releasing %s", old.id, new.id)
            await new.release()
            return
        if not old.is_active:
            # Revoked, expired or failed: there is nothing to make before breaking; the
            # replacement takes over at once (the log and the violation say so).
            log.warning(
                "lease %s was %s; switching to %s without make-before-break",
                old.id,
                old.state.value,
                new.id,
            )
        try:
            await context.switch(old, new)
        except BaseException:
            if old.replaced_by is not new:  # the switch did not happen: the new lease is nobody's
                with anyio.CancelScope(shield=True):
                    await new.release()
            raise


async def find_replacement(
    negotiator: Negotiator, old: Lease, *, prefer_elsewhere: bool = True
) -> Lease:
    """Quote the lease's contract again and commit the best offer (the old lease is kept).

    Raises :class:`~aicontract.NoOffer` when no offer can be committed.
    """
    contract = old.contract
    ends_at = old.ends_at
    round_ = await negotiator.quote(contract)
    offers: list[Offer] = list(round_.offers)
    if ends_at is not None:
        # A replacement serves the rest of the contract's term, not a new one: policy and
        # budget judge that much (TERM_LEFT), and it ends when the term does (below).
        left = f"{max(0.0, ends_at - negotiator.clock.time()):.3f}"
        offers = [replace(o, details={**o.details, TERM_LEFT: left}) for o in offers]
    if prefer_elsewhere:
        offers.sort(key=lambda o: (o.backend, o.region) == (old.backend.name, old.region))
    failures: list[Rejection] = []
    for offer in offers:
        try:
            new = await negotiator.commit(offer)
        except (
            CapacityUnavailable,
            TransientBackendError,
            QuotaExceeded,
            AuthenticationError,
        ) as exc:
            failures.append(
                Rejection(
                    backend=offer.backend,
                    requirement="capacity at commit",
                    wanted=offer.summary(),
                    available=str(exc),
                )
            )
            continue
        if ends_at is not None and new.ends_at is not None:
            new.extension += ends_at - new.ends_at
        log.info("lease %s: replacement %s committed", old.id, new)
        return new
    raise NoOffer(
        contract.name,
        [*round_.rejections, *failures],
        round_.counter_offers,
        reason="renegotiation found no replacement",
    )


_POLICIES: dict[str, Callable[[], Policy]] = {
    "notify": Notify,
    "renegotiate": Renegotiate,
    "release": Release,
}


def policy_for(name: str) -> Policy:
    """A fresh policy object for a contract's ``terms.on_violation``."""
    try:
        return _POLICIES[name]()
    except KeyError:
        raise ValueError(
            f"unknown violation policy {name!r}; expected {sorted(_POLICIES)}"
        ) from None
