"""Observing: faults from a lease's pod and node, and its workload's state."""

from __future__ import annotations

from ...leases import Lease
from ...observation import Fault, Observation
from .api import resource_path
from .core import (
    PODS,
    KubeCore,
    Obj,
)
from .objects import (
    LABEL_LEASE,
)
from .quote import node_views

__all__ = ["ObserveMixin"]


class ObserveMixin(KubeCore):
    """Faults (pod phase, restarts, eviction, deletion; node NotReady) and workload state."""

    # -- observing -----------------------------------------------------------------------

    async def observe(self, lease: Lease) -> Observation:
        """Faults from the lease's own pod (phase, restarts, eviction, deletion, a
        replacement) and its node (NotReady, gone, relabelled out of the contract)."""
        namespace = lease.details.get("namespace") or self.namespace_for(lease.contract)
        now = self.clock.time()
        pods = (
            await self.api.get(
                resource_path(*PODS, namespace), {"labelSelector": f"{LABEL_LEASE}={lease.id}"}
            )
        ).get("items") or []
        if lease.details.get("pod_uids"):
            return await self._observe_gang(lease, pods, now)
        faults: list[Fault] = []
        # The lease is bound to one pod (its uid): another pod under the lease's label,
        # a Job controller's replacement or an eviction's, is not what was granted.
        wanted_uid = lease.details.get("pod_uid")
        wanted_name = lease.details.get("pod")
        pod = next(
            (
                p
                for p in pods
                if (p["metadata"].get("uid") == wanted_uid if wanted_uid else True)
                and (p["metadata"].get("name") == wanted_name if wanted_name else True)
            ),
            None,
        )
        if pod is None:
            if lease.is_active:
                others = [
                    f"{p['metadata']['name']} on "
                    + str((p.get("spec") or {}).get("nodeName") or "no node")
                    for p in pods
                ]
                replaced = f"; replaced by {', '.join(others)}" if others else ""
                faults.append(
                    Fault(
                        kind="capacity-revoked",
                        at=now,
                        reason=f"pod {wanted_name or lease.id} of lease {lease.id} was deleted"
                        + replaced,
                    )
                )
            return Observation(faults=tuple(faults))
        faults.extend(self._pod_faults(pod, now))
        workload = _workload_state(pod)
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name:
            faults.extend(await self._node_faults(lease, str(node_name), now))
        return Observation(faults=tuple(faults), workload=workload)

    async def _observe_gang(self, lease: Lease, pods: list[Obj], now: float) -> Observation:
        """A gang is one lease: a fault of any of its pods or nodes is the whole gang's.

        Training across nodes cannot lose one: a node lost, a pod evicted or deleted
        revokes the lease (and its release deletes every pod and the Service).
        """
        uids = lease.details.get("pod_uids", "").split(",")
        names = lease.details.get("pods", "").split(",")
        by_uid = {str(p["metadata"].get("uid")): p for p in pods}
        faults: list[Fault] = []
        states: list[str] = []
        for rank, uid in enumerate(uids):
            pod = by_uid.get(uid)
            pod_name = names[rank] if rank < len(names) else uid
            if pod is None:
                if lease.is_active:
                    faults.append(
                        Fault(
                            kind="capacity-revoked",
                            at=now,
                            reason=f"pod {pod_name} (rank {rank}) of gang {lease.id} was deleted",
                        )
                    )
                states.append("not-ready")
                continue
            faults.extend(self._pod_faults(pod, now))
            states.append(_workload_state(pod))
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name:
                faults.extend(await self._node_faults(lease, str(node_name), now))
        if all(state == "completed" for state in states):
            workload = "completed"
        elif all(state in ("ready", "completed") for state in states):
            workload = "ready"
        else:
            workload = "not-ready"
        return Observation(faults=tuple(faults), workload=workload)

    async def _node_faults(self, lease: Lease, node_name: str, now: float) -> list[Fault]:
        """A lease's node gone, not Ready, or relabelled out of the contract's placement."""
        faults: list[Fault] = []
        node = await self.api.get_or_none(resource_path("v1", "nodes", name=node_name))
        if node is None:
            faults.append(
                Fault(
                    kind="node-lost",
                    at=now,
                    reason=f"node {node_name} was removed from the cluster",
                )
            )
            return faults
        view = node_views([node], [], region_jurisdictions=self.region_jurisdictions)[0]
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
        misfits = lease.contract.placement.misfits(
            region=view.region, jurisdiction=view.jurisdiction, provider=self.provider
        )
        if misfits:
            requirement, wanted, has = misfits[0]
            faults.append(
                Fault(
                    kind="capacity-revoked",
                    at=now,
                    reason=f"placement of node {node_name} changed: {requirement} wants "
                    f"{wanted}, the node is now {has}",
                )
            )
        return faults

    def _pod_faults(self, pod: Obj, now: float) -> list[Fault]:
        status, meta = pod.get("status") or {}, pod["metadata"]
        name = meta["name"]
        faults: list[Fault] = []

        def fault(kind: str, reason: str) -> None:
            faults.append(Fault(kind=kind, at=now, reason=reason))

        reason = status.get("reason")
        if reason == "Evicted" or reason == "Preempting":
            fault("preempted", f"pod {name} {reason.lower()}: {status.get('message', '')}")
        for cond in status.get("conditions") or []:
            if cond.get("type") == "DisruptionTarget" and cond.get("status") == "True":
                fault("preempted", f"pod {name}: {cond.get('reason')}: {cond.get('message', '')}")
        if meta.get("deletionTimestamp") and not faults:
            fault("capacity-revoked", f"pod {name} is being deleted by the cluster")
        phase = status.get("phase")
        # Succeeding is how a batch or training Job completes (the workload's state
        # says so); only a failure is a fault.
        if phase == "Failed" and reason != "Evicted":
            codes = [
                str(((s.get("state") or {}).get("terminated") or {}).get("exitCode"))
                for s in status.get("containerStatuses") or []
            ]
            fault("workload-exited", f"pod {name} {phase.lower()} (exit {', '.join(codes) or '?'})")
        for container in status.get("containerStatuses") or []:
            restarts = int(container.get("restartCount") or 0)
            if restarts > self.max_restarts:
                last = ((container.get("lastState") or {}).get("terminated") or {}).get("reason")
                fault(
                    "workload-exited",
                    f"container {container.get('name')} restarted {restarts} times"
                    + (f" (last: {last})" if last else ""),
                )
        return faults


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
