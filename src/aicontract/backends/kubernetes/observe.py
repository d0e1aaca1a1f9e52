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
