"""Monitored by default (issue 11): every face watches a lease whose contract has objectives.

Each test is one finding of the issue, through the public API, and ends with a
leak check: no lease left with the backend.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
from monitor_support import service_contract, states

import aicontract
from aicontract import (
    Contract,
    Fault,
    LeaseLost,
    LeaseState,
    LeaseStateError,
    Negotiator,
    Objective,
    Observation,
    VirtualClock,
)
from aicontract.monitor import process_monitor
from aicontract.sync import portal
from fakes import FakeBackend

THROUGHPUT = Objective(sli="throughput", op=">=", target="2000/s", window="1m")
P90 = Objective(sli="latency_p90", op="<=", target="200ms", window="1m")


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def no_leak(fake: FakeBackend) -> None:
    assert fake.leases == {}, f"leases left with the backend: {sorted(fake.leases)}"


# -- async ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_async_acquire_evaluates_objectives(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    lease = await aicontract.acquire(service_contract(THROUGHPUT), negotiator=negotiator)
    async with lease:
        for _ in range(60):
            await clock.advance(1)
            lease.report(throughput=7000)
        assert list(states(lease).values()) == ["met"]
        for _ in range(70):
            await clock.advance(1)
            lease.report(throughput=97)
        assert list(states(lease).values()) == ["violated"]
    assert lease.state == LeaseState.RELEASED
    no_leak(fake)


@pytest.mark.anyio
async def test_report_on_an_unwatched_lease_raises(
    negotiator: Negotiator, fake: FakeBackend
) -> None:
    # No objectives, policy notify: nothing to watch, so a report cannot be kept.
    async with await aicontract.acquire(
        Contract(name="plain", gpus=1), negotiator=negotiator
    ) as held:
        assert not held.watched
        with pytest.raises(LeaseStateError, match="no monitor watches it"):
            held.report(latency=0.1)
    no_leak(fake)


@pytest.mark.anyio
async def test_one_monitor_per_process_dropped_with_its_last_lease(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    first = await aicontract.acquire(service_contract(P90), negotiator=negotiator)
    second = await aicontract.acquire(service_contract(P90), negotiator=negotiator)
    monitor = process_monitor()
    assert set(monitor.watches) == {first.id, second.id}
    await first.release()
    assert process_monitor() is monitor  # still watching the second
    await second.release()
    assert process_monitor() is not monitor  # the old one stopped with its last lease
    no_leak(fake)


# -- one handle owns the chain ------------------------------------------------------------


async def _violate_until_replaced(lease: aicontract.Lease, clock: VirtualClock) -> None:
    for _ in range(20):
        await clock.advance(1)
        lease.report(latency=0.9)
        if lease.current is not lease:
            return
    raise AssertionError("no renegotiation happened")


@pytest.mark.anyio
async def test_leaving_async_with_releases_the_replacement_too(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    contract = service_contract(P90, policy="renegotiate")
    async with await aicontract.acquire(contract, negotiator=negotiator) as handle:
        await _violate_until_replaced(handle, clock)
        replacement = handle.current
        assert replacement.is_active
        await clock.advance(1)
    assert replacement.state == LeaseState.RELEASED
    no_leak(fake)


@pytest.mark.anyio
async def test_release_of_the_handle_releases_the_chain(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    contract = service_contract(P90, policy="renegotiate")
    handle = await aicontract.acquire(contract, negotiator=negotiator)
    async with handle:
        await _violate_until_replaced(handle, clock)
        await handle.release()
        assert handle.current.state == LeaseState.RELEASED
        no_leak(fake)
    no_leak(fake)


def test_leaving_the_sync_block_releases_the_replacement_too() -> None:
    clock = VirtualClock()
    fake = FakeBackend(clock=clock, capacity=2, ttl=3600.0)
    negotiator = Negotiator(backends=[fake], clock=clock)
    contract = service_contract(P90, policy="renegotiate")
    with aicontract.lease(contract, negotiator=negotiator) as handle:
        for _ in range(20):
            portal().call(functools.partial(clock.advance, 1))
            handle.report(latency=0.9)
            if handle.current is not handle:
                break
        assert handle.current is not handle
        assert handle.current.is_active
    assert handle.current.state == LeaseState.RELEASED
    no_leak(fake)


# -- revocation under renegotiate ---------------------------------------------------------


@pytest.mark.anyio
async def test_a_provider_fault_under_renegotiate_acquires_a_replacement(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    contract = service_contract(P90, policy="renegotiate")
    reasons: list[str] = []
    async with await aicontract.acquire(contract, negotiator=negotiator) as handle:
        handle.on_violation(lambda v: reasons.append(v.reason))
        fake.observations.append(
            Observation(faults=(Fault(kind="device-error", reason="Xid 79", at=clock.time()),))
        )
        await clock.advance(3, step=1)
        assert handle.state == LeaseState.REVOKED
        assert handle.current is not handle
        assert handle.current.is_active
        assert reasons == ["device-error: Xid 79"]
    no_leak(fake)


@pytest.mark.anyio
async def test_capacity_revoked_at_renewal_under_renegotiate_acquires_a_replacement(
    clock: VirtualClock,
) -> None:
    fake = FakeBackend(clock=clock, capacity=2, ttl=30.0)
    negotiator = Negotiator(backends=[fake], clock=clock)
    contract = service_contract(P90, policy="renegotiate")
    async with await aicontract.acquire(contract, negotiator=negotiator) as handle:
        # the provider took it back: the next renewal is refused
        fake.renew_error = LeaseLost(handle.id, "capacity revoked")
        await clock.advance(30, step=1)
        assert handle.state == LeaseState.REVOKED
        assert handle.current.is_active
        assert handle.current.id in fake.leases
    no_leak(fake)


@pytest.mark.anyio
async def test_a_revoked_lease_under_notify_is_not_replaced(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    async with await aicontract.acquire(service_contract(P90), negotiator=negotiator) as handle:
        fake.observations.append(
            Observation(faults=(Fault(kind="node-lost", reason="gone", at=clock.time()),))
        )
        await clock.advance(3, step=1)
        assert handle.state == LeaseState.REVOKED
        assert handle.current is handle
    no_leak(fake)


# -- on_violation as a shortcut -----------------------------------------------------------


def test_on_violation_is_a_contract_shortcut() -> None:
    contract = Contract(gpus=1, duration="1h", on_violation="renegotiate", objectives=[P90])
    assert contract.terms.on_violation == "renegotiate"
    assert str(contract.terms.duration) == "1h"
    with pytest.raises(aicontract.ContractError, match="on_violation"):
        Contract(gpus=1, on_violation="panic")


@pytest.mark.anyio
async def test_violations_follow_a_revoked_lease_to_its_replacement(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    import anyio

    seen: list[str] = []
    contract = service_contract(P90, policy="renegotiate")
    async with await aicontract.acquire(contract, negotiator=negotiator) as handle:

        async def read() -> None:
            async for violation in handle.violations():
                seen.append(violation.lease_id)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            fake.observations.append(
                Observation(faults=(Fault(kind="node-lost", reason="gone", at=clock.time()),))
            )
            await clock.advance(3, step=1)
            replacement = handle.current
            assert replacement is not handle
            await _violate_until_replaced(replacement, clock)
            await handle.release()
            await clock.advance(1)
    # the reader heard both leases, and ended when the chain did
    assert seen[0] == handle.id
    assert replacement.id in seen
    no_leak(fake)


# -- backends acquire() built outlive a broken lease that may still be replaced ------------


@pytest.mark.anyio
async def test_backends_acquire_built_stay_open_until_a_revoked_chain_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import attrs

    from aicontract import register_backend, unregister_backend
    from aicontract.clock import system_clock

    @attrs.define(eq=False)
    class Closing(FakeBackend):
        closed: int = 0

        async def aclose(self) -> None:
            self.closed += 1

    made: list[Closing] = []

    def factory() -> Closing:
        made.append(Closing(name="closing", clock=system_clock, capacity=2, ttl=3.0))
        return made[-1]

    register_backend("closing", factory)
    monkeypatch.setenv("AICONTRACT_BACKENDS", "closing")
    try:
        contract = service_contract(P90, policy="renegotiate")
        async with await aicontract.acquire(contract) as handle:
            [backend] = made
            # The provider takes it back: the next renewal (within a second) is refused, and
            # the lease's own heartbeat releases it with its backend — which must stay open.
            backend.renew_error = LeaseLost(handle.id, "capacity revoked")
            import anyio

            with anyio.fail_after(10):
                while handle.current is handle or not handle.current.is_active:
                    await anyio.sleep(0.05)
            assert handle.state.is_final  # revoked (or, on a stalled machine, expired)
            assert backend.closed == 0, "the replacement runs on it"
        assert backend.closed == 1
        no_leak(backend)
    finally:
        unregister_backend("closing")
