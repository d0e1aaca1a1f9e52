"""A ledger call's wait is bounded by its ``wait`` whoever holds the lock: SQLite's, or
the turn of another of this process's threads.

Every call of one process goes through one connection, so a call waits for another
thread's call first (that one may itself be waiting out its lock_wait for another
process) and only then for SQLite. The commit's ``start_by`` is passed down as that
``wait``, and a deadline cannot interrupt a thread: an unbounded wait for the turn
blocks a commit (or a release, shielded) for as long as the other call takes, and
each further caller waits for all those before it. Nothing here times anything: the
other thread's turn is held until the call under test has answered.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from aicontract.backends.local.ledger import Ledger
from aicontract.errors import LedgerError


def test_a_call_waiting_for_another_threads_turn_gives_up_after_its_wait(
    tmp_path: Path,
) -> None:
    ledger = Ledger.in_dir(tmp_path)
    ledger.lock_wait = 30.0
    ledger.run(lambda conn: conn.execute("SELECT 1").fetchone())  # opened
    outcome: list[BaseException | object] = []

    def call() -> None:
        try:
            outcome.append(ledger.run_fair(lambda conn: conn.execute("SELECT 1"), wait=0.2))
        except BaseException as exc:
            outcome.append(exc)

    with ledger._mutex:  # another thread's call, waiting out another process's lock
        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(10.0)  # fifty times its wait; the turn is still held meanwhile
        answered = not caller.is_alive()
    caller.join()
    assert answered, "run_fair waited for the other thread's turn past its wait"
    (result,) = outcome
    assert isinstance(result, LedgerError)
    assert "write lock" in result.problem
    ledger.close()


def test_the_wait_for_the_turn_counts_against_the_wait_for_sqlite(tmp_path: Path) -> None:
    """Once the turn comes, what is left of ``wait`` is all SQLite's lock may take."""
    ledger = Ledger.in_dir(tmp_path)
    ledger.run(lambda conn: conn.execute("SELECT 1").fetchone())
    other = sqlite3.connect(ledger.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process's writer, for good
    try:
        with pytest.raises(LedgerError, match="write lock"):
            ledger.run_fair(lambda conn: conn.execute("BEGIN IMMEDIATE"), wait=0.05)
    finally:
        other.execute("ROLLBACK")
        other.close()
        ledger.close()
