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
import pytest

import aicontract
from aicontract import Contract, Negotiator, Terms, Workload
from aicontract.backends.local import LocalBackend
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
