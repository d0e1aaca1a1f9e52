"""DRA and Kueue paths of the Kubernetes backend, on respx fakes of their documented shapes.

The test API server (1.20) predates both, so these run against the object
shapes of ``resource.k8s.io/v1`` (ResourceClaim with ``firstAvailable``) and
``kueue.x-k8s.io/v1beta1`` (Workload with an ``Admitted`` condition, found by
the ``kueue.x-k8s.io/job-uid`` label), served as a real API server would:
list, then a watch stream of JSON lines from the list's resourceVersion.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import respx

from aicontract import GPU, Bytes, CapacityUnavailable, Contract, Grant, Money, Offer, Workload
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.discovery import discover
from aicontract.backends.kubernetes.objects import LABEL_LEASE, LABEL_QUEUE

pytestmark = [pytest.mark.anyio, pytest.mark.anyio_backends("asyncio", "trio")]

API = "https://k8s.test"
NS = "aicontract-team"


def groups(*, dra: bool, kueue: bool) -> dict[str, Any]:
    items: list[dict[str, Any]] = [
        {
            "name": "coordination.k8s.io",
            "versions": [{"groupVersion": "coordination.k8s.io/v1", "version": "v1"}],
            "preferredVersion": {"groupVersion": "coordination.k8s.io/v1", "version": "v1"},
        }
    ]
    if dra:
        items.append(
            {
                "name": "resource.k8s.io",
                "versions": [
                    {"groupVersion": "resource.k8s.io/v1", "version": "v1"},
                    {"groupVersion": "resource.k8s.io/v1beta2", "version": "v1beta2"},
                ],
                "preferredVersion": {"groupVersion": "resource.k8s.io/v1", "version": "v1"},
            }
        )
    if kueue:
        items.append(
            {
                "name": "kueue.x-k8s.io",
                "versions": [{"groupVersion": "kueue.x-k8s.io/v1beta1", "version": "v1beta1"}],
                "preferredVersion": {
                    "groupVersion": "kueue.x-k8s.io/v1beta1",
                    "version": "v1beta1",
                },
            }
        )
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": items}


def offer(contract: Contract, model: str = "H100") -> Offer:
    return Offer(
        id="k8s-test",
        backend="kubernetes",
        contract=contract,
        grant=Grant(gpus=2, gpu_model=model, cpus=4, memory=Bytes("8GiB")),
        guarantee="allocated",
        region="eu-west-1",
        jurisdiction="EU",
        provider="kubernetes",
        isolation="shared",
        price=Money.per_hour(0),
        expires_at=9e12,
        details={
            "namespace": NS,
            "products": "NVIDIA-H100-80GB-HBM3",
            "jurisdiction_source": "label",
        },
    )


def lines(*events: dict[str, Any]) -> bytes:
    return b"".join(json.dumps(e).encode() + b"\n" for e in events)


class FakeServer:
    """Records what the backend writes and answers like an API server."""

    def __init__(self, router: respx.MockRouter) -> None:
        self.created: dict[str, dict[str, Any]] = {}
        self.router = router
        router.get(f"{API}/api/v1/namespaces/{NS}").respond(200, json={"metadata": {"name": NS}})
        router.post(url__regex=rf"{API}/.*").mock(side_effect=self.create)
        router.delete(url__regex=rf"{API}/.*").respond(200, json={})

    def create(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        body["metadata"]["uid"] = f"uid-{body['kind'].lower()}"
        body["metadata"]["resourceVersion"] = "10"
        body["metadata"].setdefault("namespace", NS)
        self.created[body["kind"]] = body
        return httpx.Response(201, json=body)


def bound_pod(name: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {LABEL_LEASE: name},
            # The lease's own pod: the one created (a bare pod), or its Job's.
            "uid": "uid-pod",
            "ownerReferences": [{"kind": "Job", "uid": "uid-job"}],
        },
        "spec": {"nodeName": "gpu-eu-1"},
        "status": {"phase": "Pending"},
    }


def serve_pods(router: respx.MockRouter, name: str, *, bound_in_watch: bool) -> None:
    """List: the pod unbound (or nothing); watch: the scheduler binds it."""

    def pods(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("watch") == "1":
            assert request.url.params["resourceVersion"] == "42"  # watched from the list
            assert request.url.params["labelSelector"] == f"{LABEL_LEASE}={name}"
            pending = {**bound_pod(name), "spec": {}}
            return httpx.Response(
                200,
                content=lines(
                    {"type": "ADDED", "object": pending},
                    {"type": "MODIFIED", "object": bound_pod(name)},
                ),
            )
        items = [] if bound_in_watch else [bound_pod(name)]
        return httpx.Response(200, json={"metadata": {"resourceVersion": "42"}, "items": items})

    router.get(f"{API}/api/v1/namespaces/{NS}/pods").mock(side_effect=pods)
    router.get(f"{API}/api/v1/nodes/gpu-eu-1").respond(
        200,
        json={
            "metadata": {
                "name": "gpu-eu-1",
                "labels": {
                    "topology.kubernetes.io/region": "eu-west-1",
                    "aicontract.io/jurisdiction": "EU",
                },
            },
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        },
    )


async def test_discovery_reads_groups() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{API}/apis").respond(200, json=groups(dra=True, kueue=True))
        from aicontract.backends.kubernetes.api import KubeAPI

        async with httpx.AsyncClient(base_url=API) as http:
            features = await discover(KubeAPI(http))
    assert features.dra
    assert features.kueue
    assert features.kueue_version == "kueue.x-k8s.io/v1beta1"
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{API}/apis").respond(200, json=groups(dra=False, kueue=False))
        async with httpx.AsyncClient(base_url=API) as http:
            features = await discover(KubeAPI(http))
    assert not features.dra
    assert not features.kueue


async def test_dra_claim_lists_the_alternatives_as_first_available() -> None:
    contract = Contract(
        name="dra",
        tenant="team",
        gpus=GPU(count=2, models=("H100", "A100-80GB")),
        jurisdictions=("EU",),
    )
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{API}/apis").respond(200, json=groups(dra=True, kueue=False))
        server = FakeServer(router)
        serve_pods(router, "aic-key-dra", bound_in_watch=True)
        # The scheduler fell back to the second alternative.
        router.get(
            f"{API}/apis/resource.k8s.io/v1/namespaces/{NS}/resourceclaims/aic-key-dra"
        ).respond(
            200,
            json={
                "kind": "ResourceClaim",
                "metadata": {"name": "aic-key-dra", "namespace": NS},
                "status": {
                    "allocation": {
                        "devices": {
                            "results": [
                                {
                                    "request": "gpus/m1",
                                    "driver": "gpu.nvidia.com",
                                    "pool": "gpu-eu-1",
                                    "device": "gpu-0",
                                },
                                {
                                    "request": "gpus/m1",
                                    "driver": "gpu.nvidia.com",
                                    "pool": "gpu-eu-1",
                                    "device": "gpu-1",
                                },
                            ]
                        }
                    }
                },
            },
        )
        async with httpx.AsyncClient(base_url=API) as http:
            backend = KubernetesBackend(http=http)
            lease = await backend.commit(offer(contract), "key-dra")
    claim = server.created["ResourceClaim"]
    assert claim["apiVersion"] == "resource.k8s.io/v1"
    (request,) = claim["spec"]["devices"]["requests"]
    assert request["name"] == "gpus"
    assert "exactly" not in request
    subs = request["firstAvailable"]
    assert [s["name"] for s in subs] == ["m0", "m1"]
    assert {s["deviceClassName"] for s in subs} == {"gpu.nvidia.com"}
    assert {s["allocationMode"] for s in subs} == {"ExactCount"}
    assert {s["count"] for s in subs} == {2}
    assert '"H100"' in subs[0]["selectors"][0]["cel"]["expression"]
    assert '"A100"' in subs[1]["selectors"][0]["cel"]["expression"]
    assert '"80GB"' in subs[1]["selectors"][0]["cel"]["expression"]
    assert claim["metadata"]["ownerReferences"][0]["kind"] == "Lease"
    pod = server.created["Pod"]
    assert pod["spec"]["resourceClaims"] == [{"name": "gpus", "resourceClaimName": "aic-key-dra"}]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["claims"] == [{"name": "gpus"}]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    keys = {
        e["key"]
        for term in pod["spec"]["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]
        for e in term["matchExpressions"]
    }
    assert "nvidia.com/gpu.product" not in keys  # the claim picks the model
    assert {"topology.kubernetes.io/region", "aicontract.io/jurisdiction"} <= keys
    # The lease records what was allocated: the fallback model.
    assert lease.grant.gpu_model == "A100-80GB"
    assert lease.details["objects"] == "claim,pod"


async def test_no_dra_without_discovery() -> None:
    contract = Contract(name="plain", tenant="team", gpus=GPU(count=2, models=("H100",)))
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{API}/apis").respond(200, json=groups(dra=False, kueue=True))
        server = FakeServer(router)
        serve_pods(router, "aic-key-plain", bound_in_watch=False)
        async with httpx.AsyncClient(base_url=API) as http:
            lease = await KubernetesBackend(http=http, queue="team-queue").commit(
                offer(contract), "key-plain"
            )
    assert "ResourceClaim" not in server.created
    assert "Job" not in server.created  # no workload: a bare pod, and Kueue is for jobs
    limits = server.created["Pod"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "2"
    assert lease.grant.gpu_model == "H100"


def kueue_routes(router: respx.MockRouter, *, admitted: bool) -> list[str]:
    seen: list[str] = []

    def workloads(request: httpx.Request) -> httpx.Response:
        assert request.url.params["labelSelector"] == "kueue.x-k8s.io/job-uid=uid-job"
        seen.append("watch" if request.url.params.get("watch") == "1" else "list")
        pending = {
            "apiVersion": "kueue.x-k8s.io/v1beta1",
            "kind": "Workload",
            "metadata": {"name": "job-aic-key-q-1a2b3", "namespace": NS},
            "status": {"conditions": [{"type": "QuotaReserved", "status": "False"}]},
        }
        if request.url.params.get("watch") != "1":
            return httpx.Response(
                200, json={"metadata": {"resourceVersion": "42"}, "items": [pending]}
            )
        done = {
            **pending,
            "status": {
                "conditions": [
                    {"type": "QuotaReserved", "status": "True", "reason": "QuotaReserved"},
                    {"type": "Admitted", "status": "True", "reason": "Admitted"},
                ]
            },
        }
        events = [{"type": "MODIFIED", "object": pending}]
        if admitted:
            events.append({"type": "MODIFIED", "object": done})
        return httpx.Response(200, content=lines(*events))

    router.get(f"{API}/apis/kueue.x-k8s.io/v1beta1/namespaces/{NS}/workloads").mock(
        side_effect=workloads
    )
    return seen


async def test_kueue_job_waits_for_admitted_then_binding() -> None:
    contract = Contract(
        name="train",
        tenant="team",
        gpus=GPU(count=2, models=("H100",)),
        workload=Workload(kind="training", image="x.invalid/t:1", command=("train",)),
    )
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{API}/apis").respond(200, json=groups(dra=False, kueue=True))
        server = FakeServer(router)
        seen = kueue_routes(router, admitted=True)
        serve_pods(router, "aic-key-q", bound_in_watch=True)
        async with httpx.AsyncClient(base_url=API) as http:
            lease = await KubernetesBackend(http=http, queue="team-queue").commit(
                offer(contract), "key-q"
            )
    job = server.created["Job"]
    assert job["metadata"]["labels"][LABEL_QUEUE] == "team-queue"
    assert job["spec"]["suspend"] is True
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert seen == ["list", "watch"]
    assert lease.guarantee == "allocated"
    assert lease.details["node"] == "gpu-eu-1"


async def test_kueue_not_admitted_by_the_deadline_cleans_up() -> None:
    contract = Contract(
        name="train",
        tenant="team",
        gpus=GPU(count=2, models=("H100",)),
        start_by="1s",
        workload=Workload(kind="batch", image="x.invalid/t:1", command=("run",)),
    )
    with respx.mock(assert_all_called=False) as router:
        router.get(f"{API}/apis").respond(200, json=groups(dra=False, kueue=True))
        FakeServer(router)
        kueue_routes(router, admitted=False)
        async with httpx.AsyncClient(base_url=API) as http:
            backend = KubernetesBackend(http=http, queue="team-queue")
            with pytest.raises(CapacityUnavailable, match="Kueue did not admit"):
                await backend.commit(offer(contract), "key-late")
        deleted = [str(c.request.url.path) for c in router.calls if c.request.method == "DELETE"]
    assert f"/apis/batch/v1/namespaces/{NS}/jobs/aic-key-late" in deleted
    assert f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/aic-key-late" in deleted
