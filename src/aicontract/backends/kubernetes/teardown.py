"""Tearing down: what a lease made is deleted, and waited for until it is gone."""

from __future__ import annotations

from collections.abc import Sequence

import anyio

from ...errors import (
    TransientBackendError,
)
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
)
from .objects import (
    LABEL_LEASE,
    lease_name,
)
from .quote import node_views

__all__ = ["TeardownMixin"]


class TeardownMixin(KubeCore):
    """Release, abandon and the deletes they share."""

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
