"""Tearing down: what a lease made is deleted, and waited for until it is gone."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping

import anyio

from ...errors import BackendError, TransientBackendError
from ...leases import Lease
from ...offer import Offer
from .api import ApiError, resource_path
from .core import (
    CLAIMS,
    JOBS,
    LEASES,
    PODS,
    SERVICES,
    KubeCore,
    Obj,
    log,
)
from .objects import ANNOTATION_KEY, LABEL_LEASE, lease_name
from .quote import node_views

__all__ = ["TeardownMixin", "format_uids", "parse_uids"]

# Kind of object -> its REST kind, in the order a teardown deletes them.
KINDS: dict[str, tuple[str, str]] = {
    "service": SERVICES,
    "job": JOBS,
    "pod": PODS,
    "claim": CLAIMS,
}


def format_uids(uids: Mapping[str, str]) -> str:
    """``kind=uid`` pairs as a lease's ``details["uids"]`` holds them."""
    return ",".join(f"{kind}={uid}" for kind, uid in uids.items())


def parse_uids(text: str) -> dict[str, str]:
    """The inverse of :func:`format_uids`."""
    return dict(pair.split("=", 1) for pair in text.split(",") if "=" in pair)


def _owners(obj: Obj) -> set[str]:
    return {str(ref.get("uid")) for ref in obj["metadata"].get("ownerReferences") or []}


class TeardownMixin(KubeCore):
    """Release, abandon and the deletes they share: only ever what a lease owns."""

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:
        """Undo a commit under ``idempotency_key`` whose outcome is unknown.

        Its Lease object goes with what it owns, if this holder made it for this
        key (another process's commit under the same key is not ours to undo);
        objects of the key left without a Lease object go too. Transient errors
        (an API server restarting) are retried for up to ``release_timeout``.
        """
        namespace = offer.details.get("namespace") or self.namespace_for(offer.contract)
        name = lease_name(idempotency_key)

        async def once() -> None:
            obj = await self.api.get_or_none(resource_path(*LEASES, namespace, name))
            if obj is None:
                await self._teardown(namespace, name, None)
                return
            annotations = obj["metadata"].get("annotations") or {}
            holder = (obj.get("spec") or {}).get("holderIdentity")
            if annotations.get(ANNOTATION_KEY) != idempotency_key or holder != self.holder:
                log.info("kubernetes: not abandoning %s/%s: held by %s", namespace, name, holder)
                return
            await self._teardown(namespace, name, str(obj["metadata"]["uid"]))

        await self._persist(once, self.release_timeout)

    async def release(self, lease: Lease) -> None:
        """Delete the lease's own objects (by uid) and wait until its pods are gone."""
        namespace = lease.details.get("namespace") or self.namespace_for(lease.contract)
        uids = parse_uids(lease.details.get("uids", ""))
        if "lease" not in uids:  # a lease from before uids were recorded
            obj = await self.api.get_or_none(resource_path(*LEASES, namespace, lease.id))
            if obj is None:
                return
            uids = {"lease": str(obj["metadata"]["uid"])}
        await self._persist(
            lambda: self._teardown(namespace, lease.id, uids["lease"], uids),
            self.release_timeout,
        )
        owners = {uid for kind, uid in uids.items() if kind in ("lease", "job", "pod")}
        await self._persist(
            lambda: self._wait_gone(namespace, lease.id, owners, self.release_timeout),
            self.release_timeout,
        )

    async def _persist(self, call: Callable[[], Awaitable[None]], timeout: float) -> None:
        """``call()``, again after transient errors, for up to ``timeout`` seconds."""
        await self._retrying(anyio.current_time() + timeout, call)

    async def _teardown(
        self,
        namespace: str,
        name: str,
        lease_uid: str | None,
        known: Mapping[str, str] | None = None,
    ) -> None:
        """Delete what the Lease object ``lease_uid`` owns, then that Lease object.

        With ``known`` (kind -> uid, from the lease) only the Lease object is
        deleted: the cluster's garbage collector deletes what it owns (one write,
        not one per kind). Without it the objects are listed by label and those
        owned by ``lease_uid`` are deleted (``lease_uid`` None: those whose Lease
        object is gone). Every delete is by uid, so a newer incarnation under the
        same name is never touched. Each delete is tried even if an earlier one
        failed; the first failure is raised.
        """
        api = self.api
        errors: list[BaseException] = []

        async def attempt(call: Callable[[], Awaitable[object]]) -> None:
            try:
                await call()
            except BackendError as exc:
                errors.append(exc)

        async def delete_owned(kind: str, owners: set[str]) -> set[str]:
            """Delete objects of ``kind`` labelled for this lease and owned by ``owners``."""
            rest = KINDS[kind]
            selector = {"labelSelector": f"{LABEL_LEASE}={name}"}
            items = (await api.get(resource_path(*rest, namespace), selector)).get("items") or []
            live: set[str] = set()
            if lease_uid is None and items:
                # Read after the list: an object owned by a Lease object there now is
                # that commit's (another process's, under the same key), never an orphan.
                # (A Lease object made after this read cannot own what was listed before.)
                now_there = await api.get_or_none(resource_path(*LEASES, namespace, name))
                if now_there is not None:
                    live.add(str(now_there["metadata"]["uid"]))
            deleted: set[str] = set()
            for obj in items:
                meta = obj["metadata"]
                theirs = _owners(obj)
                if theirs & live:
                    continue
                if lease_uid is None and not theirs & owners:
                    # No Lease object: orphans of this name are whatever Lease-owned
                    # object is left (a Job's pods go with their Job).
                    if kind == "pod" and any(
                        ref.get("kind") == "Job" for ref in meta.get("ownerReferences") or []
                    ):
                        continue
                elif not theirs & owners:
                    continue
                uid = str(meta["uid"])
                await api.delete(resource_path(*rest, namespace, meta["name"]), uid=uid)
                deleted.add(uid)
            return deleted

        if known is None:
            dra = (await self.features()).dra
            owners = {lease_uid} if lease_uid is not None else set()
            jobs: set[str] = set()
            for kind in KINDS:
                if kind == "claim" and not dra:
                    continue
                pod_owners = owners | jobs if kind == "pod" else owners

                async def one(kind: str = kind, pod_owners: set[str] = pod_owners) -> None:
                    deleted = await delete_owned(kind, pod_owners)
                    if kind == "job":
                        jobs.update(deleted)

                await attempt(one)
        # else: the Lease object's deletion below takes its dependents with it.
        if lease_uid is not None:
            path = resource_path(*LEASES, namespace, name)
            await attempt(lambda: api.delete(path, uid=lease_uid))
        if errors:
            # The first failure is the cause; later ones are usually the same (rights, an
            # API server away) and are logged, not raised.
            for later in errors[1:]:
                log.warning("kubernetes: teardown of %s/%s: %s", namespace, name, later)
            raise errors[0]

    async def _wait_gone(self, namespace: str, name: str, owners: set[str], timeout: float) -> None:
        """Watch until no pod of the lease is left; force pods on lost nodes.

        A pod of the lease is one with its uid, or owned by its Lease object or Job
        (``owners``); another incarnation's pods under the same label do not count.
        A pod the garbage collector has not marked for deletion within a couple of
        seconds (its owner's deletion cascades) is deleted directly, by uid.
        """
        path = resource_path(*PODS, namespace)
        selector = {"labelSelector": f"{LABEL_LEASE}={name}"}
        forced: set[str] = set()

        def ours(pod: Obj) -> bool:
            return str(pod["metadata"].get("uid")) in owners or bool(_owners(pod) & owners)

        nudge_at = anyio.current_time() + 2.0

        async def nudge(pod: Obj) -> None:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") or meta["name"] in forced:
                return
            if anyio.current_time() >= nudge_at:
                forced.add(meta["name"])
                await self.api.delete(
                    resource_path(*PODS, namespace, meta["name"]), uid=str(meta["uid"])
                )

        with anyio.move_on_after(timeout) as scope:
            while True:
                listing = await self.api.get(path, selector)
                pods = [p for p in listing.get("items") or [] if ours(p)]
                if not pods:
                    break
                for pod in pods:
                    await nudge(pod)
                    await self._force_if_node_lost(namespace, pod, forced)
                left = {p["metadata"]["uid"] for p in pods}
                version = str(listing["metadata"].get("resourceVersion", ""))
                try:
                    timeout_seconds = max(1, math.ceil(nudge_at - anyio.current_time()))
                    async for kind, pod in self.api.watch(
                        path,
                        {**selector, "resourceVersion": version},
                        timeout_seconds=min(10, timeout_seconds),
                    ):
                        if not ours(pod):
                            continue
                        if kind == "DELETED":
                            left.discard(pod["metadata"]["uid"])
                            if not left:
                                break
                        elif kind in ("ADDED", "MODIFIED"):
                            left.add(pod["metadata"]["uid"])
                            await nudge(pod)
                            await self._force_if_node_lost(namespace, pod, forced)
                except ApiError as exc:
                    if exc.status != 410:
                        raise
        if scope.cancelled_caught:
            raise TransientBackendError(
                self.name, f"pods of lease {name} still there after {timeout:g}s"
            )

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
        await self.api.delete(
            resource_path(*PODS, namespace, meta["name"]), grace_seconds=0, uid=str(meta["uid"])
        )
