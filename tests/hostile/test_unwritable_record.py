"""Hostile: the record cannot take the grant (a full disk, a path that is no directory).

The record is the proof of every grant (guarantee 8), so a grant it cannot record is
an error for the caller. But the backend had already committed it: the lease must be
given back, not left held by nobody — with its devices (and its workload, if it
started one) taken until its TTL ran out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

import aicontract
from aicontract import AIContractError, Contract, Negotiator, Workload
from aicontract.backends.local import LocalBackend
from procs import live_processes

pytestmark = pytest.mark.anyio


async def test_a_grant_the_record_cannot_take_is_given_back(
    private_state: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_dir = tmp_path / "not-a-dir"
    not_a_dir.write_text("")
    monkeypatch.setenv("AICONTRACT_RECORD", str(not_a_dir / "record.jsonl"))
    marker = f"unrecorded-{tmp_path}"
    contract = Contract(
        name="unrecorded",
        gpus=1,
        workload=Workload(command=(sys.executable, "-c", "import time; time.sleep(600)", marker)),
    )
    backend = LocalBackend(state_dir=private_state)
    async with backend:
        with pytest.raises(AIContractError, match="record"):
            await aicontract.acquire(contract, negotiator=Negotiator([backend]))
        assert backend.ledger.records() == []
    deadline = time.monotonic() + 30  # a bound for a broken run, not a timing claim
    while live_processes(marker.encode()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_processes(marker.encode()) == []
