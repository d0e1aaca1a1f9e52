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
