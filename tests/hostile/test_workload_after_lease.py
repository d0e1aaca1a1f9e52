"""Hostile: a workload must never start on a lease that has already ended.

``LocalBackend.run(lease, command)`` is the public way to run work bound to a
lease (the CLI's ``acquire -- CMD`` and the training docs use it). A lease past
its expiry that nobody has reclaimed yet is still a row in the ledger, and a
lease another process is releasing is a row marked as stopping: neither is a
lease any more (its renewal is refused), so no work may start on it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import anyio
import pytest

from aicontract import Contract, LeaseLost, VirtualClock
from aicontract.backends.local import LocalBackend
from procs import live_processes

pytestmark = pytest.mark.anyio


def _stopped(marker: str) -> bool:
    deadline = time.monotonic() + 30  # a bound for a broken run, not a timing claim
    while live_processes(marker.encode()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not live_processes(marker.encode())


async def test_no_workload_starts_on_an_expired_lease(private_state: Path) -> None:
    """The holder stopped renewing (frozen, or its loop blocked) and its lease expired;
    before anyone reclaimed it, ``run`` started the command on it anyway."""
    clock = VirtualClock()
    backend = LocalBackend(state_dir=private_state, clock=clock, ttl=30.0)
    marker = f"after-expiry-{private_state}"
    async with backend:
        contract = Contract(name="late", gpus=1)
        offer = (await backend.quote(contract)).offers[0]
        lease = await backend.commit(offer, "late-key")
        clock.now += 31.0  # past its expiry: no heartbeat ran
        try:
            with pytest.raises(LeaseLost):
                await backend.run(
                    lease, [sys.executable, "-c", "import time; time.sleep(600)", marker]
                )
        finally:
            await backend.release(lease)
        assert _stopped(marker)


async def test_no_workload_starts_on_a_lease_being_released_elsewhere(
    private_state: Path,
) -> None:
    """A lease another process has marked as stopping (``aicontract release ID`` while
    its work runs) is ending: a second command must not start on it."""
    backend = LocalBackend(state_dir=private_state)
    marker = f"while-stopping-{private_state}"
    async with backend:
        offer = (await backend.quote(Contract(name="ending", gpus=1))).offers[0]
        lease = await backend.commit(offer, "ending-key")
        ledger = backend.ledger

        def mark(conn: object) -> None:
            conn.execute(  # type: ignore[attr-defined]
                "UPDATE leases SET stopping_since = ? WHERE id = ?", (time.time(), lease.id)
            )

        ledger.run(mark)
        try:
            with pytest.raises(LeaseLost):
                await backend.run(
                    lease, [sys.executable, "-c", "import time; time.sleep(600)", marker]
                )
        finally:
            await backend.release(lease)
        assert _stopped(marker)
        await anyio.lowlevel.checkpoint()
