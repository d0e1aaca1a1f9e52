"""The lease: its state machine, renew/release, the heartbeat in virtual time,
``async with``, and the record other processes read.

Time is a :class:`VirtualClock` throughout: the heartbeat's schedule is
asserted in virtual seconds, never against the wall clock.
"""

from __future__ import annotations

import anyio
import pytest
from anyio.abc import TaskStatus

from aicontract import (
    GPU,
    Contract,
    Grant,
    Lease,
    LeaseLost,
    LeaseRecord,
    LeaseState,
    LeaseStateError,
    TransientBackendError,
    VirtualClock,
    WorkloadState,
)
from fakes import FakeBackend

pytestmark = [pytest.mark.anyio, pytest.mark.anyio_backends("asyncio", "trio")]

S = LeaseState


def new_lease(
    clock: VirtualClock, backend: FakeBackend | None = None, ttl: float = 30.0, **contract: object
) -> Lease:
    backend = backend or FakeBackend(clock=clock, ttl=ttl)
    return Lease(
        id="l-1",
        contract=Contract(name="t", **contract),  # type: ignore[arg-type]
        grant=Grant(gpus=1, gpu_model="H100"),
        backend=backend,
        guarantee="allocated",
        expires_at=clock.time() + ttl,
        clock=clock,
    )


# -- the state machine ---------------------------------------------------------------------

ALLOWED = {
    (S.PENDING, S.ACTIVE),
    (S.PENDING, S.FAILED),
    (S.PENDING, S.RELEASED),
    (S.ACTIVE, S.RENEWING),
    (S.RENEWING, S.ACTIVE),
    *((S.ACTIVE, final) for final in (S.RELEASED, S.EXPIRED, S.REVOKED, S.FAILED)),
    *((S.RENEWING, final) for final in (S.RELEASED, S.EXPIRED, S.REVOKED, S.FAILED)),
}


@pytest.mark.parametrize("old", list(S))
@pytest.mark.parametrize("new", list(S))
def test_transitions_follow_the_state_machine(old: LeaseState, new: LeaseState) -> None:
    lease = new_lease(VirtualClock())
    lease.state = old
    seen: list[tuple[LeaseState, LeaseState]] = []
    lease.on_state_change(lambda _, a, b: seen.append((a, b)))
    if old == new:
        lease.transition(new)  # staying put is not a move
        assert seen == []
    elif (old, new) in ALLOWED:
        lease.transition(new, "because")
        assert lease.state == new
        assert seen == [(old, new)]
    else:
        with pytest.raises(LeaseStateError, match=f"cannot go from {old.value} to {new.value}"):
            lease.transition(new)
        assert lease.state == old
        assert seen == []


def test_final_states_are_final() -> None:
    assert {s for s in S if s.is_final} == {S.RELEASED, S.EXPIRED, S.REVOKED, S.FAILED}


# -- renew, release, revoke ----------------------------------------------------------------


async def test_renew_extends_expiry(clock: VirtualClock) -> None:
    lease = new_lease(clock)
    seen: list[LeaseState] = []
    lease.on_state_change(lambda _, __, new: seen.append(new))
    clock.now += 20
    await lease.renew()
    assert lease.expires_at == clock.now + 30
    assert lease.state == S.ACTIVE
    assert seen == [S.RENEWING, S.ACTIVE]


async def test_release_is_idempotent(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock)
    lease = new_lease(clock, backend)
    await lease.release()
    await lease.release()
    assert lease.state == S.RELEASED
    assert backend.releases == ["l-1"]  # the backend is asked once


async def test_renew_on_a_released_lease_is_refused(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock)
    lease = new_lease(clock, backend)
    await lease.release()
    with pytest.raises(LeaseStateError, match="cannot renew a released lease"):
        await lease.renew()
    assert backend.renewals == []


async def test_lease_lost_at_renewal_revokes(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, renew_error=LeaseLost("l-1", "node lost"))
    lease = new_lease(clock, backend)
    with pytest.raises(LeaseLost):
        await lease.renew()
    assert lease.state == S.REVOKED
    assert "node lost" in (lease.reason or "")
    # Releasing a lost lease still cleans up with its backend (a workload, a pod),
    # once, and leaves it revoked.
    await lease.release()
    await lease.release()
    assert backend.releases == [lease.id]
    assert lease.state == S.REVOKED


async def test_renewing_too_late_expires(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock)
    lease = new_lease(clock, backend)
    clock.now += 31
    with pytest.raises(LeaseLost, match="expired"):
        await lease.renew()
    assert lease.state == S.EXPIRED
    assert backend.renewals == []


async def test_transient_renewal_error_leaves_the_lease_active(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, renew_error=TransientBackendError("fake", "503"))
    lease = new_lease(clock, backend)
    with pytest.raises(TransientBackendError):
        await lease.renew()
    assert lease.state == S.ACTIVE


def test_revoke_only_from_active(clock: VirtualClock) -> None:
    lease = new_lease(clock)
    lease.revoke("device error")
    assert (lease.state, lease.reason) == (S.REVOKED, "device error")
    lease.revoke("again")  # no-op on a final state
    assert lease.reason == "device error"


# -- the heartbeat -------------------------------------------------------------------------


async def test_keep_alive_renews_before_every_expiry(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, ttl=30)
    lease = new_lease(clock, backend)
    expiries = [lease.expires_at]
    lease.on_state_change(
        lambda le, _, new: expiries.append(le.expires_at) if new == S.ACTIVE else None
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.keep_alive)
        await clock.advance(300, step=1)
        tg.cancel_scope.cancel()
    assert len(backend.renewals) >= 10
    # every renewal landed before the expiry it extended
    for renewed_at, previous_expiry in zip(backend.renewals, expiries, strict=False):
        assert renewed_at < previous_expiry
    assert lease.state == S.ACTIVE
    assert lease.remaining > 0


async def test_keep_alive_releases_at_the_contract_duration(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, ttl=30)
    lease = new_lease(clock, backend, duration="100s")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.keep_alive)
        await clock.advance(200, step=1)
    assert lease.state == S.RELEASED
    assert backend.releases == ["l-1"]
    assert all(t < lease.created_at + 100 for t in backend.renewals)


async def test_keep_alive_releases_on_time_when_expiry_reaches_past_the_duration(
    clock: VirtualClock,
) -> None:
    """A long TTL must not let the heartbeat sleep through the contract's end."""
    backend = FakeBackend(clock=clock, ttl=600)
    lease = new_lease(clock, backend, ttl=600, duration="100s")
    released_at: list[float] = []
    lease.on_state_change(
        lambda *_: released_at.append(clock.now) if lease.state == S.RELEASED else None
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.keep_alive)
        await clock.advance(300, step=1)
    assert lease.state == S.RELEASED
    assert released_at[0] <= lease.created_at + 101


async def test_keep_alive_survives_a_transient_renewal_error(clock: VirtualClock) -> None:
    """One 503 from the backend must not kill the heartbeat (and the lease with it)."""
    backend = FakeBackend(clock=clock, ttl=30, renew_error=TransientBackendError("fake", "503"))
    lease = new_lease(clock, backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.keep_alive)
        await clock.advance(120, step=1)
        tg.cancel_scope.cancel()
    assert lease.state == S.ACTIVE
    assert backend.renewals  # renewals resumed after the error
    assert lease.remaining > 0


async def test_keep_alive_stops_when_the_lease_is_lost(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, ttl=30)
    lease = new_lease(clock, backend)
    backend.releases.append(lease.id)  # released behind the holder's back
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.keep_alive)
        await clock.advance(60, step=1)
    assert lease.state == S.REVOKED


# -- async with ----------------------------------------------------------------------------


async def test_async_with_keeps_renewing_and_releases_on_exit(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, ttl=30)
    lease = new_lease(clock, backend)
    async with lease as held:
        assert held is lease
        await clock.advance(100, step=1)
        assert backend.renewals
        assert lease.is_active
    assert lease.state == S.RELEASED
    assert backend.releases == ["l-1"]


async def test_async_with_releases_on_exception(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock)
    lease = new_lease(clock, backend)
    with pytest.raises(ZeroDivisionError):
        async with lease:
            _ = 1 / 0
    assert lease.state == S.RELEASED
    assert backend.releases == ["l-1"]


async def test_async_with_releases_on_cancellation(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock)
    lease = new_lease(clock, backend)
    with anyio.move_on_after(0.01):
        async with lease:
            await anyio.sleep_forever()
    assert lease.state == S.RELEASED
    assert backend.releases == ["l-1"]


# -- the record ----------------------------------------------------------------------------


def test_record_round_trips_through_json(clock: VirtualClock) -> None:
    contract = Contract(
        name="rt",
        gpus=GPU(count="1..8", models=["H100", "A100-80GB"], memory=">=80GiB"),
        memory="64GiB..",
        duration="4h",
        max_price="30 USD/h",
        jurisdictions=["EU"],
    )
    lease = Lease(
        id="l-9",
        contract=contract,
        grant=Grant(gpus=8, gpu_model="H100", cpus=16),
        backend=FakeBackend(clock=clock),
        guarantee="reserved",
        expires_at=clock.time() + 30,
        region="eu-west-1",
        jurisdiction="EU",
        endpoints={"http": "http://127.0.0.1:8000"},
        env={"CUDA_VISIBLE_DEVICES": "0,1"},
        clock=clock,
    )
    record = lease.record()
    again = LeaseRecord.from_json(record.to_json())
    assert again == record
    assert again.contract == contract
    assert again.state is S.ACTIVE
    assert lease.to_dict()["contract"]["resources"]["gpus"]["memory"] == ">=80GiB"


async def test_workload_state_may_lose_readiness_but_never_leaves_completed(
    clock: VirtualClock,
) -> None:
    """The workload has its own machine (not-ready <-> ready -> completed), apart from the
    lease's."""
    lease = new_lease(clock, FakeBackend(clock=clock))
    assert lease.workload_state is None
    lease.set_workload_state("not-ready")
    lease.set_workload_state(WorkloadState.READY)
    lease.set_workload_state("not-ready")  # a readiness probe failed; it may come back
    assert lease.workload_state is WorkloadState.NOT_READY
    lease.set_workload_state(WorkloadState.READY)
    lease.set_workload_state("completed")
    assert lease.state == S.ACTIVE  # a completed job does not end the lease by itself
    assert lease.record().workload_state == "completed"
    with pytest.raises(LeaseStateError, match="cannot go from completed back to ready"):
        lease.set_workload_state("ready")


async def test_two_keep_alives_renew_once_and_the_second_takes_over(clock: VirtualClock) -> None:
    # A holder and a monitor may both start the lease's renewal loop: it must run once.
    backend = FakeBackend(clock=clock, ttl=30)
    lease = new_lease(clock, backend)
    async with anyio.create_task_group() as tg:
        first = anyio.CancelScope()

        async def run_first() -> None:
            with first:
                await lease.keep_alive()

        tg.start_soon(run_first)
        tg.start_soon(lease.keep_alive)
        await clock.advance(100, step=1)
        alone = len(backend.renewals)
        assert 3 <= alone <= 10  # ttl 30 s, every third of what is left: 10 s apart
        first.cancel()  # the first stops; the second carries on
        await clock.advance(100, step=1)
        assert len(backend.renewals) > alone
        tg.cancel_scope.cancel()
    assert lease.is_active


# -- the monitor's hook --------------------------------------------------------------------


async def test_a_report_reaches_the_attached_observer_and_hold_runs_it(
    clock: VirtualClock,
) -> None:
    from aicontract import Sample

    backend = FakeBackend(clock=clock, ttl=30)
    lease = new_lease(clock, backend)
    taken: list[tuple[str, str, float]] = []
    held: list[str] = []

    class Observer:
        def take(self, lease: Lease, sample: Sample) -> None:
            taken.append((lease.id, sample.sli, sample.value))

        async def hold(
            self,
            lease: Lease,
            *,
            task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
        ) -> None:
            held.append(lease.id)
            task_status.started()

    observer = Observer()
    with pytest.raises(LeaseStateError, match="no monitor watches it"):
        lease.report(latency=5, unit="ms")
    lease.attach(observer)
    assert lease.watched
    lease.report(latency=5, unit="ms")
    async with lease:
        await clock.advance(1)
        assert lease.held
    assert not lease.held
    assert taken == [("l-1", "latency", 0.005)]
    assert held == ["l-1"]
    lease.detach(observer)
    lease.report(latency=1)  # ended: nothing left to evaluate, so dropped, not raised
