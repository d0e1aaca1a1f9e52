"""The replacement leak, on the real local backend (issue 11: 6 of 6 runs leaked).

A monitored lease with a workload process is renegotiated; leaving ``async with``
must leave nothing behind: no lease in the ledger, no workload process alive.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

import aicontract
from aicontract import Contract, Negotiator, Objective, Workload
from aicontract.backends.local import LocalBackend

pytestmark = pytest.mark.anyio

P99 = Objective(sli="latency_p99", op="<=", target="100ms", window="1m")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose: it runs nothing.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return True
    return state != "Z"


async def test_renegotiated_workloads_all_stop_when_the_holder_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("cpus: 4\nmemory: 8GiB\n")
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)
    command = (sys.executable, "-c", "import time; time.sleep(120)")
    contract = Contract(
        name="served",
        cpus=1,
        objectives=[P99],
        on_violation="renegotiate",
        workload=Workload(kind="inference", command=command),
    )
    backend = LocalBackend(state_dir=tmp_path / "state")
    pids: list[int] = []
    async with backend:
        handle = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
        async with handle:
            pids.append(int(handle.details["pid"]))
            with anyio.fail_after(20):
                while handle.current is handle:
                    handle.report(latency=0.9)  # every request far too slow
                    await anyio.sleep(0.02)
            replacement = handle.current
            pids.append(int(replacement.details["pid"]))
            assert replacement.is_active
        assert backend.ledger.records() == []
        with anyio.fail_after(10):
            while any(alive(pid) for pid in pids):
                await anyio.sleep(0.05)
