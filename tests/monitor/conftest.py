"""Fixtures for the monitor's tests: a fake backend with two GPUs that never over-grants."""

from __future__ import annotations

import pytest

from aicontract import Negotiator, VirtualClock
from fakes import FakeBackend


@pytest.fixture
def fake(clock: VirtualClock) -> FakeBackend:
    return FakeBackend(clock=clock, capacity=2, ttl=3600.0)


@pytest.fixture
def negotiator(fake: FakeBackend, clock: VirtualClock) -> Negotiator:
    return Negotiator(backends=[fake], clock=clock)
