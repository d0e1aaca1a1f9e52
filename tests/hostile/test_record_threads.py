"""Hostile: threads of one process, each with its own event loop, acquiring at once.

A thread pool whose workers each run ``anyio.run(...)`` / ``asyncio.run(...)``
around :func:`aicontract.acquire` is ordinary Python. Every negotiator in the
process shares one :class:`Record` per path (``Record.shared``): one open file
and one ``flock``, and a lock held on an open file is held for every thread that
uses it, so it serialises nothing between them. The record must stay one valid
chain, and a quota must hold between threads as it does between processes.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest

import aicontract as ac
from aicontract.governance import Record
from aicontract.governance.record import verify

THREADS = 6
ROUNDS = 30


def _in_threads(work: object) -> list[BaseException]:
    """Run ``work`` (async, no arguments) in THREADS threads at once, one loop each."""
    start = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            start.wait()
            anyio.run(work)  # type: ignore[arg-type]
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return errors


def test_the_records_lock_keeps_out_another_thread(tmp_path: Path) -> None:
    """What every negotiator in the process appends through is one Record
    (``Record.shared``). While one thread holds its lock (a quota's check-and-admit),
    an append from another thread must wait; else both read the same last entry and
    write the same number twice (the chain breaks, verify calls it tampered) and
    two admissions race past one quota."""
    record = Record.shared(tmp_path / "record.jsonl")
    record.write("grant", 0.0, {"lease": "first"})
    appended = threading.Event()

    def append() -> None:
        record.write("grant", 1.0, {"lease": "other-thread"})
        appended.set()

    other = threading.Thread(target=append)
    with record.locked():
        other.start()
        got_in = appended.wait(5)  # a correct lock keeps it out for as long as it is held
        record.write("grant", 2.0, {"lease": "holder"}, locked=True)
    other.join(60)
    assert not got_in, "another thread appended while this one held the record's lock"
    outcome = verify(record.path)
    assert outcome.ok, outcome.problem


def test_a_quota_holds_between_threads_with_their_own_loops(
    tmp_path: Path, private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("tenants:\n  t: {quotas: {gpus: 1}}\n")
    monkeypatch.setenv("AICONTRACT_POLICY", str(policy))
    held: list[int] = []
    most: list[int] = [0]
    lock = threading.Lock()

    async def work() -> None:
        for _ in range(ROUNDS):
            try:
                lease = await ac.acquire(ac.Contract(name="q", tenant="t", gpus=1))
            except (ac.PolicyViolation, ac.NoOffer):
                await anyio.sleep(0)
                continue
            with lock:
                held.append(1)
                most[0] = max(most[0], len(held))
            await anyio.sleep(0.01)
            with lock:
                held.pop()
            await lease.release()

    assert _in_threads(work) == []
    assert most[0] == 1, f"tenant t (quota: 1 GPU) held {most[0]} GPUs at once"
