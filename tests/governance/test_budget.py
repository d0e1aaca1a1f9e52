"""Whole-run budgets: one contract's leases, renewals and renegotiations share one budget."""

from __future__ import annotations

from pathlib import Path

import pytest

import aicontract as ac
from aicontract.governance import Record, verify
from aicontract.governance.enforce import Governance
from aicontract.monitor.policies import find_replacement
from aicontract.negotiate import Negotiator
from fakes import FakeBackend

HOUR = 3600.0


def _setup(tmp_path: Path, price: str = "2 USD/h") -> tuple[Negotiator, FakeBackend, Record]:
    fake = FakeBackend(ttl=100 * HOUR, offers=[{"price": ac.Money(price)}])
    record = Record(tmp_path / "record.jsonl")
    gov = Governance(record=record, clock=fake.clock)
    return Negotiator([fake], clock=fake.clock, governance=gov), fake, record


@pytest.mark.anyio
async def test_offers_that_cannot_finish_within_the_budget_are_refused(tmp_path: Path) -> None:
    negotiator, _, _ = _setup(tmp_path)
    contract = ac.Contract(name="run", gpus=1, terms={"duration": "6h", "budget": "10 USD"})
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(contract)
    refusal = info.value.refusals[0]
    assert refusal.rule == "terms.budget"
    assert "2 USD/h x 6h = 12.00 USD, but only 10.00 USD of the budget is left" in refusal.message
    fits = contract.with_(terms={"duration": "5h", "budget": "10 USD"})
    lease = await negotiator.acquire(fits)
    await lease.release()


@pytest.mark.anyio
async def test_budget_exhausted_across_a_renegotiation_releases(tmp_path: Path) -> None:
    negotiator, fake, record = _setup(tmp_path)
    contract = ac.Contract(name="run", gpus=1, terms={"budget": "10 USD", "on_budget": "release"})
    first = await negotiator.acquire(contract)
    await fake.clock.advance(3 * HOUR)
    await first.renew()  # 6 USD spent: past 50%
    second = await find_replacement(negotiator, first)  # a renegotiation: same budget
    await first.release()
    await fake.clock.advance(1 * HOUR)
    await second.renew()  # 6 + 2 = 8 USD: past 80%
    assert second.is_active
    await fake.clock.advance(1.5 * HOUR)
    with pytest.raises(ac.LeaseLost, match="budget spent"):
        await second.renew()  # 6 + 5 = 11 USD: spent, and the terms say release
    assert second.state == ac.LeaseState.REVOKED
    entries = list(record.entries())
    assert [e["threshold"] for e in entries if e["kind"] == "budget"] == [50, 80, 100]
    end = [e for e in entries if e["kind"] == "end" and e["lease"] == second.id]
    assert end[0]["state"] == "revoked"
    with pytest.raises(ac.PolicyViolation, match="the budget is spent"):
        await negotiator.acquire(contract)
    assert verify(record.path).ok


@pytest.mark.anyio
async def test_notify_keeps_the_lease(tmp_path: Path) -> None:
    negotiator, fake, record = _setup(tmp_path)
    contract = ac.Contract(name="run", gpus=1, terms={"budget": "1 USD"})
    lease = await negotiator.acquire(contract)
    await fake.clock.advance(HOUR)
    await lease.renew()
    assert lease.is_active
    assert [e["threshold"] for e in record.entries() if e["kind"] == "budget"] == [50, 80, 100]
    await lease.release()


def test_budget_is_validated() -> None:
    with pytest.raises(ac.ContractError, match="is not a sum of money"):
        ac.Contract(terms={"budget": "lots"})
    with pytest.raises(ac.ContractError, match="on_budget"):
        ac.Contract(terms={"on_budget": "panic"})


@pytest.mark.anyio
async def test_violations_and_renegotiations_are_recorded_once(tmp_path: Path) -> None:
    from aicontract.monitor.objectives import Violation

    negotiator, fake, record = _setup(tmp_path)
    first = await negotiator.acquire(ac.Contract(name="svc", gpus=1))

    def violation(lease: ac.Lease) -> Violation:
        now = fake.clock.time()
        return Violation(
            lease_id=lease.id,
            objective=None,
            observed=None,
            window=60.0,
            since=now,
            at=now,
            severity="critical",
            reason="node lost",
        )

    first.deliver_violation(violation(first))
    second = await find_replacement(negotiator, first)
    first.hand_over(second)
    await first.release(successors=False)  # as the monitor retires a replaced lease
    second.deliver_violation(violation(second))
    entries = list(record.entries())
    kinds = [(e["kind"], e.get("lease")) for e in entries if e["kind"] != "grant"]
    assert kinds == [
        ("violation", first.id),
        ("renegotiation", first.id),
        ("end", first.id),
        ("violation", second.id),
    ]
    assert next(e for e in entries if e["kind"] == "end")["replaced_by"] == second.id
    await second.release()
