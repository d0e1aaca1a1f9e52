"""slurmctld restarting (an upgrade, a crash, a failover) while leases are held or made.

Slurm keeps its jobs across a controller restart (``StateSaveLocation``): the jobs
run on and the leases over them must too. While the controller is away slurmrestd
answers every request with an error, even "Unable to find JobId" for a job that
runs (22.05, ``error_number: -1``): that is the controller being away, not the job
being gone.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from aicontract import Contract
from aicontract.backends.slurm import SlurmBackend, job_name
from aicontract.errors import TransientBackendError
from aicontract.leases import LeaseState

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]


def one_gpu(**kw: Any) -> Contract:
    return Contract(name="ctld", gpus={"count": 1, "models": ["H100"]}, duration="10m", **kw)


def backend_on(cluster: Any) -> SlurmBackend:
    return SlurmBackend(url=cluster.url, token=cluster.token, user="root", partitions=["gpu"])


async def test_a_lease_outlives_a_controller_restart(clean_cluster: Any) -> None:
    async with backend_on(clean_cluster) as backend:
        lease = await backend.commit((await backend.quote(one_gpu())).offers[0], uuid.uuid4().hex)
        try:
            clean_cluster.stop_slurmctld()
            try:
                # Nobody can tell whether the job runs: a renewal to try again, not a loss.
                with pytest.raises(TransientBackendError):
                    await backend.renew(lease)
                with pytest.raises(TransientBackendError):
                    await backend.observe(lease)
                assert lease.state == LeaseState.ACTIVE
            finally:
                clean_cluster.start_slurmctld()
            await backend.renew(lease)
            assert (await backend.observe(lease)).faults == ()
            assert lease.state == LeaseState.ACTIVE
            (job,) = [
                j for j in clean_cluster.live_jobs() if j["job_id"] == int(lease.details["job_id"])
            ]
            assert job["job_state"] == "RUNNING"
        finally:
            await lease.release()


async def test_a_commit_waits_out_a_controller_restart_within_start_by(
    clean_cluster: Any,
) -> None:
    """Committed while the controller is away: the commit waits for it (``start_by`` is
    60 s), submits once it is back, and makes exactly one job."""
    async with backend_on(clean_cluster) as backend:
        contract = one_gpu(start_by="60s")
        offer = (await backend.quote(contract)).offers[0]
        key = uuid.uuid4().hex
        clean_cluster.stop_slurmctld()
        leases = []
        back = False
        try:
            async with anyio.create_task_group() as tg:

                async def commit() -> None:
                    leases.append(await backend.commit(offer, key))

                tg.start_soon(commit)
                await anyio.sleep(3)
                clean_cluster.start_slurmctld()
                back = True
        finally:
            if not back:
                clean_cluster.start_slurmctld()
        (lease,) = leases
        try:
            assert lease.state == LeaseState.ACTIVE
            jobs = [j for j in clean_cluster.live_jobs() if j["name"] == job_name(key)]
            assert [j["job_id"] for j in jobs] == [int(lease.details["job_id"])]
        finally:
            await lease.release()


async def test_a_release_waits_out_a_controller_restart(clean_cluster: Any) -> None:
    """Released while the controller is away: the job is still cancelled once it is back
    (within ``release_timeout``), not left running to its time limit."""
    async with backend_on(clean_cluster) as backend:
        lease = await backend.commit((await backend.quote(one_gpu())).offers[0], uuid.uuid4().hex)
        job_id = int(lease.details["job_id"])
        clean_cluster.stop_slurmctld()
        back = False
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(lease.release)
                await anyio.sleep(15)  # longer than slurmrestd's own retries (MessageTimeout)
                clean_cluster.start_slurmctld()
                back = True
        finally:
            if not back:
                clean_cluster.start_slurmctld()
        assert lease.state == LeaseState.RELEASED
        assert job_id not in [j["job_id"] for j in clean_cluster.live_jobs()]
