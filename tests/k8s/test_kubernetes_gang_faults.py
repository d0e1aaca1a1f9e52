"""Gangs (and a waiting pod) under the faults issue 15 drove at leases, on the real
control plane.

A gang is N pods under one lease: each fault may strike one pod of it (deleted by
someone else), the gang's making half-way (a quota that runs out between ranks), or
two processes making the same gang at once. The lease must stay one truthful whole.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest
from test_kubernetes_faults import LosingTransport, http_client
from test_kubernetes_gang import gang, gone, no_lease_pods, objects_of, one_region

from aicontract import Lease, LeaseState, Monitor, Negotiator, QuotaExceeded
from aicontract.backends.kubernetes import KubernetesBackend

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]


async def test_a_quota_that_runs_out_mid_gang_refuses_it_and_leaves_nothing(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """The quota had room for the gang when it was quoted; another pod took half of it
    before the commit, so rank 1 is refused at admission after rank 0 was made."""
    await no_lease_pods(k8s_cluster)
    c = gang(2, gpus=2)
    ns = backend.namespace_for(c)
    k8s_cluster.create_namespace(ns)
    with k8s_cluster.client() as admin:
        r = admin.post(
            f"/api/v1/namespaces/{ns}/resourcequotas",
            json={
                "apiVersion": "v1",
                "kind": "ResourceQuota",
                "metadata": {"name": "gpus"},
                "spec": {"hard": {"requests.nvidia.com/gpu": "4"}},
            },
        )
        assert r.status_code == 201, r.text
    with anyio.fail_after(30):  # the quota controller fills in what is used
        while True:
            with k8s_cluster.client() as admin:
                status = admin.get(f"/api/v1/namespaces/{ns}/resourcequotas/gpus").json()
            if "used" in (status.get("status") or {}):
                break
            await anyio.sleep(0.2)
    [offer] = (await backend.quote(c)).offers
    squatter = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "squatter"},
        "spec": {
            "nodeSelector": {"aicontract.test/nowhere": "true"},
            "containers": [
                {
                    "name": "c",
                    "image": "registry.k8s.io/pause:3.9",
                    "resources": {
                        "requests": {"nvidia.com/gpu": "2", "cpu": "1", "memory": "1Gi"},
                        "limits": {"nvidia.com/gpu": "2", "cpu": "1", "memory": "1Gi"},
                    },
                }
            ],
        },
    }
    with k8s_cluster.client() as admin:
        r = admin.post(f"/api/v1/namespaces/{ns}/pods", json=squatter)
        assert r.status_code == 201, r.text
    key = uuid.uuid4().hex[:16]
    try:
        with pytest.raises(QuotaExceeded, match="quota"):
            await backend.commit(offer, key)
        await gone(k8s_cluster, ns, f"aic-{key}")
    finally:
        with k8s_cluster.client() as admin:
            admin.delete(f"/api/v1/namespaces/{ns}/pods/squatter")
        k8s_cluster.delete_namespace(ns)


async def test_a_gang_pod_deleted_by_someone_else_revokes_the_gang(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Someone deletes rank 1's pod (kubectl delete, an eviction): rank 1's process is
    gone, the gang's world is broken. The lease is revoked naming the pod, and its
    release leaves nothing."""
    await no_lease_pods(k8s_cluster)
    c = gang(2, gpus=1)
    lease: Lease = await backend.commit((await backend.quote(c)).offers[0], uuid.uuid4().hex[:16])
    ns = lease.details["namespace"]
    victim = f"{lease.id}-1"
    try:
        async with Monitor(observe_interval=0.2, publish=False) as monitor:
            monitor.watch(lease, probe=False)
            async with lease:
                with k8s_cluster.client() as admin:
                    r = admin.delete(f"/api/v1/namespaces/{ns}/pods/{victim}")
                    assert r.status_code == 200, r.text
                with anyio.fail_after(30):
                    while lease.state != LeaseState.REVOKED:
                        await anyio.sleep(0.1)
                assert lease.reason is not None
                assert victim in lease.reason
        await gone(k8s_cluster, ns, lease.id)
    finally:
        if lease.is_active:
            await lease.release()


async def test_two_processes_making_one_gang_at_once_make_one_gang(k8s_cluster: Any) -> None:
    first = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, holder="host-a/1")
    second = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, holder="host-b/2")
    await no_lease_pods(k8s_cluster)
    try:
        c = gang(2, gpus=1)
        offer = (await first.quote(c)).offers[0]
        key = uuid.uuid4().hex[:16]
        leases: list[Lease] = []
        errors: list[BaseException] = []

        async def commit(kb: KubernetesBackend) -> None:
            try:
                leases.append(await kb.commit(offer, key))
            except Exception as exc:
                errors.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit, first)
            tg.start_soon(commit, second)
        assert leases, errors
        ns = leases[0].details["namespace"]
        pods = objects_of(k8s_cluster, ns, leases[0].id)["pods"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) == 2, [p["metadata"]["name"] for p in pods]
        uids = {p["metadata"]["uid"] for p in live}
        for lease in leases:
            assert set(lease.details["uids"].split(",")) >= uids or all(
                u in lease.details["uids"] for u in uids
            ), (lease.details, uids)
        await leases[0].release()
        await gone(k8s_cluster, ns, leases[0].id)
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_lost_reply_to_a_gang_pod_post_adopts_that_pod(k8s_cluster: Any) -> None:
    """Rank 1's pod is made but the reply is lost: the commit adopts its own pod (owned
    by its Lease) rather than failing or making a third, and the lease holds both."""
    lossy = http_client(
        k8s_cluster,
        transport=lambda inner: LosingTransport(inner, "POST", r"/pods$", times=2),
    )
    kb = KubernetesBackend(http=lossy, ttl=30)
    await no_lease_pods(k8s_cluster)
    try:
        lease = await kb.commit((await kb.quote(gang(2, gpus=1))).offers[0], uuid.uuid4().hex[:16])
        ns = lease.details["namespace"]
        pods = objects_of(k8s_cluster, ns, lease.id)["pods"]
        assert sorted(p["metadata"]["name"] for p in pods) == [f"{lease.id}-0", f"{lease.id}-1"]
        assert (await kb.observe(lease)).faults == ()
        await lease.release()
        await gone(k8s_cluster, ns, lease.id)
    finally:
        await kb.aclose()


async def test_a_gang_waiting_for_capacity_survives_an_apiserver_restart(
    k8s_cluster: Any,
) -> None:
    """A gang of two waits (``start_by``) for a node another lease holds; the API server
    restarts meanwhile; when the holder lets go, the gang binds whole."""
    kb = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=30)
    await no_lease_pods(k8s_cluster)
    with one_region(k8s_cluster):
        c = gang(3, gpus=2, start_by="90s")
        [offer] = (await kb.quote(c)).offers
        holder = await Negotiator([kb]).acquire(gang(1, gpus=4))
        result: list[Lease] = []

        async def commit() -> None:
            result.append(await kb.commit(offer, uuid.uuid4().hex[:16]))

        cluster = k8s_cluster.cluster
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(commit)
                await anyio.sleep(2)
                await anyio.to_thread.run_sync(cluster.stop_apiserver)
                await anyio.sleep(3)
                cluster.start_apiserver()  # from this thread: the child dies with its parent's
                await anyio.sleep(2)
                await holder.release()
            [lease] = result
            assert lease.grant.nodes == 3
            await lease.release()
            await gone(k8s_cluster, lease.details["namespace"], lease.id)
        finally:
            if "kube-apiserver" not in cluster.processes:
                cluster.start_apiserver()
            if holder.is_active:
                await holder.release()
            await kb.aclose()
