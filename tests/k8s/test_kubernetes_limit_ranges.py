"""LimitRanges on a real control plane: a quote honours ``min`` and defaults, not only ``max``.

The LimitRanger admission plugin refuses a pod below a ``min`` (403, which a user
read as a credentials problem) and gives a container that states no request of a
resource the LimitRange's default: a pod that asked for no GPUs was given some.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from aicontract import GPU, Contract, QuotaExceeded
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.negotiate import Negotiator
from aicontract.units import Bytes

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]


def contract(**kw: Any) -> Contract:
    kw.setdefault("tenant", f"lr-{uuid.uuid4().hex[:8]}")
    return Contract(name="limit-range", **kw)


def limit_range(k8s_cluster: Any, ns: str, name: str, *items: dict[str, Any]) -> None:
    k8s_cluster.create_namespace(ns)
    body = {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"limits": list(items)},
    }
    with k8s_cluster.client() as admin:
        r = admin.post(f"/api/v1/namespaces/{ns}/limitranges", json=body)
        assert r.status_code == 201, r.text


def pod_resources(k8s_cluster: Any, ns: str, name: str) -> dict[str, Any]:
    with k8s_cluster.client() as admin:
        pod = admin.get(f"/api/v1/namespaces/{ns}/pods/{name}").json()
    return dict(pod["spec"]["containers"][0]["resources"])


async def test_a_min_raises_what_the_contract_leaves_open(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Before: the pod asked for the defaults (1 CPU, 1GiB), below the min, and the API
    server's 403 came back as an "account" refusal."""
    c = contract(gpus=GPU(count=1, models=("H100",)), jurisdictions=("EU",))
    ns = backend.namespace_for(c)
    limit_range(
        k8s_cluster, ns, "floor", {"type": "Container", "min": {"cpu": "1500m", "memory": "2Gi"}}
    )
    [offer] = (await backend.quote(c)).offers
    assert (offer.grant.cpus, offer.grant.memory) == (2, Bytes("2GiB"))
    lease = await Negotiator([backend]).acquire(c)
    try:
        requests = pod_resources(k8s_cluster, ns, lease.details["pod"])["requests"]
        assert requests["cpu"] == "2"
        assert int(requests["memory"]) == 2 * 2**30
        assert (lease.grant.cpus, lease.grant.memory) == (2, Bytes("2GiB"))
    finally:
        await lease.release()
    # An open-ended range takes its least, raised to the min as well.
    [ranged] = (await backend.quote(contract(tenant=c.tenant, cpus="1..", gpus=1))).offers[:1]
    assert ranged.grant.cpus == 2


async def test_a_min_above_what_the_contract_allows_is_refused_naming_it(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(cpus=1, gpus=GPU(count=1, models=("H100",)))
    ns = backend.namespace_for(c)
    limit_range(k8s_cluster, ns, "floor", {"type": "Pod", "min": {"cpu": "2"}})
    quote = await backend.quote(c)
    assert not quote.offers
    [rejection] = quote.rejections
    assert rejection.requirement == "quota"
    assert rejection.wanted == "resources.cpus 1"
    assert "min cpu per Pod is 2 (LimitRange floor)" in rejection.available


async def test_a_gpu_min_refuses_a_contract_for_fewer_and_raises_a_range(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    ns_contract = contract(gpus=GPU(count=1, models=("H100",)))
    ns = backend.namespace_for(ns_contract)
    limit_range(
        k8s_cluster, ns, "whole-boards", {"type": "Container", "min": {"nvidia.com/gpu": "2"}}
    )
    refused = await backend.quote(ns_contract)
    assert not refused.offers
    assert "min nvidia.com/gpu per Container is 2" in str(refused.rejections)
    ranged = await backend.quote(
        contract(tenant=ns_contract.tenant, gpus=GPU(count="1..", models=("H100",)))
    )
    assert ranged.offers
    assert {o.grant.gpus for o in ranged.offers} == {2}
    # A pod without GPUs cannot meet a GPU min: refused, naming it (not a 403 at commit).
    cpu_only = await backend.quote(contract(tenant=ns_contract.tenant, cpus=1))
    assert not cpu_only.offers
    assert "no nvidia.com/gpu" in str(cpu_only.rejections)


async def test_a_default_never_gives_gpus_to_a_pod_that_asked_for_none(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """A Container max of 2 GPUs defaults every container to 2 GPUs (the API server
    fills ``default`` and ``defaultRequest`` from ``max``). Before: a CPU-only lease's
    pod held 2 GPUs its lease did not record."""
    c = contract(cpus=1, jurisdictions=("EU",))
    ns = backend.namespace_for(c)
    limit_range(k8s_cluster, ns, "gpu-cap", {"type": "Container", "max": {"nvidia.com/gpu": "2"}})
    lease = await Negotiator([backend]).acquire(c)
    try:
        resources = pod_resources(k8s_cluster, ns, lease.details["pod"])
        assert resources["requests"].get("nvidia.com/gpu") == "0"
        assert resources["limits"].get("nvidia.com/gpu") == "0"
        assert lease.grant.gpus == 0
    finally:
        await lease.release()


async def test_a_storage_default_is_stated_and_counted(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """A defaultRequest of ephemeral storage is what the pod is given: the grant says so."""
    c = contract(cpus=1, jurisdictions=("EU",))
    ns = backend.namespace_for(c)
    limit_range(
        k8s_cluster,
        ns,
        "scratch",
        {
            "type": "Container",
            "defaultRequest": {"ephemeral-storage": "5Gi"},
            "default": {"ephemeral-storage": "5Gi"},
        },
    )
    [offer, *_] = (await backend.quote(c)).offers
    assert offer.grant.disk == Bytes("5GiB")
    lease = await Negotiator([backend]).acquire(c)
    try:
        resources = pod_resources(k8s_cluster, ns, lease.details["pod"])
        assert int(resources["requests"]["ephemeral-storage"]) == 5 * 2**30
    finally:
        await lease.release()


async def test_a_ratio_on_gpus_refuses_a_pod_without_any_at_quote_time(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """LimitRanger refuses a pod whose request of a ratio-bound resource is missing or 0;
    before, the quote offered it and the commit met a 403."""
    c = contract(cpus=1, jurisdictions=("EU",))
    ns = backend.namespace_for(c)
    stale = (await backend.quote(c)).offers[0]  # quoted before the LimitRange came
    limit_range(
        k8s_cluster,
        ns,
        "gpu-ratio",
        {"type": "Container", "maxLimitRequestRatio": {"nvidia.com/gpu": "1"}},
    )
    quote = await backend.quote(c)
    assert not quote.offers
    assert "maxLimitRequestRatio nvidia.com/gpu per Container is 1 (LimitRange gpu-ratio)" in str(
        quote.rejections
    )
    # Committing the stale offer: the API server's 403 is a LimitRange refusal, not
    # a credentials one, and nothing is left behind.
    with pytest.raises(QuotaExceeded, match=r"LimitRange\).*limit to request ratio"):
        await backend.commit(stale, uuid.uuid4().hex[:16])
    with k8s_cluster.client() as admin:
        leases = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases").json()
    assert leases["items"] == []
    # A GPU lease states requests = limits: ratio 1, admitted.
    lease = await Negotiator([backend]).acquire(
        contract(tenant=c.tenant, gpus=GPU(count=1, models=("H100",)), jurisdictions=("EU",))
    )
    await lease.release()
