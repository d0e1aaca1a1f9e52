"""Writers waiting for the ledger's lock take turns: none waits out its whole lock_wait.

SQLite's own busy handler sleeps longer the longer a writer has waited (1 ms at
first, 100 ms later), so writers that keep coming back take the lock in between
and a writer that has waited a while may keep missing it until its ``lock_wait``
runs out: a failed grant or write, or a release left to expire, while the
ledger was never stuck. Six threads, each with its own event loop and its own
backend (its own connections, as six processes would have), hammer one ledger
with grants, short write transactions and releases; with a lock_wait far above
what any one transaction holds the lock for, not one of their writes may give up.
(On SQLite's busy handler this fails most runs; nothing here times anything.)
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

import anyio
import pytest

import aicontract as ac
from aicontract.backends.local import LocalBackend

THREADS = 6
SECONDS = 3.0
LOCK_WAIT = 0.2
"""Hundreds of times what one of these transactions holds the lock for."""
WRITES = 20
"""Write transactions per lease, back to back (as many holders renewing would be)."""


@pytest.fixture
def roomy_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host with GPUs to spare (capacity is not what this is about)."""
    inventory = tmp_path / "inventory.yaml"
    devices = ", ".join(["{model: H100, memory: 80GiB}"] * THREADS * 4)
    inventory.write_text(f"cpus: 16\nmemory: 64GiB\ngpus: [{devices}]\n")
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_waiting_writers_take_turns(roomy_host: Path, caplog: pytest.LogCaptureFixture) -> None:
    failures: list[str] = []
    cycles = [0] * THREADS
    start = threading.Barrier(THREADS)
    contract = ac.Contract(name="turns", gpus=1)

    def hammer(number: int) -> None:
        backend = LocalBackend()
        ledger = backend.ledger
        ledger.lock_wait = LOCK_WAIT

        def touch(conn: sqlite3.Connection, lease_id: str) -> None:
            # A write transaction as a grant runs one: read, then write, then commit.
            with ledger._write(conn):
                (expires,) = conn.execute(
                    "SELECT expires_at FROM leases WHERE id = ?", (lease_id,)
                ).fetchone()
                conn.execute("UPDATE leases SET expires_at = ? WHERE id = ?", (expires, lease_id))

        async def run() -> None:
            end = time.monotonic() + SECONDS
            while time.monotonic() < end:
                try:
                    offer = (await backend.quote(contract)).offers[0]
                    lease = await backend.commit(offer, f"t{number}-{cycles[number]}")
                    for _ in range(WRITES):
                        await ledger.arun(touch, lease.id)
                    await backend.release(lease)
                except ac.AIContractError as exc:
                    failures.append(f"thread {number}: {exc}")
                cycles[number] += 1

        start.wait()
        try:
            anyio.run(run)
        finally:
            anyio.run(backend.aclose)

    with caplog.at_level(logging.WARNING, logger="aicontract.local"):
        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    # A release that gave up is only logged (the lease then waits out its TTL).
    failures += [r.getMessage() for r in caplog.records if "write lock" in r.getMessage()]
    assert all(cycles), f"a thread did nothing: {cycles}"
    assert not failures, f"{len(failures)} writes gave up waiting; first: {failures[0]}"
    check = LocalBackend()
    try:
        assert check.leases() == [], "a lease released is still in the ledger"
    finally:
        anyio.run(check.aclose)
