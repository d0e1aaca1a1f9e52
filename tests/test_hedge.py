"""Hedged quoting asked for by the contract (issue 11): ``preferences.hedge: 200ms``.

The contract's hedge wins over the negotiator's ``hedge=`` (its author knows
whether a fast answer is worth more than the best one); the negotiator's is the
default for contracts that do not say.
"""

from __future__ import annotations

import attrs
import pytest

from aicontract import Contract, ContractError, Negotiator, Quote, VirtualClock, loads
from fakes import FakeBackend, drive

pytestmark = pytest.mark.anyio


@attrs.define(eq=False, kw_only=True)
class LateBackend(FakeBackend):
    """Answers its quotes ``delay`` virtual seconds late."""

    delay: float = 2.0

    async def quote(self, contract: Contract) -> Quote:
        await self.clock.sleep(self.delay)
        return await super().quote(contract)


def hedged(hedge: str) -> Contract:
    return Contract(name="hedged", gpus=1, preferences={"hedge": hedge})


async def test_the_contracts_hedge_stops_waiting_for_a_slow_backend() -> None:
    clock = VirtualClock()
    fast = FakeBackend(name="fast", clock=clock)
    slow = FakeBackend(name="slow", clock=clock, quote_hangs=True)
    negotiator = Negotiator([fast, slow], clock=clock, quote_timeout=30)  # no hedge of its own
    started = clock.monotonic()
    round_ = await drive(clock, lambda: negotiator.quote(hedged("200ms")), step=0.1)
    assert clock.monotonic() - started < 1  # not the 30 s the slow backend could take
    assert [o.backend for o in round_.offers] == ["fast"]
    [skipped] = [r for r in round_.rejections if r.backend == "slow"]
    assert skipped.wanted == "an answer within the hedge (0.2s)"


async def test_the_contracts_hedge_wins_over_the_negotiators() -> None:
    clock = VirtualClock()
    fast = FakeBackend(name="fast", clock=clock)
    late = LateBackend(name="late", clock=clock, delay=2.0)
    negotiator = Negotiator([fast, late], clock=clock, quote_timeout=30, hedge=0.2)
    # The negotiator alone would not wait for the late backend ...
    alone = await drive(clock, lambda: negotiator.quote(Contract(name="plain", gpus=1)), step=0.1)
    assert [o.backend for o in alone.offers] == ["fast"]
    # ... a contract that hedges at 5 s does, and sees its offer.
    round_ = await drive(clock, lambda: negotiator.quote(hedged("5s")), step=0.1)
    assert sorted(o.backend for o in round_.offers) == ["fast", "late"]


async def test_a_hedge_in_a_contract_file() -> None:
    contract = loads("name: svc\npreferences:\n  hedge: 200ms\n", format="yaml")
    assert contract.preferences.hedge is not None
    assert contract.preferences.hedge.seconds == pytest.approx(0.2)
    with pytest.raises(ContractError, match=r"preferences\.hedge"):
        loads("name: svc\npreferences:\n  hedge: 200\n", format="yaml")
    with pytest.raises(ContractError, match="up to 10m"):
        hedged("1h")
