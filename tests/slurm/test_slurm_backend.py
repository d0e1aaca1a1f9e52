"""The Slurm backend against real daemons: munged, slurmctld, two slurmd, slurmrestd.

The cluster (see .ci/slurm-cluster.sh): node1 and node2, each 16 CPUs, 32000 MB and
four ``gpu:h100``; partitions ``gpu`` (both nodes), ``one`` (node1 only, MaxTime 10
minutes) and ``urgent`` (preempts the others). Every test starts and ends with an
idle cluster (``clean_cluster``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from aicontract import Contract, NoOffer, Workload
from aicontract.backends.slurm import SlurmBackend, job_name, node_env
from aicontract.errors import CapacityUnavailable, QuotaExceeded
from aicontract.leases import Lease, LeaseState
from aicontract.negotiate import Negotiator

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def backend(clean_cluster: Any) -> AsyncIterator[SlurmBackend]:
    sb = SlurmBackend(
        url=clean_cluster.url,
        token=clean_cluster.token,
        user="root",
        partitions=["one"],
        region="lab-1",
        jurisdiction="DE",
        use_reservations=False,
        schedule_timeout=10,
    )
    try:
        yield sb
    finally:
        await sb.aclose()


def h100(count: Any = 1, **kw: Any) -> Contract:
    kw.setdefault("duration", "5m")
    return Contract(name="slurm-test", gpus={"count": count, "models": ["H100"]}, **kw)


def key() -> str:
    return uuid.uuid4().hex[:12]


def gpus_used(cluster: Any, node: str) -> str:
    return str(cluster.node(node)["gres_used"])


async def test_quote_reflects_idle_and_allocated_gres(
    backend: SlurmBackend, clean_cluster: Any
) -> None:
    quote = await backend.quote(h100(4))
    assert [o.guarantee for o in quote.offers] == ["allocated"]
    offer = quote.offers[0]
    assert (offer.grant.gpus, offer.grant.gpu_model) == (4, "H100")
    assert offer.details["partition"] == "one"
    assert offer.start_in == 0

    held = await backend.commit((await backend.quote(h100(3))).offers[0], key())
    try:
        assert gpus_used(clean_cluster, "node1").startswith("gpu:h100:3")
        # One GPU is left: a 1-GPU contract is allocated now, a 2-GPU one must wait
        # for the running job's time limit.
        assert [o.guarantee for o in (await backend.quote(h100(1))).offers] == ["allocated"]
        later = (await backend.quote(h100(2))).offers
        assert [o.guarantee for o in later] == ["best-effort"]
        assert 200 < later[0].start_in <= 300  # the 5-minute job ends first
        quote = await backend.quote(h100(2, start_by="10s"))
        assert not quote.offers
        assert {r.requirement for r in quote.rejections} == {"terms.start_by"}
        assert [o.guarantee for o in quote.counter_offers] == ["best-effort"]
    finally:
        await held.release()
    assert gpus_used(clean_cluster, "node1").startswith("gpu:h100:0")


async def test_concurrent_one_gpu_contracts_get_exactly_the_four_gpus(
    backend: SlurmBackend, clean_cluster: Any
) -> None:
    negotiator = Negotiator([backend])
    leases: list[Lease] = []
    refusals: list[NoOffer] = []

    async def one() -> None:
        try:
            leases.append(await negotiator.acquire(h100(1, start_by="4s")))
        except NoOffer as exc:
            refusals.append(exc)

    try:
        async with anyio.create_task_group() as tg:
            for _ in range(6):
                tg.start_soon(one)
        assert (len(leases), len(refusals)) == (4, 2)
        running = [j for j in clean_cluster.live_jobs() if j["job_state"] == "RUNNING"]
        assert len(running) == 4
        assert len(clean_cluster.live_jobs()) == 4  # the losers' pending jobs were cancelled
        assert {lease.details["job_id"] for lease in leases} == {str(j["job_id"]) for j in running}
        for refusal in refusals:
            # Either the commit waited out start_by, or (Slurm expecting the job later)
            # gave up early and the re-quote offered the best-effort start back.
            countered = [o.guarantee for o in refusal.counter_offers] == ["best-effort"]
            assert countered or "start before the deadline" in str(refusal), str(refusal)
        # Asked again, the cluster says when the GPUs come back: a counter-offer.
        quote = await backend.quote(h100(1, start_by="4s"))
        assert not quote.offers
        assert [o.guarantee for o in quote.counter_offers] == ["best-effort"]
        assert quote.counter_offers[0].start_in > 200
    finally:
        for lease in leases:
            await lease.release()


async def test_a_retried_commit_finds_its_job(backend: SlurmBackend, clean_cluster: Any) -> None:
    offer = (await backend.quote(h100(1))).offers[0]
    k = key()
    first = await backend.commit(offer, k)
    # Another process (a fresh backend, nothing remembered) retries the same key.
    other = SlurmBackend(url=clean_cluster.url, token=clean_cluster.token, user="root")
    try:
        second = await other.commit(offer, k)
        assert second.details["job_id"] == first.details["job_id"]
        assert second.id == first.id == job_name(k)
        named = [j for j in clean_cluster.live_jobs() if j["name"] == job_name(k)]
        assert len(named) == 1
    finally:
        await other.aclose()
        await first.release()


async def test_abandon_cancels_what_a_lost_commit_submitted(
    backend: SlurmBackend, clean_cluster: Any
) -> None:
    offer = (await backend.quote(h100(1))).offers[0]
    k = key()
    await backend.commit(offer, k)
    # The reply was lost: another backend (knowing nothing) abandons the key.
    other = SlurmBackend(url=clean_cluster.url, token=clean_cluster.token, user="root")
    try:
        await other.abandon(offer, k)
    finally:
        await other.aclose()
    assert [j for j in clean_cluster.live_jobs() if j["name"] == job_name(k)] == []


async def test_start_by_passing_cancels_the_pending_job(
    backend: SlurmBackend, clean_cluster: Any
) -> None:
    late = (await backend.quote(h100(1, start_by="2s"))).offers[0]
    holder = await backend.commit((await backend.quote(h100(4))).offers[0], key())
    try:
        k = key()
        with pytest.raises(CapacityUnavailable, match="start before the deadline"):
            await backend.commit(late, k)
        assert [j for j in clean_cluster.live_jobs() if j["name"] == job_name(k)] == []
    finally:
        await holder.release()


async def test_a_job_slurm_expects_after_start_by_is_cancelled_without_waiting(
    backend: SlurmBackend, clean_cluster: Any
) -> None:
    late = (await backend.quote(h100(1, start_by="60s"))).offers[0]
    holder = await backend.commit((await backend.quote(h100(4))).offers[0], key())
    try:
        k = key()
        # The holder keeps node1's GPUs for 5 minutes: the backfill scheduler's expected
        # start says so, and the commit gives up on that word.
        with pytest.raises(CapacityUnavailable, match=r"Slurm expects it in \d+s"):
            await backend.commit(late, k)
        assert [j for j in clean_cluster.live_jobs() if j["name"] == job_name(k)] == []
    finally:
        await holder.release()


async def test_release_leaves_no_job(backend: SlurmBackend, clean_cluster: Any) -> None:
    lease = await backend.commit((await backend.quote(h100(2))).offers[0], key())
    job_id = int(lease.details["job_id"])
    assert [j["job_state"] for j in clean_cluster.live_jobs()] == ["RUNNING"]
    await lease.release()
    await lease.release()  # safe to repeat
    assert lease.state == LeaseState.RELEASED
    assert clean_cluster.live_jobs() == []
    assert gpus_used(clean_cluster, "node1").startswith("gpu:h100:0")
    with pytest.raises(Exception, match=str(job_id)):
        await backend.renew(lease)


async def test_a_node_set_down_revokes_its_lease_with_the_reason(
    backend: SlurmBackend, clean_cluster: Any
) -> None:
    lease = await backend.commit((await backend.quote(h100(1))).offers[0], key())
    try:
        assert (await backend.observe(lease)).faults == ()
        clean_cluster.scontrol("update", "nodename=node1", "state=down", "reason=psu-swap-42")
        observation = await backend.observe(lease)
        kinds = {f.kind for f in observation.faults}
        assert "node-lost" in kinds
        assert any("psu-swap-42" in f.reason for f in observation.faults)
        assert lease.state == LeaseState.REVOKED
        assert "psu-swap-42" in (lease.reason or "")
    finally:
        await lease.release()


async def test_preemption_is_a_fault(backend: SlurmBackend, clean_cluster: Any) -> None:
    lease = await backend.commit((await backend.quote(h100(4))).offers[0], key())
    try:
        with clean_cluster.client() as client:
            answer = client.post(
                "/job/submit",
                json={
                    "script": "#!/bin/sh\nexec sleep 600\n",
                    "job": {
                        "name": "urgent-work",
                        "partition": "urgent",
                        "nodes": "1",
                        "gres": "gpu:h100:4",
                        "time_limit": 5,
                        "current_working_directory": "/tmp",
                        "environment": {"PATH": "/usr/bin:/bin"},
                        "requeue": False,
                    },
                },
            ).json()
            assert not answer["errors"], answer
        with anyio.fail_after(30):
            while True:
                faults = (await backend.observe(lease)).faults
                if faults:
                    break
                await anyio.sleep(0.3)
        assert faults[0].kind == "preempted", faults
        assert lease.state == LeaseState.REVOKED
    finally:
        await lease.release()


async def test_more_gpus_than_a_node_holds_is_a_two_node_counter_offer_that_says_so(
    clean_cluster: Any,
) -> None:
    """8 GPUs on 4-GPU nodes: ``nodes: 1`` (one machine) cannot be granted. The job
    that would hold them spans two nodes, so it is offered as what it is: a counter-offer
    of a two-node gang, 4 GPUs each, whose grant, world and env all say two nodes."""
    async with SlurmBackend(
        url=clean_cluster.url, token=clean_cluster.token, user="root", partitions=["gpu"]
    ) as backend:
        quote = await backend.quote(h100(8))
        # No offer claims 8 GPUs on one node.
        assert quote.offers == ()
        assert [r.requirement for r in quote.rejections] == ["resources.gpus.count"]
        assert "resources.nodes: 2" in quote.rejections[0].available
        (counter,) = quote.counter_offers
        assert (counter.grant.nodes, counter.grant.gpus, counter.grant.total_gpus) == (2, 4, 8)
        assert counter.details["relaxed"] == (
            "resources.nodes 1 -> 2; resources.gpus.count 8 -> 4 per node"
        )
        assert (counter.contract.resources.nodes, str(counter.contract.resources.gpus.count)) == (
            2,
            "4",
        )
        lease = await backend.commit(counter, key())
        try:
            assert (lease.grant.nodes, lease.grant.gpus, lease.grant.total_gpus) == (2, 4, 8)
            assert lease.world is not None
            assert (lease.world.nodes, lease.world.procs_per_node, lease.world.size) == (2, 4, 8)
            env = lease.env
            assert env["NNODES"] == "2"
            assert env["GPUS_PER_NODE"] == "4"
            assert env["NPROC_PER_NODE"] == "4"
            assert env["WORLD_SIZE"] == "8"
            assert env["NODE_RANK"] == "0"
            assert env["MASTER_ADDR"] == "127.0.0.1"
            assert env["MASTER_PORT"] == "29500"
            assert env["SLURM_JOB_ID"] == lease.details["job_id"]
            assert env["SLURM_JOB_NODELIST"] == "node1,node2"
            assert node_env(lease, 1)["NODE_RANK"] == "1"
            assert set(lease.endpoints) == {"host", "node-1"}
            for name in ("node1", "node2"):
                assert gpus_used(clean_cluster, name).startswith("gpu:h100:4")
        finally:
            await lease.release()


async def test_a_two_node_gang_binds_both_nodes_with_the_gpus_on_each(
    clean_cluster: Any,
) -> None:
    gang = Contract(name="gang", resources={"nodes": 2, "gpus": {"count": 2, "models": ["H100"]}})
    async with SlurmBackend(
        url=clean_cluster.url, token=clean_cluster.token, user="root", partitions=["gpu"]
    ) as backend:
        negotiator = Negotiator([backend])
        lease = await negotiator.acquire(gang)
        try:
            assert (lease.grant.nodes, lease.grant.gpus, lease.grant.total_gpus) == (2, 2, 4)
            assert lease.env["SLURM_JOB_NODELIST"] == "node1,node2"
            assert (lease.env["NNODES"], lease.env["GPUS_PER_NODE"]) == ("2", "2")
            assert lease.world is not None
            assert lease.world.size == 4
            (job,) = [
                j for j in clean_cluster.jobs() if str(j["job_id"]) == lease.details["job_id"]
            ]
            assert "gpu:h100:2" in str(job), job  # two on each node, not four on one
            for name in ("node1", "node2"):
                assert "gpu:h100:2" in str(clean_cluster.node(name)["gres_used"])
        finally:
            await lease.release()
        refused = await backend.quote(gang.with_(nodes=3))
        assert [r.requirement for r in refused.rejections] == ["resources.nodes"]


async def test_a_cpu_gang_runs_the_workloads_processes_per_node(clean_cluster: Any) -> None:
    """No GPU: each node runs ``workload.procs_per_node`` training processes, as locally."""
    gang = Contract(
        name="cpu-gang",
        resources={"nodes": 2, "cpus": 1},
        workload=Workload(kind="training", procs_per_node=3),
    )
    async with SlurmBackend(
        url=clean_cluster.url, token=clean_cluster.token, user="root", partitions=["gpu"]
    ) as backend:
        lease = await Negotiator([backend]).acquire(gang)
        try:
            assert lease.world is not None
            assert (lease.world.nodes, lease.world.procs_per_node) == (2, 3)
            assert (lease.env["NPROC_PER_NODE"], lease.env["WORLD_SIZE"]) == ("3", "6")
        finally:
            await lease.release()


async def test_one_node_lease_env(backend: SlurmBackend) -> None:
    lease = await backend.commit((await backend.quote(h100(2))).offers[0], key())
    try:
        assert lease.env["NNODES"] == "1"
        assert lease.env["GPUS_PER_NODE"] == "2"
        assert lease.env["SLURM_JOB_NODELIST"] == "node1"
        assert lease.guarantee == "allocated"
        assert (lease.region, lease.jurisdiction) == ("lab-1", "DE")
    finally:
        await lease.release()


async def test_jurisdiction_and_price_filters(clean_cluster: Any) -> None:
    async with SlurmBackend(
        url=clean_cluster.url,
        token=clean_cluster.token,
        user="root",
        partitions=["one"],
        region="fra-1",
        jurisdiction="DE",
        price_per_gpu_hour="2 EUR/h",
    ) as backend:
        refused = await backend.quote(h100(1, jurisdictions=["US"]))
        assert not refused.offers
        assert [r.requirement for r in refused.rejections] == ["placement.jurisdictions"]
        allowed = await backend.quote(h100(2, jurisdictions=["EU"]))
        assert [str(o.price) for o in allowed.offers] == ["4 EUR/h"]
        too_dear = await backend.quote(h100(2, max_price="3 EUR/h"))
        assert not too_dear.offers
        assert {r.requirement for r in too_dear.rejections} == {"terms.max_price"}
        with pytest.raises(NoOffer, match=r"terms.max_price"):
            await Negotiator([backend]).acquire(h100(2, max_price="3 EUR/h"))


async def test_extend_lengthens_the_time_limit_and_refuses_past_the_partition(
    backend: SlurmBackend, clean_cluster: Any
) -> None:
    lease = await backend.commit((await backend.quote(h100(1, duration="2m"))).offers[0], key())
    try:
        await lease.extend("3m")
        job = next(j for j in clean_cluster.jobs() if str(j["job_id"]) == lease.details["job_id"])
        assert job["time_limit"] == 5
        with pytest.raises(QuotaExceeded, match="at most 00:10:00"):
            await lease.extend("20m")
        assert lease.is_active
        job = next(j for j in clean_cluster.jobs() if str(j["job_id"]) == lease.details["job_id"])
        assert job["time_limit"] == 5
        await lease.renew()  # the refused extension is not asked for again
    finally:
        await lease.release()


async def test_a_workload_command_runs_as_a_step_and_its_failure_is_a_fault(
    backend: SlurmBackend,
) -> None:
    ok = h100(1, workload=Workload(command=("sh", "-c", "sleep 1; exit 0")))
    bad = h100(1, workload=Workload(command=("sh", "-c", "sleep 1; exit 3")))
    good_lease = await backend.commit((await backend.quote(ok)).offers[0], key())
    bad_lease = await backend.commit((await backend.quote(bad)).offers[0], key())
    try:
        with anyio.fail_after(30):
            while (await backend.observe(good_lease)).workload != "completed":
                await anyio.sleep(0.3)
            while not (observed := await backend.observe(bad_lease)).faults:
                await anyio.sleep(0.3)
        assert good_lease.is_active
        assert observed.faults[0].kind == "workload-exited"
        assert "FAILED" in observed.faults[0].reason
    finally:
        await good_lease.release()
        await bad_lease.release()


async def test_a_reservation_gives_reserved_offers(clean_cluster: Any) -> None:
    clean_cluster.scontrol(
        "create",
        "reservation",
        "reservationname=team-a",
        "users=root",
        "nodes=node2",
        "starttime=now",
        "duration=30",
        "flags=ignore_jobs",
    )
    async with SlurmBackend(
        url=clean_cluster.url, token=clean_cluster.token, user="root", partitions=["gpu"]
    ) as backend:
        quote = await backend.quote(h100(4, min_guarantee="reserved"))
        reserved = [o for o in quote.offers if o.guarantee == "reserved"]
        assert [o.details["reservation"] for o in reserved] == ["team-a"]
        assert reserved[0].details["candidates"] == "node2"
        lease = await backend.commit(reserved[0], key())
        try:
            assert lease.details["nodes"] == "node2"
            assert lease.details["reservation"] == "team-a"
        finally:
            await lease.release()
