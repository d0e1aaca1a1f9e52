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
from aicontract import AIContractError, Contract, Negotiator, Offer, Workload
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


async def test_a_slow_commit_whose_readmission_cannot_be_recorded_is_given_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit that outlives its quota admission is admitted again before it counts;
    if that second admission fails otherwise than by a refusal (the record cannot be
    written), the lease the backend committed must go back too, as it does when the
    policy refuses it."""
    from aicontract import ConfigError, VirtualClock
    from aicontract.governance import Record
    from aicontract.governance.enforce import Governance
    from aicontract.governance.policy import loads_policy
    from fakes import FakeBackend

    clock = VirtualClock()
    backend = FakeBackend(clock=clock)
    record = Record(tmp_path / "record.jsonl")
    policy = loads_policy(b"tenants:\n  default:\n    quotas: {gpus: 4}\n", "yaml")
    governance = Governance(policy=policy, record=record, clock=clock)
    broken = False
    write = Record.write

    def failing_write(self: Record, *args: object, **kwargs: object) -> tuple[int, int]:
        if broken:
            raise ConfigError(f"cannot write the record {self.path}: No space left on device")
        return write(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Record, "write", failing_write)

    async def slow(offer: Offer) -> None:
        nonlocal broken
        clock.now += 3600.0  # the commit outlived its admission (120 s + start_by)
        broken = True  # and the record can no longer take anything

    backend.on_commit = slow
    negotiator = Negotiator([backend], clock=clock, governance=governance)
    with pytest.raises(ConfigError):
        await negotiator.acquire(Contract(name="slow", gpus=1))
    assert [lease.id for lease in backend.leases.values() if lease.is_active] == []
