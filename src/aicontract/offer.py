"""Offers: a backend's concrete, priced, time-limited answer to a contract — or why not."""

from __future__ import annotations

import msgspec

from .contract import Contract, GuaranteeLevel, Isolation
from .units import Bytes, Money

__all__ = ["Grant", "Offer", "Quote", "Rejection"]


class Grant(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Concrete values a backend would grant (an offer) or has granted (a lease).

    The ``gpu_*`` properties are what the negotiator checks the contract's GPU
    requirements against; a backend that cannot state one (``None``) never
    satisfies a contract that requires it.
    """

    gpus: int = 0
    gpu_model: str | None = None
    gpu_memory: Bytes | None = None
    gpu_compute_capability: str | None = None
    gpu_interconnect: str | None = None
    gpu_mig: str | None = None
    cpus: int = 0
    memory: Bytes | None = None
    disk: Bytes | None = None

    def describe(self) -> str:
        """One line: ``8 x H100 (80GiB), 32 CPUs, 256GiB``."""
        parts = []
        if self.gpus:
            memory = f" ({self.gpu_memory})" if self.gpu_memory else ""
            parts.append(f"{self.gpus} x {self.gpu_model or 'GPU'}{memory}")
        if self.cpus:
            parts.append(f"{self.cpus} CPUs")
        if self.memory is not None:
            parts.append(f"{self.memory} memory")
        if self.disk is not None:
            parts.append(f"{self.disk} disk")
        return ", ".join(parts) or "nothing"


class Offer(msgspec.Struct, frozen=True, kw_only=True):
    """A backend's concrete answer to a contract, valid until ``expires_at``.

    ``details`` carries what the backend needs to commit it (a node, an
    instance type); the negotiator never reads it.
    """

    id: str
    backend: str
    contract: Contract
    grant: Grant
    guarantee: GuaranteeLevel
    region: str
    jurisdiction: str | None
    provider: str
    isolation: Isolation
    price: Money | None
    expires_at: float
    start_in: float = 0.0
    preemptible: bool = False
    details: dict[str, str] = msgspec.field(default_factory=dict)

    def summary(self) -> str:
        """One line for tables, logs and counter-offers."""
        price = f", {self.price}" if self.price is not None else ""
        where = self.region + (f"/{self.jurisdiction}" if self.jurisdiction else "")
        return f"{self.backend}: {self.grant.describe()} in {where} [{self.guarantee}{price}]"


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """Why a backend (or the negotiator, on its behalf) could not offer.

    ``requirement`` is the contract path that failed (``resources.gpus.count``),
    ``wanted`` what the contract asks and ``available`` what there is.
    """

    backend: str
    requirement: str
    wanted: str
    available: str

    def __str__(self) -> str:
        return f"{self.backend}: {self.requirement} wants {self.wanted}; has {self.available}"


class Quote(msgspec.Struct, frozen=True, kw_only=True):
    """A backend's whole answer: offers, and the reasons for what it could not offer.

    ``counter_offers`` relax the contract to what the backend has now (fewer
    GPUs, another model); they are never committed unless a caller asks.
    """

    offers: tuple[Offer, ...] = ()
    rejections: tuple[Rejection, ...] = ()
    counter_offers: tuple[Offer, ...] = ()
