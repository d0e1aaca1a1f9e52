"""The Kubernetes backend: contracts become pods the cluster's own scheduler binds.

Quote reads Nodes and the pods bound to them; commit writes a
``coordination.k8s.io/v1`` Lease (expiry + heartbeat), a Guaranteed-QoS Pod
(or a Job) owned by it, a Service for published ports, and — where the
cluster serves them — a DRA ResourceClaim and a Kueue queue label; it returns
only once the scheduler has bound the pod (``spec.nodeName``), watched, never
polled, until the contract's ``start_by``. See ``docs/backends/kubernetes.md``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import anyio
import attrs
import httpx
import msgspec

from ...clock import Clock, system_clock
from ...contract import Contract
from ...errors import (
    BackendError,
    CapacityUnavailable,
    LeaseLost,
    TransientBackendError,
)
from ...gpu_models import capability
from ...leases import Lease
from ...observation import Fault, Observation
from ...offer import Grant, Offer, Quote, Rejection
from ...units import Bytes, Money
from ..base import Backend
from .api import ApiError, Conflict, KubeAPI, NotFound, client_from_config, resource_path
from .discovery import Features, discover
from .objects import (
    ANNOTATION_ENDS_AT,
    ANNOTATION_KEY,
    LABEL_LEASE,
    claim_manifest,
    claim_models,
    job_manifest,
    labels_for,
    lease_manifest,
    lease_name,
    micro_time,
    owner_reference,
    parse_time,
    pod_manifest,
    pod_spec,
    service_manifest,
)
from .quote import GPU_PRODUCT_LABELS, NodeView, gpu_resource, node_views

__all__ = ["GarbageReport", "KubernetesBackend"]

log = logging.getLogger("aicontract.kubernetes")

OFFER_TTL = 15.0
LEASES = ("coordination.k8s.io/v1", "leases")
PODS = ("v1", "pods")
SERVICES = ("v1", "services")
JOBS = ("batch/v1", "jobs")
CLAIMS = ("resource.k8s.io/v1", "resourceclaims")
JOB_KINDS = frozenset({"batch", "training"})

Obj = dict[str, Any]


@attrs.frozen
class _Misfit:
    """Why one node cannot take a contract: the requirement, what it wants, what it has."""

    requirement: str
    wanted: str
    available: str


@attrs.frozen
class GarbageReport:
    """What one garbage collection found and removed (or would remove, on a dry run)."""

    expired: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    kept: int = 0


def _default_holder() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


@attrs.define(eq=False)
class KubernetesBackend(Backend):
    """Leases on a Kubernetes cluster, placed and bound by the cluster's own scheduler.

    Configuration comes from ``kubeconfig`` (and ``context``), else — like
    every Kubernetes tool — the in-cluster service account, ``$KUBECONFIG``
    or ``~/.kube/config``. Each tenant gets the namespace
    ``namespace_prefix + contract.tenant`` unless ``namespace`` fixes one.
    ``ttl`` is how long a lease lives without a heartbeat (the Lease object's
    ``leaseDurationSeconds``); ``aicontract gc`` deletes leases past it.
    ``region_jurisdictions`` maps regions to jurisdictions for nodes without
    an ``aicontract.io/jurisdiction`` label. ``dra`` and ``queue`` (a Kueue
    LocalQueue) are used only when API discovery shows the cluster serves them.
    """

    name = "kubernetes"

    kubeconfig: str | Path | None = None
    context: str | None = None
    namespace: str | None = None
    namespace_prefix: str = "aicontract-"
    create_namespaces: bool = True
    ttl: float = 60.0
    region_jurisdictions: Mapping[str, str] = attrs.field(factory=dict)
    image: str = "registry.k8s.io/pause:3.9"
    default_cpus: int = 1
    default_memory: Bytes = attrs.field(default=Bytes("1GiB"), converter=Bytes)
    schedule_timeout: float = 30.0
    release_timeout: float = 60.0
    grace_seconds: int = 30
    max_restarts: int = 0
    dra: Literal["auto", "never"] = "auto"
    queue: str | None = None
    provider: str = "kubernetes"
    holder: str = attrs.field(factory=_default_holder)
    clock: Clock = system_clock
    http: httpx.AsyncClient | None = attrs.field(default=None, repr=False)
    _api: KubeAPI | None = attrs.field(default=None, init=False, repr=False)
    _features: Features | None = attrs.field(default=None, init=False, repr=False)
    _ready_namespaces: set[str] = attrs.field(factory=set, init=False, repr=False)

    # -- plumbing ------------------------------------------------------------------------

    @property
    def api(self) -> KubeAPI:
        """The REST client (built from the config on first use)."""
        if self._api is None:
            if self.http is None:
                self.http, default_ns = client_from_config(self.kubeconfig, self.context)
                if self.namespace is None and os.environ.get("AICONTRACT_K8S_NAMESPACE"):
                    self.namespace = os.environ["AICONTRACT_K8S_NAMESPACE"]
                del default_ns
            self._api = KubeAPI(self.http, backend=self.name)
        return self._api

    async def features(self) -> Features:
        """What optional APIs the cluster serves (DRA, Kueue), discovered once."""
        if self._features is None:
            self._features = await discover(self.api)
        return self._features

    def namespace_for(self, contract: Contract) -> str:
        """The namespace a contract's objects live in (one per tenant)."""
        if self.namespace:
            return self.namespace
        return f"{self.namespace_prefix}{contract.tenant}"[:63].rstrip("-._")

    async def _ensure_namespace(self, namespace: str) -> None:
        if namespace in self._ready_namespaces or not self.create_namespaces:
            return
        path = resource_path("v1", "namespaces", name=namespace)
        if await self.api.get_or_none(path) is None:
            body = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "aicontract"},
                },
            }
            with contextlib.suppress(Conflict):
                await self.api.create(resource_path("v1", "namespaces"), body)
        self._ready_namespaces.add(namespace)

    # -- quoting -------------------------------------------------------------------------

    async def nodes(self) -> list[NodeView]:
        """Every node with what is free on it now."""
        api = self.api
        nodes = (await api.get(resource_path("v1", "nodes")))["items"]
        pods = (
            await api.get(
                resource_path(*PODS),
                {"fieldSelector": "status.phase!=Succeeded,status.phase!=Failed"},
            )
        )["items"]
        return node_views(nodes, pods, region_jurisdictions=self.region_jurisdictions)

    async def quote(self, contract: Contract) -> Quote:
        """Offers for what could be placed now: per GPU model and location, the best node's fit."""
        views = await self.nodes()
        problems: dict[str, list[tuple[str, str, str]]] = {}
        groups: dict[
            tuple[str | None, str, str | None, str, str], list[tuple[NodeView, Grant]]
        ] = {}
        for view in views:
            fit = self._fit(view, contract)
            if isinstance(fit, _Misfit):
                problems.setdefault(fit.requirement, []).append(
                    (view.name, fit.wanted, fit.available)
                )
                continue
            grant, isolation = fit
            source = "label" if view.jurisdiction_from_label else "region"
            key = (grant.gpu_model, view.region, view.jurisdiction, source, isolation)
            groups.setdefault(key, []).append((view, grant))
        now = self.clock.time()
        offers = [
            self._offer(contract, key, members, now)
            for key, members in sorted(groups.items(), key=lambda kv: (kv[0][1], str(kv[0][0])))
        ]
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
        return Quote(rejections=tuple(rejections))

    def _fit(self, view: NodeView, contract: Contract) -> tuple[Grant, str] | _Misfit:
        """The grant one node could give now (and its isolation), or why it cannot."""
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
            if gpus.interconnect is not None:
                return _Misfit("resources.gpus.interconnect", gpus.interconnect, "not labelled")
            free = int(view.free_of(resource))
            granted = gpus.count.grant(free)
            if granted is None:
                total = int(view.allocatable.get(resource, Decimal(0)))
                return _Misfit(
                    "resources.gpus.count", f"{gpus.count} x {model}", f"{free} free of {total}"
                )
            gpus_granted = granted
        free_cpus = int(view.free_of("cpu"))
        if res.cpus is not None:
            cpus = res.cpus.grant(free_cpus)
            if cpus is None:
                return _Misfit("resources.cpus", str(res.cpus), f"{free_cpus} free")
        elif self.default_cpus <= free_cpus:
            cpus = self.default_cpus
        else:
            return _Misfit("resources.cpus", f"{self.default_cpus} (default)", f"{free_cpus} free")
        free_memory = Bytes(int(view.free_of("memory")))
        if res.memory is not None:
            granted_memory = res.memory.grant(free_memory)
            if granted_memory is None:
                return _Misfit("resources.memory", str(res.memory), f"{free_memory} free")
        elif self.default_memory <= free_memory:
            granted_memory = self.default_memory
        else:
            return _Misfit(
                "resources.memory", f"{self.default_memory} (default)", f"{free_memory} free"
            )
        disk = None
        if res.disk is not None:
            free_disk = Bytes(int(view.free_of("ephemeral-storage")))
            disk = res.disk.grant(free_disk)
            if disk is None:
                return _Misfit("resources.disk", str(res.disk), f"{free_disk} free")
        granted_cc = view.compute_capability if gpus_granted else None
        grant = Grant(
            gpus=gpus_granted,
            gpu_model=model,
            gpu_memory=memory if gpus_granted else None,
            gpu_compute_capability=".".join(map(str, granted_cc)) if granted_cc else None,
            gpu_mig=res.gpus.mig if gpus_granted and res.gpus is not None else None,
            cpus=cpus,
            memory=granted_memory,
            disk=disk,
        )
        return grant, ("dedicated-node" if place.isolation == "dedicated-node" else "shared")

    def _offer(
        self,
        contract: Contract,
        key: tuple[str | None, str, str | None, str, str],
        members: Sequence[tuple[NodeView, Grant]],
        now: float,
    ) -> Offer:
        _, region, jurisdiction, source, isolation = key

        def size(item: tuple[NodeView, Grant]) -> tuple[int, int, int]:
            g = item[1]
            return (g.gpus, g.cpus, g.memory.bytes if g.memory is not None else 0)

        best = max(members, key=size)[1]
        products = sorted({v.product for v, _ in members if v.product})
        label = next(
            (k for k in GPU_PRODUCT_LABELS if all(v.labels.get(k) for v, _ in members)),
            GPU_PRODUCT_LABELS[0],
        )
        currency = contract.terms.max_price.currency if contract.terms.max_price else "USD"
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
            price=Money.per_hour(0, currency),
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

    # -- committing ----------------------------------------------------------------------

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        """Write the lease's objects and wait (a watch) until the scheduler binds its pod."""
        if offer.backend != self.name:
            raise CapacityUnavailable(self.name, f"offer {offer.id} is not a {self.name} offer")
        contract = offer.contract
        name = lease_name(idempotency_key)
        namespace = offer.details.get("namespace") or self.namespace_for(contract)
        start_by = contract.terms.start_by
        wait_for_capacity = start_by is not None
        deadline = anyio.current_time() + (start_by.seconds if start_by else self.schedule_timeout)
        now = self.clock.time()
        ends_at = now + contract.terms.duration.seconds if contract.terms.duration else None
        await self._ensure_namespace(namespace)
        lease_obj = await self._create_or_adopt(
            resource_path(*LEASES, namespace),
            lease_manifest(
                name,
                namespace,
                offer=offer,
                idempotency_key=idempotency_key,
                holder=self.holder,
                ttl=self.ttl,
                now=now,
                ends_at=ends_at,
            ),
        )
        meta = lease_obj["metadata"]
        if (meta.get("annotations") or {}).get(ANNOTATION_KEY) != idempotency_key:
            raise BackendError(self.name, f"lease object {namespace}/{name} belongs to another key")
        if meta.get("deletionTimestamp"):
            raise TransientBackendError(self.name, f"lease {name} is still being deleted")
        objects: list[str] = []
        try:
            pod = await self._place(
                offer, name, namespace, lease_obj, objects, deadline, wait_for_capacity
            )
            # Until the lease is handed back, nobody holds what was bound: a failure (or a
            # cancel) while reading the claim or the node must not leave it running.
            if "claim" in objects:
                offer = await self._granted_by_claim(offer, namespace, name)
            return await self._lease(
                offer, name, namespace, lease_obj, pod, objects, idempotency_key
            )
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._teardown(namespace, name, ("claim", "service", "job", "pod"))
            raise

    async def _granted_by_claim(self, offer: Offer, namespace: str, name: str) -> Offer:
        """The offer with the model the scheduler allocated from the claim's ``firstAvailable``.

        The lease records exactly what was granted (guarantee 3): a fallback
        model is the grant's model, not the one first offered.
        """
        gpus = offer.contract.resources.gpus
        claim = await self.api.get_or_none(resource_path(*CLAIMS, namespace, name))
        if claim is None or gpus is None:
            return offer
        models = claim_models(offer.grant.gpu_model, gpus.models)
        allocation = (claim.get("status") or {}).get("allocation") or {}
        for result in (allocation.get("devices") or {}).get("results") or []:
            _, _, sub = str(result.get("request", "")).partition("/")
            if sub.startswith("m") and sub[1:].isdigit() and int(sub[1:]) < len(models):
                model = models[int(sub[1:])]
                grant = msgspec.structs.replace(offer.grant, gpu_model=model)
                return msgspec.structs.replace(offer, grant=grant)
        return offer

    async def _create_or_adopt(self, collection: str, body: Obj) -> Obj:
        """Create ``body``; when it exists (a retried commit), return the existing object."""
        for _ in range(50):
            try:
                return await self.api.create(collection, body)
            except Conflict:
                existing = await self.api.get_or_none(f"{collection}/{body['metadata']['name']}")
                if existing is not None:
                    return existing
            except TransientBackendError as exc:
                if "serviceaccount" not in str(exc).replace(" ", "").lower():
                    raise
                await anyio.sleep(0.2)  # a new namespace's default service account is on its way
        raise TransientBackendError(self.name, f"could not create {body['metadata']['name']}")

    async def _place(
        self,
        offer: Offer,
        name: str,
        namespace: str,
        lease_obj: Obj,
        objects: list[str],
        deadline: float,
        wait_for_capacity: bool,
    ) -> Obj:
        contract = offer.contract
        owner = owner_reference(lease_obj)
        labels = labels_for(name, contract)
        features = await self.features()
        gpus = contract.resources.gpus
        claim = None
        if gpus is not None and offer.grant.gpus and self.dra == "auto" and features.dra:
            models = claim_models(offer.grant.gpu_model, gpus.models)
            await self._create_or_adopt(
                resource_path(*CLAIMS, namespace),
                claim_manifest(
                    name, namespace, labels, owner, count=offer.grant.gpus, models=models
                ),
            )
            objects.append("claim")
            claim = name
        workload = contract.workload
        env = {
            **(dict(workload.env) if workload is not None else {}),
            "AICONTRACT_LEASE_ID": name,
        }
        as_job = workload is not None and workload.kind in JOB_KINDS and bool(workload.command)
        spec = pod_spec(
            name,
            offer,
            image=self.image,
            restart_policy="Never" if as_job else "Always",
            grace_seconds=self.grace_seconds,
            env=env,
            claim=claim,
        )
        queue = self.queue if (as_job and self.queue and features.kueue) else None
        job: Obj | None = None
        if as_job:
            job = await self._create_or_adopt(
                resource_path(*JOBS, namespace),
                job_manifest(name, namespace, labels, owner, spec, queue=queue),
            )
            objects.append("job")
        else:
            await self._create_or_adopt(
                resource_path(*PODS, namespace), pod_manifest(name, namespace, labels, owner, spec)
            )
            objects.append("pod")
        if workload is not None and workload.ports:
            await self._create_or_adopt(
                resource_path(*SERVICES, namespace),
                service_manifest(name, namespace, labels, owner, workload.ports),
            )
            objects.append("service")
        if queue is not None and job is not None:
            await self._wait_admitted(namespace, job, deadline, features)
        return await self._wait_bound(namespace, name, deadline, wait_for_capacity)

    async def _lease(
        self,
        offer: Offer,
        name: str,
        namespace: str,
        lease_obj: Obj,
        pod: Obj,
        objects: Sequence[str],
        key: str,
    ) -> Lease:
        contract = offer.contract
        node_name = str(pod["spec"]["nodeName"])
        region, jurisdiction = offer.region, offer.jurisdiction
        node = await self.api.get_or_none(resource_path("v1", "nodes", name=node_name))
        if node is not None:
            view = node_views([node], [], region_jurisdictions=self.region_jurisdictions)[0]
            region, jurisdiction = view.region, view.jurisdiction
        created = parse_time(lease_obj["spec"].get("acquireTime")) or self.clock.time()
        renewed = parse_time(lease_obj["spec"].get("renewTime")) or created
        expires_at = renewed + float(lease_obj["spec"].get("leaseDurationSeconds") or self.ttl)
        ends_at = parse_time(
            (lease_obj["metadata"].get("annotations") or {}).get(ANNOTATION_ENDS_AT)
        )
        if ends_at is not None:
            expires_at = min(expires_at, ends_at)
        endpoints: dict[str, str] = {}
        workload = contract.workload
        if workload is not None:
            for port_label, port in sorted(workload.ports.items()):
                scheme = "http://" if port_label.startswith("http") else ""
                endpoints[port_label] = f"{scheme}{name}.{namespace}.svc:{port}"
        env = {**(dict(workload.env) if workload is not None else {}), "AICONTRACT_LEASE_ID": name}
        return Lease(
            id=name,
            contract=contract,
            grant=offer.grant,
            backend=self,
            guarantee="allocated",
            expires_at=expires_at,
            region=region,
            jurisdiction=jurisdiction,
            endpoints=endpoints,
            env=env,
            details={
                "namespace": namespace,
                "node": node_name,
                "pod": str(pod["metadata"]["name"]),
                "objects": ",".join(objects),
                "idempotency_key": key,
            },
            clock=self.clock,
            created_at=created,
        )

    async def _wait_bound(
        self, namespace: str, name: str, deadline: float, wait_for_capacity: bool
    ) -> Obj:
        """Watch the lease's pods until one is bound to a node; CapacityUnavailable if none is."""
        path = resource_path(*PODS, namespace)
        selector = {"labelSelector": f"{LABEL_LEASE}={name}"}
        last = "no word from the scheduler yet"

        def verdict(pod: Obj) -> Obj | None:
            nonlocal last
            if (pod.get("spec") or {}).get("nodeName"):
                return pod
            status = pod.get("status") or {}
            if status.get("phase") == "Failed":
                raise CapacityUnavailable(
                    self.name, f"pod {name} failed: {status.get('reason')} {status.get('message')}"
                )
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    last = str(cond.get("message") or cond.get("reason"))
                    if not wait_for_capacity and cond.get("reason") == "Unschedulable":
                        raise CapacityUnavailable(
                            self.name, f"the scheduler cannot place {name} now: {last}"
                        )
            return None

        return await self._watch_until(
            path,
            selector,
            deadline,
            verdict,
            lambda: f"{name} was not bound to a node before the deadline: {last}",
        )

    async def _wait_admitted(
        self, namespace: str, job: Obj, deadline: float, features: Features
    ) -> None:
        """Watch Kueue's Workload for the Job until its ``Admitted`` condition is True."""
        path = resource_path(features.kueue_version, "workloads", namespace)
        selector = {"labelSelector": f"kueue.x-k8s.io/job-uid={job['metadata']['uid']}"}

        def admitted(obj: Obj) -> bool:
            return any(
                c.get("type") == "Admitted" and c.get("status") == "True"
                for c in (obj.get("status") or {}).get("conditions") or []
            )

        await self._watch_until(
            path,
            selector,
            deadline,
            lambda obj: obj if admitted(obj) else None,
            lambda: f"Kueue did not admit job {job['metadata']['name']} in time",
        )

    async def _watch_until(
        self,
        path: str,
        selector: Mapping[str, str],
        deadline: float,
        found: Callable[[Obj], Obj | None],
        too_late: Callable[[], str],
    ) -> Obj:
        """List, then watch from the list's version, until ``found`` returns an object.

        A watch, not a polling loop: the API server tells us of each change. An
        expired version (410 Gone) lists again; the deadline raises
        CapacityUnavailable with ``too_late()``.
        """
        while True:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise CapacityUnavailable(self.name, too_late())
            with anyio.move_on_after(remaining):
                listing = await self.api.get(path, selector)
                for obj in listing.get("items") or []:
                    result: Obj | None = found(obj)
                    if result is not None:
                        return result
                version = str(listing["metadata"].get("resourceVersion", ""))
                try:
                    async for kind, obj in self.api.watch(
                        path,
                        {**selector, "resourceVersion": version},
                        timeout_seconds=max(1, min(300, math.ceil(remaining))),
                    ):
                        if kind in ("ADDED", "MODIFIED"):
                            result = found(obj)
                            if result is not None:
                                return result
                except ApiError as exc:
                    if exc.status != 410:
                        raise

    # -- renewing, releasing -------------------------------------------------------------

    async def renew(self, lease: Lease) -> float:
        """Move the Lease object's ``renewTime`` to now; the new expiry is one TTL ahead."""
        namespace = lease.details.get("namespace") or self.namespace_for(lease.contract)
        now = self.clock.time()
        patch = {
            "spec": {"renewTime": micro_time(now), "leaseDurationSeconds": max(1, round(self.ttl))}
        }
        try:
            obj = await self.api.merge_patch(resource_path(*LEASES, namespace, lease.id), patch)
        except NotFound:
            raise LeaseLost(lease.id, "its Lease object is gone (released or collected)") from None
        if obj.get("metadata", {}).get("deletionTimestamp"):
            raise LeaseLost(lease.id, "its Lease object is being deleted")
        expires_at = now + self.ttl
        ends_at = lease.ends_at
        return expires_at if ends_at is None else min(expires_at, ends_at)

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:
        """Delete whatever a commit under ``idempotency_key`` created (the key names it)."""
        namespace = offer.details.get("namespace") or self.namespace_for(offer.contract)
        await self._teardown(
            namespace, lease_name(idempotency_key), ("claim", "service", "job", "pod")
        )

    async def release(self, lease: Lease) -> None:
        """Delete the lease's objects and wait until they are gone."""
        namespace = lease.details.get("namespace") or self.namespace_for(lease.contract)
        kinds = tuple(k for k in lease.details.get("objects", "").split(",") if k)
        await self._teardown(namespace, lease.id, kinds or ("claim", "service", "job", "pod"))
        await self._wait_gone(namespace, lease.id, self.release_timeout)

    async def _teardown(self, namespace: str, name: str, kinds: Sequence[str]) -> None:
        """Delete what a lease made (each delete is a no-op when it is already gone)."""
        api = self.api
        if "service" in kinds:
            await api.delete(resource_path(*SERVICES, namespace, name))
        if "job" in kinds:
            await api.delete(resource_path(*JOBS, namespace, name), propagation="Background")
            await api.delete(
                resource_path(*PODS, namespace),
                params={"labelSelector": f"{LABEL_LEASE}={name}"},
            )
        if "pod" in kinds:
            await api.delete(resource_path(*PODS, namespace, name))
        if "claim" in kinds and (await self.features()).dra:
            await api.delete(resource_path(*CLAIMS, namespace, name))
        await api.delete(resource_path(*LEASES, namespace, name), propagation="Background")

    async def _wait_gone(self, namespace: str, name: str, timeout: float) -> None:
        """Watch until no pod of the lease is left; force pods on lost nodes."""
        path = resource_path(*PODS, namespace)
        selector = {"labelSelector": f"{LABEL_LEASE}={name}"}
        forced: set[str] = set()
        with anyio.move_on_after(timeout) as scope:
            while True:
                listing = await self.api.get(path, selector)
                pods = listing.get("items") or []
                if not pods:
                    break
                for pod in pods:
                    await self._force_if_node_lost(namespace, pod, forced)
                left = {p["metadata"]["name"] for p in pods}
                version = str(listing["metadata"].get("resourceVersion", ""))
                try:
                    async for kind, pod in self.api.watch(
                        path, {**selector, "resourceVersion": version}, timeout_seconds=10
                    ):
                        if kind == "DELETED":
                            left.discard(pod["metadata"]["name"])
                            if not left:
                                break
                        elif kind in ("ADDED", "MODIFIED"):
                            left.add(pod["metadata"]["name"])
                            await self._force_if_node_lost(namespace, pod, forced)
                except ApiError as exc:
                    if exc.status != 410:
                        raise
        if scope.cancelled_caught:
            raise TransientBackendError(
                self.name, f"pods of lease {name} still there after {timeout:g}s"
            )
        for leftover in (SERVICES, LEASES):
            if await self.api.get_or_none(resource_path(*leftover, namespace, name)) is not None:
                await self.api.delete(resource_path(*leftover, namespace, name))

    async def _force_if_node_lost(self, namespace: str, pod: Obj, forced: set[str]) -> None:
        """A terminating pod on a node that is not Ready never finishes: delete it at once."""
        meta, node_name = pod["metadata"], (pod.get("spec") or {}).get("nodeName")
        if not meta.get("deletionTimestamp") or meta["name"] in forced:
            return
        if node_name:
            node = await self.api.get_or_none(resource_path("v1", "nodes", name=node_name))
            if node is not None and node_views([node], [])[0].why_not is None:
                return
        forced.add(meta["name"])
        await self.api.delete(resource_path(*PODS, namespace, meta["name"]), grace_seconds=0)

    # -- observing -----------------------------------------------------------------------

    async def observe(self, lease: Lease) -> Observation:
        """Faults from the pod (phase, restarts, eviction, deletion) and its node (NotReady)."""
        namespace = lease.details.get("namespace") or self.namespace_for(lease.contract)
        now = self.clock.time()
        pods = (
            await self.api.get(
                resource_path(*PODS, namespace), {"labelSelector": f"{LABEL_LEASE}={lease.id}"}
            )
        ).get("items") or []
        faults: list[Fault] = []
        if not pods:
            if lease.is_active:
                faults.append(
                    Fault(
                        kind="capacity-revoked",
                        at=now,
                        reason=f"pod of lease {lease.id} was deleted",
                    )
                )
            return Observation(faults=tuple(faults))
        pod = pods[0]
        faults.extend(self._pod_faults(pod, now))
        workload = _workload_state(pod)
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name:
            node = await self.api.get_or_none(resource_path("v1", "nodes", name=node_name))
            if node is None:
                faults.append(
                    Fault(
                        kind="node-lost",
                        at=now,
                        reason=f"node {node_name} was removed from the cluster",
                    )
                )
            else:
                view = node_views([node], [])[0]
                ready: Obj = next(
                    (
                        c
                        for c in (node.get("status") or {}).get("conditions") or []
                        if c.get("type") == "Ready"
                    ),
                    {},
                )
                if ready.get("status") != "True":
                    faults.append(
                        Fault(
                            kind="node-lost",
                            at=now,
                            reason=f"node {node_name} is NotReady (Ready={ready.get('status')}, "
                            f"{ready.get('reason') or view.why_not}: {ready.get('message', '')})",
                        )
                    )
        return Observation(faults=tuple(faults), workload=workload)

    def _pod_faults(self, pod: Obj, now: float) -> list[Fault]:
        status, meta = pod.get("status") or {}, pod["metadata"]
        name = meta["name"]
        faults: list[Fault] = []
        reason = status.get("reason")
        if reason == "Evicted" or reason == "Preempting":
            faults.append(
                Fault(
                    kind="preempted",
                    at=now,
                    reason=f"pod {name} {reason.lower()}: {status.get('message', '')}",
                )
            )
        for cond in status.get("conditions") or []:
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                faults.append(
                    Fault(
                        kind="preempted",
                        at=now,
                        reason=f"pod {name}: {cond.get('reason')}: {cond.get('message', '')}",
                    )
                )
        if meta.get("deletionTimestamp") and not faults:
            faults.append(
                Fault(
                    kind="capacity-revoked",
                    at=now,
                    reason=f"pod {name} is being deleted by the cluster",
                )
            )
        phase = status.get("phase")
        # Succeeding is how a batch or training Job completes (the workload's state
        # says so); only a failure is a fault.
        if phase == "Failed" and reason != "Evicted":
            codes = [
                str(((s.get("state") or {}).get("terminated") or {}).get("exitCode"))
                for s in status.get("containerStatuses") or []
            ]
            faults.append(
                Fault(
                    kind="workload-exited",
                    at=now,
                    reason=f"pod {name} {phase.lower()} (exit {', '.join(codes) or '?'})",
                )
            )
        for container in status.get("containerStatuses") or []:
            restarts = int(container.get("restartCount") or 0)
            if restarts > self.max_restarts:
                last = ((container.get("lastState") or {}).get("terminated") or {}).get("reason")
                faults.append(
                    Fault(
                        kind="workload-exited",
                        at=now,
                        reason=f"container {container.get('name')} restarted {restarts} times"
                        + (f" (last: {last})" if last else ""),
                    )
                )
        return faults

    # -- garbage collection --------------------------------------------------------------

    async def collect_garbage(
        self, *, namespace: str | None = None, grace: float = 0.0, dry_run: bool = False
    ) -> GarbageReport:
        """Delete leases whose holder stopped renewing (past ``renewTime + ttl + grace``),
        leases past their contract's end, and objects whose Lease object is gone."""
        api = self.api
        now = self.clock.time()
        selector = {"labelSelector": LABEL_LEASE}
        where = namespace
        leases = (await api.get(resource_path(*LEASES, where), selector)).get("items") or []
        expired: list[str] = []
        alive: set[tuple[str, str]] = set()
        kept = 0
        for obj in leases:
            meta, spec = obj["metadata"], obj.get("spec") or {}
            ns, name = meta["namespace"], meta["name"]
            renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime")) or 0
            limit = renewed + float(spec.get("leaseDurationSeconds") or self.ttl) + grace
            ends_at = parse_time((meta.get("annotations") or {}).get(ANNOTATION_ENDS_AT))
            if now > limit or (ends_at is not None and now > ends_at + grace):
                expired.append(f"{ns}/{name}")
                if not dry_run:
                    await self._teardown(ns, name, ("claim", "service", "job", "pod"))
            else:
                alive.add((ns, name))
                kept += 1
        orphans: list[str] = []
        features = await self.features()
        kinds = [PODS, SERVICES, JOBS] + ([CLAIMS] if features.dra else [])
        for kind in kinds:
            items = (await api.get(resource_path(*kind, where), selector)).get("items") or []
            for obj in items:
                meta = obj["metadata"]
                ns, lease_label = meta["namespace"], (meta.get("labels") or {}).get(LABEL_LEASE, "")
                created = parse_time(meta.get("creationTimestamp")) or now
                if (ns, lease_label) in alive or now - created < grace:
                    continue
                if f"{ns}/{lease_label}" in expired:
                    continue
                orphans.append(f"{kind[1]}/{ns}/{meta['name']}")
                if not dry_run:
                    grace_now = 0 if kind == PODS and meta.get("deletionTimestamp") else None
                    await api.delete(
                        resource_path(*kind, ns, meta["name"]), grace_seconds=grace_now
                    )
        return GarbageReport(expired=tuple(expired), orphans=tuple(orphans), kept=kept)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._api is not None:
            await self._api.aclose()
        elif self.http is not None:
            await self.http.aclose()
        self._api = None
        self.http = None


def _workload_state(pod: Obj) -> str:
    """The workload's state from its pod: running and Ready is ready; finished is completed."""
    status = pod.get("status") or {}
    if status.get("phase") in ("Succeeded", "Failed"):
        return "completed"
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    return "ready" if status.get("phase") == "Running" and ready else "not-ready"
