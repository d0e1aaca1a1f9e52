"""Ranking that goes beyond the offer's own terms (issue 11): hedged quoting.

With ``Negotiator(hedge=...)`` a quote stops waiting for slow backends once the
hedge has passed and an acceptable offer is in hand; the backends it did not
wait for are listed as rejections.
"""

from __future__ import annotations

import pytest

from aicontract import Contract, Negotiator, VirtualClock
from fakes import FakeBackend, drive

pytestmark = pytest.mark.anyio

CONTRACT = Contract(name="hedged", gpus=1)


async def test_a_hedged_quote_does_not_wait_for_a_hanging_backend() -> None:
    clock = VirtualClock()
    fast = FakeBackend(name="fast", clock=clock)
    slow = FakeBackend(name="slow", clock=clock, quote_hangs=True)
    negotiator = Negotiator([fast, slow], clock=clock, quote_timeout=30, hedge=0.2)
    started = clock.monotonic()
    round_ = await drive(clock, lambda: negotiator.quote(CONTRACT), step=0.1)
    assert clock.monotonic() - started < 1  # not the 30 s the slow backend could take
    assert [o.backend for o in round_.offers] == ["fast"]
    [skipped] = [r for r in round_.rejections if r.backend == "slow"]
    assert skipped.available == "not waited for: other offers were in hand"


async def test_a_hedge_waits_on_while_no_offer_is_in_hand() -> None:
    clock = VirtualClock()
    empty = FakeBackend(name="empty", clock=clock, available=False)
    slow = FakeBackend(name="slow", clock=clock, quote_hangs=True)
    negotiator = Negotiator([empty, slow], clock=clock, quote_timeout=0.5, hedge=0.2)
    round_ = await drive(clock, lambda: negotiator.quote(CONTRACT), step=0.1)
    assert round_.offers == ()
    # the slow backend had its full quote_timeout: nothing else was on the table
    assert any(
        r.backend == "slow" and r.wanted == "an answer within 0.5s" for r in round_.rejections
    )
