"""Hostile: a ledger restored from a backup under a running holder.

A careless admin "repairs" the host's ledger: stops nothing, removes the ledger
(and its -wal, -shm) and puts back a copy taken earlier. The copy is a SQLite
file of the same generation (its ``epoch``), so the holders' lock files look
like its own; but it lacks every lease granted since the copy was taken. A
holder that is still running holds its GPUs (until its next renewal notices the
new file). A grant made meanwhile must not hand those GPUs out again: the ledger
refuses while running holders hold locks it has no row for (guarantee 1).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sqlite3
import time
from pathlib import Path

import pytest

import aicontract as ac
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.ledger import LEDGER_FILE


def _holder(env: dict[str, str], ready: str, stop: str) -> None:
    os.environ.update(env)
    import aicontract as ac

    lease = ac.acquire_sync(ac.Contract(name="holder", gpus=2))
    Path(ready).write_text(lease.details["gpus"])
    while not Path(stop).exists():
        time.sleep(0.02)
    ac.release_sync(lease)


def test_a_ledger_restored_from_a_backup_does_not_regrant_a_live_holders_gpus(
    tmp_path: Path, private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICONTRACT_RECORD", "off")
    monkeypatch.setenv("AICONTRACT_LOCAL_TTL", "120")  # no renewal inside this test
    ledger = private_state / LEDGER_FILE
    first = LocalBackend(state_dir=private_state)
    first.ledger.usage()  # the ledger exists, with its epoch, and holds nothing
    backup = tmp_path / "backup.sqlite3"
    with sqlite3.connect(backup) as copy:
        first.ledger.conn.backup(copy)
    first.ledger.close()

    env = {k: v for k, v in os.environ.items() if k.startswith("AICONTRACT_")}
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    holder = mp.get_context("spawn").Process(target=_holder, args=(env, str(ready), str(stop)))
    holder.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and holder.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        held = set(ready.read_text().split(","))
        for suffix in ("-wal", "-shm", ""):
            Path(f"{ledger}{suffix}").unlink(missing_ok=True)
        restored = tmp_path / "restored.sqlite3"
        restored.write_bytes(backup.read_bytes())
        os.replace(restored, ledger)  # the copy from before the holder's grant

        try:
            lease = ac.acquire_sync(ac.Contract(name="after", gpus=ac.GPU(count="1..4")))
        except (ac.NoOffer, ac.CapacityUnavailable, ac.LedgerError):
            return  # refused while the holder runs: what the ledger promises
        granted = set(lease.details["gpus"].split(","))
        ac.release_sync(lease)
        assert not granted & held, f"GPUs {sorted(granted & held)} granted to two live holders"
    finally:
        stop.write_text("")
        holder.join(60)
        if holder.is_alive() and holder.pid is not None:
            os.kill(holder.pid, 9)
            holder.join(5)
