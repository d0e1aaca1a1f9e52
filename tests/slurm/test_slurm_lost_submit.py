"""A Slurm gang commit cancelled after slurmrestd took the job, before it answered.

A caller's deadline (``anyio.fail_after`` around acquire, a hedge that picked another
backend, Ctrl-C) cancels the commit while the submit's reply is on its way. The
job exists on the cluster; the commit never learned its id. Guarantee 4: no
orphaned jobs. The job holds two nodes' GPUs (``sleep infinity``) until its time
limit unless the commit's undo finds it by name and cancels it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import anyio
import pytest

from aicontract import Contract
from aicontract.backends.slurm import SlurmBackend, job_name

pytestmark = [pytest.mark.slurm, pytest.mark.anyio]


async def test_a_gang_commit_cancelled_while_its_submit_is_answered_leaves_no_job(
    clean_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gang = Contract(
        name="gang",
        duration="10m",
        resources={"nodes": 2, "gpus": {"count": 2, "models": ["H100"]}},
    )
    async with SlurmBackend(
        url=clean_cluster.url, token=clean_cluster.token, user="root", partitions=["gpu"]
    ) as backend:
        offer = (await backend.quote(gang)).offers[0]
        key = uuid.uuid4().hex[:12]
        api = type(backend.rest)
        submit = api.submit
        accepted = anyio.Event()

        async def slow_reply(self: Any, job: Any, script: str) -> int:
            job_id = await submit(self, job, script)  # slurmctld has the job now
            accepted.set()
            await anyio.sleep_forever()  # ...and its answer never arrives in time
            return job_id  # pragma: no cover

        monkeypatch.setattr(api, "submit", slow_reply)
        async with anyio.create_task_group() as tg:

            async def commit() -> None:
                await backend.commit(offer, key)

            tg.start_soon(commit)
            with anyio.fail_after(30):
                await accepted.wait()
            tg.cancel_scope.cancel()
    deadline = time.monotonic() + 10
    left = [j for j in clean_cluster.live_jobs() if j["name"] == job_name(key)]
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = [j for j in clean_cluster.live_jobs() if j["name"] == job_name(key)]
    assert left == [], f"the cancelled commit left job(s) {[j['job_id'] for j in left]} behind"
