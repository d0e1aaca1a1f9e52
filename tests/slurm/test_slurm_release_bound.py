"""A Slurm release is bounded by ``release_timeout`` as a whole, not per attempt.

:meth:`Lease.release` shields the backend's release from cancellation, so its own
bound is the only one a caller has. A controller that comes back just before the
deadline must not buy the release another full ``release_timeout`` of polling.
respx on the v0.0.40 shapes, with anyio's clock read at every request.
"""

from __future__ import annotations

import anyio
import httpx
import pytest
import respx
from test_slurm_shapes import URL, V40, modern_job, serve_v40

from aicontract import Contract
from aicontract.backends.slurm import SlurmBackend
from aicontract.errors import TransientBackendError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


CONTRACT = Contract(gpus={"count": 8, "models": ["H100"]}, duration="1h")


async def test_a_release_gives_up_within_release_timeout_overall() -> None:
    calls: list[float] = []
    with respx.mock(assert_all_called=False) as router:
        serve_v40(router, [])
        async with SlurmBackend(
            url=URL, token="t", user="alice", poll_interval=0.05, poll_max=0.1
        ) as backend:
            offer = (await backend.quote(CONTRACT)).offers[0]
            lease = await backend.commit(offer, "k1")
            backend.release_timeout = 1.0
            start = anyio.current_time()

            def cancel(request: httpx.Request) -> httpx.Response:
                calls.append(anyio.current_time())
                if anyio.current_time() < start + 0.8:  # slurmctld away until then
                    return httpx.Response(503, text="Service Unavailable")
                return httpx.Response(200, json={"errors": []})

            def job(request: httpx.Request) -> httpx.Response:
                calls.append(anyio.current_time())
                running = modern_job(41, "RUNNING", 0)
                return httpx.Response(200, json={"jobs": [running], "errors": []})

            router.delete(f"{V40}/job/41").mock(side_effect=cancel)
            router.get(f"{V40}/job/41").mock(side_effect=job)
            with pytest.raises(TransientBackendError):
                await backend.release(lease)
    # The job never leaves: the release gives up, at release_timeout (with slack for a
    # loaded machine), not a whole release_timeout after the controller came back.
    assert calls
    assert max(calls) - start < 1.0 + 0.4
