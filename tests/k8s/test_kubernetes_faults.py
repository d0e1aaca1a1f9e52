"""Kubernetes leases under the faults real clusters have every day (issue 15).

Each test drives the fault for real on the local control plane: a node that
stops heartbeating, an API server restarted by PID, a kubelet slow to finalise
deletions, replies lost after the server acted on the request, a token with
partial rights, a Job controller replacing a pod, a node relabelled.
"""

from __future__ import annotations

import re
import ssl
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from fake_kubelet import LABEL_REGION, NodeSpec

from aicontract import (
    GPU,
    AuthenticationError,
    Contract,
    IdempotencyConflict,
    QuotaExceeded,
    Workload,
)
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.objects import LABEL_LEASE, lease_name
from aicontract.leases import Lease, LeaseState, WorkloadState
from aicontract.monitor import Monitor
from aicontract.negotiate import Negotiator

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]

BETA_REGION = "failure-domain.beta.kubernetes.io/region"
BETA_ZONE = "failure-domain.beta.kubernetes.io/zone"


def tenant() -> str:
    return f"f-{uuid.uuid4().hex[:8]}"


def contract(**kw: Any) -> Contract:
    kw.setdefault("tenant", tenant())
    kw.setdefault("gpus", GPU(count=1, models=("H100",)))
    return Contract(name="k8s-fault", **kw)


class LosingTransport(httpx.AsyncBaseTransport):
    """Lets matching requests reach the API server, then loses their reply.

    The server acted (the object exists, the delete happened); the client sees
    a connection error, as after a network blip or a load balancer reset.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, method: str, path: str, times: int = 1):
        self.inner, self.method, self.path, self.times = inner, method, re.compile(path), times
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if self.times and request.method == self.method and self.path.search(request.url.path):
            self.times -= 1
            self.lost += 1
            await response.aread()
            await response.aclose()
            raise httpx.ReadError("reply lost (injected by the test)", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def http_client(
    k8s_cluster: Any, *, token: str | None = None, transport: Callable[[Any], Any] | None = None
) -> httpx.AsyncClient:
    """An authenticated client for a backend, optionally through a faulty transport."""
    ctx = ssl.create_default_context(cafile=str(k8s_cluster.ca_path))
    inner: httpx.AsyncBaseTransport = httpx.AsyncHTTPTransport(verify=ctx)
    return httpx.AsyncClient(
        base_url=k8s_cluster.server,
        headers={"Authorization": f"Bearer {token or k8s_cluster.token}"},
        transport=transport(inner) if transport is not None else inner,
        timeout=httpx.Timeout(30.0),
    )


def by_label(k8s_cluster: Any, namespace: str, lease_id: str) -> dict[str, list[dict[str, Any]]]:
    params = {"labelSelector": f"{LABEL_LEASE}={lease_id}"}
    paths = {
        "pods": f"/api/v1/namespaces/{namespace}/pods",
        "services": f"/api/v1/namespaces/{namespace}/services",
        "jobs": f"/apis/batch/v1/namespaces/{namespace}/jobs",
        "leases": f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
    }
    out: dict[str, list[dict[str, Any]]] = {}
    with k8s_cluster.client() as c:
        for kind, path in paths.items():
            r = c.get(path, params=params)
            assert r.status_code == 200, r.text
            out[kind] = r.json()["items"]
    return out


def lease_object(k8s_cluster: Any, namespace: str, name: str) -> dict[str, Any] | None:
    with k8s_cluster.client() as c:
        r = c.get(f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}")
        return dict(r.json()) if r.status_code == 200 else None


async def wait_gone(k8s_cluster: Any, namespace: str, lease_id: str, timeout: float = 60) -> None:
    with anyio.fail_after(timeout):
        while any(by_label(k8s_cluster, namespace, lease_id).values()):
            await anyio.sleep(0.2)


@pytest.fixture
def slow_kubelet(k8s_cluster: Any) -> Iterator[Any]:
    """A kubelet that takes 3 s to finalise a pod deletion, as real ones do."""
    k8s_cluster.kubelet.deletion_delay = 3.0
    try:
        yield k8s_cluster.kubelet
    finally:
        k8s_cluster.kubelet.deletion_delay = 0.0


async def fill_us_node(backend: KubernetesBackend) -> Lease:
    return await Negotiator([backend]).acquire(
        contract(gpus=GPU(count=4, models=("H100",)), regions=("us-east-1",))
    )


# -- finding 1: readiness goes back and forth; faults come first --------------------------


async def test_workload_readiness_may_go_back_and_forth(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    lease = await Negotiator([backend]).acquire(contract())
    ns, pod = lease.details["namespace"], lease.details["pod"]
    try:
        async with Monitor(observe_interval=0.1, publish=False) as monitor:
            monitor.watch(lease, probe=False, renew=False)
            for ready, state in ((False, WorkloadState.NOT_READY), (True, WorkloadState.READY)):
                with anyio.fail_after(30):
                    while lease.workload_state is not (
                        WorkloadState.READY if not ready else WorkloadState.NOT_READY
                    ):
                        await anyio.sleep(0.05)
                k8s_cluster.kubelet.set_pod_ready(ns, pod, ready)
                with anyio.fail_after(30):
                    while lease.workload_state is not state:
                        await anyio.sleep(0.05)
                assert lease.state == LeaseState.ACTIVE  # an unready workload is no fault
    finally:
        await lease.release()


async def test_a_silent_node_revokes_its_lease_as_node_lost(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """The node stops heartbeating; the controller marks it (and its pods) not ready."""
    lease = await Negotiator([backend]).acquire(contract(jurisdictions=("US",)))
    assert lease.details["node"] == "gpu-us-1"
    k8s_cluster.kubelet.kill_node("gpu-us-1", ready=None)
    try:
        async with Monitor(observe_interval=0.1, publish=False) as monitor:
            monitor.watch(lease, probe=False, renew=False)
            with anyio.fail_after(90):
                while lease.state != LeaseState.REVOKED:
                    await anyio.sleep(0.1)
        assert lease.reason is not None
        assert "node-lost" in lease.reason, lease.reason
    finally:
        await backend.release(lease)
        k8s_cluster.kubelet.revive_node("gpu-us-1", timeout=60)


# -- findings 2, 3: a committing lease is alive; gc leaves it alone ---------------------


async def quote_then_fill(backend: KubernetesBackend, c: Contract) -> tuple[Any, Lease]:
    """An offer for the US node, quoted while it was free; then the node is filled, so a
    commit of that offer waits (watching) until the holder lets go."""
    offer = (await backend.quote(c)).offers[0]
    assert offer.region == "us-east-1"
    return offer, await fill_us_node(backend)


async def test_a_lease_that_waited_for_binding_arrives_alive(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    short = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=3)
    offer, holder = await quote_then_fill(short, contract(regions=("us-east-1",), start_by="60s"))
    result: list[Lease] = []

    async def commit() -> None:
        result.append(await short.commit(offer, uuid.uuid4().hex[:16]))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(commit)
            await anyio.sleep(7)  # more than twice the TTL
            assert not result
            await holder.release()
        lease = result[0]
        assert lease.remaining > 0, lease.remaining
        obj = lease_object(k8s_cluster, lease.details["namespace"], lease.id)
        assert obj is not None
        await lease.renew()
        await lease.release()
    finally:
        await short.aclose()
        if holder.is_active:
            await holder.release()


async def test_gc_never_collects_a_commit_in_progress_and_the_commit_notices_a_delete(
    k8s_cluster: Any,
) -> None:
    short = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=3)
    collector = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=30)
    c = contract(regions=("us-east-1",), start_by="60s")
    # The holder's Lease lives 30 s unrenewed, so gc leaves it (and the node full).
    offer, holder = await quote_then_fill(collector, c)
    key = uuid.uuid4().hex[:16]
    name, ns = lease_name(key), short.namespace_for(c)
    failures: list[BaseException] = []

    async def commit() -> None:
        try:
            await short.commit(offer, key)
        except Exception as exc:
            failures.append(exc)

    try:
        with anyio.fail_after(40):
            async with anyio.create_task_group() as tg:
                tg.start_soon(commit)
                await anyio.sleep(7)  # twice the TTL: an unrenewed Lease would look dead
                report = await collector.collect_garbage()
                assert f"{ns}/{name}" not in report.expired
                assert lease_object(k8s_cluster, ns, name) is not None
                t0 = time.monotonic()
                with k8s_cluster.client() as admin:
                    admin.delete(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}")
        # The commit noticed at once, not at its 60 s deadline.
        assert time.monotonic() - t0 < 20
        assert failures
        assert "deleted" in str(failures[0]), failures
        await wait_gone(k8s_cluster, ns, name)
    finally:
        await holder.release()
        await short.aclose()
        await collector.aclose()


# -- findings 4, 6: a lease is bound to the exact objects it made -----------------------


def live_pod(k8s_cluster: Any, lease: Lease) -> dict[str, Any]:
    ns = lease.details["namespace"]
    with k8s_cluster.client() as c:
        r = c.get(f"/api/v1/namespaces/{ns}/pods/{lease.details['pod']}")
        assert r.status_code == 200, f"the lease's pod is gone: {r.text}"
        pod = dict(r.json())
    assert not pod["metadata"].get("deletionTimestamp"), "the lease's pod is terminating"
    owner = lease_object(k8s_cluster, ns, lease.id)
    assert owner is not None
    assert [o["uid"] for o in pod["metadata"]["ownerReferences"]] == [owner["metadata"]["uid"]]
    return pod


async def test_a_retry_after_a_lost_reply_never_adopts_a_terminating_pod(
    k8s_cluster: Any, slow_kubelet: Any
) -> None:
    """The Pod POST works but its reply is lost; the kubelet takes 3 s to finalise
    deletions. The lease returned must hold a live pod of its own, 5 s later too."""
    lossy = http_client(
        k8s_cluster, transport=lambda inner: LosingTransport(inner, "POST", r"/pods$")
    )
    kb = KubernetesBackend(http=lossy, ttl=30)
    try:
        lease = await Negotiator([kb]).acquire(contract())
        await anyio.sleep(5)
        pod = live_pod(k8s_cluster, lease)
        assert pod["metadata"]["uid"] == lease.details["pod_uid"]
        assert (await kb.observe(lease)).faults == ()
        await lease.release()
    finally:
        await kb.aclose()


async def test_a_lease_recreated_under_its_key_never_adopts_the_old_pod(
    k8s_cluster: Any, backend: KubernetesBackend, slow_kubelet: Any
) -> None:
    c = contract()
    offer = (await backend.quote(c)).offers[0]
    key = uuid.uuid4().hex[:16]
    first = await backend.commit(offer, key)
    ns = first.details["namespace"]
    with k8s_cluster.client() as admin:  # what gc does to a crashed holder's lease
        admin.delete(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{first.id}")
        with anyio.fail_after(30):
            while (
                not admin.get(f"/api/v1/namespaces/{ns}/pods/{first.id}")
                .json()["metadata"]
                .get("deletionTimestamp")
            ):
                await anyio.sleep(0.05)
    second = await backend.commit(offer, key)
    await anyio.sleep(4)
    live_pod(k8s_cluster, second)
    assert second.details["pod_uid"] != first.details["pod_uid"]
    await second.release()


async def test_a_failed_retry_never_destroys_the_holders_pod(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Process 2 retries process 1's key and loses the reply to its GET of the pod."""
    offer = (await backend.quote(contract())).offers[0]
    key = uuid.uuid4().hex[:16]
    lease = await backend.commit(offer, key)
    uid = live_pod(k8s_cluster, lease)["metadata"]["uid"]
    lossy = http_client(
        k8s_cluster,
        transport=lambda inner: LosingTransport(inner, "GET", r"/pods/[^/]+$", times=3),
    )
    other = KubernetesBackend(http=lossy, ttl=30)
    try:
        try:
            again = await other.commit(offer, key)
        except Exception:
            pass  # failing is allowed; destroying the holder's pod is not
        else:
            assert again.details["pod_uid"] == uid
        await anyio.sleep(1)
        assert live_pod(k8s_cluster, lease)["metadata"]["uid"] == uid
        assert (await backend.observe(lease)).faults == ()
    finally:
        await other.aclose()
        await lease.release()


# -- finding 5: the key is bound to the offer --------------------------------------------


async def test_the_same_key_with_another_offer_is_a_conflict(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(gpus=GPU(count="1..2", models=("H100",)))
    offers = (await backend.quote(c)).offers
    eu = next(o for o in offers if o.region == "eu-west-1")
    us = next(o for o in offers if o.region == "us-east-1")
    key = uuid.uuid4().hex[:16]
    lease = await backend.commit(eu, key)
    uid = live_pod(k8s_cluster, lease)["metadata"]["uid"]
    with pytest.raises(IdempotencyConflict, match="another offer"):
        await backend.commit(us, key)
    assert live_pod(k8s_cluster, lease)["metadata"]["uid"] == uid
    again = await backend.commit(eu, key)  # the same offer again is a plain retry
    assert again.id == lease.id
    assert again.details["pod_uid"] == uid
    await lease.release()


# -- finding 7: an API-server restart during a commit, and abandon after one -------------


async def test_a_waiting_commit_survives_an_apiserver_restart(k8s_cluster: Any) -> None:
    kb = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=30)
    offer, holder = await quote_then_fill(kb, contract(regions=("us-east-1",), start_by="60s"))
    result: list[Lease] = []

    async def commit() -> None:
        result.append(await kb.commit(offer, uuid.uuid4().hex[:16]))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(commit)
            await anyio.sleep(1)
            cluster = k8s_cluster.cluster
            await anyio.to_thread.run_sync(cluster.stop_apiserver)
            await anyio.sleep(2)
            cluster.start_apiserver()  # from this thread: the child dies with its parent's
            await anyio.sleep(1)
            await holder.release()
        assert result[0].details["node"] == "gpu-us-1"
        await result[0].release()
    finally:
        if holder.is_active:
            await holder.release()
        await kb.aclose()


async def test_abandon_cleans_up_across_an_apiserver_restart(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    offer = (await backend.quote(contract())).offers[0]
    key = uuid.uuid4().hex[:16]
    lease = await backend.commit(offer, key)
    ns = lease.details["namespace"]
    cluster = k8s_cluster.cluster
    await anyio.to_thread.run_sync(cluster.stop_apiserver)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.abandon, offer, key)
            await anyio.sleep(2)  # abandon meets a dead API server first
            cluster.start_apiserver()
    finally:
        if "kube-apiserver" not in cluster.processes:
            cluster.start_apiserver()
    await wait_gone(k8s_cluster, ns, lease.id)


# -- finding 8: partial rights leak nothing and name the real cause ----------------------


async def test_a_token_without_pod_rights_leaks_no_lease_and_says_pods(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(workload=Workload(kind="inference", image="x.invalid/a:1", ports={"http": 80}))
    ns = backend.namespace_for(c)
    k8s_cluster.create_namespace(ns)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "leases-only", "namespace": ns},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "leases-only", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases-only"},
        "subjects": [{"kind": "User", "name": "aicontract-test-limited"}],
    }
    with k8s_cluster.client() as admin:
        base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
        assert admin.post(f"{base}/roles", json=role).status_code == 201
        assert admin.post(f"{base}/rolebindings", json=binding).status_code == 201
    offer = (await backend.quote(c)).offers[0]
    limited = KubernetesBackend(
        kubeconfig=k8s_cluster.cluster.limited_kubeconfig, create_namespaces=False
    )
    try:
        with pytest.raises(AuthenticationError) as caught:
            await limited.commit(offer, uuid.uuid4().hex[:16])
        assert "pods" in str(caught.value)
        assert "services" not in str(caught.value)
    finally:
        await limited.aclose()
    with k8s_cluster.client() as admin:
        leases = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases").json()
    assert leases["items"] == []


# -- finding 9: the beta region label ------------------------------------------------------


async def test_a_node_with_only_the_beta_region_label_is_usable(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    spec = NodeSpec(
        name="gpu-beta-1",
        region="ap-south-1",
        region_label=BETA_REGION,
        zone_label=BETA_ZONE,
        jurisdiction="IN",
    )
    k8s_cluster.kubelet.add_node(spec, wait_ready=True)
    try:
        labels = k8s_cluster.kubelet.get_node("gpu-beta-1")["metadata"]["labels"]
        assert LABEL_REGION not in labels
        assert labels[BETA_REGION] == "ap-south-1"
        # The scheduler learns of a new node from its own watch, a moment after the API
        # server has it: a contract that may wait (start_by) rides that out, one that
        # may not would be refused by the first "0/N nodes" verdict.
        wanted = contract(regions=("ap-south-1",), start_by="60s")
        lease = await Negotiator([backend]).acquire(wanted)
        assert lease.details["node"] == "gpu-beta-1"
        assert lease.region == "ap-south-1"
        await lease.release()
    finally:
        k8s_cluster.kubelet.remove_node("gpu-beta-1")


# -- finding 10 and the relabelled node: a lease never silently moves ---------------------


async def test_a_replaced_job_pod_stays_a_fault(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(workload=Workload(kind="batch", command=("python", "etl.py")))
    lease = await Negotiator([backend]).acquire(c)
    ns = lease.details["namespace"]
    with k8s_cluster.client() as admin:
        path = f"/api/v1/namespaces/{ns}/pods/{lease.details['pod']}"
        first = admin.get(path).json()["metadata"]["uid"]
        admin.delete(path)
    replaced = False
    with anyio.fail_after(60):
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            observation = await backend.observe(lease)
            assert observation.faults, f"no fault, workload {observation.workload}"
            pods = by_label(k8s_cluster, ns, lease.id)["pods"]
            replaced = replaced or any(p["metadata"]["uid"] != first for p in pods)
            await anyio.sleep(0.2)
    assert replaced, "the Job controller did not replace the pod: the test proves nothing"
    await lease.release()


async def test_a_relabelled_node_that_leaves_the_contract_is_a_fault(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    lease = await Negotiator([backend]).acquire(contract(jurisdictions=("EU",)))
    node = lease.details["node"]
    label = "aicontract.io/jurisdiction"
    with k8s_cluster.client() as admin:
        patch = {"metadata": {"labels": {label: "US"}}}
        r = admin.patch(
            f"/api/v1/nodes/{node}",
            json=patch,
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert r.status_code == 200, r.text
    try:
        faults = (await backend.observe(lease)).faults
        assert [f.kind for f in faults] == ["capacity-revoked"], faults
        assert "placement" in faults[0].reason
        assert "US" in faults[0].reason
    finally:
        with k8s_cluster.client() as admin:
            admin.patch(
                f"/api/v1/nodes/{node}",
                json={"metadata": {"labels": {label: "EU"}}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
        await lease.release()


# -- minor: quotas and counter-offers -------------------------------------------------------


async def test_quotes_never_offer_what_the_namespace_quota_forbids(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(gpus=GPU(count=2, models=("H100",)))
    ns = backend.namespace_for(c)
    k8s_cluster.create_namespace(ns)
    before = (await backend.quote(c)).offers[0]  # quoted before the quota came
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpus", "namespace": ns},
        "spec": {"hard": {"requests.nvidia.com/gpu": "1"}},
    }
    with k8s_cluster.client() as admin:
        r = admin.post(f"/api/v1/namespaces/{ns}/resourcequotas", json=quota)
        assert r.status_code == 201, r.text
        with anyio.fail_after(30):  # the quota controller fills in what is used
            while "used" not in admin.get(
                f"/api/v1/namespaces/{ns}/resourcequotas/gpus"
            ).json().get("status", {}):
                await anyio.sleep(0.1)
    quote = await backend.quote(c)
    assert not quote.offers
    assert [r.requirement for r in quote.rejections] == ["quota"]
    assert "used 0 of limit 1" in quote.rejections[0].available
    assert [o.grant.gpus for o in quote.counter_offers] == [1, 1]  # EU and US, 1 GPU each
    one = (await backend.quote(contract(tenant=c.tenant))).offers
    assert one
    assert all(o.grant.gpus == 1 for o in one)
    # Committing an offer the quota now forbids: refused as quota, not as credentials.
    with pytest.raises(QuotaExceeded, match="quota") as caught:
        await backend.commit(before, uuid.uuid4().hex[:16])
    assert "limited" in str(caught.value)
    with k8s_cluster.client() as admin:
        leases = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases").json()
    assert leases["items"] == []


async def test_too_many_gpus_get_a_counter_offer(backend: KubernetesBackend) -> None:
    quote = await backend.quote(contract(gpus=GPU(count=5, models=("H100",))))
    assert not quote.offers
    assert {o.grant.gpus for o in quote.counter_offers} == {4}
    assert all(o.contract.resources.gpus is not None for o in quote.counter_offers)


async def test_quotes_keep_within_a_limit_range(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = contract(cpus=4)
    ns = backend.namespace_for(c)
    k8s_cluster.create_namespace(ns)
    limits = {
        "apiVersion": "v1",
        "kind": "LimitRange",
        "metadata": {"name": "small", "namespace": ns},
        "spec": {"limits": [{"type": "Container", "max": {"cpu": "2"}}]},
    }
    with k8s_cluster.client() as admin:
        r = admin.post(f"/api/v1/namespaces/{ns}/limitranges", json=limits)
        assert r.status_code == 201, r.text
    quote = await backend.quote(c)
    assert not quote.offers
    assert [r.requirement for r in quote.rejections] == ["quota"]
    assert "LimitRange small" in quote.rejections[0].available
    ranged = (await backend.quote(contract(tenant=c.tenant, cpus="1..8"))).offers
    assert ranged
    assert {o.grant.cpus for o in ranged} == {2}


# -- two processes, one key: one pod -------------------------------------------------------


async def test_two_processes_with_one_key_make_one_pod(k8s_cluster: Any) -> None:
    first = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, holder="host-a/1")
    second = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, holder="host-b/2")
    try:
        c = contract()
        offer = (await first.quote(c)).offers[0]
        key = uuid.uuid4().hex[:16]
        leases: list[Lease] = []

        async def commit(kb: KubernetesBackend) -> None:
            leases.append(await kb.commit(offer, key))

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit, first)
            tg.start_soon(commit, second)
        assert len({lease.details["pod_uid"] for lease in leases}) == 1
        pods = by_label(k8s_cluster, leases[0].details["namespace"], leases[0].id)["pods"]
        assert len(pods) == 1
        await leases[0].release()
    finally:
        await first.aclose()
        await second.aclose()
