"""Waiting for binding: watch a lease's pod (or Kueue's Workload) until it is placed.

A list, then a watch from the list's ``resourceVersion``; never a polling loop.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence

import anyio

from ...errors import (
    CapacityUnavailable,
    TransientBackendError,
)
from .api import ApiError, resource_path
from .core import (
    PODS,
    KubeCore,
    Obj,
    log,
)
from .discovery import Features
from .objects import (
    LABEL_LEASE,
)

__all__ = ["BindingMixin", "GangUnplaced"]

GANG_HOLD = 2.0
"""Seconds a gang waiting for capacity (``start_by``) holds some pods bound while another
cannot be placed, before it lets them go and tries again (doubling each time)."""


class GangUnplaced(CapacityUnavailable):
    """A gang's pod cannot be placed now while some of its siblings may hold nodes.

    Holding part of a gang while waiting for the rest is how two gangs deadlock
    (each holds one node the other needs): the commit deletes the gang's pods and,
    while its deadline allows, tries again after a random pause, so one of them
    goes first. Raised as it is when no try is left: a ``CapacityUnavailable``.
    """


class BindingMixin(KubeCore):
    """Watch until the scheduler binds the lease's own pod (or Kueue admits its Job)."""

    async def _wait_bound(
        self,
        namespace: str,
        name: str,
        objects: Mapping[str, str],
        deadline: float,
        wait_for_capacity: bool,
    ) -> Obj:
        """Watch the lease's own pod until it is bound to a node; CapacityUnavailable if not.

        Only this lease's pod counts (its uid, or owned by its Job): a pod left by
        an earlier incarnation under the same label is not it. Its deletion while
        the commit waits (its Lease object released or collected) ends the wait.
        """
        path = resource_path(*PODS, namespace)
        selector = {"labelSelector": f"{LABEL_LEASE}={name}"}
        last = "no word from the scheduler yet"
        owners = {objects.get("job"), objects.get("pod")} - {None}

        def ours(pod: Obj) -> bool:
            meta = pod["metadata"]
            refs = {ref.get("uid") for ref in meta.get("ownerReferences") or []}
            return meta.get("uid") in owners or bool(refs & owners)

        def verdict(kind: str, pod: Obj) -> Obj | None:
            nonlocal last
            if not ours(pod):
                return None
            if kind == "DELETED" and "pod" in objects:
                raise CapacityUnavailable(
                    self.name,
                    f"pod {pod['metadata']['name']} was deleted while the commit waited",
                )
            if pod["metadata"].get("deletionTimestamp"):
                return None
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

    async def _wait_gang_bound(
        self,
        namespace: str,
        name: str,
        uids: Sequence[str],
        deadline: float,
        wait_for_capacity: bool,
        attempt: int = 0,
    ) -> list[Obj]:
        """Watch a gang's pods (``uids``, in rank order) until every one is bound.

        All or nothing: one pod the scheduler cannot place now (without ``start_by``),
        or, waiting for capacity, some pods held while another cannot be placed for
        longer than this ``attempt``'s hold, raises :class:`GangUnplaced` (the caller
        may try again); one that fails or is deleted, or the deadline, raises
        CapacityUnavailable — and the caller deletes the gang, the pods already bound
        with it.
        """
        path = resource_path(*PODS, namespace)
        selector = {"labelSelector": f"{LABEL_LEASE}={name}"}
        rank_of = {uid: rank for rank, uid in enumerate(uids)}
        bound: dict[str, Obj] = {}
        unplaced: set[str] = set()
        last = "no word from the scheduler yet"

        def verdict(kind: str, pod: Obj) -> Obj | None:
            nonlocal last
            meta = pod["metadata"]
            uid = str(meta.get("uid"))
            if uid not in rank_of:
                return None
            pod_name = meta["name"]
            if kind == "DELETED" or meta.get("deletionTimestamp"):
                raise CapacityUnavailable(
                    self.name, f"pod {pod_name} of gang {name} was deleted while the commit waited"
                )
            status = pod.get("status") or {}
            if status.get("phase") == "Failed":
                raise CapacityUnavailable(
                    self.name,
                    f"pod {pod_name} of gang {name} failed: {status.get('reason')}"
                    f" {status.get('message')}",
                )
            if (pod.get("spec") or {}).get("nodeName"):
                bound[uid] = pod
                unplaced.discard(uid)
            for cond in status.get("conditions") or []:
                if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                    last = f"{pod_name}: {cond.get('message') or cond.get('reason')}"
                    if cond.get("reason") == "Unschedulable" and uid not in bound:
                        unplaced.add(uid)
                        if not wait_for_capacity:
                            raise GangUnplaced(
                                self.name,
                                f"the scheduler cannot place gang {name} now ({len(bound)} of"
                                f" {len(uids)} pods bound; all or nothing): {last}",
                            )
            if len(bound) == len(uids):
                return {"items": [bound[u] for u in uids]}
            return None

        def too_late() -> str:
            return (
                f"gang {name}: {len(bound)} of {len(uids)} pods bound before the"
                f" deadline (all or nothing): {last}"
            )

        hold = GANG_HOLD * 2**attempt
        while True:
            # Waiting for capacity, a gang holding some nodes while another pod waits lets
            # them go after `hold` (unless the deadline comes first: then it waits it out).
            until = deadline
            if wait_for_capacity and deadline - anyio.current_time() > 2 * hold:
                until = anyio.current_time() + hold
            try:
                found = await self._watch_until(path, selector, until, verdict, too_late)
                break
            except GangUnplaced:
                raise
            except CapacityUnavailable:
                if until >= deadline:
                    raise
                if bound and unplaced:
                    raise GangUnplaced(
                        self.name,
                        f"gang {name}: {len(bound)} of {len(uids)} pods held {hold:.0f}s while"
                        f" another could not be placed (all or nothing): {last}",
                    ) from None
        pods: list[Obj] = found["items"]
        nodes = [str(p["spec"]["nodeName"]) for p in pods]
        if len(set(nodes)) != len(nodes):  # the pods' anti-affinity forbids it
            raise CapacityUnavailable(self.name, f"gang {name} shares nodes: {nodes}")
        return pods

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
            lambda kind, obj: obj if kind != "DELETED" and admitted(obj) else None,
            lambda: f"Kueue did not admit job {job['metadata']['name']} in time",
        )

    async def _watch_gone(
        self, namespace: str, name: str, uids: Collection[str], deadline: float
    ) -> None:
        """Watch the lease ``name``'s pods until none of ``uids`` is left (deleted, or never
        there); CapacityUnavailable at ``deadline`` (a finalizer may hold a pod for ever)."""
        left: set[str] = set()

        def listed(items: Sequence[Obj]) -> Obj | None:
            left.clear()
            left.update(u for u in (str(p["metadata"].get("uid")) for p in items) if u in uids)
            return None if left else {}

        def found(kind: str, obj: Obj) -> Obj | None:
            if kind == "DELETED":
                left.discard(str(obj["metadata"].get("uid")))
            return None if left else {}

        await self._watch_until(
            resource_path(*PODS, namespace),
            {"labelSelector": f"{LABEL_LEASE}={name}"},
            deadline,
            found,
            lambda: (
                f"pods {', '.join(sorted(left))} of {namespace}/{name} still there"
                " after they were deleted"
            ),
            listed,
        )

    async def _watch_until(
        self,
        path: str,
        selector: Mapping[str, str],
        deadline: float,
        found: Callable[[str, Obj], Obj | None],
        too_late: Callable[[], str],
        listed: Callable[[Sequence[Obj]], Obj | None] | None = None,
    ) -> Obj:
        """List, then watch from the list's version, until ``found`` returns an object.

        A watch, not a polling loop: the API server tells us of each change. An
        expired version (410 Gone) lists again; so does a transient error (the API
        server restarting), after a pause; the deadline raises CapacityUnavailable
        with ``too_late()``. ``listed``, if given, sees each whole listing first (what
        is there at all: for waiting until something is gone) and may answer too.
        """
        pause = 0.1
        while True:
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise CapacityUnavailable(self.name, too_late())
            with anyio.move_on_after(remaining):
                try:
                    listing = await self.api.get(path, selector)
                    items = listing.get("items") or []
                    result: Obj | None = listed(items) if listed is not None else None
                    if result is not None:
                        return result
                    for obj in items:
                        result = found("ADDED", obj)
                        if result is not None:
                            return result
                    version = str(listing["metadata"].get("resourceVersion", ""))
                    async for kind, obj in self.api.watch(
                        path,
                        {**selector, "resourceVersion": version},
                        timeout_seconds=max(1, min(300, math.ceil(remaining))),
                    ):
                        if kind in ("ADDED", "MODIFIED", "DELETED"):
                            result = found(kind, obj)
                            if result is not None:
                                return result
                    pause = 0.1
                except TransientBackendError as exc:
                    log.info("kubernetes: watch of %s interrupted (%s); listing again", path, exc)
                    await anyio.sleep(pause)
                    pause = min(2.0, pause * 2)
                except ApiError as exc:
                    if exc.status != 410:
                        raise
