"""Hostile: releases, renewals and extensions of one lease racing each other.

A lease's devices may go back to the ledger only once its workload has stopped
(guarantee 1: never used by two at once). A second ``release()`` that starts
while the first is still giving the workload its grace period — the heartbeat
ending the lease at its duration while the holder releases it, a monitor's
``release`` policy, two threads — must not free the devices early.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import attrs
import pytest

import aicontract
from aicontract import Contract, Lease, Negotiator, Terms, VirtualClock, Workload
from aicontract.backends.local import LocalBackend
from fakes import FakeBackend
from procs import live_processes

pytestmark = [pytest.mark.anyio, pytest.mark.anyio_backends("asyncio", "trio")]

# Ignores SIGTERM (so it lives out its grace period), then says it is ready.
STUBBORN = """\
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(sys.argv[1], "w").close()
time.sleep(600)
"""


async def _until(predicate: object, what: str) -> None:
    assert callable(predicate)
    with anyio.fail_after(60):  # a bound for a broken run, not a timing claim
        while not predicate():
            await anyio.sleep(0.02)


async def test_two_releases_at_once_free_the_devices_only_after_the_work_stops(
    private_state: Path, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    marker = f"release-race-{tmp_path}"
    contract = Contract(
        name="stubborn",
        gpus=1,
        terms=Terms(stop_grace="2s"),
        workload=Workload(command=(sys.executable, "-c", STUBBORN, str(ready), marker)),
    )
    backend = LocalBackend(state_dir=private_state)
    async with backend:
        lease = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
        await _until(ready.exists, "the workload to ignore SIGTERM")
        seen: list[list[int]] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(lease.release)
            tg.start_soon(lease.release)
            await _until(lambda: not backend.ledger.records(), "the lease to be freed")
            # The moment its devices are free again, nothing of its work may run.
            seen.append(live_processes(marker.encode()))
        assert seen == [[]], f"the lease was freed while its workload ran: {seen}"
        deadline = time.monotonic() + 30
        while live_processes(marker.encode()) and time.monotonic() < deadline:
            await anyio.sleep(0.05)
        assert live_processes(marker.encode()) == []


@attrs.define(eq=False)
class _SlowRenewals(FakeBackend):
    """Renewals that take a while (a cloud API, a busy API server): each waits for ``go``."""

    go: anyio.Event = attrs.field(factory=anyio.Event)
    waiting: int = 0

    async def renew(self, lease: Lease) -> float:
        self.waiting += 1
        await self.go.wait()
        return await super().renew(lease)


async def test_extend_while_the_heartbeat_renews_extends(clock: VirtualClock) -> None:
    """``extend()`` called while a renewal is on its way raised ``LeaseStateError``
    ("renewing" cannot become "renewing"), having already moved the term — an error for
    an extension that stood. The renewals take turns instead, and both succeed."""
    backend = _SlowRenewals(clock=clock)
    lease = await Negotiator([backend], clock=clock).acquire(
        Contract(name="long", gpus=1, terms=Terms(duration="6h"))
    )
    ends_at = lease.ends_at
    assert ends_at is not None
    async with anyio.create_task_group() as tg:
        tg.start_soon(lease.renew)  # the heartbeat's renewal, slow to answer
        await _until(lambda: backend.waiting == 1, "the first renewal to be on its way")
        tg.start_soon(lease.extend, "1h")
        await anyio.sleep(0.05)
        backend.go.set()
    assert lease.is_active
    assert lease.ends_at == ends_at + 3600
    assert len(backend.renewals) == 2
    await lease.release()
