"""The blocking face: same core, run on a background event loop (an anyio portal).

The property that matters most is that it works where an event loop is
already running in the calling thread — a Jupyter kernel — without deadlock
and without "event loop is already running".
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path

import anyio
import pytest

import aicontract
from aicontract import (
    Contract,
    LeaseState,
    Negotiator,
    NoOffer,
    VirtualClock,
    acquire_sync,
    quote_sync,
    release_sync,
    renew_sync,
)
from aicontract.clock import system_clock
from aicontract.sync import portal
from fakes import FakeBackend

CONTRACT = Contract(name="nb", gpus=1)


def fake_negotiator() -> tuple[FakeBackend, Negotiator, VirtualClock]:
    clock = VirtualClock()
    backend = FakeBackend(clock=clock)
    return backend, Negotiator([backend], clock=clock), clock


def advance(clock: VirtualClock, seconds: float) -> None:
    """Move virtual time on the portal's loop, where the heartbeat sleeps."""
    portal().call(functools.partial(clock.advance, seconds, step=1))


def test_acquire_sync_and_release_sync() -> None:
    backend, negotiator, _ = fake_negotiator()
    lease = acquire_sync(CONTRACT, negotiator=negotiator, keep_alive=False)
    assert lease.state == LeaseState.ACTIVE
    renew_sync(lease)
    assert len(backend.renewals) == 1
    release_sync(lease)
    assert lease.state == LeaseState.RELEASED
    assert backend.releases == [lease.id]


def test_acquire_sync_heartbeat_renews_in_the_background() -> None:
    backend, negotiator, clock = fake_negotiator()
    lease = acquire_sync(CONTRACT, negotiator=negotiator)
    try:
        advance(clock, 100)
        assert len(backend.renewals) >= 3
        assert lease.remaining > 0
    finally:
        release_sync(lease)
    assert lease.state == LeaseState.RELEASED


def test_lease_context_manager_renews_and_releases() -> None:
    backend, negotiator, clock = fake_negotiator()
    with aicontract.lease(CONTRACT, negotiator=negotiator) as held:
        assert held.is_active
        advance(clock, 100)
        assert backend.renewals
    assert held.state == LeaseState.RELEASED
    assert backend.releases == [held.id]


def test_lease_context_manager_releases_on_error_and_keeps_the_error() -> None:
    backend, negotiator, _ = fake_negotiator()
    with pytest.raises(KeyError), aicontract.lease(CONTRACT, negotiator=negotiator) as held:
        raise KeyError("boom")
    assert held.state == LeaseState.RELEASED
    assert backend.releases == [held.id]


def test_no_offer_is_raised_in_the_caller() -> None:
    backend, negotiator, _ = fake_negotiator()
    backend.available = False
    with pytest.raises(NoOffer, match=r"fake: resources\.gpus\.count"):
        acquire_sync(CONTRACT, negotiator=negotiator)


def test_quote_sync() -> None:
    backend = FakeBackend(clock=system_clock)  # quote() judges offer expiry by the real clock
    round_ = quote_sync(CONTRACT, backends=[backend])
    assert [o.backend for o in round_.offers] == ["fake"]


# -- as in a notebook: a loop already runs in this thread ---------------------------------


def notebook_cell() -> tuple[LeaseState, LeaseState, int]:
    """What a user types in a Jupyter cell: plain blocking calls, no await."""
    backend, negotiator, clock = fake_negotiator()
    with aicontract.lease(CONTRACT, negotiator=negotiator) as held:
        inside = held.state
        advance(clock, 100)
    return inside, held.state, len(backend.renewals)


def test_sync_face_inside_a_running_asyncio_loop() -> None:
    async def kernel() -> tuple[LeaseState, LeaseState, int]:
        asyncio.get_running_loop()  # a loop is running here, as in ipykernel
        lease = acquire_sync(CONTRACT, negotiator=fake_negotiator()[1])
        release_sync(lease)
        return notebook_cell()

    inside, after, renewals = asyncio.run(kernel())
    assert (inside, after) == (LeaseState.ACTIVE, LeaseState.RELEASED)
    assert renewals >= 3


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_sync_face_inside_anyio_run(backend: str) -> None:
    async def kernel() -> tuple[LeaseState, LeaseState, int]:
        return notebook_cell()

    inside, after, renewals = anyio.run(kernel, backend=backend)
    assert (inside, after) == (LeaseState.ACTIVE, LeaseState.RELEASED)
    assert renewals >= 3


# -- monitored by default, as in a notebook ------------------------------------------------


def test_a_notebook_lease_with_objectives_is_watched_and_reports_reach_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    contract = Contract(
        name="nb-slo",
        gpus=1,
        objectives=[aicontract.Objective(sli="throughput", op=">=", target="2000/s", window="1m")],
    )

    async def kernel() -> tuple[dict[str, str], dict[str, str]]:
        asyncio.get_running_loop()  # a loop is running here, as in ipykernel
        backend, negotiator, clock = fake_negotiator()
        lease = acquire_sync(contract, negotiator=negotiator)
        try:
            for _ in range(70):
                advance(clock, 1)
                lease.report(throughput=7000)  # from the kernel's thread
            good = {k: v.value for k, v in lease.objective_states.items()}
            for _ in range(70):
                advance(clock, 1)
                lease.report(throughput=97)
            bad = {k: v.value for k, v in lease.objective_states.items()}
        finally:
            release_sync(lease)
        assert backend.releases == [lease.id]
        return good, bad

    good, bad = asyncio.run(kernel())
    assert list(good.values()) == ["met"]
    assert list(bad.values()) == ["violated"]
