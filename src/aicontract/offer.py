"""Offers: a backend's concrete, priced, time-limited answer to a contract — or why not."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from .contract import (
    GUARANTEE_ORDER,
    INTERCONNECT_ORDER,
    ISOLATION_ORDER,
    Contract,
    GuaranteeLevel,
    Isolation,
)
from .gpu_models import capability
from .units import Bytes, Money

__all__ = [
    "Grant",
    "Offer",
    "Quote",
    "Rejection",
    "check_offer",
    "interconnect_meets",
    "summarise_rejections",
]


class Grant(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Concrete values a backend would grant (an offer) or has granted (a lease).

    The ``gpu_*`` properties are what the negotiator checks the contract's GPU
    requirements against; a backend that cannot state one (``None``) never
    satisfies a contract that requires it.

    ``gpu_interconnect`` is the weakest link between the granted GPUs (``nvlink``
    or ``pcie``; ``None`` for one GPU or when unknown). ``numa_nodes`` are the
    NUMA nodes that the granted GPUs, CPUs and memory all sit on — stated only
    when the backend placed them there, empty otherwise.
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
    numa_nodes: tuple[int, ...] = ()
    alternative: int | None = None
    """Which of the contract's choices this serves: ``None`` for ``resources``, ``i`` for
    ``alternatives[i]`` (set by the negotiator; backends quote one choice at a time)."""
    nodes: int = 1
    """How many nodes the grant spans; the other values are what *each* node gets."""

    @property
    def total_gpus(self) -> int:
        """GPUs over every node of the grant (``gpus`` is per node): what a quota counts."""
        return self.gpus * self.nodes

    def describe(self) -> str:
        """One line: ``8 x H100 (80GiB), 32 CPUs, 256GiB``."""
        parts = []
        if self.gpus:
            memory = f" ({self.gpu_memory.human()})" if self.gpu_memory else ""
            parts.append(f"{self.gpus} x {self.gpu_model or 'GPU'}{memory}")
        if self.cpus:
            parts.append(f"{self.cpus} CPU{'' if self.cpus == 1 else 's'}")
        if self.memory is not None:
            parts.append(f"{self.memory.human()} memory")
        if self.disk is not None:
            parts.append(f"{self.disk.human()} disk")
        described = ", ".join(parts) or "nothing"
        if self.nodes != 1:
            described = f"{self.nodes} nodes x ({described})"
        if self.alternative is not None:
            described += f" (alternatives[{self.alternative}])"
        return described


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
        line = f"{self.backend}: {self.grant.describe()} in {where} [{self.guarantee}{price}]"
        # A counter-offer says what it gives up of the contract it answers.
        relaxed = self.details.get("relaxed")
        return f"{line} (relaxed: {relaxed})" if relaxed else line


class Rejection(msgspec.Struct, frozen=True, kw_only=True):
    """Why a backend (or the negotiator, on its behalf) could not offer.

    ``requirement`` is the contract path that failed (``resources.gpus.count``),
    ``wanted`` what the contract asks and ``available`` what there is.
    """

    backend: str
    requirement: str
    wanted: str
    available: str

    @classmethod
    def of(cls, backend: str, requirement: str, wanted: object, available: object) -> Rejection:
        """The rejection, with ``wanted`` and ``available`` (quantities, ranges, lists) as text."""
        return cls(
            backend=backend, requirement=requirement, wanted=str(wanted), available=str(available)
        )

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


def summarise_rejections(
    backend: str,
    problems: Mapping[str, Sequence[Rejection]],
    *,
    most: int,
    sep: str,
    last: str,
) -> list[Rejection]:
    """One rejection per requirement, listing what the backend has instead.

    ``wanted`` is the first rejection's; ``available`` lists up to ``most`` of the
    distinct values found (sorted, joined by ``sep``), then ``{last}N more`` for the rest.
    """
    out = []
    for requirement, found in problems.items():
        available = sorted({r.available for r in found})
        text = sep.join(available[:most]) + (
            f"{last}{len(available) - most} more" if len(available) > most else ""
        )
        out.append(
            Rejection(
                backend=backend, requirement=requirement, wanted=found[0].wanted, available=text
            )
        )
    return out


def interconnect_meets(wanted: str, gpus: int, granted: str | None) -> bool:
    """Does a grant of ``gpus`` GPUs linked by ``granted`` meet ``interconnect: wanted``?

    A minimum on a ladder (``any`` < ``pcie`` < ``nvlink``): NVLink meets ``pcie``,
    one GPU meets any rung, an unknown link meets only ``any``. ``infiniband`` is
    a fabric between hosts, off the ladder: only a grant stating it meets it.
    """
    if wanted == "any":
        return True
    if wanted not in INTERCONNECT_ORDER:
        return granted == wanted
    if gpus <= 1:
        return True
    if granted is None or granted not in INTERCONNECT_ORDER:
        return False
    return INTERCONNECT_ORDER[granted] >= INTERCONNECT_ORDER[wanted]


def check_offer(
    offer: Offer, contract: Contract, now: float, *, start_within: float | None = None
) -> list[Rejection]:
    """Every way ``offer`` breaks ``contract`` (empty when it satisfies it).

    ``start_within`` is how long the contract can still wait for the work to start
    (by default its whole ``terms.start_by``; less once negotiation has waited).
    """
    alternative = offer.grant.alternative
    if alternative is not None:
        # An offer for one of the contract's alternatives is judged by that choice alone,
        # and what it breaks is named there (alternatives[1].gpus.count).
        if not 0 <= alternative < len(contract.alternatives):
            return [
                Rejection.of(
                    offer.backend,
                    "alternatives",
                    f"one of {len(contract.alternatives)} alternatives",
                    f"an offer for alternatives[{alternative}]",
                )
            ]
        plain = msgspec.structs.replace(
            offer, grant=msgspec.structs.replace(offer.grant, alternative=None)
        )
        problems = check_offer(plain, contract.narrow(alternative), now, start_within=start_within)
        return [
            msgspec.structs.replace(
                r, requirement=Contract.requirement_path(r.requirement, alternative)
            )
            for r in problems
        ]
    out: list[Rejection] = []

    def reject(requirement: str, wanted: object, available: object) -> None:
        out.append(Rejection.of(offer.backend, requirement, wanted, available))

    grant, res = offer.grant, contract.resources
    if res.gpus is not None:
        gpus = res.gpus
        if grant.gpus not in gpus.count:
            reject("resources.gpus.count", gpus.count, grant.gpus)
        if gpus.models and grant.gpu_model not in gpus.models:
            reject("resources.gpus.models", list(gpus.models), grant.gpu_model)
        if gpus.memory is not None and (
            grant.gpu_memory is None or grant.gpu_memory not in gpus.memory
        ):
            reject("resources.gpus.memory", gpus.memory, grant.gpu_memory)
        if gpus.compute_capability is not None and (
            capability(grant.gpu_compute_capability) < capability(gpus.compute_capability)
        ):
            reject(
                "resources.gpus.compute_capability",
                f">= {gpus.compute_capability}",
                grant.gpu_compute_capability or "unknown",
            )
        if gpus.interconnect is not None and not interconnect_meets(
            gpus.interconnect, grant.gpus, grant.gpu_interconnect
        ):
            reject(
                "resources.gpus.interconnect",
                f"{gpus.interconnect} between the GPUs",
                grant.gpu_interconnect or "unknown",
            )
        if gpus.mig is not None and grant.gpu_mig != gpus.mig:
            reject("resources.gpus.mig", gpus.mig, grant.gpu_mig or "a whole GPU")
    elif grant.gpus:
        reject("resources.gpus", "no GPUs", f"{grant.gpus} GPUs")
    if grant.nodes != res.nodes:
        reject("resources.nodes", f"{res.nodes} nodes", f"{grant.nodes} nodes")
    for name in ("cpus", "memory", "disk"):
        wanted = getattr(res, name)
        granted = getattr(grant, name)
        if wanted is not None and (granted is None or granted not in wanted):
            reject(f"resources.{name}", wanted, granted)
    place = contract.placement
    for requirement, wanted, found in place.misfits(
        region=offer.region, jurisdiction=offer.jurisdiction, provider=offer.provider
    ):
        reject(requirement, wanted, found)
    if ISOLATION_ORDER[offer.isolation] < ISOLATION_ORDER[place.isolation]:
        reject("placement.isolation", place.isolation, offer.isolation)
    if place.locality == "numa" and not grant.numa_nodes and (grant.gpus or grant.cpus):
        reject(
            "placement.locality",
            "CPUs and memory on the GPUs' NUMA nodes",
            "no NUMA placement stated",
        )
    terms = contract.terms
    if GUARANTEE_ORDER[offer.guarantee] < GUARANTEE_ORDER[terms.min_guarantee]:
        reject("terms.min_guarantee", terms.min_guarantee, offer.guarantee)
    if terms.max_price is not None:
        price = offer.price
        if price is None or price.currency != terms.max_price.currency:
            reject("terms.max_price", terms.max_price, price or "unpriced")
        elif price > terms.max_price:
            reject("terms.max_price", terms.max_price, price)
    if offer.preemptible and not terms.preemptible:
        reject("terms.preemptible", "not preemptible", "preemptible")
    if terms.start_by is not None:
        left = terms.start_by.seconds if start_within is None else max(0.0, start_within)
        if offer.start_in > left:
            wanted = terms.start_by if start_within is None else f"a start within {left:.0f}s"
            reject("terms.start_by", wanted, f"starts in {offer.start_in:.0f}s")
    if offer.expires_at <= now:
        reject("offer", "an unexpired offer", "expired offer")
    return out
