"""Multi-node gangs (``resources.nodes``) and topology labels, on the real control plane.

The session cluster has 3 fake nodes x 4 H100s, two in eu-west-1 and one in
us-east-1. A gang lives in one region and jurisdiction (its offer names one), so
the tests that need all three nodes in one gang move gpu-us-1 into eu-west-1/EU
for their duration (``one_region``) and put it back afterwards.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest

from aicontract import (
    GPU,
    CapacityUnavailable,
    Contract,
    Lease,
    LeaseState,
    Monitor,
    Negotiator,
    NoOffer,
    VirtualClock,
    World,
)
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.objects import LABEL_LEASE, lease_name
from aicontract.contract import Resources

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]

MERGE = {"Content-Type": "application/merge-patch+json"}
NODES = {"gpu-eu-1", "gpu-eu-2", "gpu-us-1"}


def gang(nodes: int, gpus: int = 4, **kw: Any) -> Contract:
    """A gang of ``nodes`` x ``gpus`` H100s in a tenant (so a namespace) of its own."""
    kw.setdefault("tenant", f"g-{uuid.uuid4().hex[:8]}")
    return Contract(
        name="k8s-gang",
        resources=Resources(nodes=nodes, gpus=GPU(count=gpus, models=("H100",))),
        **kw,
    )


def label_node(k8s_cluster: Any, node: str, labels: dict[str, str | None]) -> None:
    """Merge ``labels`` into a node's (None removes one)."""
    with k8s_cluster.client() as admin:
        r = admin.patch(
            f"/api/v1/nodes/{node}", json={"metadata": {"labels": labels}}, headers=MERGE
        )
        assert r.status_code == 200, r.text


@contextmanager
def one_region(k8s_cluster: Any) -> Iterator[None]:
    """All three nodes in eu-west-1/EU while the block runs."""
    us = {"topology.kubernetes.io/region": "us-east-1", "aicontract.io/jurisdiction": "US"}
    eu = {"topology.kubernetes.io/region": "eu-west-1", "aicontract.io/jurisdiction": "EU"}
    label_node(k8s_cluster, "gpu-us-1", dict(eu))
    try:
        yield
    finally:
        label_node(k8s_cluster, "gpu-us-1", dict(us))


def objects_of(k8s_cluster: Any, namespace: str, lease_id: str) -> dict[str, list[dict[str, Any]]]:
    """The lease's pods, services and Lease objects, by its label."""
    params = {"labelSelector": f"{LABEL_LEASE}={lease_id}"}
    paths = {
        "pods": f"/api/v1/namespaces/{namespace}/pods",
        "services": f"/api/v1/namespaces/{namespace}/services",
        "leases": f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
    }
    out: dict[str, list[dict[str, Any]]] = {}
    with k8s_cluster.client() as c:
        for kind, path in paths.items():
            r = c.get(path, params=params)
            assert r.status_code == 200, r.text
            out[kind] = list(r.json()["items"])
    return out


async def gone(k8s_cluster: Any, namespace: str, lease_id: str, within: float = 30) -> None:
    """Wait until nothing of the lease is left (the collector deletes the Service)."""
    with anyio.fail_after(within):
        while any(objects_of(k8s_cluster, namespace, lease_id).values()):
            await anyio.sleep(0.1)


def bound_lease_pods(k8s_cluster: Any) -> dict[str, str]:
    """Every live aicontract pod bound to a node, cluster-wide: pod name -> node."""
    with k8s_cluster.client() as c:
        r = c.get("/api/v1/pods", params={"labelSelector": LABEL_LEASE})
        assert r.status_code == 200, r.text
    return {
        p["metadata"]["name"]: p["spec"]["nodeName"]
        for p in r.json()["items"]
        if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")
    }


async def no_lease_pods(k8s_cluster: Any) -> None:
    """Wait until no lease pod is bound anywhere (earlier tests' pods finish deleting)."""
    with anyio.fail_after(30):
        while bound_lease_pods(k8s_cluster):
            await anyio.sleep(0.1)


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


async def test_a_two_node_gang_binds_on_distinct_nodes_with_its_world(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    await no_lease_pods(k8s_cluster)
    c = gang(2)
    quote = await backend.quote(c)
    offer = next(o for o in quote.offers if o.region == "eu-west-1")
    assert offer.grant.nodes == 2
    assert offer.grant.gpus == 4
    assert offer.grant.describe().startswith("2 nodes x (4 x H100")
    key = uuid.uuid4().hex[:16]
    lease = await backend.commit(offer, key)
    ns = lease.details["namespace"]
    try:
        assert lease.guarantee == "allocated"
        assert lease.grant.nodes == 2
        objects = objects_of(k8s_cluster, ns, lease.id)
        pods = sorted(objects["pods"], key=lambda p: p["metadata"]["name"])
        assert [p["metadata"]["name"] for p in pods] == [f"{lease.id}-0", f"{lease.id}-1"]
        nodes = [p["spec"]["nodeName"] for p in pods]
        assert len(set(nodes)) == 2
        assert set(nodes) <= {"gpu-eu-1", "gpu-eu-2"}
        assert lease.details["nodes"] == ",".join(nodes)
        # The world: rank 0's pod through the headless Service is the rendezvous.
        master = f"{lease.id}-0.{lease.id}.{ns}.svc"
        assert lease.world == World(
            master_addr=master, master_port=29500, nodes=2, procs_per_node=4
        )
        for rank, pod in enumerate(pods):
            assert env_of(pod) | lease.world.for_node(rank).env() == env_of(pod)
            assert env_of(pod)["NODE_RANK"] == str(rank)
            assert pod["spec"]["hostname"] == f"{lease.id}-{rank}"
            assert pod["spec"]["subdomain"] == lease.id
            limits = pod["spec"]["containers"][0]["resources"]["limits"]
            assert limits["nvidia.com/gpu"] == "4"
            assert pod["metadata"]["ownerReferences"][0]["kind"] == "Lease"
        [service] = objects["services"]
        assert service["spec"]["clusterIP"] == "None"
        assert service["spec"]["publishNotReadyAddresses"] is True
        assert {p["port"] for p in service["spec"]["ports"]} == {29500}
        # A retried commit adopts the gang: the same lease, never a second gang.
        again = await backend.commit(offer, key)
        assert again.id == lease.id
        assert again.details["pod_uids"] == lease.details["pod_uids"]
        assert len(objects_of(k8s_cluster, ns, lease.id)["pods"]) == 2
        assert (await backend.observe(lease)).faults == ()
    finally:
        await lease.release()
    await gone(k8s_cluster, ns, lease.id)


async def test_a_gangs_pods_repel_each_other_onto_distinct_nodes(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Three 1-GPU pods would fit on one node; the gang still takes three nodes."""
    await no_lease_pods(k8s_cluster)
    with one_region(k8s_cluster):
        lease = await Negotiator([backend]).acquire(gang(3, gpus=1))
        try:
            nodes = lease.details["nodes"].split(",")
            assert sorted(nodes) == sorted(NODES)
            assert lease.world is not None
            assert lease.world.size == 3
        finally:
            await lease.release()
    await gone(k8s_cluster, lease.details["namespace"], lease.id)


async def test_a_gang_never_doubles_up_on_a_node(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Quoted while both EU nodes were free; then one keeps a single GPU. The other could
    hold both 2-GPU pods, but a gang's pods repel each other: the commit fails, whole."""
    await no_lease_pods(k8s_cluster)
    c = gang(2, gpus=2)
    offer = next(o for o in (await backend.quote(c)).offers if o.region == "eu-west-1")
    blocker = await Negotiator([backend]).acquire(
        Contract(
            tenant=f"b-{uuid.uuid4().hex[:8]}",
            gpus=GPU(count=3, models=("H100",)),
            regions=("eu-west-1",),
        )
    )
    try:
        with pytest.raises(CapacityUnavailable, match="cannot place gang"):
            await backend.commit(offer, "never-doubles")
        await gone(k8s_cluster, backend.namespace_for(c), lease_name("never-doubles"))
    finally:
        await blocker.release()
    await no_lease_pods(k8s_cluster)


async def test_a_gang_larger_than_the_cluster_is_refused_with_a_counter_offer(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    await no_lease_pods(k8s_cluster)
    c = gang(4)
    with one_region(k8s_cluster):
        quote = await backend.quote(c)
        assert not quote.offers
        [rejection] = quote.rejections
        assert rejection.requirement == "resources.nodes"
        assert "3 of them fit" in rejection.available
        [counter] = quote.counter_offers
        assert counter.grant.nodes == 3
        assert counter.contract.resources.nodes == 3
        assert counter.grant.gpus == 4
    # Across two regions, the most nodes one gang can have is the larger region's two.
    quote = await backend.quote(c)
    assert {o.grant.nodes for o in quote.counter_offers} == {2}
    assert {o.region for o in quote.counter_offers} == {"eu-west-1"}


async def test_two_gangs_at_once_exactly_one_binds(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    await no_lease_pods(k8s_cluster)
    with one_region(k8s_cluster):
        contracts = [gang(2), gang(2)]
        leases: list[Lease] = []
        refused: list[NoOffer] = []

        async def one(c: Contract) -> None:
            try:
                leases.append(await Negotiator([backend]).acquire(c))
            except NoOffer as exc:
                refused.append(exc)

        try:
            async with anyio.create_task_group() as tg:
                for c in contracts:
                    tg.start_soon(one, c)
            assert len(leases) == 1, refused
            assert len(refused) == 1
            winner = leases[0]
            bound = bound_lease_pods(k8s_cluster)
            assert set(bound) == {f"{winner.id}-0", f"{winner.id}-1"}
            assert len(set(bound.values())) == 2
            loser = next(c for c in contracts if c.tenant != winner.contract.tenant)
            ns = backend.namespace_for(loser)
            with k8s_cluster.client() as admin:
                r = admin.get(f"/api/v1/namespaces/{ns}/pods")
                assert r.status_code == 200, r.text
                live = [p for p in r.json()["items"] if not p["metadata"].get("deletionTimestamp")]
            assert live == []  # the loser's bound pod went with its unbound sibling
        finally:
            for lease in leases:
                await lease.release()
    await no_lease_pods(k8s_cluster)


def unplaced_pods(k8s_cluster: Any, namespace: str, lease_id: str) -> list[str]:
    """The lease's pods the scheduler has said it cannot place."""
    return [
        p["metadata"]["name"]
        for p in objects_of(k8s_cluster, namespace, lease_id)["pods"]
        if any(
            c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable"
            for c in (p.get("status") or {}).get("conditions") or []
        )
    ]


async def test_a_gang_held_up_lets_go_and_tries_again(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Two of three pods bind, the third cannot: instead of failing at once (or holding
    two nodes while it waits, as two racing gangs would, each holding what the other
    needs), the gang lets go and tries again; once the node frees, it binds whole."""
    await no_lease_pods(k8s_cluster)
    with one_region(k8s_cluster):
        c = gang(3)
        [offer] = (await backend.quote(c)).offers
        blocker = await Negotiator([backend]).acquire(
            Contract(tenant=f"b-{uuid.uuid4().hex[:8]}", gpus=GPU(count=2, models=("H100",)))
        )
        ns, name = backend.namespace_for(c), lease_name("held-up")
        leases: list[Lease] = []
        try:
            async with anyio.create_task_group() as tg:

                async def commit() -> None:
                    leases.append(await backend.commit(offer, "held-up"))

                tg.start_soon(commit)
                with anyio.fail_after(30):  # the first try is held up by the blocker...
                    while not unplaced_pods(k8s_cluster, ns, name):
                        await anyio.sleep(0.05)
                await blocker.release()  # ...which then goes: a later try binds
            [lease] = leases
            assert lease.grant.nodes == 3
            assert len(set(lease.details["nodes"].split(","))) == 3
            await lease.release()
            await gone(k8s_cluster, ns, name)
        finally:
            await blocker.release()
    await no_lease_pods(k8s_cluster)


async def test_a_gang_waiting_for_capacity_does_not_hold_nodes_while_it_waits(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """With ``start_by``, a gang two of whose pods are bound while the third waits lets
    the two go after a while and makes them anew: holding them until ``start_by`` is how
    two waiting gangs deadlock. When the capacity comes, a later try binds whole."""
    await no_lease_pods(k8s_cluster)
    with one_region(k8s_cluster):
        c = gang(3, start_by="40s")
        [offer] = (await backend.quote(c)).offers
        blocker = await Negotiator([backend]).acquire(
            Contract(tenant=f"b-{uuid.uuid4().hex[:8]}", gpus=GPU(count=2, models=("H100",)))
        )
        ns, name = backend.namespace_for(c), lease_name("waits")
        leases: list[Lease] = []
        try:
            async with anyio.create_task_group() as tg:

                async def commit() -> None:
                    leases.append(await backend.commit(offer, "waits"))

                tg.start_soon(commit)
                rank0: set[str] = set()  # each try makes rank 0's pod anew (a new uid)
                with anyio.fail_after(30):
                    while len(rank0) < 2:
                        for pod in objects_of(k8s_cluster, ns, name)["pods"]:
                            if pod["metadata"]["name"].endswith("-0"):
                                rank0.add(pod["metadata"]["uid"])
                        await anyio.sleep(0.05)
                await blocker.release()
            [lease] = leases
            assert lease.grant.nodes == 3
            await lease.release()
            await gone(k8s_cluster, ns, name)
        finally:
            await blocker.release()
    await no_lease_pods(k8s_cluster)


async def test_a_partly_bound_gang_is_deleted_whole(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Two of three pods bind, the third cannot before start_by: all three go."""
    await no_lease_pods(k8s_cluster)
    with one_region(k8s_cluster):
        c = gang(3, start_by="4s")
        [offer] = (await backend.quote(c)).offers
        assert offer.grant.nodes == 3
        # Then someone takes half of one node: only two of the gang's pods can bind.
        blocker = await Negotiator([backend]).acquire(
            Contract(tenant=f"b-{uuid.uuid4().hex[:8]}", gpus=GPU(count=2, models=("H100",)))
        )
        ns, name = backend.namespace_for(c), lease_name("partly-bound")
        most_bound = 0

        async def count_bound() -> None:
            nonlocal most_bound
            while True:
                pods = objects_of(k8s_cluster, ns, name)["pods"]
                most_bound = max(most_bound, sum(1 for p in pods if p["spec"].get("nodeName")))
                await anyio.sleep(0.1)

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(count_bound)
                with pytest.raises(CapacityUnavailable, match="2 of 3 pods bound"):
                    await backend.commit(offer, "partly-bound")
                tg.cancel_scope.cancel()
            assert most_bound == 2  # it really was partly bound
            await gone(k8s_cluster, ns, name)
        finally:
            await blocker.release()
    await no_lease_pods(k8s_cluster)


async def test_a_lost_node_revokes_the_whole_gang_and_leaves_nothing(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Rank 1's node goes NotReady: the gang's one lease is revoked (observing rank 0's
    pod alone would not see it), and its release deletes every pod, the dead node's
    too, and the Service."""
    await no_lease_pods(k8s_cluster)
    lease = await Negotiator([backend]).acquire(gang(2))
    ns = lease.details["namespace"]
    lost = lease.details["nodes"].split(",")[1]  # rank 1's node: not the rendezvous
    try:
        async with Monitor(observe_interval=0.2, publish=False) as monitor:
            monitor.watch(lease, probe=False)
            async with lease:
                k8s_cluster.kubelet.kill_node(lost, ready="False")
                with anyio.fail_after(30):
                    while lease.state != LeaseState.REVOKED:
                        await anyio.sleep(0.1)
                assert lease.reason is not None
                assert "node-lost" in lease.reason
                assert lost in lease.reason
            # The held block's end released it, revoked as it is.
        await gone(k8s_cluster, ns, lease.id)
    finally:
        k8s_cluster.kubelet.revive_node(lost, timeout=60)


async def test_nvlink_is_offered_where_node_labels_say_so(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    c = Contract(tenant=f"n-{uuid.uuid4().hex[:8]}", gpus=GPU(count=2, interconnect="nvlink"))
    quote = await backend.quote(c)
    assert not quote.offers
    assert [r.requirement for r in quote.rejections] == ["resources.gpus.interconnect"]
    assert "not labelled" in quote.rejections[0].available
    # GPU feature discovery's NVLink clique on one node, the operator's "pcie" on another.
    label_node(k8s_cluster, "gpu-eu-1", {"nvidia.com/gpu.clique": f"{uuid.uuid4()}.1"})
    label_node(k8s_cluster, "gpu-eu-2", {"aicontract.io/gpu-interconnect": "pcie"})
    try:
        quote = await backend.quote(c)
        [offer] = quote.offers
        assert offer.grant.gpu_interconnect == "nvlink"
        assert offer.details["nodes"] == "gpu-eu-1"
        plain = await backend.quote(c.with_(gpus=GPU(count=2)))
        assert {o.grant.gpu_interconnect for o in plain.offers} == {"nvlink", "pcie", None}
        lease = await backend.commit(offer, uuid.uuid4().hex[:16])
        try:
            assert lease.details["node"] == "gpu-eu-1"
            assert lease.grant.gpu_interconnect == "nvlink"
        finally:
            await lease.release()
    finally:
        label_node(k8s_cluster, "gpu-eu-1", {"nvidia.com/gpu.clique": None})
        label_node(k8s_cluster, "gpu-eu-2", {"aicontract.io/gpu-interconnect": None})


async def test_gc_collects_a_crashed_holders_gang_whole(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """The holder stopped renewing: gc deletes the Lease, every pod and the Service."""
    await no_lease_pods(k8s_cluster)
    lease = await Negotiator([backend]).acquire(gang(2, gpus=1))
    ns = lease.details["namespace"]
    counts = {k: len(v) for k, v in objects_of(k8s_cluster, ns, lease.id).items()}
    assert counts == {"pods": 2, "services": 1, "leases": 1}
    collector = KubernetesBackend(
        kubeconfig=k8s_cluster.kubeconfig, clock=VirtualClock(now=time.time() + 600)
    )
    try:
        report = await collector.collect_garbage(namespace=ns)
        assert report.expired == (f"{ns}/{lease.id}",)
        await gone(k8s_cluster, ns, lease.id)
    finally:
        await collector.aclose()
    await lease.release()  # late, and harmless
