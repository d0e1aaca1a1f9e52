"""Hostile: a renegotiation continues the contract's term; it does not start it again.

``terms.duration`` is how long the work needs, and ``terms.budget`` what the whole
contract may spend, "every lease, renewal, extension and renegotiation it leads to".
A replacement committed 4 h into a 6 h contract serves the 2 h left: judged as a fresh
6 h run, it was refused by a budget that had room for the rest of the run, and, once
granted, it held the devices 6 h more (10 h in all).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import aicontract as ac
from aicontract.governance import Record
from aicontract.governance.enforce import Governance
from aicontract.monitor.policies import find_replacement
from aicontract.negotiate import Negotiator
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

HOUR = 3600.0


def _setup(tmp_path: Path) -> tuple[Negotiator, FakeBackend]:
    fake = FakeBackend(ttl=100 * HOUR, offers=[{"price": ac.Money("2 USD/h")}])
    gov = Governance(record=Record(tmp_path / "record.jsonl"), clock=fake.clock)
    return Negotiator([fake], clock=fake.clock, governance=gov), fake


async def test_a_replacement_is_judged_on_the_term_left(tmp_path: Path) -> None:
    negotiator, fake = _setup(tmp_path)
    contract = ac.Contract(name="run", gpus=1, terms={"duration": "6h", "budget": "14 USD"})
    first = await negotiator.acquire(contract)  # 2 USD/h x 6 h = 12 of 14 USD
    await fake.clock.advance(4 * HOUR)
    await first.renew()  # 8 USD spent, 2 h left: the rest costs 4 USD, 12 in all
    second = await find_replacement(negotiator, first)
    await first.release()
    assert second.is_active
    # The chain ends when the contract's term does, not 6 h after the replacement.
    assert second.ends_at == pytest.approx(first.ends_at)
    await second.release()


async def test_a_replacement_keeps_an_extended_term(tmp_path: Path) -> None:
    negotiator, fake = _setup(tmp_path)
    contract = ac.Contract(name="run", gpus=1, terms={"duration": "6h"})
    first = await negotiator.acquire(contract)
    await first.extend("1h")
    await fake.clock.advance(5 * HOUR)
    second = await find_replacement(negotiator, first)
    await first.release()
    assert second.ends_at == pytest.approx(first.ends_at)  # 7 h after the first began
    await second.release()
