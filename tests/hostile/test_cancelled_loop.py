"""Hostile: the contract loop cancelled at any point leaves nothing behind.

A task is cancelled wherever its cancel scope's deadline falls: before
``async with lease`` is entered, while its heartbeat and monitor are starting,
in the middle of a make-before-break renegotiation. Every lease of the chain
must be released, every workload stopped, and the caller's own cancel scopes
must still work (asyncio keeps a stack of them per task: a scope left in the
wrong order breaks the caller with a ``RuntimeError``).
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

import anyio
import pytest

import aicontract
from aicontract import Contract, Negotiator, Objective, Terms, Workload
from aicontract.backends.local import LocalBackend
from procs import live_processes

pytestmark = [pytest.mark.anyio, pytest.mark.anyio_backends("asyncio", "trio")]

P99 = Objective(sli="latency_p99", op="<=", target="100ms", window="1m")


async def test_async_with_entered_under_a_cancelled_scope_releases_the_lease(
    private_state: Path,
) -> None:
    """Entering ``async with lease`` with the task already cancelled (Ctrl-C or a deadline
    that fell during ``acquire``): the lease is released, the cancellation is the caller's
    own scope's, and the caller's code after the scope runs."""
    backend = LocalBackend(state_dir=private_state)
    async with backend:
        lease = await aicontract.acquire(
            Contract(name="late", cpus=1), negotiator=Negotiator([backend])
        )
        entered = False
        with anyio.CancelScope() as scope:
            scope.cancel()
            async with lease:
                entered = True
        assert scope.cancelled_caught
        assert not entered
        assert lease.state == aicontract.LeaseState.RELEASED
        assert backend.ledger.records() == []


async def test_a_renegotiating_chain_cancelled_anywhere_leaves_nothing(
    private_state: Path,
) -> None:
    """A chain renegotiating as fast as it can (every latency far too slow), cancelled at
    seeded random moments: after each, the ledger is empty and no workload runs."""
    marker = f"cancelled-loop-{private_state}"
    command = (sys.executable, "-c", "import time; time.sleep(600)", marker)
    contract = Contract(
        name="served",
        cpus=1,
        objectives=[P99],
        terms=Terms(drain="0s", stop_grace="1s", on_violation="renegotiate"),
        workload=Workload(kind="inference", command=command),
    )
    rng = random.Random(11)
    backend = LocalBackend(state_dir=private_state)
    async with backend:
        for _ in range(8):
            with anyio.move_on_after(rng.uniform(0.0, 1.0)):
                handle = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
                async with handle:
                    while True:
                        handle.report(latency=0.9)
                        await anyio.sleep(0.01)
            assert backend.ledger.records() == []
            deadline = time.monotonic() + 30  # a bound for a broken run, not a timing claim
            while live_processes(marker.encode()) and time.monotonic() < deadline:
                await anyio.sleep(0.05)
            assert live_processes(marker.encode()) == []
