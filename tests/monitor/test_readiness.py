"""Real make-before-break (issue 11): a replacement takes over only once its own workload is ready.

"Ready" is the replacement's own: the workload its backend started says so,
and its own endpoint answers the contract's probe. An answer from the old
lease's address proves nothing.
"""

from __future__ import annotations

import httpx
import pytest
from monitor_support import service_contract

from aicontract import Lease, Objective, Probe, Workload
from aicontract.clock import VirtualClock
from aicontract.leases import WorkloadState
from aicontract.monitor import Monitor
from aicontract.monitor.telemetry import Telemetry
from aicontract.negotiate import Negotiator
from aicontract.observation import Observation
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

P90 = Objective(sli="latency_p90", op="<=", target="200ms", window="1m")


def starting_backend(clock: VirtualClock, *, not_ready_looks: int) -> FakeBackend:
    """Each lease runs a workload, reported not ready for the first ``not_ready_looks`` looks.

    Looks are shared by every lease (the fake hands out observations in order),
    so a replacement is ready only once that many observations have been made.
    """
    fake = FakeBackend(clock=clock, capacity=2, ttl=3600.0)
    fake.on_event.append(
        lambda kind, lease: lease.set_workload_state("not-ready") if kind == "commit" else None
    )
    fake.observations.extend(Observation(workload="not-ready") for _ in range(not_ready_looks))
    fake.observations.extend(Observation(workload="ready") for _ in range(10_000))
    return fake


async def _violate(lease: Lease, clock: VirtualClock, seconds: int) -> None:
    for _ in range(seconds):
        await clock.advance(1)
        lease.report(latency=0.9)


async def test_the_switch_waits_for_the_replacements_own_workload(clock: VirtualClock) -> None:
    fake = starting_backend(clock, not_ready_looks=40)
    switched_to: list[WorkloadState | None] = []
    async with Monitor(
        Negotiator(backends=[fake], clock=clock), publish=False, telemetry=Telemetry()
    ) as monitor:
        handle = await monitor.acquire(service_contract(P90, policy="renegotiate"))
        handle.on_replaced(lambda old, new: switched_to.append(new.workload_state))
        await _violate(handle, clock, 30)
        assert handle.current is not handle
        await handle.release()
    assert switched_to  # renegotiated ...
    assert set(switched_to) == {WorkloadState.READY}  # ... never onto a starting workload
    assert fake.leases == {}


async def test_a_replacement_that_never_gets_ready_is_released_and_the_old_kept(
    clock: VirtualClock,
) -> None:
    fake = starting_backend(clock, not_ready_looks=10_000)
    contract = service_contract(P90, policy="renegotiate", per_hour=1, start_by="20s")
    async with Monitor(
        Negotiator(backends=[fake], clock=clock), publish=False, telemetry=Telemetry()
    ) as monitor:
        handle = await monitor.acquire(contract)
        handle.set_workload_state("ready")  # the first one is serving
        await _violate(handle, clock, 60)
        assert handle.current is handle
        assert handle.is_active
        assert set(fake.leases) == {handle.id}  # the replacement that never started: gone
        await handle.release()
    assert fake.leases == {}


async def test_readiness_is_the_probe_of_the_replacements_own_endpoint(
    clock: VirtualClock,
) -> None:
    fake = FakeBackend(clock=clock, capacity=2, ttl=3600.0)
    serving: set[str] = set()  # the replacement's server starts later

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200 if str(request.url) in serving else 503)

    contract = service_contract(P90, policy="renegotiate").with_(
        workload=Workload(ports={"http": 8000}, probe=Probe(path="/healthz", interval="1h"))
    )
    switched_at: list[float] = []
    async with (
        httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http,
        Monitor(
            Negotiator(backends=[fake], clock=clock),
            publish=False,
            telemetry=Telemetry(),
            http=http,
        ) as monitor,
    ):
        handle = await monitor.acquire(contract)
        serving.add(f"http://{handle.id}.invalid/healthz")
        handle.on_replaced(lambda old, new: switched_at.append(clock.time()))
        await _violate(handle, clock, 10)
        assert handle.current is handle  # its replacement does not answer yet ...
        [replacement] = set(fake.leases) - {handle.id}  # ... though it is committed
        await clock.advance(3, step=1)
        assert handle.current is handle
        serving.add(f"http://{replacement}.invalid/healthz")
        await clock.advance(3, step=1)
        assert handle.current.id == replacement
        await handle.release()
    assert len(switched_at) == 1
    assert fake.leases == {}
