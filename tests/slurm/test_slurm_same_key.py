"""Two processes committing one idempotency key at the same instant make one job.

Guarantee 5: a retried commit never yields two leases. A retry in another process
(a supervisor restarting a script, two replicas of an agent) may submit before the
first submit shows: both looked, found nothing, and submitted. The lowest job id
wins; the other commit cancels its own job and takes the winner's.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import pytest

from aicontract import Contract
from aicontract.backends.slurm import SlurmBackend, job_name
from aicontract.leases import Lease

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]


async def test_two_backends_committing_one_key_at_once_hold_one_job(clean_cluster: Any) -> None:
    def backend() -> SlurmBackend:
        return SlurmBackend(
            url=clean_cluster.url, token=clean_cluster.token, user="root", partitions=["gpu"]
        )

    contract = Contract(name="same-key", gpus={"count": 1, "models": ["H100"]}, duration="5m")
    async with backend() as first, backend() as second:
        offer = (await first.quote(contract)).offers[0]
        await second.quote(contract)  # both connected and speaking the same version
        key = uuid.uuid4().hex
        leases: list[Lease] = []

        async def commit(sb: SlurmBackend) -> None:
            leases.append(await sb.commit(offer, key))

        async with anyio.create_task_group() as tg:
            tg.start_soon(commit, first)
            tg.start_soon(commit, second)
        try:
            live = [j for j in clean_cluster.live_jobs() if j["name"] == job_name(key)]
            assert [j["job_id"] for j in live] == [int(leases[0].details["job_id"])], live
            assert leases[0].details["job_id"] == leases[1].details["job_id"]
        finally:
            for lease in leases:
                await lease.release()


async def test_another_users_job_under_the_same_key_is_never_taken(clean_cluster: Any) -> None:
    """Keys are the callers' words (``nightly``, ``exp-42``): two users may pick the same
    one. Each user's commit must find (and keep) only its own user's job, never
    return a lease on another user's job nor cancel its own for it."""
    contract = Contract(name="same-key", gpus={"count": 1, "models": ["H100"]}, duration="5m")
    key = f"nightly-{uuid.uuid4().hex[:6]}"
    async with (
        SlurmBackend(
            url=clean_cluster.url,
            token=clean_cluster.token_for("nobody"),
            user="nobody",
            partitions=["gpu"],
        ) as theirs,
        SlurmBackend(
            url=clean_cluster.url, token=clean_cluster.token, user="root", partitions=["gpu"]
        ) as mine,
    ):
        other = await theirs.commit((await theirs.quote(contract)).offers[0], key)
        try:
            lease = await mine.commit((await mine.quote(contract)).offers[0], key)
            try:
                assert lease.details["job_id"] != other.details["job_id"]
                live = {
                    j["job_id"]: j["user_name"]
                    for j in clean_cluster.live_jobs()
                    if j["name"] == job_name(key)
                }
                assert live == {
                    int(other.details["job_id"]): "nobody",
                    int(lease.details["job_id"]): "root",
                }
            finally:
                await lease.release()
            assert int(other.details["job_id"]) in [j["job_id"] for j in clean_cluster.live_jobs()]
        finally:
            await other.release()
