"""The drain after a switch (issue 11): the old lease keeps serving for ``terms.drain``,
and nothing that happens meanwhile is lost.

A breach of the *new* lease during the drain used to be dropped: the policy was
still busy draining, so the violation started nothing, and the objective, already
violated, never changed again. It must be acted on once the drain is over.
"""

from __future__ import annotations

import pytest
from monitor_support import service_contract

from aicontract import Lease, Monitor, Negotiator, Objective, VirtualClock
from aicontract.monitor.telemetry import Telemetry
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

P90 = Objective(sli="latency_p90", op="<=", target="200ms", window="1m")
DRAIN = 30  # virtual seconds: long enough for the new lease to break within it


async def _slow_until_replaced(handle: Lease, lease: Lease, clock: VirtualClock) -> Lease:
    for _ in range(20):
        await clock.advance(1)
        if handle.current is not lease:
            return handle.current
        handle.report(latency=0.9)
    raise AssertionError(f"{lease.id} was never replaced")


async def test_a_breach_of_the_new_lease_during_the_drain_is_acted_on(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    contract = service_contract(P90, policy="renegotiate", drain=f"{DRAIN}s")
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        handle = await monitor.acquire(contract)
        first = await _slow_until_replaced(handle, handle, clock)
        assert handle.is_active  # still draining
        for _ in range(10):  # the replacement is slow too, within the drain
            await clock.advance(1)
            handle.report(latency=0.9)
        assert handle.is_active
        assert handle.current is first
        assert "violated" in {s.value for s in first.objective_states.values()}
        await clock.advance(DRAIN, step=1)  # the drain ends: the old lease goes ...
        assert not handle.is_active
        await clock.advance(3, step=1)  # ... and the breach that came meanwhile is acted on
        assert handle.current not in (handle, first)
        assert handle.current.is_active
        await handle.release()
    assert fake.leases == {}
    assert fake.max_in_use <= fake.capacity  # never a third lease while two were held


async def test_the_new_lease_revoked_during_the_drain_is_replaced(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    contract = service_contract(P90, policy="renegotiate", drain=f"{DRAIN}s")
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        handle = await monitor.acquire(contract)
        first = await _slow_until_replaced(handle, handle, clock)
        first.revoke("node lost")
        await clock.advance(DRAIN + 3, step=1)
        assert handle.current not in (handle, first)
        assert handle.current.is_active
        await handle.release()
    assert fake.leases == {}


async def test_the_old_lease_breaking_during_the_drain_is_recorded_for_it(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    contract = service_contract(P90, policy="renegotiate", drain=f"{DRAIN}s")
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        handle = await monitor.acquire(contract)
        first = await _slow_until_replaced(handle, handle, clock)
        handle.revoke("node lost")
        await clock.advance(DRAIN + 3, step=1)
        watch = monitor.watches[first.id]
        [broken] = [v for v in watch.violations if v.severity == "fatal"]
        assert broken.lease_id == handle.id
        assert "node lost" in broken.reason
        assert "draining" in broken.reason
        assert handle.current is first  # nothing to act on: the replacement serves
        await handle.release()
    assert fake.leases == {}


async def test_the_contract_drain_keeps_the_old_lease_that_long(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    contract = service_contract(P90, policy="renegotiate", drain=f"{DRAIN}s")
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        handle = await monitor.acquire(contract)
        await _slow_until_replaced(handle, handle, clock)
        switched = clock.time()
        while handle.is_active:
            await clock.advance(1)
        assert DRAIN - 1 <= clock.time() - switched <= DRAIN + 1
        await handle.release()
    assert fake.leases == {}


async def test_a_measurement_begun_on_the_old_lease_does_not_count_for_the_new(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    """A request sent to the old lease's endpoint and finished after the switch says
    nothing about the replacement: it must not count against its objectives."""
    contract = service_contract(P90, policy="renegotiate", drain=f"{DRAIN}s")
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        handle = await monitor.acquire(contract)
        fed: list[object] = []
        with handle.measure("latency"):  # a slow request to the old endpoint ...
            first = await _slow_until_replaced(handle, handle, clock)
            monitor.watches[first.id].listeners.append(fed.append)
            await clock.advance(1)
        assert fed == []  # ... finished after the switch: not the new lease's figure
        with handle.measure("latency"):  # one that began on the new lease counts
            await clock.advance(0.5)
        assert [s.sli for s in fed] == ["latency"]  # type: ignore[attr-defined]
        await handle.release()
    assert fake.leases == {}
