"""Committing: write a lease's objects and watch until the scheduler binds its pod.

Also renewing, since both write the Lease object's heartbeat.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import anyio
import attrs
import msgspec

from ...contract import Workload
from ...errors import (
    BackendError,
    CapacityUnavailable,
    IdempotencyConflict,
    LeaseLost,
)
from ...leases import Lease
from ...offer import Offer
from ...world import World
from ..base import granted_lease, lease_env
from ..gang import procs_per_node
from .adopt import AdoptMixin, _Owned
from .api import NotFound, resource_path
from .binding import BindingMixin, GangUnplaced
from .core import (
    CLAIMS,
    JOB_KINDS,
    JOBS,
    LEASES,
    PODS,
    SERVICES,
    Obj,
    log,
)
from .objects import (
    ANNOTATION_ENDS_AT,
    ANNOTATION_KEY,
    ANNOTATION_OFFER_DIGEST,
    RENDEZVOUS_PORT,
    ObjectMeta,
    claim_manifest,
    claim_models,
    gang_address,
    gang_pod_name,
    headless_service_manifest,
    job_manifest,
    lease_manifest,
    lease_name,
    micro_time,
    offer_digest,
    parse_time,
    pod_manifest,
    pod_spec,
    service_manifest,
)
from .quote import node_views
from .teardown import TeardownMixin, format_uids, parse_uids

__all__ = ["CommitMixin"]

GANG_TRIES = 4
"""How many times a gang that cannot be placed at once (no ``start_by``) is made and let go
before the commit fails: enough for one of two gangs racing for the same nodes to win."""


class CommitMixin(BindingMixin, AdoptMixin, TeardownMixin):
    """Commit (create or adopt, then wait for binding) and renew."""

    # -- committing ----------------------------------------------------------------------

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        """Write the lease's objects and wait (a watch) until the scheduler binds its pod.

        The Lease object is renewed from the moment it exists (a committing lease is
        alive, and ``aicontract gc`` leaves it alone); transient API errors are
        retried until the contract's ``start_by``; on failure only what this call
        created is deleted, and the failure itself is what is raised.
        """
        if offer.backend != self.name:
            raise CapacityUnavailable(self.name, f"offer {offer.id} is not a {self.name} offer")
        contract = offer.contract
        name = lease_name(idempotency_key)
        namespace = offer.details.get("namespace") or self.namespace_for(contract)
        start_by = contract.terms.start_by
        wait_for_capacity = start_by is not None
        deadline = anyio.current_time() + (start_by.seconds if start_by else self.schedule_timeout)
        made: list[tuple[str, str]] = []  # (path, uid) of what this very call created
        try:
            await self._retrying(deadline, self._ensure_namespace, namespace)
            lease_obj = await self._lease_object(offer, name, namespace, idempotency_key, deadline)
            if lease_obj.created:
                made.append((lease_obj.path, lease_obj.uid))
            beat = _Beat(
                renewed=parse_time(lease_obj.obj["spec"].get("renewTime")) or self.clock.time()
            )
            work = anyio.CancelScope()
            # The heartbeat's task group is left by hand (as Lease.__aexit__ does) so an
            # error of the commit itself propagates as itself, not in an ExceptionGroup.
            heart = anyio.create_task_group()
            await heart.__aenter__()
            try:
                heart.start_soon(self._keep_alive, namespace, name, lease_obj.uid, beat, work)
                lease: Lease | None = None
                with work:
                    lease = await self._bind(
                        offer, lease_obj, made, deadline, wait_for_capacity, idempotency_key, beat
                    )
            finally:
                heart.cancel_scope.cancel()
                await heart.__aexit__(None, None, None)
            if lease is None:
                raise CapacityUnavailable(self.name, f"lease {name}: {beat.lost}")
            return lease
        except BaseException as exc:
            # Until the lease is handed back, nobody holds what was made: a failure (or a
            # cancel) must not leave it. Only this call's objects go (a retry of another
            # process's key must not destroy that process's pod), and a failure to delete
            # never hides why the commit failed.
            with anyio.CancelScope(shield=True):
                await self._undo(made, exc)
            raise

    async def _bind(
        self,
        offer: Offer,
        lease_obj: _Owned,
        made: list[tuple[str, str]],
        deadline: float,
        wait_for_capacity: bool,
        key: str,
        beat: _Beat,
    ) -> Lease:
        """Place the workload, wait for binding, and build the lease from what was bound."""
        making = _Making(
            meta=ObjectMeta.of(lease_obj.obj, offer.contract),
            objects={"lease": lease_obj.uid},
            made=made,
            deadline=deadline,
            wait_for_capacity=wait_for_capacity,
        )
        name, namespace, objects = lease_obj.name, lease_obj.namespace, making.objects
        if offer.grant.nodes > 1:
            gang = await self._place_gang(offer, making)
            return await self._lease(
                offer, name, namespace, lease_obj.obj, gang[0], objects, key, beat, gang=gang
            )
        pod = await self._place(offer, making)
        if "claim" in objects:
            offer = await self._retrying(deadline, self._granted_by_claim, offer, namespace, name)
        return await self._lease(offer, name, namespace, lease_obj.obj, pod, objects, key, beat)

    async def _keep_alive(
        self, namespace: str, name: str, uid: str, beat: _Beat, work: anyio.CancelScope
    ) -> None:
        """Renew the Lease object while the commit waits; cancel ``work`` if it is gone.

        Never raises: a transient failure waits for the next beat.
        """
        interval = max(0.2, min(self.ttl / 3, 5.0))
        path = resource_path(*LEASES, namespace, name)
        while True:
            await anyio.sleep(interval)
            now = self.clock.time()
            try:
                obj = await self.api.merge_patch(path, {"spec": {"renewTime": micro_time(now)}})
            except NotFound:
                obj = {}
            except BackendError as exc:
                log.info("kubernetes: could not renew committing lease %s: %s", name, exc)
                continue
            meta = obj.get("metadata") or {}
            if meta.get("uid") != uid or meta.get("deletionTimestamp"):
                beat.lost = (
                    f"its Lease object {namespace}/{name} was deleted while the commit waited"
                    " (released or collected by someone else)"
                )
                work.cancel()
                return
            beat.renewed = now

    async def _lease_object(
        self, offer: Offer, name: str, namespace: str, key: str, deadline: float
    ) -> _Owned:
        """Create the Lease object, or adopt the one a retry of this commit made.

        Adopted only when it is live and records the same key and the same offer;
        one being deleted is waited out, then made anew.
        """
        digest = offer_digest(offer)
        now = self.clock.time()
        ends_at = (
            now + offer.contract.terms.duration.seconds if offer.contract.terms.duration else None
        )
        body = lease_manifest(
            name,
            namespace,
            offer=offer,
            idempotency_key=key,
            holder=self.holder,
            ttl=self.ttl,
            now=now,
            ends_at=ends_at,
        )

        def adoptable(obj: Obj) -> bool:
            annotations = obj["metadata"].get("annotations") or {}
            if annotations.get(ANNOTATION_KEY) != key:
                raise BackendError(self.name, f"lease object {namespace}/{name} is another key's")
            theirs = annotations.get(ANNOTATION_OFFER_DIGEST)
            if theirs is not None and theirs != digest:
                raise IdempotencyConflict(
                    self.name,
                    f"idempotency key {key!r} was used for another offer (lease {namespace}/"
                    f"{name}); a retry must send the same offer, a new commit a new key",
                )
            return True

        return await self._create_or_adopt(
            resource_path(*LEASES, namespace), body, deadline, adoptable
        )

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

    async def _place(self, offer: Offer, making: _Making) -> Obj:
        """Make a lease's objects (claim, Job or Pod, Service) and wait until its pod is bound."""
        contract, meta, deadline = offer.contract, making.meta, making.deadline
        features = await self._retrying(deadline, self.features)
        gpus = contract.resources.gpus
        claim = None
        if gpus is not None and offer.grant.gpus and self.dra == "auto" and features.dra:
            models = claim_models(offer.grant.gpu_model, gpus.models)
            body = claim_manifest(meta, count=offer.grant.gpus, models=models)
            await self._make(making, "claim", CLAIMS, body)
            claim = meta.name
        workload = contract.workload
        as_job = _runs_to_completion(workload)
        spec = self._pod_spec(offer, meta.name, claim=claim)
        queue = self.queue if (as_job and self.queue and features.kueue) else None
        job: Obj | None = None
        if as_job:
            job = await self._make(making, "job", JOBS, job_manifest(meta, spec, queue=queue))
        else:
            await self._make(making, "pod", PODS, pod_manifest(meta, spec))
        if workload is not None and workload.ports:
            body = service_manifest(meta, workload.fixed_ports)
            await self._make(making, "service", SERVICES, body)
        if queue is not None and job is not None:
            await self._wait_admitted(meta.namespace, job, deadline, features)
        return await self._wait_bound(
            meta.namespace, meta.name, making.objects, deadline, making.wait_for_capacity
        )

    async def _make(self, making: _Making, kind: str, resource: tuple[str, str], body: Obj) -> Obj:
        """Create or adopt one of the lease's objects (a ``resource`` in its namespace).

        Adopted only when owned by this Lease object; what is created is noted in
        ``made`` (a failed commit deletes it), and every uid in ``objects`` by kind.
        """
        owner_uid = str(making.meta.owner["uid"])

        def owned(obj: Obj) -> bool:
            refs = obj["metadata"].get("ownerReferences") or []
            return any(ref.get("uid") == owner_uid for ref in refs)

        collection = resource_path(*resource, making.meta.namespace)
        got = await self._create_or_adopt(collection, body, making.deadline, owned)
        if got.created:
            making.made.append((got.path, got.uid))
        making.objects[kind] = got.uid
        return got.obj

    def _pod_spec(
        self,
        offer: Offer,
        name: str,
        env: Mapping[str, str] | None = None,
        *,
        claim: str | None = None,
        rank: int | None = None,
    ) -> Obj:
        """The pod spec of the lease ``name``, its env :func:`lease_env` with ``env`` added.

        A workload that runs to completion (a Job) is never restarted.
        """
        workload = offer.contract.workload
        return pod_spec(
            name,
            offer,
            image=self.image,
            restart_policy="Never" if _runs_to_completion(workload) else "Always",
            grace_seconds=self.grace_seconds,
            env=lease_env(offer.contract, name, env or {}),
            claim=claim,
            rank=rank,
        )

    async def _place_gang(self, offer: Offer, making: _Making) -> list[Obj]:
        """Make a gang's headless Service and its N pods, and wait until all are bound.

        All or nothing: a pod the scheduler cannot place (at once without ``start_by``,
        else by then) fails the commit, whose undo deletes every pod this call made,
        bound or not. Pods request ``nvidia.com/gpu`` (no DRA claim, no Kueue queue).
        """
        meta, workload = making.meta, offer.contract.workload
        ports = workload.fixed_ports if workload is not None else {}
        await self._make(making, "service", SERVICES, headless_service_manifest(meta, ports))
        world = gang_world(offer, meta.name, meta.namespace)
        attempt = 0
        while True:
            for rank in range(world.nodes):
                spec = self._pod_spec(offer, meta.name, world.for_node(rank).env(), rank=rank)
                await self._make(making, f"pod-{rank}", PODS, pod_manifest(meta, spec, rank=rank))
            uids = [making.objects[f"pod-{rank}"] for rank in range(world.nodes)]
            try:
                return await self._wait_gang_bound(
                    meta.namespace,
                    meta.name,
                    uids,
                    making.deadline,
                    making.wait_for_capacity,
                    attempt=attempt,
                )
            except GangUnplaced as exc:
                attempt += 1
                # Another gang may hold what this one needs while waiting for what this
                # one holds: let go, pause a random while, try again; one of them goes first.
                pause = random.uniform(0.1, 0.5) * 2**attempt
                tries_left = making.wait_for_capacity or attempt < GANG_TRIES
                if not tries_left or anyio.current_time() + pause >= making.deadline:
                    raise
                log.info("%s; letting the gang go for %.1fs", exc, pause)
                await self._let_gang_go(making, world.nodes)
                await anyio.sleep(pause)

    async def _let_gang_go(self, making: _Making, nodes: int) -> None:
        """Delete a gang's pods at once, made or adopted, and wait until they are gone, so
        the next try may make them again under the same names."""
        meta = making.meta
        pods = [
            (
                resource_path(*PODS, meta.namespace, gang_pod_name(meta.name, rank)),
                making.objects.pop(f"pod-{rank}"),
            )
            for rank in range(nodes)
        ]
        for path, uid in pods:
            await self._retrying(making.deadline, self._delete_now, path, uid)
            if (path, uid) in making.made:
                making.made.remove((path, uid))
        # Deleted with no grace, pods usually vanish at once; a finalizer may hold one
        # (until the deadline): the API server says when, on a watch.
        await self._watch_gone(meta.namespace, meta.name, {uid for _, uid in pods}, making.deadline)

    async def _delete_now(self, path: str, uid: str) -> bool:
        return await self.api.delete(path, uid=uid, grace_seconds=0)

    async def _lease(
        self,
        offer: Offer,
        name: str,
        namespace: str,
        lease_obj: Obj,
        pod: Obj,
        objects: Mapping[str, str],
        key: str,
        beat: _Beat,
        gang: list[Obj] | None = None,
    ) -> Lease:
        contract = offer.contract
        node_name = str(pod["spec"]["nodeName"])
        where = None
        node = await self.api.get_or_none(resource_path("v1", "nodes", name=node_name))
        if node is not None:
            view = node_views([node], [], region_jurisdictions=self.region_jurisdictions)[0]
            where = (view.region, view.jurisdiction)
        created = parse_time(lease_obj["spec"].get("acquireTime")) or self.clock.time()
        ttl = float(lease_obj["spec"].get("leaseDurationSeconds") or self.ttl)
        endpoints: dict[str, str] = {}
        workload = contract.workload
        if workload is not None:
            for port_label, port in sorted(workload.ports.items()):
                scheme = "http://" if port_label.startswith("http") else ""
                endpoints[port_label] = f"{scheme}{name}.{namespace}.svc:{port}"
        details = {
            "namespace": namespace,
            "node": node_name,
            "pod": str(pod["metadata"]["name"]),
            "pod_uid": str(pod["metadata"]["uid"]),
            "objects": ",".join(dict.fromkeys(k.split("-")[0] for k in objects if k != "lease")),
            "uids": format_uids(objects),
            "idempotency_key": key,
        }
        world = None
        if gang is not None:
            # One lease for the gang: it speaks for rank 0; every pod's node and uid, in
            # rank order, for observe (a lost node anywhere revokes the whole gang).
            world = gang_world(offer, name, namespace)
            details["nodes"] = ",".join(str(p["spec"]["nodeName"]) for p in gang)
            details["pods"] = ",".join(str(p["metadata"]["name"]) for p in gang)
            details["pod_uids"] = ",".join(str(p["metadata"]["uid"]) for p in gang)
        return granted_lease(
            self,
            offer,
            name,
            guarantee="allocated",
            # One TTL from the last renewal: the heartbeat kept it alive while commit waited.
            expires_at=max(beat.renewed, created) + ttl,
            ends_at=parse_time(
                (lease_obj["metadata"].get("annotations") or {}).get(ANNOTATION_ENDS_AT)
            ),
            endpoints=endpoints,
            env=lease_env(contract, name, world.env() if world is not None else {}),
            details=details,
            world=world,
            created_at=created,
            where=where,
        )

    # -- renewing ------------------------------------------------------------------------

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
        meta = obj.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            raise LeaseLost(lease.id, "its Lease object is being deleted")
        uid = parse_uids(lease.details.get("uids", "")).get("lease")
        if uid is not None and meta.get("uid") != uid:
            raise LeaseLost(
                lease.id, "its Lease object was deleted and made anew by another commit"
            )
        expires_at = now + self.ttl
        ends_at = lease.ends_at
        return expires_at if ends_at is None else min(expires_at, ends_at)


def gang_world(offer: Offer, name: str, namespace: str) -> World:
    """A gang's training world, as rank 0 sees it: rank 0's pod is the rendezvous."""
    return World(
        master_addr=gang_address(name, namespace, 0),
        master_port=RENDEZVOUS_PORT,
        nodes=offer.grant.nodes,
        procs_per_node=procs_per_node(offer.contract, offer.grant.gpus),
    )


def _runs_to_completion(workload: Workload | None) -> bool:
    """Whether the workload is a batch or training run with a command: a Job, never restarted."""
    return workload is not None and workload.kind in JOB_KINDS and bool(workload.command)


@attrs.define
class _Making:
    """One commit making a lease's objects: what each carries, and what was made so far."""

    meta: ObjectMeta
    objects: dict[str, str]
    """The uid of every object of the lease, by kind (``lease``, ``pod``, ``pod-0``, ...)."""
    made: list[tuple[str, str]]
    """(path, uid) of what this very commit created: what its undo deletes."""
    deadline: float
    wait_for_capacity: bool


@attrs.define
class _Beat:
    """When a committing lease's Lease object was last renewed; why it was lost, if it was."""

    renewed: float
    lost: str | None = None
