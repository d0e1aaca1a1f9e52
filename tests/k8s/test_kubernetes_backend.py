"""The Kubernetes backend against a real API server, scheduler and controller-manager.

Every test works in its own tenant (so its own namespace) and releases what it
leases; capacity tests check the cluster is empty of leases before they start.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from aicontract import (
    GPU,
    Clock,
    Contract,
    Lease,
    LeaseState,
    Monitor,
    Negotiator,
    NoOffer,
    TransientBackendError,
    Workload,
)
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.objects import LABEL_LEASE, lease_name

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]

EU_NODES = {"gpu-eu-1", "gpu-eu-2"}
US_NODES = {"gpu-us-1"}


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


def contract(**kw: Any) -> Contract:
    kw.setdefault("tenant", tenant())
    kw.setdefault("gpus", GPU(count=1, models=("H100",)))
    return Contract(name="k8s-test", **kw)


def by_label(k8s_cluster: Any, namespace: str, lease_id: str) -> dict[str, list[str]]:
    params = {"labelSelector": f"{LABEL_LEASE}={lease_id}"}
    paths = {
        "pods": f"/api/v1/namespaces/{namespace}/pods",
        "services": f"/api/v1/namespaces/{namespace}/services",
        "jobs": f"/apis/batch/v1/namespaces/{namespace}/jobs",
        "leases": f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
    }
    out: dict[str, list[str]] = {}
    with k8s_cluster.client() as c:
        for kind, path in paths.items():
            r = c.get(path, params=params)
            assert r.status_code == 200, r.text
            out[kind] = [o["metadata"]["name"] for o in r.json()["items"]]
    return out


def pod_of(k8s_cluster: Any, lease: Lease) -> dict[str, Any]:
    ns = lease.details["namespace"]
    with k8s_cluster.client() as c:
        r = c.get(f"/api/v1/namespaces/{ns}/pods/{lease.details['pod']}")
        assert r.status_code == 200, r.text
        return dict(r.json())


async def test_quote_reads_nodes_and_labels(backend: KubernetesBackend) -> None:
    quote = await backend.quote(contract())
    where = {(o.region, o.jurisdiction) for o in quote.offers}
    assert where == {("eu-west-1", "EU"), ("us-east-1", "US")}
    for offer in quote.offers:
        assert offer.grant.gpus == 1
        assert offer.grant.gpu_model == "H100"
        assert offer.grant.gpu_memory is not None
        assert offer.grant.gpu_memory.bytes == 81559 * 2**20
        assert offer.guarantee == "allocated"
        assert offer.details["basis"] == "node-arithmetic"
        assert offer.details["products"] == "NVIDIA-H100-80GB-HBM3"


async def test_quote_refuses_with_reasons(backend: KubernetesBackend) -> None:
    quote = await backend.quote(contract(gpus=GPU(count=5, models=("H100",))))
    assert not quote.offers
    assert [r.requirement for r in quote.rejections] == ["resources.gpus.count"]
    assert "free of 4" in quote.rejections[0].available
    quote = await backend.quote(contract(gpus=GPU(count=1, models=("A100",))))
    assert [r.requirement for r in quote.rejections] == ["resources.gpus.models"]
    quote = await backend.quote(contract(jurisdictions=("CH",)))
    assert [r.requirement for r in quote.rejections] == ["placement.jurisdictions"]


async def test_commit_binds_a_guaranteed_pod_and_release_leaves_nothing(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(
        cpus=2,
        memory="4GiB",
        workload=Workload(kind="inference", image="example.invalid/srv:1", ports={"http": 8000}),
    )
    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(c)
    ns = lease.details["namespace"]
    assert lease.guarantee == "allocated"
    assert lease.state == LeaseState.ACTIVE
    pod = pod_of(k8s_cluster, lease)
    assert pod["spec"]["nodeName"] == lease.details["node"]  # never reported unless bound
    container = pod["spec"]["containers"][0]
    assert container["resources"]["requests"] == container["resources"]["limits"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["status"]["qosClass"] == "Guaranteed"
    assert pod["metadata"]["ownerReferences"][0]["kind"] == "Lease"
    assert lease.endpoints == {"http": f"http://{lease.id}.{ns}.svc:8000"}
    objects = by_label(k8s_cluster, ns, lease.id)
    assert objects == {"pods": [lease.id], "services": [lease.id], "jobs": [], "leases": [lease.id]}
    await lease.release()
    assert lease.state == LeaseState.RELEASED
    assert by_label(k8s_cluster, ns, lease.id) == {
        "pods": [],
        "services": [],
        "jobs": [],
        "leases": [],
    }


async def test_batch_workload_runs_as_a_job_and_is_released(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(workload=Workload(kind="training", command=("python", "train.py")))
    lease = await Negotiator([backend]).acquire(c)
    ns = lease.details["namespace"]
    objects = by_label(k8s_cluster, ns, lease.id)
    assert objects["jobs"] == [lease.id]
    assert len(objects["pods"]) == 1
    assert lease.details["pod"].startswith(lease.id)
    await lease.release()
    assert by_label(k8s_cluster, ns, lease.id) == {
        "pods": [],
        "services": [],
        "jobs": [],
        "leases": [],
    }


async def test_retried_commit_adopts_never_duplicates(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract()
    offer = (await backend.quote(c)).offers[0]
    first = await backend.commit(offer, "retry-key-1")
    second = await backend.commit(offer, "retry-key-1")
    assert first.id == second.id
    assert first.details["pod"] == second.details["pod"]
    assert by_label(k8s_cluster, first.details["namespace"], first.id)["pods"] == [first.id]
    await first.release()
    assert by_label(k8s_cluster, first.details["namespace"], first.id)["pods"] == []


async def test_a_commit_that_fails_after_binding_leaves_nothing(
    k8s_cluster: Any, backend: KubernetesBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pod is bound, then building the lease fails (a cancel, an API error reading
    the node): the pod and the Lease object must not outlive the failed commit."""
    c = contract()
    offer = (await backend.quote(c)).offers[0]

    async def broken_lease(*args: Any, **kwargs: Any) -> Lease:
        raise TransientBackendError("kubernetes", "GET node: 503")

    monkeypatch.setattr(backend, "_lease", broken_lease)
    with pytest.raises(TransientBackendError):
        await backend.commit(offer, "fails-after-binding")
    ns, name = backend.namespace_for(c), lease_name("fails-after-binding")
    with anyio.fail_after(30):
        while any(by_label(k8s_cluster, ns, name).values()):
            await anyio.sleep(0.1)


async def test_renew_moves_the_lease_objects_renew_time(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    lease = await Negotiator([backend]).acquire(contract())
    ns = lease.details["namespace"]
    path = f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{lease.id}"
    with k8s_cluster.client() as c:
        before = c.get(path).json()["spec"]["renewTime"]
    await anyio.sleep(0.01)
    await lease.renew()
    with k8s_cluster.client() as c:
        after = c.get(path).json()["spec"]
    assert after["renewTime"] > before
    assert after["holderIdentity"]
    assert after["leaseDurationSeconds"] == 30
    await lease.release()


async def test_eu_contract_never_lands_on_a_us_node(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Fill the EU nodes; with only the US node free, an EU contract gets nothing there."""
    filler = contract(gpus=GPU(count=4, models=("H100",)), jurisdictions=("EU",))
    held = [await Negotiator([backend]).acquire(filler) for _ in range(2)]
    try:
        assert {lease.details["node"] for lease in held} == EU_NODES
        eu = contract(jurisdictions=("EU",))
        quote = await backend.quote(eu)
        assert not quote.offers  # the US node is free, but never offered
        with pytest.raises(NoOffer):
            await Negotiator([backend]).acquire(eu)
        # Second lock: even an offer the negotiator passed cannot be bound in the US,
        # because the pod's required node affinity names the EU only.
        us_offer = (await backend.quote(contract())).offers
        eu_label = next(o for o in us_offer if o.region == "us-east-1")
        lying = eu_label.__class__(
            **{
                **{f: getattr(eu_label, f) for f in eu_label.__struct_fields__},
                "contract": eu,
                "region": "eu-west-1",
                "jurisdiction": "EU",
                "details": {**eu_label.details, "jurisdiction_source": "label"},
            }
        )
        with pytest.raises(Exception, match="cannot place"):
            await backend.commit(lying, "lying-offer")
    finally:
        for lease in held:
            await lease.release()


def bound_lease_pods(k8s_cluster: Any) -> dict[str, str]:
    """Every aicontract pod bound to a node, cluster-wide: pod name -> node."""
    with k8s_cluster.client() as c:
        r = c.get("/api/v1/pods", params={"labelSelector": LABEL_LEASE})
        assert r.status_code == 200, r.text
        return {
            p["metadata"]["name"]: p["spec"]["nodeName"]
            for p in r.json()["items"]
            if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
        }


async def test_twenty_concurrent_leases_never_over_commit(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """3 nodes x 4 GPUs: of 20 concurrent 1-GPU leases exactly 12 are allocated."""
    assert bound_lease_pods(k8s_cluster) == {}
    c = contract()
    negotiator = Negotiator([backend])
    leases: list[Lease] = []
    refused: list[NoOffer] = []

    async def one() -> None:
        try:
            leases.append(await negotiator.acquire(c))
        except NoOffer as exc:
            refused.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(20):
                tg.start_soon(one)
        assert len(leases) == 12
        assert len(refused) == 8
        bound = bound_lease_pods(k8s_cluster)
        # Every lease reported allocated is a pod the scheduler bound, on the node it says.
        assert {lease.details["pod"]: lease.details["node"] for lease in leases} == bound
        per_node: dict[str, int] = {}
        for node in bound.values():
            per_node[node] = per_node.get(node, 0) + 1
        assert per_node == {"gpu-eu-1": 4, "gpu-eu-2": 4, "gpu-us-1": 4}
        assert all("capacity" in str(exc) or "deadline" in str(exc) for exc in refused)
    finally:
        async with anyio.create_task_group() as tg:
            for lease in leases:
                tg.start_soon(lease.release)
    assert bound_lease_pods(k8s_cluster) == {}


class _WaitWatchingClock(Clock):
    """The real clock, noting when its user first waits (the negotiator re-quoting later)."""

    def __init__(self) -> None:
        self.waited = anyio.Event()

    async def sleep(self, seconds: float) -> None:
        self.waited.set()
        await super().sleep(seconds)


async def test_a_waiting_contract_gets_capacity_when_it_frees(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """With start_by, acquire keeps waiting (re-quoting, or watching a pending pod)
    until the capacity frees and the scheduler binds it."""
    full = contract(gpus=GPU(count=4, models=("H100",)), regions=("us-east-1",))
    holder = await Negotiator([backend]).acquire(full)
    waiting = contract(regions=("us-east-1",), start_by="60s")
    ns = backend.namespace_for(waiting)  # its own tenant: only its pod could live there
    clock = _WaitWatchingClock()
    result: list[Lease] = []

    async def acquire() -> None:
        result.append(await Negotiator([backend], clock=clock).acquire(waiting))

    def refused_pods() -> list[str]:
        """The waiting tenant's pods the scheduler has looked at and could not place."""
        with k8s_cluster.client() as c:
            r = c.get(f"/api/v1/namespaces/{ns}/pods", params={"labelSelector": LABEL_LEASE})
            assert r.status_code == 200, r.text
        return [
            pod["metadata"]["name"]
            for pod in r.json()["items"]
            if any(
                (cond.get("type"), cond.get("status"), cond.get("reason"))
                == ("PodScheduled", "False", "Unschedulable")
                for cond in pod.get("status", {}).get("conditions") or []
            )
        ]

    async with anyio.create_task_group() as tg:
        tg.start_soon(acquire)
        # Wait until the acquire is observably waiting for capacity: a round of quotes
        # ended with no lease (the negotiator sleeps before re-quoting), or its pod
        # exists and the scheduler refused it. Only then does "nothing yet" mean something.
        with anyio.fail_after(30):
            while not (clock.waited.is_set() or refused_pods()):
                await anyio.sleep(0.1)
        assert not result  # pending: nothing is reported before binding
        await holder.release()
    assert result[0].details["node"] == "gpu-us-1"
    await result[0].release()


async def test_killed_node_revokes_its_leases_with_a_reason(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    lease = await Negotiator([backend]).acquire(contract(jurisdictions=("US",)))
    assert lease.details["node"] == "gpu-us-1"
    assert (await backend.observe(lease)).faults == ()
    k8s_cluster.kubelet.kill_node("gpu-us-1", ready="False")
    try:
        async with Monitor(observe_interval=0.2, publish=False) as monitor:
            monitor.watch(lease, probe=False, renew=False)
            with anyio.fail_after(30):
                while lease.state != LeaseState.REVOKED:
                    await anyio.sleep(0.1)
        assert lease.reason is not None
        assert "node-lost" in lease.reason
        assert "gpu-us-1" in lease.reason
        assert "NotReady" in lease.reason
        ns = lease.details["namespace"]
        # Release still cleans up: the dead node's terminating pod is forced away.
        await backend.release(lease)
        assert by_label(k8s_cluster, ns, lease.id) == {
            "pods": [],
            "services": [],
            "jobs": [],
            "leases": [],
        }
    finally:
        k8s_cluster.kubelet.revive_node("gpu-us-1", timeout=60)


async def test_a_deleted_pod_is_a_fault(k8s_cluster: Any, backend: KubernetesBackend) -> None:
    lease = await Negotiator([backend]).acquire(contract())
    ns = lease.details["namespace"]
    with k8s_cluster.client() as c:
        c.delete(f"/api/v1/namespaces/{ns}/pods/{lease.details['pod']}")
    with anyio.fail_after(30):
        while True:
            faults = (await backend.observe(lease)).faults
            if faults:
                break
            await anyio.sleep(0.1)
    assert faults[0].kind == "capacity-revoked"
    await lease.release()


@pytest.mark.parametrize(("exit_code", "fault"), [(0, False), (3, True)], ids=["ok", "failed"])
async def test_a_finished_job_completes_its_workload(
    k8s_cluster: Any, backend: KubernetesBackend, exit_code: int, fault: bool
) -> None:
    """The workload's own state machine: ready while running, completed when done.
    A job that succeeds is no fault; one that fails is."""
    c = contract(workload=Workload(kind="batch", command=("python", "etl.py")))
    lease = await Negotiator([backend]).acquire(c)
    ns = lease.details["namespace"]
    with anyio.fail_after(30):
        while (await backend.observe(lease)).workload != "ready":
            await anyio.sleep(0.1)
    k8s_cluster.kubelet.complete_pod(ns, lease.details["pod"], exit_code)
    with anyio.fail_after(30):
        while (observation := await backend.observe(lease)).workload != "completed":
            await anyio.sleep(0.1)
    assert [f.kind for f in observation.faults] == (["workload-exited"] if fault else [])
    await lease.release()


async def test_abandon_deletes_what_a_commit_made(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """What the negotiator calls when a commit's outcome is unknown: nothing may remain."""
    negotiator = Negotiator([backend])
    offer = (await negotiator.quote(contract())).offers[0]
    key = uuid.uuid4().hex[:20]
    lease = await negotiator.commit(offer, key)
    ns = lease.details["namespace"]
    assert by_label(k8s_cluster, ns, lease.id)["pods"]
    await backend.abandon(offer, key)
    with anyio.fail_after(30):
        while any(by_label(k8s_cluster, ns, lease.id).values()):
            await anyio.sleep(0.1)
