"""A failed Slurm commit's cleanup never hides why the commit failed.

When a commit fails, its undo looks for a job the submit may have made unawares and
cancels it. That undo talks to slurmrestd too, and may fail in its own way (the JWT
expired meanwhile, slurmrestd went away). The caller must still hear the commit's own
error — the one that says what to fix — with the cleanup's failure logged beside it.
respx on the v0.0.40 shapes: the failures are injected exactly where they matter.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest
import respx
from test_slurm_shapes import URL, V40, modern_job, serve_v40

from aicontract import Contract
from aicontract.backends.slurm import SlurmBackend
from aicontract.backends.slurm.api import SlurmError
from aicontract.errors import CapacityUnavailable

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CONTRACT = Contract(gpus={"count": 8, "models": ["H100"]}, duration="1h")


async def test_a_refused_submit_whose_lookup_is_refused_raises_the_submit_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with respx.mock(assert_all_called=False) as router:
        serve_v40(router, [])
        async with SlurmBackend(url=URL, token="t", user="alice") as backend:
            offer = (await backend.quote(CONTRACT)).offers[0]
            # No job yet; slurmctld refuses the submit; looking for a job it may have
            # made anyway is then refused (the token expired in between).
            router.post(f"{V40}/job/submit").respond(
                500,
                json={
                    "errors": [{"error_number": 2066, "description": "Invalid qos specification"}]
                },
            )
            router.get(f"{V40}/jobs").mock(
                side_effect=[
                    httpx.Response(200, json={"jobs": [], "errors": []}),  # before the submit
                    httpx.Response(401, text="Unauthorized"),  # after it
                ]
            )
            with (
                caplog.at_level(logging.WARNING, "aicontract.slurm"),
                pytest.raises(SlurmError, match="Invalid qos") as caught,
            ):
                await backend.commit(offer, "k1")
    assert "refused the credentials" in caplog.text
    assert "refused the credentials" in _notes(caught.value)


async def test_a_commit_whose_cancel_is_refused_raises_why_the_job_did_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with respx.mock(assert_all_called=False) as router:
        serve_v40(router, [])
        job = modern_job(41, "PENDING", int(time.time()) + 600)
        job["state_reason"] = "PartitionConfig"
        router.get(f"{V40}/job/41").respond(200, json={"jobs": [job], "errors": []})
        router.delete(f"{V40}/job/41").respond(401, text="Unauthorized")
        async with SlurmBackend(url=URL, token="t", user="alice") as backend:
            offer = (await backend.quote(CONTRACT)).offers[0]
            with (
                caplog.at_level(logging.WARNING, "aicontract.slurm"),
                pytest.raises(CapacityUnavailable, match="PartitionConfig") as caught,
            ):
                await backend.commit(offer, "k1")
    assert "job 41" in caplog.text
    assert "refused the credentials" in caplog.text
    assert "refused the credentials" in _notes(caught.value)


def _notes(exc: BaseException) -> str:
    """The cleanup failure, as a note (3.11+) or the exception's context (3.10)."""
    notes = getattr(exc, "__notes__", None)
    if notes is not None:
        return "\n".join(notes)
    return str(exc.__context__)
