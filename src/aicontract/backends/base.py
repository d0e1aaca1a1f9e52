"""The one extension point for capacity: a :class:`Backend`.

A backend answers five questions and nothing else. The negotiator does the
rest — fan-out, filtering (placement and guarantee are checked there, never
trusted to a backend), ranking, retries and fail-over — so a backend stays
small and honest about what it has.
"""

from __future__ import annotations

import hashlib
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TypeVar

from ..clock import Clock, system_clock
from ..contract import Contract, GuaranteeLevel
from ..errors import CapacityUnavailable
from ..governance.identity import Identity, local_identity
from ..leases import Lease
from ..observation import Observation
from ..offer import Offer, Quote, Rejection
from ..world import World

__all__ = [
    "Backend",
    "fixed_ports_only",
    "granted_lease",
    "key_name",
    "lease_env",
    "offer_details",
    "rank_env",
]

_B = TypeVar("_B", bound="Backend")

_NAME_UNSAFE = re.compile(r"[^a-z0-9-]+")


def fixed_ports_only(backend: str, contract: Contract) -> Quote | None:
    """A refusal for a contract with ``auto`` ports, from a backend that cannot grant ports.

    Only the local backend keeps ports as capacity; elsewhere a workload's ports
    must be numbers, and saying so at quote time beats a bad pod spec or an
    endpoint ending in ``:auto``.
    """
    workload = contract.workload
    if workload is None or not workload.auto_ports:
        return None
    return Quote(
        rejections=(
            Rejection(
                backend=backend,
                requirement="workload.ports",
                wanted=", ".join(f"{name}: auto" for name in workload.auto_ports),
                available="fixed port numbers only",
            ),
        )
    )


def key_name(idempotency_key: str, *, prefix: str, longest: int, keep: int, digest: int) -> str:
    """A provider-safe name for what a commit under ``idempotency_key`` makes: stable, short.

    A key that is already safe keeps its text (``{prefix}-{key}``, at most ``longest``
    characters); any other is cleaned, cut to ``keep`` characters and suffixed with
    ``digest`` hex digits of its SHA-256, so two keys never share a name.
    """
    clean = _NAME_UNSAFE.sub("-", idempotency_key.lower()).strip("-")
    name = f"{prefix}-{clean}"
    if len(name) > longest or clean != idempotency_key:
        hashed = hashlib.sha256(idempotency_key.encode()).hexdigest()[:digest]
        name = f"{prefix}-{clean[:keep]}-{hashed}".replace("--", "-")
    return name


def lease_env(contract: Contract, lease_id: str, *more: Mapping[str, str]) -> dict[str, str]:
    """What a lease's workload sees: its own env, the lease's id, then ``more`` (a backend's)."""
    workload = contract.workload
    env = {**(workload.env if workload is not None else {}), "AICONTRACT_LEASE_ID": lease_id}
    for extra in more:
        env.update(extra)
    return env


def offer_details(offer: Offer) -> dict[str, str]:
    """The lease details that name the offer it was committed from, and its price if any."""
    details = {"offer": offer.id}
    if offer.price is not None:
        details["price"] = str(offer.price)
    return details


def granted_lease(
    backend: Backend,
    offer: Offer,
    lease_id: str,
    *,
    guarantee: GuaranteeLevel,
    expires_at: float,
    env: dict[str, str],
    details: dict[str, str],
    ends_at: float | None = None,
    endpoints: dict[str, str] | None = None,
    world: World | None = None,
    created_at: float = 0.0,
    where: tuple[str, str | None] | None = None,
) -> Lease:
    """The lease ``backend`` hands back for the committed ``offer``: its contract and grant.

    It expires at ``expires_at``, or at ``ends_at`` (the end of its term) if that
    comes first; it lies where the offer said, unless ``where`` (region,
    jurisdiction) says where it landed instead (the node a scheduler picked).
    """
    region, jurisdiction = (offer.region, offer.jurisdiction) if where is None else where
    return Lease(
        id=lease_id,
        contract=offer.contract,
        grant=offer.grant,
        backend=backend,
        guarantee=guarantee,
        expires_at=expires_at if ends_at is None else min(expires_at, ends_at),
        region=region,
        jurisdiction=jurisdiction,
        endpoints={} if endpoints is None else endpoints,
        env=env,
        details=details,
        world=world,
        clock=backend.clock,
        created_at=created_at,
    )


def rank_env(lease: Lease, rank: int, nodes: int) -> dict[str, str]:
    """The env for node ``rank`` of a ``nodes``-node lease (``lease.env`` is rank 0's)."""
    if not 0 <= rank < nodes:
        raise ValueError(f"rank {rank} is outside 0..{nodes - 1}")
    return {**lease.env, "NODE_RANK": str(rank)}


class Backend(ABC):
    """Where capacity comes from: this host, a Kubernetes cluster, a cloud.

    ``commit`` must be idempotent on ``idempotency_key``: committing the same
    key twice (a retry after a timeout) returns the same lease, never a second
    one. ``renew`` returns the new expiry (epoch seconds) or raises
    :class:`~aicontract.LeaseLost`; ``release`` is safe to repeat.
    Transient failures raise :class:`~aicontract.TransientBackendError`; a lost
    race for the offered capacity raises :class:`~aicontract.CapacityUnavailable`.

    A backend is an async context manager: ``async with LocalBackend() as b:``
    closes it (:meth:`aclose`) on the way out.
    """

    name: str = "backend"
    clock: Clock = system_clock
    """Where the backend reads the time; the leases it grants carry it."""

    @abstractmethod
    async def quote(self, contract: Contract) -> Quote:
        """Offers for ``contract`` (and, for what cannot be offered, why)."""

    @abstractmethod
    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        """Turn one of this backend's offers into an active lease."""

    @abstractmethod
    async def renew(self, lease: Lease) -> float:
        """Extend ``lease``; return its new expiry."""

    @abstractmethod
    async def release(self, lease: Lease) -> None:
        """Free everything ``lease`` holds."""

    def quote_now(self, contract: Contract) -> Quote | None:
        """:meth:`quote` when it can be answered at once, without awaiting anything, else
        ``None`` (the default). The negotiator asks this first: an answer that cannot
        wait needs no timer, and a timer costs more than a local quote's own work."""
        return None

    def release_now(self, lease: Lease) -> bool:
        """:meth:`release` when it can be done at once, without awaiting anything:
        ``True`` once done, ``False`` (the default) when :meth:`release` must run, shielded
        from cancellation."""
        return False

    def _refuse_foreign(self, offer: Offer) -> None:
        """Refuse, in :meth:`commit`, an offer that another backend made."""
        if offer.backend != self.name:
            raise CapacityUnavailable(
                self.name, f"offer {offer.id} is from {offer.backend}, not {self.name}"
            )

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:  # noqa: B027
        """Undo a commit whose outcome is unknown (retries ran out on transient errors).

        The last attempt may have succeeded where the reply was lost; a backend
        that can find a commit by its key frees it here, so the negotiator can move
        on to the next offer without leaving a lease that nobody holds. The
        default does nothing: a backend that cannot find commits by key relies on
        its leases' TTL.
        """

    async def observe(self, lease: Lease) -> Observation:
        """Samples and faults for ``lease`` right now (none, unless the backend can see any)."""
        return Observation()

    async def identity(self) -> Identity:
        """Who this backend acts as for the caller (default: this process's OS user and groups).

        Kubernetes backends answer with the namespace and service account, cloud
        backends with the account; a policy maps identities to tenants.
        """
        return local_identity()

    async def aclose(self) -> None:  # noqa: B027 - optional hook, nothing to close by default
        """Close connections and files the backend holds (safe to repeat)."""

    async def __aenter__(self: _B) -> _B:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        # Close whatever happened in the block; its exception propagates as it is.
        await self.aclose()
