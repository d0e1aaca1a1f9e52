"""Helpers for the monitor's tests: a fake backend that never over-grants, contracts.

The fake backend has a fixed number of GPUs and refuses a commit that would
lease more than it has (guarantee 1), recording the most it ever had leased so
a test can check no over-grant happened. Every commit and release is logged in
order, and ``on_event`` hooks let a test check invariants at those instants.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from aicontract import GPU, Contract, Objective, Terms
from aicontract.backends.base import Backend
from aicontract.clock import VirtualClock
from aicontract.errors import CapacityUnavailable, LeaseLost
from aicontract.leases import Lease
from aicontract.observation import Observation
from aicontract.offer import Grant, Offer, Quote, Rejection


class FakeBackend(Backend):
    """An in-memory backend with ``gpus`` GPUs that never over-grants."""

    def __init__(
        self,
        clock: VirtualClock,
        *,
        name: str = "fake",
        gpus: int = 2,
        region: str = "local",
        ttl: float = 3600.0,
    ) -> None:
        self.name = name
        self.clock = clock
        self.capacity = gpus
        self.region = region
        self.ttl = ttl
        self.leases: dict[str, Lease] = {}
        self.by_key: dict[str, Lease] = {}
        self.max_in_use = 0
        self.events: list[tuple[str, str, float]] = []
        self.on_event: list[Callable[[str, Lease], None]] = []
        self.observations: list[Observation] = []
        self.renewals = 0
        self.refuse_renewal = False
        self._ids = itertools.count(1)

    @property
    def in_use(self) -> int:
        return sum(lease.grant.gpus for lease in self.leases.values())

    def active(self, lease_id: str) -> bool:
        return lease_id in self.leases

    def endpoint_owner(self, url: str) -> str | None:
        for lease in self.leases.values():
            if url in lease.endpoints.values():
                return lease.id
        return None

    def _wanted(self, contract: Contract) -> int:
        gpus = contract.resources.gpus
        if gpus is None:
            return 0
        return gpus.count.min or 1

    async def quote(self, contract: Contract) -> Quote:
        wanted = self._wanted(contract)
        free = self.capacity - self.in_use
        if wanted > free:
            why = Rejection(
                backend=self.name,
                requirement="resources.gpus",
                wanted=str(wanted),
                available=f"{free} free",
            )
            return Quote(rejections=(why,))
        offer = Offer(
            id=f"{self.name}-offer-{next(self._ids)}",
            backend=self.name,
            contract=contract,
            grant=Grant(gpus=wanted, gpu_model="H100" if wanted else None),
            guarantee="allocated",
            region=self.region,
            jurisdiction=None,
            provider=self.name,
            isolation="shared",
            price=None,
            expires_at=self.clock.time() + 60,
        )
        return Quote(offers=(offer,))

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        if idempotency_key in self.by_key:
            return self.by_key[idempotency_key]
        if offer.grant.gpus > self.capacity - self.in_use:
            raise CapacityUnavailable(self.name, "taken meanwhile")
        lease_id = f"{self.name}-{next(self._ids)}"
        lease = Lease(
            id=lease_id,
            contract=offer.contract,
            grant=offer.grant,
            backend=self,
            guarantee="allocated",
            expires_at=self.clock.time() + self.ttl,
            region=self.region,
            endpoints={"http": f"http://{lease_id}.invalid"},
            clock=self.clock,
        )
        self.leases[lease_id] = lease
        self.by_key[idempotency_key] = lease
        self.max_in_use = max(self.max_in_use, self.in_use)
        assert self.in_use <= self.capacity
        self._event("commit", lease)
        return lease

    async def renew(self, lease: Lease) -> float:
        if self.refuse_renewal or lease.id not in self.leases:
            raise LeaseLost(lease.id, "not renewable here")
        self.renewals += 1
        return self.clock.time() + self.ttl

    async def release(self, lease: Lease) -> None:
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


def service_contract(
    *objectives: Objective, policy: str = "notify", per_hour: int = 3, **terms: Any
) -> Contract:
    """A one-GPU contract with the given objectives and violation policy."""
    return Contract(
        name="svc",
        resources={"gpus": GPU(count=1)},
        objectives=list(objectives),
        terms=Terms(on_violation=policy, max_renegotiations_per_hour=per_hour, **terms),
    )


def states(lease: Lease) -> dict[str, str]:
    return {k: v.value for k, v in lease.objective_states.items()}
