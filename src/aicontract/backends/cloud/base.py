"""The shared half of every cloud backend: catalog → offers, launch → lease.

A provider adapter (a :class:`CloudBackend` subclass) answers five narrow
questions — what is in the catalog, launch this, find the instance carrying
this tag, describe it, terminate it. Everything else is written once here:

* offers from catalog entries (GPU model, count, per-GPU memory, vCPUs,
  memory, price per hour, region and its **jurisdiction**), pre-filtered with
  the same :func:`~aicontract.offer.check_offer` the negotiator applies and summarised
  into one rejection per failing requirement;
* a per-backend spend cap (``max_spend``, per hour, across live leases);
* rate limiting per provider, retries of transient errors only (tenacity);
* idempotent launch: each node is named by a tag derived from the commit's
  idempotency key, and every launch attempt first looks for an instance with
  that tag — a retried launch finds the instance it already made;
* polling to ready with exponential backoff, cleanup of everything launched
  when a commit fails (nothing leaks), terminate on release;
* the lease's endpoints (the instance's address and the workload's published
  ports) and env (``MASTER_ADDR``, ``NODE_RANK``... for multi-node training).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import math
from abc import abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, ClassVar, TypeVar

import anyio
import attrs
import msgspec
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from ...clock import Clock, system_clock
from ...contract import Contract, GuaranteeLevel
from ...errors import (
    BackendError,
    CapacityUnavailable,
    ConfigError,
    IdempotencyConflict,
    LeaseLost,
    QuotaExceeded,
    TransientBackendError,
)
from ...gpu_models import compute_capability_of
from ...leases import Lease
from ...observation import Fault, Observation
from ...offer import Grant, Offer, Quote, Rejection, check_offer, summarise_rejections
from ...units import Bytes, Money
from ...world import World
from ..base import Backend, fixed_ports_only, granted_lease, key_name, offer_details, rank_env
from ..gang import node_endpoints, procs_per_node, rendezvous_port, world_env
from .regions import jurisdiction_for

__all__ = [
    "CatalogEntry",
    "CloudBackend",
    "InstanceState",
    "InstanceView",
    "RateLimiter",
    "lease_tag",
    "node_env",
]

log = logging.getLogger("aicontract.backends.cloud")
T = TypeVar("T")


class CatalogEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One thing a provider sells in one region, as the adapter read it.

    ``price`` is per instance-hour; ``country`` is the region's ISO country
    (``None`` when unknown — then no jurisdiction requirement is satisfied).
    ``details`` is carried into the offer for the adapter's commit.
    """

    instance_type: str
    region: str
    country: str | None
    gpu_model: str | None
    gpus: int
    gpu_memory: Bytes | None
    vcpus: int
    memory: Bytes | None
    disk: Bytes | None = None
    price: Money | None
    guarantee: GuaranteeLevel = "allocated"
    preemptible: bool = False
    start_in: float = 0.0
    max_nodes: int | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)
    gpu_interconnect: str | None = None
    """How one instance's GPUs are linked to each other (see ``interconnect.py``)."""


class InstanceState(str, enum.Enum):
    """A provider instance's state, in the words the lease needs."""

    BOOTING = "booting"
    READY = "ready"
    UNHEALTHY = "unhealthy"
    PREEMPTED = "preempted"
    TERMINATED = "terminated"


class InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """What the provider says about one instance right now."""

    id: str
    state: InstanceState
    region: str
    public_ip: str | None = None
    private_ip: str | None = None
    raw_state: str = ""

    @property
    def address(self) -> str | None:
        """The address others reach it at: public if it has one, else private."""
        return self.public_ip or self.private_ip


@attrs.define
class RateLimiter:
    """At most ``rate`` calls per second on average, ``burst`` at once (a token bucket)."""

    rate: float
    burst: int = 1
    clock: Clock = attrs.field(default=system_clock, repr=False)
    _tokens: float = attrs.field(default=-1.0, repr=False)
    _updated: float = attrs.field(default=0.0, repr=False)
    _lock: anyio.Lock = attrs.field(factory=anyio.Lock, repr=False)

    async def acquire(self) -> None:
        """Wait until one more call is allowed."""
        if self.rate <= 0 or math.isinf(self.rate):
            return
        async with self._lock:
            while True:
                now = self.clock.monotonic()
                if self._tokens < 0:
                    self._tokens, self._updated = float(self.burst), now
                self._tokens = min(
                    float(self.burst), self._tokens + (now - self._updated) * self.rate
                )
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                await self.clock.sleep((1 - self._tokens) / self.rate)


def lease_tag(idempotency_key: str, *, prefix: str = "aicontract") -> str:
    """The name/tag a commit's instances carry: stable for a key, at most 56 characters.

    (Provider names allow 64; multi-node leases append ``-<rank>``.)
    """
    return key_name(idempotency_key, prefix=prefix, longest=56, keep=24, digest=20)


def node_env(lease: Lease, rank: int) -> dict[str, str]:
    """The env for node ``rank`` of a multi-node cloud lease (``lease.env`` is rank 0's)."""
    return rank_env(lease, rank, int(lease.details.get("nodes", "1")))


def _money(value: str | Money | None) -> Money | None:
    return Money(value) if isinstance(value, str) else value


def _at_least_one(value: int) -> int:
    return max(1, value)


@attrs.define(eq=False, slots=False, repr=False)
class CloudBackend(Backend):
    """Base of the cloud backends: turns a provider's catalog into offers and leases.

    Subclasses implement the provider hooks (``_list_catalog``, ``_find_instance``,
    ``_launch_instance``, ``_describe_instance``, ``_terminate_instances``) and
    set ``provider``. Its options (all keyword, all optional) are the fields below.
    """

    provider: ClassVar[str] = "cloud"
    default_listing_lag: ClassVar[float] = 0.0

    name: str = attrs.field(default="", kw_only=True)
    """The backend's name in offers and leases (default: the provider's)."""
    clock: Clock = attrs.field(default=system_clock, kw_only=True)
    max_spend: Money | None = attrs.field(default=None, converter=_money, kw_only=True)
    """Cap on the summed hourly price of this backend's leases not yet released
    (``"50 USD/h"``; a revoked lease's instances bill until it is released):
    offers that would exceed it are not made, and a commit that would is refused with
    :class:`~aicontract.QuotaExceeded`."""
    requests_per_second: float = attrs.field(default=1.0, kw_only=True)
    """The provider's rate limit on calls in general."""
    launch_interval: float = attrs.field(default=0.0, kw_only=True)
    """Seconds between two launches (the provider's rate limit on launches)."""
    attempts: int = attrs.field(default=4, converter=_at_least_one, kw_only=True)
    """Tries of a call that failed transiently (timeouts, 5xx, throttling); no other is retried."""
    retry_wait: float = attrs.field(default=0.5, kw_only=True)
    """The first pause between tries, doubled up to ``retry_wait_max``."""
    retry_wait_max: float = attrs.field(default=10.0, kw_only=True)
    ready_timeout: float = attrs.field(default=1200.0, kw_only=True)
    """How long a commit waits for a launched instance to be ready."""
    poll_interval: float = attrs.field(default=2.0, kw_only=True)
    """The first pause between looks at a launching instance, growing up to ``poll_max``."""
    poll_max: float = attrs.field(default=20.0, kw_only=True)
    offer_ttl: float = attrs.field(default=120.0, kw_only=True)
    """How long an offer stays valid."""
    lease_ttl: float = attrs.field(default=600.0, kw_only=True)
    """How far a renewal extends a lease."""
    catalog_ttl: float = attrs.field(default=30.0, kw_only=True)
    """How long a catalog read is reused."""
    max_nodes: int = attrs.field(default=8, converter=_at_least_one, kw_only=True)
    """The most instances one offer may combine to reach a GPU count."""
    listing_lag: float | None = attrs.field(default=None, kw_only=True)
    """How long the provider's instance list may lag a launch (default: the provider's).

    After a launch whose answer was lost, the instance is looked for that long before
    a relaunch (or, at cleanup, before giving up on it), so one lost answer never makes
    two instances. Providers whose launch takes an idempotency token (EC2's
    ``ClientToken``) need none."""

    def __attrs_post_init__(self) -> None:
        self.name = self.name or self.provider
        self._lag = self.default_listing_lag if self.listing_lag is None else self.listing_lag
        # tag -> when a launch for it failed with its outcome unknown (monotonic clock)
        self._unsure_launches: dict[str, float] = {}
        self._limiter = RateLimiter(self.requests_per_second, clock=self.clock)
        self._launch_limiter = RateLimiter(
            1.0 / self.launch_interval if self.launch_interval > 0 else 0.0, clock=self.clock
        )
        self._catalog: list[CatalogEntry] | None = None
        self._catalog_at = -math.inf
        self._catalog_lock = anyio.Lock()
        self._leases: dict[str, Lease] = {}
        self._committed: dict[str, tuple[str, ...]] = {}  # key -> what its offer was
        self._pending: dict[str, Money] = {}
        self._key_locks: dict[str, anyio.Lock] = {}
        self._spend_lock = anyio.Lock()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} provider={self.provider!r}>"

    # -- provider hooks --------------------------------------------------------------------

    @abstractmethod
    async def _list_catalog(self) -> list[CatalogEntry]:
        """Every (instance type, region) the provider can launch now, priced."""

    async def _contract_entries(self, contract: Contract) -> list[CatalogEntry]:
        """Entries that depend on the contract (time-boxed reservations); none by default."""
        return []

    @abstractmethod
    async def _find_instance(self, tag: str, region: str) -> InstanceView | None:
        """The live (not terminated) instance carrying ``tag``, if any."""

    @abstractmethod
    async def _launch_instance(self, offer: Offer, tag: str) -> str:
        """Launch one instance for ``offer``, named/tagged ``tag``; return its id."""

    @abstractmethod
    async def _describe_instance(self, instance_id: str, region: str) -> InstanceView | None:
        """The instance's state, or ``None`` when the provider no longer knows it."""

    @abstractmethod
    async def _terminate_instances(self, instance_ids: Sequence[str], region: str) -> None:
        """Terminate instances; ids already gone are not an error."""

    def _check_ready_to_quote(self) -> None:
        """Raise when the backend cannot quote at all (no credentials)."""

    # -- shared machinery ------------------------------------------------------------------

    async def _retrying(
        self, call: Callable[[], Awaitable[T]], *, limiter: RateLimiter | None = None
    ) -> T:
        """Run ``call`` under the rate limit, retrying transient errors only."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_random_exponential(multiplier=self.retry_wait, max=self.retry_wait_max),
            retry=retry_if_exception_type(TransientBackendError),
            sleep=self.clock.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                await self._limiter.acquire()
                if limiter is not None:
                    await limiter.acquire()
                return await call()
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def catalog(self) -> list[CatalogEntry]:
        """The provider's catalog, reused for ``catalog_ttl`` seconds."""
        async with self._catalog_lock:
            now = self.clock.monotonic()
            if self._catalog is None or now - self._catalog_at > self.catalog_ttl:
                self._catalog = await self._retrying(self._list_catalog)
                self._catalog_at = now
            return list(self._catalog)

    def _nodes_for(self, entry: CatalogEntry, contract: Contract) -> int:
        gpus = contract.resources.gpus
        if gpus is None or entry.gpus <= 0:
            return 1
        most = min(self.max_nodes, entry.max_nodes or self.max_nodes)
        for nodes in range(1, most + 1):
            if nodes * entry.gpus in gpus.count:
                return nodes
        return 1

    def _offer(self, entry: CatalogEntry, contract: Contract, now: float) -> Offer:
        nodes = self._nodes_for(entry, contract)
        model = _model_name(entry.gpu_model, entry.gpu_memory, contract)
        grant = Grant(
            gpus=entry.gpus * nodes,
            gpu_model=model,
            gpu_memory=entry.gpu_memory,
            gpu_compute_capability=(
                compute_capability_of(entry.gpu_model) if entry.gpu_model else None
            ),
            # Several instances' GPUs meet over the network: no NVLink or PCIe between all.
            gpu_interconnect=entry.gpu_interconnect if nodes == 1 else None,
            cpus=entry.vcpus * nodes,
            memory=entry.memory * nodes if entry.memory is not None else None,
            disk=entry.disk * nodes if entry.disk is not None else None,
        )
        price = (
            Money.per_hour(entry.price.amount * nodes, entry.price.currency)
            if entry.price is not None
            else None
        )
        details = {
            **entry.details,
            "instance_type": entry.instance_type,
            "nodes": str(nodes),
            "gpus_per_node": str(entry.gpus),
            "country": entry.country or "unknown",
        }
        ident = "|".join(
            [
                self.name,
                entry.instance_type,
                entry.region,
                str(nodes),
                entry.details.get("offering_id", ""),
            ]
        )
        return Offer(
            id=f"{self.name}-{hashlib.sha256(ident.encode()).hexdigest()[:16]}",
            backend=self.name,
            contract=contract,
            grant=grant,
            guarantee=entry.guarantee,
            region=entry.region,
            jurisdiction=jurisdiction_for(entry.country, contract.placement.jurisdictions),
            provider=self.provider,
            isolation="dedicated-node",
            price=price,
            expires_at=now + self.offer_ttl,
            start_in=entry.start_in,
            preemptible=entry.preemptible,
            details=details,
        )

    def _spend(self) -> list[Money]:
        # Every lease not yet released counts, revoked or expired ones too: an unhealthy
        # instance revokes its lease but runs (and bills) until release terminates it.
        spent = [
            Money(lease.details["price"])
            for lease in self._leases.values()
            if "price" in lease.details
        ]
        return spent + list(self._pending.values())

    def _spend_problem(self, price: Money | None) -> str | None:
        """Why committing something at ``price`` would break ``max_spend`` (or ``None``)."""
        cap = self.max_spend
        if cap is None:
            return None
        if price is None or price.currency != cap.currency:
            return f"an offer priced in {cap.currency}"
        total = sum((m.amount for m in self._spend() if m.currency == cap.currency), Decimal(0))
        if total + price.amount > cap.amount:
            return f"{total} {cap.currency}/h already committed"
        return None

    async def quote(self, contract: Contract) -> Quote:
        """Offers from the catalog that satisfy ``contract``, and why the rest do not."""
        refused = fixed_ports_only(self.name, contract)
        if refused is not None:
            return refused
        self._check_ready_to_quote()
        entries = await self.catalog()
        entries += await self._contract_entries(contract)
        now = self.clock.time()
        offers: list[Offer] = []
        problems: dict[str, list[Rejection]] = {}
        for entry in entries:
            offer = self._offer(entry, contract, now)
            found = check_offer(offer, contract, now)
            spend = self._spend_problem(offer.price)
            if spend is not None:
                found.append(
                    Rejection.of(
                        self.name, "backend.max_spend", f"at most {self.max_spend} in all", spend
                    )
                )
            if offer.price is None:
                found.append(Rejection.of(self.name, "price", "a known price", "unpriced"))
            if found:
                for rejection in found:
                    problems.setdefault(rejection.requirement, []).append(rejection)
            else:
                offers.append(offer)
        if not entries:
            problems["capacity"] = [
                Rejection.of(
                    self.name, "capacity", "an instance type with capacity", "none available now"
                )
            ]
        rejections = (
            ()
            if offers
            else tuple(summarise_rejections(self.name, problems, most=8, sep=", ", last=" and "))
        )
        return Quote(offers=tuple(offers), rejections=rejections)

    # -- commit ----------------------------------------------------------------------------

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        """Launch the offer's instances, wait until ready, return an active lease.

        Idempotent on ``idempotency_key``: the same key returns the same lease
        (in this process) or finds the instances by tag (across processes).
        """
        self._refuse_foreign(offer)
        lock = self._key_locks.setdefault(idempotency_key, anyio.Lock())
        async with lock:
            existing = self._leases.get(idempotency_key)
            if existing is not None and not existing.state.is_final:
                if self._committed.get(idempotency_key) != _offer_substance(offer):
                    # Returning the lease would lie: it holds what the first offer asked for.
                    raise IdempotencyConflict(
                        self.name,
                        f"key {idempotency_key!r} already committed"
                        f" {existing.grant.describe()} in {existing.region}"
                        f" ({existing.details.get('instance_type', '?')}); this offer is"
                        f" {offer.summary()}: use a new key for a different offer",
                    )
                return existing
            if offer.expires_at <= self.clock.time():
                raise CapacityUnavailable(self.name, f"offer {offer.id} has expired")
            async with self._spend_lock:
                problem = self._spend_problem(offer.price)
                if problem is not None:
                    raise QuotaExceeded(
                        self.name, f"max_spend {self.max_spend} would be exceeded ({problem})"
                    )
                if offer.price is not None:
                    self._pending[idempotency_key] = offer.price
            try:
                lease = await self._commit(offer, idempotency_key)
            finally:
                self._pending.pop(idempotency_key, None)
            self._leases[idempotency_key] = lease
            self._committed[idempotency_key] = _offer_substance(offer)
            log.info("%s: committed %s as lease %s", self.name, offer.summary(), lease.id)
            return lease

    async def _commit(self, offer: Offer, key: str) -> Lease:
        """The per-market hook of :meth:`commit`: make the lease for ``offer``.

        :meth:`commit` has already taken the key's lock and reserved the offer's
        price against ``max_spend``. By default: launch every node idempotently,
        wait until ready, and clean up on any failure. A market that works
        differently (AWS Capacity Blocks: buy a reservation) overrides this, and only this.
        """
        tag = lease_tag(key)
        nodes = int(offer.details.get("nodes", "1"))
        tags = [tag] if nodes == 1 else [f"{tag}-{rank}" for rank in range(nodes)]
        # The contract's start_by bounds the whole commit, launch included: an instance
        # still booting then is no lease the contract accepts (and it bills meanwhile).
        start_by = offer.contract.terms.start_by
        limit, why = self.ready_timeout, f"ready_timeout {self.ready_timeout:g}s"
        if start_by is not None and start_by.seconds < limit:
            limit, why = start_by.seconds, f"the contract's start_by ({start_by})"
        deadline = self.clock.monotonic() + limit
        # What was launched, by id: the provider's list may not show it yet (Lambda's
        # lags a launch), so a cleanup that only looked by tag would orphan it.
        launched: list[str] = []
        try:
            for node_tag in tags:
                launched.append(await self._launch_idempotent(offer, node_tag))
            views = await self._wait_ready(launched, offer.region, deadline=deadline, why=why)
        except BaseException as exc:
            await self._cleanup(tags, offer.region, reason=type(exc).__name__, known=launched)
            raise
        return self._lease(offer, key, tag, views)

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:
        """Terminate whatever a commit under ``idempotency_key`` launched (found by tag)."""
        self._leases.pop(idempotency_key, None)
        self._committed.pop(idempotency_key, None)
        tag = lease_tag(idempotency_key)
        nodes = int(offer.details.get("nodes", "1"))
        tags = [tag] if nodes == 1 else [f"{tag}-{rank}" for rank in range(nodes)]
        await self._cleanup(tags, offer.region, reason="commit abandoned")

    async def _launch_idempotent(self, offer: Offer, tag: str) -> str:
        async def attempt() -> str:
            found = await self._find_instance(tag, offer.region)
            if found is None and tag in self._unsure_launches:
                # The last launch may have worked with its answer lost, and the list may
                # not show it yet: look until the lag has passed before launching again.
                found = await self._await_listing(tag, offer.region)
            if found is not None:
                log.info("%s: found instance %s already launched as %s", self.name, found.id, tag)
                self._unsure_launches.pop(tag, None)
                return found.id
            # Unsure from the moment the request may leave: a timeout, a garbled answer or a
            # cancellation (start_by, Ctrl-C) mid-call can each follow a launch that worked.
            self._unsure_launches[tag] = self.clock.monotonic()
            try:
                instance_id = await self._launch_instance(offer, tag)
            except TransientBackendError:
                raise
            except (BackendError, ConfigError):
                # The provider said no (capacity, quota, credentials), or the request never
                # left (configuration): nothing was made.
                self._unsure_launches.pop(tag, None)
                raise
            self._unsure_launches.pop(tag, None)
            return instance_id

        return await self._retrying(attempt, limiter=self._launch_limiter)

    async def _await_listing(self, tag: str, region: str) -> InstanceView | None:
        """Poll for ``tag``'s instance until ``listing_lag`` has passed since its unsure launch."""
        until = self._unsure_launches[tag] + self._lag
        delay = self.poll_interval
        while (remaining := until - self.clock.monotonic()) > 0:
            await self.clock.sleep(min(delay, remaining))
            delay = min(self.poll_max, delay * 2)
            found = await self._retrying(lambda: self._find_instance(tag, region))
            if found is not None:
                return found
        return None

    async def _wait_ready(
        self, ids: Sequence[str], region: str, *, deadline: float, why: str
    ) -> list[InstanceView]:
        """Poll until every instance is ready; give up at ``deadline`` (monotonic)."""
        delay = self.poll_interval
        views: dict[str, InstanceView] = {}
        while True:
            for instance_id in ids:
                if instance_id in views:
                    continue
                view = await self._retrying(
                    lambda i=instance_id: self._describe_instance(i, region)  # type: ignore[misc]
                )
                if view is None or view.state in (
                    InstanceState.TERMINATED,
                    InstanceState.PREEMPTED,
                ):
                    state = view.raw_state if view is not None else "gone"
                    raise CapacityUnavailable(
                        self.name, f"instance {instance_id} went {state} while booting"
                    )
                if view.state == InstanceState.READY:
                    views[instance_id] = view
            if len(views) == len(ids):
                return [views[i] for i in ids]
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                raise CapacityUnavailable(
                    self.name,
                    f"instances {', '.join(ids)} were not ready within {why}",
                )
            await self.clock.sleep(min(delay, remaining))
            delay = min(self.poll_max, delay * 2)

    async def _cleanup(
        self, tags: Sequence[str], region: str, *, reason: str, known: Sequence[str] = ()
    ) -> None:
        """Terminate whatever a failed commit launched (bounded, shielded): the ``known``
        instance ids, and what carries the tags beyond those."""
        with anyio.CancelScope(shield=True), anyio.move_on_after(60):
            ids: list[str] = list(known)
            for tag in tags[len(known) :]:
                try:
                    found = await self._retrying(lambda t=tag: self._find_instance(t, region))  # type: ignore[misc]
                except BackendError as exc:
                    log.warning("%s: cleanup could not look up %s: %s", self.name, tag, exc)
                    continue
                if found is None and tag in self._unsure_launches:
                    try:
                        found = await self._await_listing(tag, region)
                    except BackendError as exc:
                        log.warning("%s: cleanup could not look up %s: %s", self.name, tag, exc)
                self._unsure_launches.pop(tag, None)
                if found is not None and found.id not in ids:
                    ids.append(found.id)
            if ids:
                log.warning("%s: commit failed (%s); terminating %s", self.name, reason, ids)
                try:
                    await self._retrying(lambda: self._terminate_instances(ids, region))
                except BackendError as exc:
                    log.error(
                        "%s: could not terminate %s after a failed commit: %s", self.name, ids, exc
                    )

    def _lease(self, offer: Offer, key: str, tag: str, views: Sequence[InstanceView]) -> Lease:
        contract = offer.contract
        endpoints = node_endpoints([v.address or "" for v in views], contract)
        nodes = len(views)
        per_node = int(offer.details.get("gpus_per_node", str(offer.grant.gpus)))
        world = World(
            master_addr=views[0].private_ip or endpoints["host"],
            master_port=rendezvous_port(contract),
            nodes=nodes,
            procs_per_node=procs_per_node(contract, per_node),
        )
        lease_id = self._lease_id(tag)
        details = {
            "provider": self.provider,
            "instance_ids": ",".join(v.id for v in views),
            "instance_type": offer.details.get("instance_type", ""),
            "nodes": str(nodes),
            "tag": tag,
            **offer_details(offer),
        }
        return granted_lease(
            self,
            offer,
            lease_id,
            guarantee=offer.guarantee,
            expires_at=self.clock.time() + self.lease_ttl,
            endpoints=endpoints,
            env={
                **world_env(world, [v.private_ip or v.address or "" for v in views]),
                "AICONTRACT_LEASE_ID": lease_id,
            },
            details=details,
            world=world,
        )

    def _lease_id(self, tag: str) -> str:
        """The id of the lease whose instances (or reservation) carry ``tag``."""
        return f"{self.name}-{tag.removeprefix('aicontract-')}"

    # -- life of a lease -------------------------------------------------------------------

    def _instance_ids(self, lease: Lease) -> list[str]:
        return [i for i in lease.details.get("instance_ids", "").split(",") if i]

    async def _faults(self, lease: Lease) -> list[Fault]:
        faults: list[Fault] = []
        now = self.clock.time()
        for instance_id in self._instance_ids(lease):
            view = await self._retrying(
                lambda i=instance_id: self._describe_instance(i, lease.region)  # type: ignore[misc]
            )
            if view is None or view.state == InstanceState.TERMINATED:
                state = view.raw_state if view is not None else "gone"
                faults.append(
                    Fault(
                        kind="capacity-revoked", at=now, reason=f"instance {instance_id} is {state}"
                    )
                )
            elif view.state == InstanceState.PREEMPTED:
                faults.append(
                    Fault(kind="preempted", at=now, reason=f"instance {instance_id} was preempted")
                )
            elif view.state == InstanceState.UNHEALTHY:
                faults.append(
                    Fault(
                        kind="node-lost",
                        at=now,
                        reason=f"instance {instance_id} is {view.raw_state}",
                    )
                )
        return faults

    async def renew(self, lease: Lease) -> float:
        """Check the instances are still there and healthy; extend the lease's expiry."""
        faults = await self._faults(lease)
        if faults:
            raise LeaseLost(lease.id, "; ".join(f.reason for f in faults))
        return self.clock.time() + self.lease_ttl

    async def observe(self, lease: Lease) -> Observation:
        """Provider faults for the lease's instances; a fault revokes the lease."""
        faults = await self._faults(lease)
        if faults:
            lease.revoke("; ".join(f.reason for f in faults))
        return Observation(faults=tuple(faults))

    async def release(self, lease: Lease) -> None:
        """Terminate the lease's instances. Safe to repeat."""
        ids = self._instance_ids(lease)
        if ids:
            await self._retrying(lambda: self._terminate_instances(ids, lease.region))
            log.info("%s: lease %s released; terminated %s", self.name, lease.id, ids)
        for key, held in list(self._leases.items()):
            if held is lease:
                del self._leases[key]
                self._committed.pop(key, None)


def _offer_substance(offer: Offer) -> tuple[str, ...]:
    """What makes two offers the same commit: region, instance type, nodes, market."""
    details = offer.details
    return (
        offer.region,
        details.get("instance_type", ""),
        details.get("nodes", "1"),
        details.get("market", ""),
        details.get("offering_id", ""),
    )


def _model_name(family: str | None, memory: Bytes | None, contract: Contract) -> str | None:
    """The GPU model as the contract spells it (``A100-80GB`` for an 80 GiB A100)."""
    gpus = contract.resources.gpus
    if family is None or gpus is None or not gpus.models:
        return family
    aliases = {family.lower()}
    if memory is not None:
        gib = int(memory.bytes // 2**30)
        aliases |= {
            f"{family}-{gib}GB".lower(),
            f"{family}-{gib}G".lower(),
            f"{family}-{gib}GiB".lower(),
            f"{family} {gib}GB".lower(),
        }
    for wanted in gpus.models:
        if wanted.lower() in aliases:
            return wanted
    return family


def gib(value: float | int | Decimal) -> Bytes:
    """``value`` GiB as :class:`~aicontract.units.Bytes`."""
    return Bytes(f"{Decimal(str(value)).normalize():f}GiB")


def mib(value: int) -> Bytes:
    """``value`` MiB as :class:`~aicontract.units.Bytes`, printed in GiB when whole."""
    return gib(value // 1024) if value % 1024 == 0 else Bytes(f"{value}MiB")


def as_str(value: Any) -> str:
    """``value`` as text for details/env."""
    return value if isinstance(value, str) else str(value)
