"""The objects one lease is made of, as plain manifests.

    coordination.k8s.io/v1 Lease  <name>   the root: expiry and heartbeat (renewTime)
      ├── Pod <name>  (or Job <name> for batch/training workloads)
      ├── Service <name>            when the workload publishes ports
      └── ResourceClaim <name>      when the cluster serves resource.k8s.io/v1 (DRA)

A gang (``resources.nodes`` > 1) is instead:

    coordination.k8s.io/v1 Lease  <name>
      ├── Pod <name>-<rank>         one per node, rank 0..N-1, on distinct nodes
      └── Service <name>            headless: <name>-<rank>.<name>.<namespace>.svc per pod

Every object carries the label ``aicontract.io/lease=<name>`` and an owner
reference to the Lease object, so deleting the Lease deletes the rest (the
cluster's garbage collector), and a lease's objects can always be listed by
label. The name comes from the commit's idempotency key, so a retried commit
finds, and adopts, what the first attempt made.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import attrs
import msgspec

from ...contract import Contract, encode_quantity
from ...jurisdictions import satisfies
from ...offer import Grant, Offer
from ..base import key_name
from .quote import (
    GPU_CLIQUE_LABEL,
    GPU_PRODUCT_LABELS,
    GPU_RESOURCE,
    LABEL_DEDICATED,
    LABEL_GPU_INTERCONNECT,
    LABEL_HOSTNAME,
    LABEL_JURISDICTION,
    LABEL_REGION,
    LABEL_REGION_BETA,
    gpu_resource,
)

__all__ = [
    "LABEL_LEASE",
    "LABEL_MANAGED_BY",
    "LABEL_QUEUE",
    "LABEL_RANK",
    "RENDEZVOUS_PORT",
    "ZERO_RESOURCES",
    "ObjectMeta",
    "claim_manifest",
    "claim_models",
    "gang_address",
    "gang_pod_name",
    "headless_service_manifest",
    "job_manifest",
    "lease_manifest",
    "lease_name",
    "micro_time",
    "offer_digest",
    "parse_time",
    "pod_manifest",
    "pod_spec",
    "service_manifest",
]

# Offer detail: the extended resources a namespace's LimitRange names that the pod would
# not request; it requests 0 of each, so no LimitRange default adds them (fit.py).
ZERO_RESOURCES = "zero_resources"
LABEL_LEASE = "aicontract.io/lease"
LABEL_TENANT = "aicontract.io/tenant"
LABEL_CONTRACT = "aicontract.io/contract"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_QUEUE = "kueue.x-k8s.io/queue-name"
LABEL_RANK = "aicontract.io/rank"
ANNOTATION_KEY = "aicontract.io/idempotency-key"
ANNOTATION_GRANT = "aicontract.io/grant"
ANNOTATION_CONTRACT = "aicontract.io/contract"
ANNOTATION_OFFER = "aicontract.io/offer"
ANNOTATION_ENDS_AT = "aicontract.io/ends-at"
ANNOTATION_OFFER_DIGEST = "aicontract.io/offer-digest"
MANAGER = "aicontract"
CONTAINER = "main"
DRA_DEVICE_CLASS = "gpu.nvidia.com"
DRA_REQUEST = "gpus"

_PORT_UNSAFE = re.compile(r"[^a-z0-9-]+")
# The port a gang's rank 0 listens on for the rendezvous (torch.distributed's default).
# Each pod has its own IP, so one fixed port never collides with another lease's.
RENDEZVOUS_PORT = 29500
RENDEZVOUS_PORT_NAME = "rendezvous"


def lease_name(idempotency_key: str, prefix: str = "aic") -> str:
    """A valid object name (a DNS-1035 label, at most 63 characters) for a key.

    Keys that are already safe keep their text (``aic-<key>``); others are
    cleaned and suffixed with a digest, so two keys never share a name.
    """
    return key_name(idempotency_key, prefix=prefix, longest=52, keep=30, digest=16)


def offer_digest(offer: Offer) -> str:
    """A digest of what an offer promises (contract, grant, where, how isolated).

    An idempotency key is bound to it: a retry sends the same offer and matches;
    the key reused for another offer does not. The offer's id, price and expiry
    are left out, so two processes quoting the same capacity agree.
    """
    promised = {
        "backend": offer.backend,
        "contract": offer.contract,
        "grant": offer.grant,
        "region": offer.region,
        "jurisdiction": offer.jurisdiction,
        "provider": offer.provider,
        "isolation": offer.isolation,
        "guarantee": offer.guarantee,
    }
    encoded = msgspec.json.encode(promised, enc_hook=encode_quantity, order="sorted")
    return hashlib.sha256(encoded).hexdigest()[:32]


def micro_time(epoch: float) -> str:
    """``metav1.MicroTime``: RFC 3339 with microseconds, as Lease objects use."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str | None) -> float | None:
    """Epoch seconds from an RFC 3339 time (``metav1.Time`` or ``MicroTime``)."""
    if not text:
        return None
    text = text.replace("Z", "+00:00")
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def labels_for(name: str, contract: Contract) -> dict[str, str]:
    """The labels every object of a lease carries."""
    return {
        LABEL_LEASE: name,
        LABEL_MANAGED_BY: MANAGER,
        LABEL_TENANT: contract.tenant,
        LABEL_CONTRACT: contract.name[:63].strip("-_."),
    }


def owner_reference(lease_object: Mapping[str, Any]) -> dict[str, Any]:
    """An owner reference to the Lease object (delete it, and the cluster deletes the rest)."""
    meta = lease_object["metadata"]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "name": meta["name"],
        "uid": meta["uid"],
        "blockOwnerDeletion": True,
        "controller": True,
    }


def lease_manifest(
    name: str,
    namespace: str,
    *,
    offer: Offer,
    idempotency_key: str,
    holder: str,
    ttl: float,
    now: float,
    ends_at: float | None,
) -> dict[str, Any]:
    """The ``coordination.k8s.io/v1`` Lease that records the lease's expiry and heartbeat."""
    annotations = {
        ANNOTATION_KEY: idempotency_key,
        ANNOTATION_OFFER: offer.id,
        ANNOTATION_OFFER_DIGEST: offer_digest(offer),
        ANNOTATION_GRANT: msgspec.json.encode(offer.grant, enc_hook=encode_quantity).decode(),
        ANNOTATION_CONTRACT: msgspec.json.encode(offer.contract, enc_hook=encode_quantity).decode(),
    }
    if ends_at is not None:
        annotations[ANNOTATION_ENDS_AT] = micro_time(ends_at)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels_for(name, offer.contract),
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(ttl)),
            "acquireTime": micro_time(now),
            "renewTime": micro_time(now),
            "leaseTransitions": 0,
        },
    }


def _quantities(
    grant: Grant, gpu_name: str, use_dra: bool, zero: Sequence[str] = ()
) -> dict[str, str]:
    amounts: dict[str, str] = {"cpu": str(max(1, grant.cpus))}
    if grant.memory is not None:
        amounts["memory"] = str(grant.memory.bytes)
    if grant.disk is not None:
        amounts["ephemeral-storage"] = str(grant.disk.bytes)
    if grant.gpus and not use_dra:
        amounts[gpu_name] = str(grant.gpus)
    for name in zero:
        # A LimitRange's default would otherwise give the pod some (GPUs to a pod
        # that asked for none), which the grant would not record.
        amounts.setdefault(name, "0")
    return amounts


def _node_affinity(offer: Offer, *, products_from_labels: bool = True) -> dict[str, Any]:
    """Required node affinity: the offer's region, jurisdiction and GPU products, nothing else.

    This is the second lock of guarantee 2: whatever the negotiator let
    through, the scheduler cannot bind the pod outside these labels.
    """
    contract, details = offer.contract, offer.details
    place = contract.placement
    # The region as quotes read it: the GA label, else the beta one (older clusters).
    # Node-selector terms are ORed, so each label gets its own term.
    regions: list[list[dict[str, Any]]] = []
    for key, absent in ((LABEL_REGION, None), (LABEL_REGION_BETA, LABEL_REGION)):
        term: list[dict[str, Any]] = []
        if absent is not None:
            term.append({"key": absent, "operator": "DoesNotExist"})
        term.append({"key": key, "operator": "In", "values": [offer.region]})
        if place.deny_regions:
            term.append({"key": key, "operator": "NotIn", "values": list(place.deny_regions)})
        regions.append(term)
    common: list[dict[str, Any]] = []
    products = [p for p in details.get("products", "").split("|") if p]
    if offer.grant.gpus and products and products_from_labels:
        key = details.get("product_label", GPU_PRODUCT_LABELS[0])
        common.append({"key": key, "operator": "In", "values": products})
    if offer.isolation == "dedicated-node":
        common.append({"key": LABEL_DEDICATED, "operator": "Exists"})
    wheres: list[list[dict[str, Any]]] = [[]]
    if place.jurisdictions:
        # The node must carry the offer's own jurisdiction, and only if that lies inside
        # what the contract allows (DE inside EU); "-" matches no real label.
        inside = satisfies(offer.jurisdiction, place.jurisdictions)
        allowed = [offer.jurisdiction] if inside and offer.jurisdiction else ["-"]
        labelled = {"key": LABEL_JURISDICTION, "operator": "In", "values": allowed}
        if details.get("jurisdiction_source") == "label":
            wheres = [[labelled]]
        else:
            # The jurisdiction came from the backend's region table: a node of that region
            # without a jurisdiction label, or one labelled with an allowed jurisdiction.
            unlabelled = {"key": LABEL_JURISDICTION, "operator": "DoesNotExist"}
            wheres = [[unlabelled], [labelled]]
    links: list[list[dict[str, Any]]] = [[]]
    gpus = contract.resources.gpus
    link = offer.grant.gpu_interconnect
    if gpus is not None and gpus.interconnect is not None and offer.grant.gpus and link:
        # The interconnect as quotes read it (quote.node_views): the operator's label,
        # else, for NVLink, GPU feature discovery's clique on a node without that label.
        said = {"key": LABEL_GPU_INTERCONNECT, "operator": "In", "values": [link]}
        links = [[said]]
        if link == "nvlink":
            unsaid = {"key": LABEL_GPU_INTERCONNECT, "operator": "DoesNotExist"}
            links.append([unsaid, {"key": GPU_CLIQUE_LABEL, "operator": "Exists"}])
    terms = [
        [*region, *common, *where, *linked]
        for region in regions
        for where in wheres
        for linked in links
    ]
    return {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": t} for t in terms]
        }
    }


def pod_spec(
    name: str,
    offer: Offer,
    *,
    image: str,
    restart_policy: str,
    grace_seconds: int,
    env: Mapping[str, str],
    claim: str | None = None,
    rank: int | None = None,
) -> dict[str, Any]:
    """The pod spec of a lease: Guaranteed QoS (requests = limits), affinity, tolerations.

    ``rank`` makes it one pod of a gang: it listens on the rendezvous port, has the
    DNS name ``<name>-<rank>.<name>`` (hostname and subdomain under the headless
    Service ``name``) and repels its siblings, so each lands on a node of its own.
    """
    contract, grant = offer.contract, offer.grant
    gpus = contract.resources.gpus
    zero = [n for n in offer.details.get(ZERO_RESOURCES, "").split(",") if n]
    amounts = _quantities(grant, gpu_resource(gpus), claim is not None, zero)
    workload = contract.workload
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": workload.image if workload is not None and workload.image else image,
        "resources": {"requests": dict(amounts), "limits": dict(amounts)},
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
    }
    if workload is not None and workload.command:
        container["command"] = list(workload.command)
    ports = [
        {"name": port_name(n), "containerPort": p, "protocol": "TCP"}
        for n, p in sorted(workload.fixed_ports.items() if workload is not None else ())
    ]
    if rank is not None:
        ports.append(
            {"name": RENDEZVOUS_PORT_NAME, "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"}
        )
    if ports:
        container["ports"] = ports
    if claim is not None:
        container["resources"]["claims"] = [{"name": DRA_REQUEST}]
    tolerations: list[dict[str, Any]] = []
    if grant.gpus:
        tolerations.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    # With a DRA claim the claim's selectors pick the devices (and the fallback model).
    affinity: dict[str, Any] = {
        "nodeAffinity": _node_affinity(offer, products_from_labels=claim is None)
    }
    if offer.isolation == "dedicated-node":
        tolerations.append({"key": LABEL_DEDICATED, "operator": "Exists"})
        # Required anti-affinity is symmetric: no other aicontract pod joins this node,
        # and this one goes only where none is.
        affinity["podAntiAffinity"] = {
            "requiredDuringSchedulingIgnoredDuringExecution": [
                {
                    "labelSelector": {
                        "matchExpressions": [
                            {"key": LABEL_LEASE, "operator": "NotIn", "values": [name]}
                        ]
                    },
                    "topologyKey": LABEL_HOSTNAME,
                }
            ]
        }
    if rank is not None:
        # Required anti-affinity among the gang's own pods: one pod per node, or none binds.
        siblings = {
            "labelSelector": {"matchLabels": {LABEL_LEASE: name}},
            "topologyKey": LABEL_HOSTNAME,
        }
        anti = affinity.setdefault(
            "podAntiAffinity", {"requiredDuringSchedulingIgnoredDuringExecution": []}
        )
        anti["requiredDuringSchedulingIgnoredDuringExecution"].append(siblings)
    spec: dict[str, Any] = {
        "restartPolicy": restart_policy,
        "terminationGracePeriodSeconds": grace_seconds,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "affinity": affinity,
        "tolerations": tolerations,
    }
    if claim is not None:
        spec["resourceClaims"] = [{"name": DRA_REQUEST, "resourceClaimName": claim}]
    if rank is not None:
        spec["hostname"] = gang_pod_name(name, rank)
        spec["subdomain"] = name
    return spec


def gang_pod_name(name: str, rank: int) -> str:
    """The pod of rank ``rank`` in the gang ``name`` (also its hostname: at most 63 chars)."""
    return f"{name}-{rank}"


def gang_address(name: str, namespace: str, rank: int = 0) -> str:
    """The DNS name of a gang's pod through its headless Service."""
    return f"{gang_pod_name(name, rank)}.{name}.{namespace}.svc"


@attrs.frozen
class ObjectMeta:
    """What every object of one lease carries: its name, namespace, labels and owner.

    The owner is the lease's Lease object (deleting it deletes the rest); the labels
    are :func:`labels_for` the lease, so its objects can always be listed by label.
    """

    name: str
    namespace: str
    labels: Mapping[str, str]
    owner: Mapping[str, Any]

    @classmethod
    def of(cls, lease_object: Mapping[str, Any], contract: Contract) -> ObjectMeta:
        """The metadata of the objects the Lease object ``lease_object`` owns."""
        meta = lease_object["metadata"]
        name = str(meta["name"])
        return cls(
            name, str(meta["namespace"]), labels_for(name, contract), owner_reference(lease_object)
        )

    def manifest(
        self,
        api_version: str,
        kind: str,
        spec: Mapping[str, Any],
        *,
        name: str | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """An object of ``kind`` owned by the lease's Lease object (deleted with it)."""
        return {
            "apiVersion": api_version,
            "kind": kind,
            "metadata": {
                "name": self.name if name is None else name,
                "namespace": self.namespace,
                "labels": dict(self.labels if labels is None else labels),
                "ownerReferences": [dict(self.owner)],
            },
            "spec": dict(spec),
        }


def pod_manifest(
    meta: ObjectMeta, spec: Mapping[str, Any], *, rank: int | None = None
) -> dict[str, Any]:
    """A bare Pod owned by the Lease object (with ``rank``: that pod of a gang)."""
    if rank is None:
        return meta.manifest("v1", "Pod", spec)
    labels = {**meta.labels, LABEL_RANK: str(rank)}
    return meta.manifest("v1", "Pod", spec, name=gang_pod_name(meta.name, rank), labels=labels)


def job_manifest(
    meta: ObjectMeta, spec: Mapping[str, Any], *, queue: str | None = None
) -> dict[str, Any]:
    """A one-pod Job (no retries: a failed pod ends the lease's workload), optionally queued."""
    job_labels = dict(meta.labels)
    if queue:
        job_labels[LABEL_QUEUE] = queue
    job_spec: dict[str, Any] = {
        "backoffLimit": 0,
        "parallelism": 1,
        "completions": 1,
        "template": {"metadata": {"labels": dict(meta.labels)}, "spec": dict(spec)},
    }
    if queue:
        job_spec["suspend"] = True  # Kueue unsuspends it once the Workload is admitted
    return meta.manifest("batch/v1", "Job", job_spec, labels=job_labels)


def port_name(name: str) -> str:
    """A valid port name (IANA service name: 1-15 lowercase letters, digits, '-')."""
    clean = _PORT_UNSAFE.sub("-", name.lower()).strip("-")[:15].strip("-")
    return clean or "port"


def service_manifest(meta: ObjectMeta, ports: Mapping[str, int]) -> dict[str, Any]:
    """A ClusterIP Service in front of the lease's pod, one port per published port."""
    named = {port_name(n): p for n, p in ports.items()}
    return _service(meta, named, {"type": "ClusterIP"})


def headless_service_manifest(meta: ObjectMeta, ports: Mapping[str, int]) -> dict[str, Any]:
    """A gang's headless Service: a DNS name per pod, published before the pods are Ready.

    Rendezvous happens while the workload starts, so the names must resolve before
    any readiness probe passes (``publishNotReadyAddresses``).
    """
    named = {RENDEZVOUS_PORT_NAME: RENDEZVOUS_PORT, **{port_name(n): p for n, p in ports.items()}}
    return _service(meta, named, {"clusterIP": "None", "publishNotReadyAddresses": True})


def _service(meta: ObjectMeta, ports: Mapping[str, int], kind: Mapping[str, Any]) -> dict[str, Any]:
    """A Service selecting the lease's pods, one TCP port per named port."""
    spec = {
        **kind,
        "selector": {LABEL_LEASE: meta.name},
        "ports": [
            {"name": n, "port": p, "targetPort": p, "protocol": "TCP"}
            for n, p in sorted(ports.items())
        ],
    }
    return meta.manifest("v1", "Service", spec)


def _model_selector(model: str) -> str:
    """A CEL expression: the device's product name contains every token of ``model``."""
    tokens = [t for t in re.split(r"[\s_\-/]+", model.upper()) if t and t != "NVIDIA"]
    attr = f'device.attributes["{DRA_DEVICE_CLASS}"].productName.upperAscii()'
    return " && ".join(f"{attr}.contains({json.dumps(t)})" for t in tokens) or "true"


def claim_models(offered: str | None, models: Sequence[str]) -> list[str]:
    """The ``firstAvailable`` order: the offered model, then the contract's later alternatives."""
    if offered is None or offered not in models:
        return [m for m in ([offered] if offered else list(models)) if m]
    return list(models[models.index(offered) :])


def claim_manifest(
    meta: ObjectMeta,
    *,
    count: int,
    models: Sequence[str],
    device_class: str = DRA_DEVICE_CLASS,
) -> dict[str, Any]:
    """A ``resource.k8s.io/v1`` ResourceClaim: the model alternatives as ``firstAvailable``.

    The scheduler tries the subrequests in order and allocates the first that
    fits, which is what a contract's ordered ``models`` mean.
    """
    subrequests = [
        {
            "name": f"m{i}",
            "deviceClassName": device_class,
            "selectors": [{"cel": {"expression": _model_selector(model)}}],
            "allocationMode": "ExactCount",
            "count": count,
        }
        for i, model in enumerate(models)
    ]
    request: dict[str, Any] = {"name": DRA_REQUEST}
    if subrequests:
        request["firstAvailable"] = subrequests
    else:
        request["exactly"] = {
            "deviceClassName": device_class,
            "allocationMode": "ExactCount",
            "count": count,
        }
    return meta.manifest(
        "resource.k8s.io/v1", "ResourceClaim", {"devices": {"requests": [request]}}
    )
