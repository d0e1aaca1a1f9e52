"""Renegotiation: make-before-break with no gap and no over-grant; a budget against flapping."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from monitor_support import service_contract

from aicontract import (
    Contract,
    Lease,
    LeaseState,
    Monitor,
    Negotiator,
    Objective,
    Renegotiate,
    RenegotiationBudget,
    Sample,
    Violation,
    VirtualClock,
)
from aicontract.monitor.policies import PolicyContext
from aicontract.monitor.telemetry import Telemetry
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

P90 = Objective(sli="latency_p90", op="<=", target="200ms", window="1m")


async def test_make_before_break_never_leaves_the_program_without_an_endpoint(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    gaps: list[str] = []
    replaced: list[tuple[str, str, dict[str, str]]] = []
    got: list[Violation] = []
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        handle = await monitor.acquire(service_contract(P90, policy="renegotiate"))
        original = handle.id

        def check(where: str) -> None:
            # the endpoint the program would use now belongs to a lease the backend holds
            url = handle.current.endpoints["http"]
            owner = fake.endpoint_owner(url)
            if owner is None or not handle.current.is_active:
                gaps.append(f"{where}: {url} held by {owner}")

        fake.on_event.append(lambda kind, lease: check(f"{kind} {lease.id}"))
        handle.on_replaced(lambda old, new: replaced.append((old.id, new.id, new.endpoints)))

        async def watch_every_instant() -> None:
            while True:
                check("checkpoint")
                await anyio.lowlevel.checkpoint()

        async def read() -> None:
            async for violation in handle.violations():
                got.append(violation)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch_every_instant)
            tg.start_soon(read)
            for _ in range(10):
                await clock.advance(1)
                handle.report(latency=0.8)
            await clock.advance(1)
            tg.cancel_scope.cancel()
    assert not gaps
    # still slow after each switch: replaced again, until the budget (3 an hour) is spent
    assert len(replaced) == 3
    new = handle.replaced_by
    assert new is not None
    assert replaced[0] == (original, new.id, new.endpoints)
    kinds = [(kind, lease_id) for kind, lease_id, _ in fake.events]
    assert kinds[:3] == [("commit", original), ("commit", new.id), ("release", original)]
    for old_id, new_id, _ in replaced:  # every time: the new one active before the old one goes
        assert kinds.index(("commit", new_id)) < kinds.index(("release", old_id))
    assert fake.max_in_use <= fake.capacity == 2  # no over-grant, even with both held
    assert handle.state == LeaseState.RELEASED
    assert handle.reason == f"replaced by {new.id}"
    assert handle.current.is_active
    assert handle.current.id == replaced[-1][1]
    assert {v.lease_id for v in got} == {original, *(n for _, n, _ in replaced)}


async def test_no_room_for_a_replacement_keeps_the_lease(clock: VirtualClock) -> None:
    fake = FakeBackend(clock=clock, capacity=1, ttl=3600.0)
    async with Monitor(
        Negotiator(backends=[fake], clock=clock), publish=False, telemetry=Telemetry()
    ) as monitor:
        lease = await monitor.acquire(service_contract(P90, policy="renegotiate"))
        for _ in range(10):
            await clock.advance(1)
            lease.report(latency=0.8)
        await clock.advance(1)
        assert lease.current is lease
        assert lease.is_active
        assert fake.max_in_use == 1
        assert [kind for kind, _, _ in fake.events] == ["commit"]


async def test_flapping_sli_renegotiates_within_the_budget(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        handle = await monitor.acquire(service_contract(P90, policy="renegotiate", per_hour=2))
        for second in range(3 * 3600):  # three hours; bad for 10 s in every 70 s
            await clock.advance(1)
            handle.report(latency=0.8 if second % 70 < 10 else 0.02)
    commits = [at for kind, _, at in fake.events if kind == "commit"][1:]  # replacements
    assert len(commits) >= 4  # it did renegotiate: the budget refills every hour
    for i, at in enumerate(commits):  # never more than 2 in any hour
        assert len([c for c in commits[i:] if c < at + 3600]) <= 2
    assert fake.max_in_use <= fake.capacity


async def test_make_before_break_on_the_local_backend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = pytest.importorskip("aicontract.backends.local")
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(
        "cpus: 16\nmemory: 64GiB\ngpus:\n"
        "  - {model: H100, memory: 80GiB}\n  - {model: H100, memory: 80GiB}\n"
    )
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    backend = local.LocalBackend(state_dir=tmp_path / "state")
    gaps: list[str] = []
    async with Monitor(
        Negotiator(backends=[backend]), publish=False, observe_interval=None, telemetry=Telemetry()
    ) as monitor:
        handle = await monitor.acquire(service_contract(P90, policy="renegotiate"))
        original = handle.id
        devices = backend.ledger.usage()[0]
        assert len(devices) == 1

        def held() -> set[str]:
            return {r.id for r in backend.ledger.records()}

        replaced = anyio.Event()

        def on_replaced(old: Lease, new: Lease) -> None:
            if not {old.id, new.id} <= held():  # both held at the switch: make before break
                gaps.append(f"switch {old.id}->{new.id} with {held()}")
            replaced.set()

        handle.on_replaced(on_replaced)
        for _ in range(10):
            handle.ingest(_slow(handle))
        with anyio.fail_after(10):  # bounds, not timing assertions: every wait has one
            await replaced.wait()
            while handle.state != LeaseState.RELEASED:
                await anyio.sleep(0.01)
        assert handle.current.id != original
        assert handle.current.is_active
        assert held() == {handle.current.id}
        assert len(backend.ledger.usage()[0]) == 1  # one GPU held; never more than the two there
        await handle.current.release()
    await backend.aclose()
    assert not gaps


# -- renegotiation never orphans a replacement ----------------------------------------------


def _violation(lease_id: str) -> object:
    return Violation(
        lease_id=lease_id,
        objective=None,
        observed=1.0,
        window=60.0,
        since=0.0,
        at=0.0,
        severity="critical",
        reason="slow",
    )


@pytest.mark.anyio_backends("asyncio", "trio")
async def test_a_replacement_is_released_when_the_switch_fails(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock)
    neg = Negotiator([backend], clock=clock)
    old = await neg.acquire(Contract(gpus=1))

    async def broken_switch(old: object, new: object) -> None:
        raise RuntimeError("monitor bug")

    context = PolicyContext(
        lease=old,
        budget=RenegotiationBudget(per_hour=3),
        negotiator=neg,
        now=clock.time,
        switch=broken_switch,
    )
    with pytest.raises(RuntimeError, match="monitor bug"):
        await Renegotiate().handle(context, _violation(old.id))  # type: ignore[arg-type]
    replacement = [lease for lease in backend.by_key.values() if lease is not old]
    assert [lease.state.value for lease in replacement] == ["released"]
    assert old.is_active


@pytest.mark.anyio_backends("asyncio", "trio")
async def test_a_replacement_is_released_when_the_holder_let_go_meanwhile(
    clock: VirtualClock,
) -> None:
    backend = FakeBackend(clock=clock)
    neg = Negotiator([backend], clock=clock)
    old = await neg.acquire(Contract(gpus=1))

    async def release_old_first(offer: object) -> None:  # the holder lets go mid-search
        await old.release()

    backend.on_commit = release_old_first
    switched: list[object] = []

    async def switch(old: object, new: object) -> None:
        switched.append(new)

    context = PolicyContext(
        lease=old,
        budget=RenegotiationBudget(per_hour=3),
        negotiator=neg,
        now=clock.time,
        switch=switch,
    )
    await Renegotiate().handle(context, _violation(old.id))  # type: ignore[arg-type]
    assert switched == []
    assert all(not lease.is_active for lease in backend.by_key.values())


def _slow(lease: Lease) -> object:
    return Sample(sli="latency", value=0.8, at=lease.clock.time())


async def test_a_spent_renegotiation_budget_says_when_in_words(
    clock: VirtualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning said "next allowed at 1795991340.9938266": a raw epoch, for people."""
    backend = FakeBackend(clock=clock)
    neg = Negotiator([backend], clock=clock)
    old = await neg.acquire(Contract(gpus=1))
    budget = RenegotiationBudget(per_hour=1)
    assert budget.spend(clock.time())
    await clock.advance(600)

    async def switch(old: object, new: object) -> None:
        raise AssertionError("no renegotiation is left in the budget")

    context = PolicyContext(lease=old, budget=budget, negotiator=neg, now=clock.time, switch=switch)
    with caplog.at_level("WARNING", logger="aicontract"):
        await Renegotiate().handle(context, _violation(old.id))  # type: ignore[arg-type]
    (message,) = [r.getMessage() for r in caplog.records if "budget spent" in r.getMessage()]
    assert "next allowed in 3000s" in message
    assert str(int(clock.time())) not in message
