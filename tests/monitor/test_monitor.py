"""The monitor end to end, in virtual time: samples in, states and violations out, policies."""

from __future__ import annotations

import logging

import anyio
import pytest
from monitor_support import service_contract, states

from aicontract import (
    Fault,
    LeaseState,
    Monitor,
    Negotiator,
    Objective,
    Observation,
    Sample,
    Violation,
    VirtualClock,
    WorkloadState,
)
from aicontract.monitor.telemetry import Telemetry
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

P90 = Objective(sli="latency_p90", op="<=", target="200ms", window="1m")
THROUGHPUT = Objective(sli="throughput", op=">=", target="500 tokens/s", window="1m")


def monitor_for(negotiator: Negotiator, **kw: object) -> Monitor:
    return Monitor(negotiator, publish=False, telemetry=Telemetry(), **kw)  # type: ignore[arg-type]


async def test_report_and_measure_feed_objectives(
    negotiator: Negotiator, clock: VirtualClock
) -> None:
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(P90, THROUGHPUT))
        assert states(lease) == dict.fromkeys(states(lease), "undetermined")
        for _ in range(10):
            await clock.advance(1)
            lease.report(throughput=36_000, unit="tokens/min")  # 600 tokens/s
            with lease.measure("latency"):
                clock.now += 0.05  # the block "takes" 50 ms of virtual time
        watch = monitor.watches[lease.id]
        assert watch.last["throughput"].value == pytest.approx(600)
        assert watch.last["latency"].value == pytest.approx(0.05)
        assert set(states(lease).values()) == {"met"}
        lease.report("throughput", 5, unit="req/s")  # another unit: not this objective's
        assert watch.trackers[1].value(clock.time()) == pytest.approx(600)


async def test_violations_reach_iterator_callbacks_log_and_clear(
    negotiator: Negotiator, clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "aicontract.monitor")
    got: list[Violation] = []
    called: list[Violation] = []
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(P90))
        lease.on_violation(called.append)

        async def read() -> None:
            async for violation in lease.violations():
                got.append(violation)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read)
            await clock.advance(0)
            for second in range(120):
                await clock.advance(1)
                slow = 60 <= second < 70
                lease.report(latency=0.5 if slow else 0.02)
            assert states(lease) == {"latency_p90<=200ms/1m": "met"}  # cleared after the burst
            await lease.release()  # ends the iterator
    assert len(got) == 1
    assert called == got
    violation = got[0]
    assert violation.objective == P90
    assert violation.lease_id == lease.id
    assert violation.observed is not None
    assert violation.observed > 0.2
    assert violation.since <= violation.at
    assert violation.window > 0
    assert "violated" in caplog.text
    assert "met again" in caplog.text
    assert lease.state == LeaseState.RELEASED  # notify: the lease itself untouched until released


async def test_provider_fault_revokes_at_once(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    got: list[Violation] = []
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(P90))
        lease.on_violation(got.append)
        await clock.advance(3, step=1)
        assert lease.is_active
        fake.observations.append(
            Observation(
                samples=(Sample(sli="gpu_utilization", value=0.9, at=clock.time()),),
                faults=(Fault(kind="device-error", reason="Xid 79 on GPU 0", at=clock.time()),),
            )
        )
        await clock.advance(1)
        assert lease.state == LeaseState.REVOKED
        assert lease.reason == "device-error: Xid 79 on GPU 0"
        assert [v.severity for v in got] == ["fatal"]
        assert got[0].objective is None
        assert states(lease) == {"latency_p90<=200ms/1m": "undetermined"}  # not SLO burn
        assert lease.id not in monitor.watches


async def test_release_policy_gives_the_lease_back(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(P90, policy="release"))
        for _ in range(5):
            await clock.advance(1)
            lease.report(latency=1.0)
        await clock.advance(0)
        assert lease.state == LeaseState.RELEASED
        assert lease.reason is not None
        assert "latency_p90" in lease.reason
        assert fake.in_use == 0


async def test_renewed_ahead_of_expiry(clock: VirtualClock) -> None:
    fake = FakeBackend(clock=clock, capacity=2, ttl=30.0)
    async with monitor_for(Negotiator(backends=[fake], clock=clock)) as monitor:
        lease = await monitor.acquire(service_contract())
        await clock.advance(120, step=1)
        assert lease.is_active
        assert len(fake.renewals) >= 4
        assert lease.remaining > 0


async def test_unrenewable_lease_is_renegotiated_ahead_of_expiry(clock: VirtualClock) -> None:
    fake = FakeBackend(clock=clock, capacity=2, ttl=30.0)
    async with monitor_for(Negotiator(backends=[fake], clock=clock)) as monitor:
        lease = await monitor.acquire(service_contract(policy="renegotiate", renewable=False))
        expires_at = lease.expires_at
        await clock.advance(40, step=1)
        assert lease.replaced_by is not None
        assert lease.current.is_active
        commits = [at for kind, _, at in fake.events if kind == "commit"]
        assert commits[1] < expires_at  # replaced before it expired
        assert fake.max_in_use <= fake.capacity


async def test_a_fault_is_applied_before_the_workload_state_of_the_same_observation(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    async with monitor_for(negotiator) as monitor:
        lease = await monitor.acquire(service_contract(P90))
        await clock.advance(0)  # the monitor's loops start
        fake.observations.append(Observation(workload="ready"))
        await clock.advance(2, step=1)
        assert lease.workload_state == WorkloadState.READY
        fake.observations.append(Observation(workload="not-ready"))  # readiness may be lost
        await clock.advance(2, step=1)
        assert lease.workload_state == WorkloadState.NOT_READY
        fake.observations.append(Observation(workload="ready"))
        await clock.advance(2, step=1)
        fake.observations.append(
            Observation(
                workload="not-ready",
                faults=(Fault(kind="node-lost", reason="node n1 gone", at=clock.time()),),
            )
        )
        await clock.advance(2, step=1)
        assert lease.state == LeaseState.REVOKED
        assert lease.reason == "node-lost: node n1 gone"
        assert lease.workload_state == WorkloadState.READY  # the fault came first
        await lease.release()


class _HangingObserve(FakeBackend):
    """A backend whose first ``observe`` never answers (a stuck API call, a hung driver)."""

    calls = 0

    async def observe(self, lease):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            await anyio.sleep_forever()
        return await super().observe(lease)


async def test_a_hanging_observe_does_not_stop_the_lease_being_observed(
    clock: VirtualClock,
) -> None:
    backend = _HangingObserve(clock=clock, capacity=2, ttl=3600.0)
    monitor = Monitor(
        Negotiator(backends=[backend], clock=clock),
        publish=False,
        telemetry=Telemetry(),
        observe_timeout=0.05,  # real seconds: the hang is real
    )
    async with monitor:
        lease = await monitor.acquire(service_contract(P90))
        await clock.advance(1)  # the first observe starts, and hangs
        with anyio.fail_after(30):  # a safety net, not a timing assertion
            while backend.calls < 2:
                await anyio.sleep(0.01)  # real time passes: the hung call is given up
                await clock.advance(0.5)
        backend.observations.append(
            Observation(faults=(Fault(kind="node-lost", reason="gone", at=clock.time()),))
        )
        with anyio.fail_after(30):
            while lease.is_active:
                await anyio.sleep(0.01)
                await clock.advance(0.5)
        assert lease.state == LeaseState.REVOKED
