"""Committing: write a lease's objects and watch until the scheduler binds its pod.

Also renewing, since both write the Lease object's heartbeat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import anyio
import msgspec

from ...errors import (
    BackendError,
    CapacityUnavailable,
    LeaseLost,
    TransientBackendError,
)
from ...leases import Lease
from ...offer import Offer
from .api import ApiError, Conflict, NotFound, resource_path
from .core import (
    CLAIMS,
    JOB_KINDS,
    JOBS,
    LEASES,
    PODS,
    SERVICES,
    Obj,
)
from .discovery import Features
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
from .quote import node_views
from .teardown import TeardownMixin

__all__ = ["CommitMixin"]


class CommitMixin(TeardownMixin):
    """Commit (create or adopt, then wait for binding) and renew."""

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
