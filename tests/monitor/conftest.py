"""Fixtures for the monitor's tests: the anyio backend, a virtual clock, a fake backend."""

from __future__ import annotations

import pytest
from monitor_support import FakeBackend

from aicontract.clock import VirtualClock
from aicontract.negotiate import Negotiator


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture
def fake(clock: VirtualClock) -> FakeBackend:
    return FakeBackend(clock)


@pytest.fixture
def negotiator(fake: FakeBackend, clock: VirtualClock) -> Negotiator:
    return Negotiator(backends=[fake], clock=clock)
