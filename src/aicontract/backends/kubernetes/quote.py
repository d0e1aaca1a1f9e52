"""What a cluster could place now: node allocatable minus what bound pods request.

Read from Node objects (allocatable ``nvidia.com/gpu``, ``cpu``, ``memory``,
``ephemeral-storage``; GPU product and memory from GPU feature discovery's
labels; region and zone from ``topology.kubernetes.io/*``; jurisdiction from
the ``aicontract.io/jurisdiction`` label, else from the backend's
region → jurisdiction table) and from the pods bound to each node.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import attrs

from ...contract import GPU
from ...gpu_models import pick_model
from ...units import Bytes

__all__ = [
    "LABEL_DEDICATED",
    "LABEL_GPU_INTERCONNECT",
    "LABEL_JURISDICTION",
    "LABEL_REGION",
    "LABEL_REGION_BETA",
    "NodeView",
    "gpu_resource",
    "node_views",
    "parse_cpu_millis",
    "parse_quantity",
    "pod_requests",
]

LABEL_REGION = "topology.kubernetes.io/region"
LABEL_ZONE = "topology.kubernetes.io/zone"
LABEL_REGION_BETA = "failure-domain.beta.kubernetes.io/region"
LABEL_ZONE_BETA = "failure-domain.beta.kubernetes.io/zone"
LABEL_JURISDICTION = "aicontract.io/jurisdiction"
LABEL_DEDICATED = "aicontract.io/dedicated"
LABEL_HOSTNAME = "kubernetes.io/hostname"
GPU_PRODUCT_LABELS = ("nvidia.com/gpu.product", "gpu.nvidia.com/class")
GPU_MEMORY_LABEL = "nvidia.com/gpu.memory"  # MiB, from GPU feature discovery
GPU_CC_MAJOR = "nvidia.com/gpu.compute.major"
GPU_CC_MINOR = "nvidia.com/gpu.compute.minor"
# GPU feature discovery (k8s-device-plugin >= 0.17) labels nodes whose GPUs joined an NVLink
# fabric (NVSwitch trays, GB200 NVL72) with their clique, ``<cluster uuid>.<clique id>``.
GPU_CLIQUE_LABEL = "nvidia.com/gpu.clique"
GPU_SHARING_LABEL = "nvidia.com/gpu.sharing-strategy"  # none | time-slicing | mps
GPU_REPLICAS_LABEL = "nvidia.com/gpu.replicas"
# How a node's GPUs connect to each other, for nodes GPU feature discovery says nothing of
# (it publishes no label for NVLink within a node): set by the operator or an NFD rule.
LABEL_GPU_INTERCONNECT = "aicontract.io/gpu-interconnect"
INTERCONNECTS = frozenset({"nvlink", "pcie", "infiniband"})
GPU_RESOURCE = "nvidia.com/gpu"
TOLERATED_TAINTS = frozenset({GPU_RESOURCE})

# A quantity's suffix: binary ones (Ki, Mi, ...) count in 1024s, decimal ones in 1000s.
_SUFFIX: dict[str, Decimal] = {
    **{f"{p}i": Decimal(2) ** (10 * n) for n, p in enumerate("KMGTPE", 1)},
    **{p: Decimal(10) ** (3 * n) for n, p in enumerate("kMGTPE", 1)},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([a-zA-Z]*)$")


def parse_quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity (``500m``, ``64``, ``512Gi``, ``1e3``) as a number."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match[2] not in ("", *_SUFFIX):
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    try:
        number = Decimal(match[1])
    except InvalidOperation as exc:
        raise ValueError(f"not a Kubernetes quantity: {text!r}") from exc
    return number * _SUFFIX[match[2]] if match[2] else number


def parse_cpu_millis(text: str | int | float) -> int:
    """CPU quantity in millicores."""
    return int(parse_quantity(text) * 1000)


def gpu_resource(gpus: GPU | None) -> str:
    """The extended resource a pod requests: ``nvidia.com/gpu`` or a MIG profile's."""
    if gpus is not None and gpus.mig:
        return f"nvidia.com/mig-{gpus.mig}"
    return GPU_RESOURCE


def _amounts(resources: Mapping[str, Any] | None) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for name, value in (resources or {}).items():
        try:
            out[name] = parse_quantity(value)
        except ValueError:
            continue
    return out


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """What a pod takes from its node, as the scheduler counts it.

    Per resource: the sum over containers (a request, else the limit — the
    API server defaults one to the other), at least the largest init
    container's, plus the pod's overhead.
    """
    spec = pod.get("spec") or {}

    def of(container: Mapping[str, Any]) -> dict[str, Decimal]:
        res = container.get("resources") or {}
        amounts = _amounts(res.get("limits"))
        amounts.update(_amounts(res.get("requests")))
        return amounts

    total: dict[str, Decimal] = {}
    for container in spec.get("containers") or []:
        for name, value in of(container).items():
            total[name] = total.get(name, Decimal(0)) + value
    for container in spec.get("initContainers") or []:
        for name, value in of(container).items():
            total[name] = max(total.get(name, Decimal(0)), value)
    for name, value in _amounts(spec.get("overhead")).items():
        total[name] = total.get(name, Decimal(0)) + value
    return total


def _terminal(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


@attrs.frozen
class NodeView:
    """One node as a quote sees it: where it is, what it has, what is free."""

    name: str
    labels: Mapping[str, str]
    region: str
    jurisdiction: str | None
    jurisdiction_from_label: bool
    allocatable: Mapping[str, Decimal]
    free: Mapping[str, Decimal]
    pods: int
    leased: int
    schedulable: bool
    why_not: str | None
    dedicated: bool

    # What the node's labels say of it (GPU feature discovery's, the operator's).

    @property
    def zone(self) -> str | None:
        """The node's zone: the GA label, else the beta one."""
        return self.labels.get(LABEL_ZONE) or self.labels.get(LABEL_ZONE_BETA)

    @property
    def product(self) -> str | None:
        """The GPU product, from the first product label set."""
        return next((self.labels[k] for k in GPU_PRODUCT_LABELS if self.labels.get(k)), None)

    @property
    def gpu_memory(self) -> Bytes | None:
        """Each GPU's memory (the label is in MiB)."""
        mib = self.labels.get(GPU_MEMORY_LABEL, "")
        return Bytes(int(mib) * 2**20) if mib.isdigit() else None

    @property
    def compute_capability(self) -> tuple[int, int] | None:
        """The GPUs' compute capability, ``(major, minor)``."""
        major = self.labels.get(GPU_CC_MAJOR, "")
        if not major.isdigit():
            return None
        return int(major), int(self.labels.get(GPU_CC_MINOR, "0") or 0)

    @property
    def clique(self) -> str | None:
        """The NVLink clique the node's GPUs joined, if any."""
        return self.labels.get(GPU_CLIQUE_LABEL) or None

    @property
    def interconnect(self) -> str | None:
        """How the node's GPUs connect to each other, when known."""
        said = self.labels.get(LABEL_GPU_INTERCONNECT, "").lower()
        if said in INTERCONNECTS:
            return said
        # The operator's own word first; else a node in an NVLink clique has its GPUs
        # on NVLink; else nothing is known (and an nvlink contract is not offered).
        return "nvlink" if self.clique else None

    @property
    def shared_gpus(self) -> str | None:
        """How the node's GPUs are shared (time-slicing, MPS), or None when they are not."""
        sharing = self.labels.get(GPU_SHARING_LABEL, "none")
        if sharing in ("", "none"):
            return None
        return f"{sharing}, {self.labels.get(GPU_REPLICAS_LABEL, '?')} replicas per GPU"

    def free_of(self, resource: str) -> Decimal:
        """What is free of ``resource`` (0 when the node has none)."""
        return self.free.get(resource, Decimal(0))

    def model_for(self, gpus: GPU) -> str | None:
        """The contract model this node's GPUs are (None: not acceptable or unknown)."""
        if self.product is None:
            return None
        return pick_model(gpus.models, self.product)


def _ready(node: Mapping[str, Any]) -> tuple[bool, str | None]:
    for cond in (node.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            if cond.get("status") == "True":
                return True, None
            return False, f"Ready={cond.get('status')} ({cond.get('reason', '')})"
    return False, "no Ready condition"


def node_views(
    nodes: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    *,
    region_jurisdictions: Mapping[str, str] | None = None,
    default_region: str = "unknown",
) -> list[NodeView]:
    """Every node with its free capacity (allocatable minus bound, non-terminal pods)."""
    used: dict[str, dict[str, Decimal]] = {}
    counts: dict[str, int] = {}
    leased: dict[str, int] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name or _terminal(pod):
            continue
        counts[node_name] = counts.get(node_name, 0) + 1
        if "aicontract.io/lease" in ((pod.get("metadata") or {}).get("labels") or {}):
            leased[node_name] = leased.get(node_name, 0) + 1
        bucket = used.setdefault(node_name, {})
        for name, value in pod_requests(pod).items():
            bucket[name] = bucket.get(name, Decimal(0)) + value
    table = dict(region_jurisdictions or {})
    views = []
    for node in nodes:
        meta = node.get("metadata") or {}
        spec = node.get("spec") or {}
        name = str(meta.get("name"))
        labels: dict[str, str] = dict(meta.get("labels") or {})
        region = labels.get(LABEL_REGION) or labels.get(LABEL_REGION_BETA) or default_region
        jurisdiction = labels.get(LABEL_JURISDICTION) or None
        from_label = jurisdiction is not None
        if jurisdiction is None:
            jurisdiction = table.get(region)
        allocatable = _amounts((node.get("status") or {}).get("allocatable"))
        taken = used.get(name, {})
        free = {k: max(Decimal(0), v - taken.get(k, Decimal(0))) for k, v in allocatable.items()}
        ready, why = _ready(node)
        taints = spec.get("taints") or []
        dedicated = any(t.get("key") == LABEL_DEDICATED for t in taints)
        blocking = [
            t
            for t in taints
            if t.get("effect") in ("NoSchedule", "NoExecute")
            and t.get("key") not in TOLERATED_TAINTS
            and t.get("key") != LABEL_DEDICATED
        ]
        if spec.get("unschedulable"):
            ready, why = False, "cordoned (unschedulable)"
        elif ready and blocking:
            ready, why = False, f"tainted {blocking[0].get('key')}:{blocking[0].get('effect')}"
        views.append(
            NodeView(
                name=name,
                labels=labels,
                region=region,
                jurisdiction=jurisdiction,
                jurisdiction_from_label=from_label,
                allocatable=allocatable,
                free=free,
                pods=counts.get(name, 0),
                leased=leased.get(name, 0),
                schedulable=ready,
                why_not=why,
                dedicated=dedicated,
            )
        )
    return views


def products_for(model: str | None, views: Sequence[NodeView]) -> list[str]:
    """The distinct product labels among ``views`` (what a pod's affinity may accept)."""
    return sorted({v.product for v in views if v.product is not None})
