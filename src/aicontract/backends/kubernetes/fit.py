"""Quoting: which node could take a contract now, and the offers that makes.

Each node's fit (:meth:`FitMixin._fit`) is the grant it could give, or the
first requirement it misses; nodes that fit alike (model, region, jurisdiction,
isolation, GPU interconnect) make one offer, sized by the best of them. A gang
(``resources.nodes`` N > 1) is offered only by a group where N nodes fit at once,
each granted what the least of those N can give.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import TypeVar

import attrs
import msgspec

from ...contract import GPU, Contract
from ...errors import AuthenticationError
from ...gpu_models import capability, pick_model
from ...offer import Grant, Offer, Quote, Rejection, check_offer
from ...units import Bytes, CountRange, Money, Range
from ..base import fixed_ports_only
from .api import NotFound, resource_path
from .core import (
    OFFER_TTL,
    PODS,
    KubeCore,
)
from .objects import ZERO_RESOURCES
from .quote import (
    GPU_CLIQUE_LABEL,
    GPU_PRODUCT_LABELS,
    GPU_RESOURCE,
    LABEL_GPU_INTERCONNECT,
    NodeView,
    gpu_resource,
    node_views,
    parse_quantity,
)

__all__ = ["FitMixin"]

_Q = TypeVar("_Q", int, Bytes)


@attrs.frozen
class _Room:
    """What one ResourceQuota (or LimitRange) still allows of one resource."""

    free: Decimal
    used: Decimal
    hard: Decimal
    quota: str
    key: str
    kind: str = "ResourceQuota"

    def says(self) -> str:
        """``requests.nvidia.com/gpu: used 4 of limit 4 (ResourceQuota gpus)``, or
        ``min cpu per Container is 2 (LimitRange floor)``."""
        if self.kind == "LimitRange":
            return f"{self.key} is {self.hard} ({self.kind} {self.quota})"
        return f"{self.key}: used {self.used} of limit {self.hard} ({self.kind} {self.quota})"


class _Bounds(dict[str, _Room]):
    """The namespace's limits on one lease's pod: per resource, the tightest ceiling
    (a ResourceQuota's room, a LimitRange's ``max``), as a mapping; and what the
    LimitRanges demand besides.

    ``floors``: per resource, the highest LimitRange ``min`` (per Pod or Container);
    a pod's request must reach it. ``defaults``: per resource, the request a
    Container LimitRange gives a container that states none (``defaultRequest``).
    ``named``: every resource a LimitRange names, which a pod had better state itself:
    one it leaves out is defaulted in (a pod without GPUs given ``nvidia.com/gpu``) or,
    under a Pod ``min``/``max``, refused.
    """

    def __init__(self) -> None:
        super().__init__()
        self.floors: dict[str, _Room] = {}
        self.defaults: dict[str, _Room] = {}
        self.named: set[str] = set()
        # maxLimitRequestRatio: LimitRanger refuses a pod whose request of such a
        # resource is missing or 0, so it must ask for some.
        self.ratios: dict[str, _Room] = {}


_NO_BOUNDS = _Bounds()


def _as_bounds(room: Mapping[str, _Room]) -> _Bounds:
    """``room`` as :class:`_Bounds` (a plain mapping: ceilings only)."""
    if isinstance(room, _Bounds):
        return room
    bounds = _Bounds()
    bounds.update(room)
    return bounds


@attrs.frozen
class _Misfit:
    """Why one node cannot take a contract: the requirement, what it wants, what it has."""

    requirement: str
    wanted: str
    available: str


def _grant_or_default(
    requirement: str,
    wanted: Range[_Q] | None,
    default: _Q,
    free: _Q,
    floor: _Room | None = None,
) -> _Q | _Misfit:
    """What a node grants of ``wanted`` from ``free`` (``default`` where the contract
    names no range), raised to a LimitRange's ``floor`` where the range allows; or why
    it cannot."""
    if wanted is not None:
        granted = wanted.grant(free)
        if granted is None:
            return _Misfit(requirement, str(wanted), f"{free} free")
    elif default <= free:
        granted = default
    else:
        return _Misfit(requirement, f"{default} (default)", f"{free} free")
    return _raised(requirement, granted, wanted, free, floor)


def _raised(
    requirement: str, granted: _Q, wanted: Range[_Q] | None, free: _Q, floor: _Room | None
) -> _Q | _Misfit:
    """``granted``, or a LimitRange's ``min`` where that is more, the contract's range
    allows it (no range: anything does) and the node has it free."""
    if floor is None:
        return granted
    need = type(granted)(math.ceil(floor.hard))
    if need <= granted:
        return granted
    if wanted is not None and need not in wanted:
        # The namespace demands more than the contract allows: a refusal naming both.
        return _Misfit("quota", f"{requirement} {wanted}", floor.says())
    if need > free:
        return _Misfit(requirement, f"{need} (the min of LimitRange {floor.quota})", f"{free} free")
    return need


# What nodes that fit alike share: GPU model, region, jurisdiction (and where it came from),
# isolation, and how their GPUs connect. One offer per group.
_GroupKey = tuple[str | None, str, str | None, str, str, str | None]


def _size(item: tuple[NodeView, Grant]) -> tuple[int, int, int]:
    """How much a node's grant gives, for picking the best (or the best N) of a group."""
    g = item[1]
    return (g.gpus, g.cpus, g.memory.bytes if g.memory is not None else 0)


def _relaxed(offer: Offer, what: str) -> Offer:
    """``offer`` as a counter-offer: ``details["relaxed"]`` names what it gives up."""
    return msgspec.structs.replace(offer, details={**offer.details, "relaxed": what})


def _named(wanted: GPU, offer: Offer) -> Offer:
    """A GPU counter-offer whose contract asks exactly what it grants, saying how that
    differs from what was ``wanted``."""
    grant, got = offer.grant, offer.contract.resources.gpus or wanted
    relaxed: list[str] = []
    models = got.models
    if grant.gpu_model is not None and pick_model(wanted.models, grant.gpu_model) is None:
        models = (grant.gpu_model,)
        relaxed.append(f"resources.gpus.models {'/'.join(wanted.models)} -> {grant.gpu_model}")
    count = got.count
    if grant.gpus not in wanted.count:
        count = CountRange(grant.gpus)
        relaxed.append(f"resources.gpus.count {wanted.count} -> {grant.gpus}")
    exact = msgspec.structs.replace(got, models=models, count=count)
    narrowed = offer.contract.with_(
        resources=msgspec.structs.replace(offer.contract.resources, gpus=exact)
    )
    return _relaxed(msgspec.structs.replace(offer, contract=narrowed), "; ".join(relaxed))


class FitMixin(KubeCore):
    """Quotes from Nodes and the pods bound to them."""

    # -- quoting -------------------------------------------------------------------------

    async def nodes(self) -> list[NodeView]:
        """Every node with what is free on it now."""
        api = self.api
        nodes = await api.get(resource_path("v1", "nodes"))
        pods = await api.get(
            resource_path(*PODS),
            {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"},
        )
        return node_views(
            nodes["items"], pods["items"], region_jurisdictions=self.region_jurisdictions
        )

    async def quote(self, contract: Contract) -> Quote:
        """Offers for what could be placed now: per GPU model and location, the best node's fit.

        Within the namespace's ResourceQuotas: what a quota forbids is never offered,
        and is refused as ``quota`` with what is used of what limit. With nothing to
        offer for want of GPUs, a counter-offer says how many one node has now.
        """
        refused = fixed_ports_only(self.name, contract)
        if refused is not None:
            return refused
        namespace = self.namespace_for(contract)
        views = await self.nodes()
        room = await self.quota_room(namespace)
        offers, problems, most = self._assess(contract, views, room)
        if offers:
            return Quote(offers=tuple(offers))
        rejections = [
            Rejection(
                backend=self.name,
                requirement=requirement,
                wanted=entries[0][1],
                available="; ".join(f"{node}: {have}" for node, _, have in entries[:6])
                + (f"; and {len(entries) - 6} more nodes" if len(entries) > 6 else ""),
            )
            for requirement, entries in problems.items()
        ]
        if not views:
            rejections.append(
                Rejection(
                    backend=self.name,
                    requirement="nodes",
                    wanted="a node",
                    available="the cluster has no nodes",
                )
            )
        return Quote(
            rejections=tuple(rejections),
            counter_offers=tuple(self._counter(contract, views, room, most)),
        )

    def _assess(
        self, contract: Contract, views: Sequence[NodeView], room: Mapping[str, _Room]
    ) -> tuple[list[Offer], dict[str, list[tuple[str, str, str]]], int]:
        """The offers ``views`` make for ``contract``; per requirement, the nodes missing it;
        and the most nodes that fit together (in one group: a gang's nodes share one)."""
        room = _as_bounds(room)
        problems: dict[str, list[tuple[str, str, str]]] = {}
        groups: dict[_GroupKey, list[tuple[NodeView, Grant]]] = {}
        for view in views:
            fit = self._fit_within(view, contract, room)
            if isinstance(fit, _Misfit):
                problems.setdefault(fit.requirement, []).append(
                    (view.name, fit.wanted, fit.available)
                )
                continue
            grant, isolation = fit
            source = "label" if view.jurisdiction_from_label else "region"
            key = (
                grant.gpu_model,
                view.region,
                view.jurisdiction,
                source,
                isolation,
                grant.gpu_interconnect,
            )
            groups.setdefault(key, []).append((view, grant))
        now = self.clock.time()
        nodes = contract.resources.nodes
        offers: list[Offer] = []
        unstated = sorted(room.named - {"cpu", "memory", "ephemeral-storage"})
        for key, members in sorted(groups.items(), key=lambda kv: (kv[0][1], str(kv[0][0]))):
            if nodes > 1:
                gang = self._gang(contract, key, members, room)
                if isinstance(gang, _Misfit):
                    problems.setdefault(gang.requirement, []).append(
                        (key[1], gang.wanted, gang.available)
                    )
                    continue
                members = gang
            offer = self._offer(contract, key, members, now)
            if unstated:
                # A LimitRange would default these into a pod that leaves them out (GPUs
                # into a pod without any): the pod states them as 0 (objects.pod_spec).
                details = {**offer.details, ZERO_RESOURCES: ",".join(unstated)}
                offer = msgspec.structs.replace(offer, details=details)
            # The interconnect rule has one home (check_offer); the node's labels gave the
            # grant its value, and a group whose value the contract does not accept is out.
            for rejection in check_offer(offer, contract, now):
                if rejection.requirement == "resources.gpus.interconnect":
                    for view, _ in members:
                        have = rejection.available
                        if key[5] is None:
                            have = f"not labelled ({LABEL_GPU_INTERCONNECT}, {GPU_CLIQUE_LABEL})"
                        problems.setdefault(rejection.requirement, []).append(
                            (view.name, rejection.wanted, have)
                        )
                    break
            else:
                offers.append(offer)
        most = max((len(members) for members in groups.values()), default=0)
        return offers, problems, most

    def _gang(
        self,
        contract: Contract,
        key: _GroupKey,
        members: Sequence[tuple[NodeView, Grant]],
        room: Mapping[str, _Room],
    ) -> list[tuple[NodeView, Grant]] | _Misfit:
        """``contract.resources.nodes`` members of one group, each granted what all can give.

        A gang fits only on that many distinct nodes at once (its pods repel each other);
        every node gets the same grant, the least of theirs (each lies in the contract's
        ranges, so the least does too). Within a ResourceQuota, all of its pods must fit.
        """
        nodes = contract.resources.nodes
        if len(members) < nodes:
            names = ", ".join(sorted(v.name for v, _ in members))
            return _Misfit(
                "resources.nodes",
                f"{nodes} nodes",
                f"{len(members)} of them fit at once ({names})",
            )
        chosen = sorted(members, key=_size, reverse=True)[:nodes]
        grants = [g for _, g in chosen]
        memories = [g.memory for g in grants if g.memory is not None]
        disks = [g.disk for g in grants if g.disk is not None]
        least = msgspec.structs.replace(
            grants[0],
            gpus=min(g.gpus for g in grants),
            cpus=min(g.cpus for g in grants),
            memory=min(memories, key=lambda b: b.bytes) if memories else None,
            disk=min(disks, key=lambda b: b.bytes) if disks else None,
            nodes=nodes,
        )
        per_pod: dict[str, Decimal] = {
            "pods": Decimal(1),
            "cpu": Decimal(max(1, least.cpus)),
            gpu_resource(contract.resources.gpus): Decimal(least.gpus),
        }
        if least.memory is not None:
            per_pod["memory"] = Decimal(least.memory.bytes)
        if least.disk is not None:
            per_pod["ephemeral-storage"] = Decimal(least.disk.bytes)
        for resource, amount in per_pod.items():
            bound = room.get(resource)
            # A LimitRange bounds each pod (already applied per node); a quota, all of them.
            if bound is not None and bound.kind == "ResourceQuota" and amount * nodes > bound.free:
                return _Misfit("quota", f"{nodes} x {amount} {resource}", bound.says())
        return [(view, least) for view, _ in chosen]

    def _counter(
        self, contract: Contract, views: Sequence[NodeView], room: Mapping[str, _Room], most: int
    ) -> list[Offer]:
        """Offers for less, closest first, each naming what it relaxed (``details["relaxed"]``).

        A gang on as many nodes as fit together (``most``); else fewer GPUs of a model
        the contract names, the most one node (within quota) can give now; else the
        contract's GPUs of another model the cluster has (fewer, if that is all there
        is). Like the local backend's: only the node count, the GPU count and the GPU
        model are relaxed, and each counter-offer is the relaxed contract quoted afresh,
        so every other requirement (placement, isolation, GPU memory, compute
        capability, interconnect, CPUs, memory, quota) still holds. They are never
        committed unless a caller accepts one.
        """
        res = contract.resources
        if 0 < most < res.nodes:
            fewer = contract.with_(resources=msgspec.structs.replace(res, nodes=most))
            offers = self._assess(fewer, views, room)[0]
            if offers:
                return [_relaxed(o, f"resources.nodes {res.nodes} -> {most}") for o in offers]
        if res.gpus is None or res.gpus.count.min is None:
            return []
        gpus: GPU = res.gpus
        least = res.gpus.count.min

        def quoted(models: tuple[str, ...], count: CountRange) -> list[Offer]:
            relaxed = msgspec.structs.replace(gpus, models=models, count=count)
            changed = contract.with_(resources=msgspec.structs.replace(res, gpus=relaxed))
            return self._assess(changed, views, room)[0]

        fewer_count = CountRange((1, least - 1)) if least > 1 else None
        counters: list[Offer] = []
        if fewer_count is not None:
            counters += quoted(gpus.models, fewer_count)
        if gpus.models:
            # Any model the cluster has; the ones the contract already accepts were
            # quoted above. A product (``NVIDIA-H100-80GB-HBM3``) names itself exactly.
            def other(offer: Offer) -> bool:
                return pick_model(gpus.models, offer.grant.gpu_model or "") is None

            whole = [o for o in quoted((), gpus.count) if other(o)]
            counters += whole
            if fewer_count is not None:
                full = {o.grant.gpu_model for o in whole}
                counters += [
                    o for o in quoted((), fewer_count) if other(o) and o.grant.gpu_model not in full
                ]
        return [_named(gpus, o) for o in counters]

    async def quota_room(self, namespace: str) -> _Bounds:
        """Per resource, what the namespace's tightest ResourceQuota or LimitRange allows.

        Pods are Guaranteed QoS (requests = limits), so ``requests.X``, ``limits.X``
        and plain ``X`` all bound ``X``; ``pods``/``count/pods`` bound the pod count;
        a LimitRange's ``max`` per Pod or Container bounds one lease's pod, its ``min``
        is a floor (:attr:`_Bounds.floors`) and a Container's ``defaultRequest`` what a
        pod stating none is given (:attr:`_Bounds.defaults`). No quota, no namespace
        yet, or no right to read them: no bound. Read afresh for every quote: what a
        quota has used changes with every lease.
        """
        room = _Bounds()

        def tighten(resource: str, bound: _Room) -> None:
            if resource not in room or bound.free < room[resource].free:
                room[resource] = bound

        try:
            listing = await self.api.get(resource_path("v1", "resourcequotas", namespace))
            ranges = await self.api.get(resource_path("v1", "limitranges", namespace))
        except (NotFound, AuthenticationError):
            return room
        for limit_range in ranges.get("items") or []:
            for item in (limit_range.get("spec") or {}).get("limits") or []:
                kind = item.get("type")
                if kind not in ("Pod", "Container"):
                    continue
                for field in ("max", "min", "defaultRequest", "maxLimitRequestRatio"):
                    if field == "defaultRequest" and kind != "Container":
                        continue  # only containers are defaulted
                    for resource, value in (item.get(field) or {}).items():
                        try:
                            amount = parse_quantity(value)
                        except ValueError:
                            continue
                        room.named.add(resource)
                        bound = _Room(
                            free=amount,
                            used=Decimal(0),
                            hard=amount,
                            quota=str(limit_range["metadata"]["name"]),
                            key=f"{field} {resource} per {kind}",
                            kind="LimitRange",
                        )
                        if field == "max":
                            tighten(resource, bound)
                            continue
                        if field == "maxLimitRequestRatio":
                            room.ratios[resource] = bound
                            continue
                        table = room.floors if field == "min" else room.defaults
                        if resource not in table or amount > table[resource].hard:
                            table[resource] = bound
        for quota in listing.get("items") or []:
            status = quota.get("status") or {}
            hard = status.get("hard") or (quota.get("spec") or {}).get("hard") or {}
            used = status.get("used") or {}
            for key, value in hard.items():
                if key in ("pods", "count/pods"):
                    resource = "pods"
                elif key.startswith(("requests.", "limits.")):
                    resource = key.split(".", 1)[1]
                elif key in ("cpu", "memory", "ephemeral-storage"):
                    resource = key
                else:
                    continue
                try:
                    limit, taken = parse_quantity(value), parse_quantity(used.get(key, "0"))
                except ValueError:
                    continue
                bound = _Room(
                    free=max(Decimal(0), limit - taken),
                    used=taken,
                    hard=limit,
                    quota=str(quota["metadata"]["name"]),
                    key=key,
                )
                tighten(resource, bound)
        return room

    def _fit_within(
        self, view: NodeView, contract: Contract, room: Mapping[str, _Room]
    ) -> tuple[Grant, str] | _Misfit:
        """:meth:`_fit` on what the node has free *and* the quota allows; a shortfall
        that only the quota causes is refused as ``quota``."""
        room = _as_bounds(room)
        if not room:
            return self._fit(view, contract, room)
        pods = room.get("pods")
        if pods is not None and pods.free < 1:
            return _Misfit("quota", "1 pod", pods.says())
        capped = attrs.evolve(
            view,
            free={k: min(v, room[k].free) if k in room else v for k, v in view.free.items()},
        )
        fit = self._fit(capped, contract, room)
        if isinstance(fit, _Misfit) and not isinstance(self._fit(view, contract, room), _Misfit):
            resource = {
                "resources.gpus.count": gpu_resource(contract.resources.gpus),
                "resources.cpus": "cpu",
                "resources.memory": "memory",
                "resources.disk": "ephemeral-storage",
            }.get(fit.requirement)
            if resource is not None and resource in room:
                return _Misfit("quota", fit.wanted, room[resource].says())
        return fit

    def _fit(
        self, view: NodeView, contract: Contract, bounds: _Bounds = _NO_BOUNDS
    ) -> tuple[Grant, str] | _Misfit:
        """The grant one node could give now (and its isolation), or why it cannot;
        raised to the namespace's LimitRange ``min`` where the contract allows."""
        place, res = contract.placement, contract.resources
        if not view.schedulable:
            return _Misfit("node", "a Ready, schedulable node", view.why_not or "not schedulable")
        if place.isolation == "dedicated-host":
            return _Misfit("placement.isolation", "dedicated-host", "nodes, not dedicated hosts")
        if place.isolation == "dedicated-node":
            if not view.dedicated:
                return _Misfit(
                    "placement.isolation",
                    "dedicated-node",
                    f"not tainted {'aicontract.io/dedicated'}",
                )
            if view.leased:
                return _Misfit(
                    "placement.isolation", "dedicated-node", f"{view.leased} leases on it"
                )
        elif view.dedicated:
            return _Misfit("placement.isolation", place.isolation, "kept for dedicated-node leases")
        misfits = place.misfits(
            region=view.region, jurisdiction=view.jurisdiction, provider=self.provider
        )
        if misfits:
            return _Misfit(*misfits[0])
        gpus_granted, model, memory = 0, None, None
        if res.gpus is not None:
            gpus = res.gpus
            resource = gpu_resource(gpus)
            if not view.allocatable.get(resource):
                return _Misfit("resources.gpus", f"{gpus.count} x {resource}", "none on this node")
            model = view.model_for(gpus)
            if model is None:
                return _Misfit(
                    "resources.gpus.models",
                    "/".join(gpus.models),
                    view.product or "unlabelled",
                )
            memory = view.gpu_memory
            if gpus.memory is not None and (memory is None or memory not in gpus.memory):
                return _Misfit("resources.gpus.memory", str(gpus.memory), str(memory or "unknown"))
            if gpus.compute_capability:
                wanted_cc = capability(gpus.compute_capability)
                if view.compute_capability is None or view.compute_capability < wanted_cc:
                    have = ".".join(map(str, view.compute_capability or ())) or "unknown"
                    return _Misfit(
                        "resources.gpus.compute_capability", f">= {gpus.compute_capability}", have
                    )
            if view.shared_gpus is not None and resource == GPU_RESOURCE:
                # Time-sliced or MPS replicas are one device handed to several pods: not a
                # GPU of one's own, which is what a contract's count means.
                return _Misfit(
                    "resources.gpus", f"{gpus.count} x whole GPU", f"shared ({view.shared_gpus})"
                )
            free = int(view.free_of(resource))
            granted = gpus.count.grant(free)
            if granted is None:
                total = int(view.allocatable.get(resource, Decimal(0)))
                return _Misfit(
                    "resources.gpus.count", f"{gpus.count} x {model}", f"{free} free of {total}"
                )
            raised = _raised(
                "resources.gpus.count", granted, gpus.count, free, bounds.floors.get(resource)
            )
            if isinstance(raised, _Misfit):
                return raised
            gpus_granted = raised
        floors = bounds.floors
        cpus = _grant_or_default(
            "resources.cpus",
            res.cpus,
            self.default_cpus,
            int(view.free_of("cpu")),
            floors.get("cpu"),
        )
        if isinstance(cpus, _Misfit):
            return cpus
        granted_memory = _grant_or_default(
            "resources.memory",
            res.memory,
            self.default_memory,
            Bytes(int(view.free_of("memory"))),
            floors.get("memory"),
        )
        if isinstance(granted_memory, _Misfit):
            return granted_memory
        disk: Bytes | None = None
        free_disk = Bytes(int(view.free_of("ephemeral-storage")))
        disk_floor = floors.get("ephemeral-storage")
        if res.disk is not None:
            granted_disk = res.disk.grant(free_disk)
            if granted_disk is None:
                return _Misfit("resources.disk", str(res.disk), f"{free_disk} free")
            raised_disk = _raised("resources.disk", granted_disk, res.disk, free_disk, disk_floor)
            if isinstance(raised_disk, _Misfit):
                return raised_disk
            disk = raised_disk
        elif "ephemeral-storage" in bounds.named:
            # A LimitRange on ephemeral storage gives a pod that states none a request
            # (its defaultRequest) or refuses it (a Pod min or max): state what it would
            # be given, so the grant and the quote count it.
            given = bounds.defaults.get("ephemeral-storage") or disk_floor
            if given is None:
                ceiling = bounds.get("ephemeral-storage")
                said = ceiling.says() if ceiling is not None else "a LimitRange names it"
                return _Misfit("quota", "resources.disk (not stated)", f"{said}: state it")
            raised_disk = _raised("resources.disk", Bytes(0), None, free_disk, given)
            if isinstance(raised_disk, _Misfit):
                return raised_disk
            disk = raised_disk
        stated = {"cpu", "memory"}
        if disk is not None and disk.bytes > 0:
            stated.add("ephemeral-storage")
        if gpus_granted and res.gpus is not None:
            stated.add(gpu_resource(res.gpus))
        for resource, floor in sorted(floors.items()):
            if resource not in stated and floor.hard > 0:
                # A pod must request a resource the contract does not ask for.
                return _Misfit("quota", f"no {resource}", floor.says())
        for resource, ratio in sorted(bounds.ratios.items()):
            if resource not in stated:
                return _Misfit(
                    "quota", f"no {resource}", f"{ratio.says()}: every pod must request some"
                )
        granted_cc = view.compute_capability if gpus_granted else None
        grant = Grant(
            gpus=gpus_granted,
            gpu_model=model,
            gpu_memory=memory if gpus_granted else None,
            gpu_compute_capability=".".join(map(str, granted_cc)) if granted_cc else None,
            gpu_mig=res.gpus.mig if gpus_granted and res.gpus is not None else None,
            # From the node's labels (see quote.node_views); None where they say nothing.
            gpu_interconnect=view.interconnect if gpus_granted else None,
            cpus=cpus,
            memory=granted_memory,
            disk=disk,
        )
        return grant, ("dedicated-node" if place.isolation == "dedicated-node" else "shared")

    def _offer(
        self,
        contract: Contract,
        key: _GroupKey,
        members: Sequence[tuple[NodeView, Grant]],
        now: float,
    ) -> Offer:
        _, region, jurisdiction, source, isolation, _ = key
        best = max(members, key=_size)[1]
        products = sorted({v.product for v, _ in members if v.product})
        label = next(
            (k for k in GPU_PRODUCT_LABELS if all(v.labels.get(k) for v, _ in members)),
            GPU_PRODUCT_LABELS[0],
        )
        return Offer(
            id=f"k8s-{uuid.uuid4().hex[:12]}",
            backend=self.name,
            contract=contract,
            grant=best,
            # The lease this offer turns into is bound before commit returns (or there is
            # none): see docs/backends/kubernetes.md, "Guarantee level".
            guarantee="allocated",
            region=region,
            jurisdiction=jurisdiction,
            provider=self.provider,
            isolation=isolation,  # type: ignore[arg-type]
            price=Money.per_hour(0, contract.terms.currency),
            expires_at=now + OFFER_TTL,
            details={
                "namespace": self.namespace_for(contract),
                "products": "|".join(products),
                "product_label": label,
                "jurisdiction_source": source,
                "nodes": ",".join(v.name for v, _ in members),
                "basis": "node-arithmetic",
            },
        )
