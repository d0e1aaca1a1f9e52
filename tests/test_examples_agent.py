"""examples/agent/ runs as a user would run it, survives a renegotiation, leaves nothing.

The agent leases inference capacity running an OpenAI-compatible server under a
``latency_p99 <= 100ms`` objective and calls it with the ``openai`` client
through ``lease.current.endpoints``. The server degrades after a few requests,
the lease is renegotiated make-before-break, and no request may fail. After it
exits: no lease in the ledger, no server process alive.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import aicontract
from aicontract.backends.local import LocalBackend
from procs import live_processes

pytest.importorskip("openai")

AGENT = Path(__file__).parent.parent / "examples" / "agent" / "agent.py"
SRC = str(Path(aicontract.__file__).resolve().parent.parent)


def test_the_agent_survives_a_renegotiation_without_a_failed_request(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("cpus: 4\nmemory: 8GiB\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AICONTRACT_")}
    env.update(
        AICONTRACT_INVENTORY=str(inventory),
        AICONTRACT_STATE_DIR=str(tmp_path / "state"),
        PYTHONPATH=SRC,
    )
    tag = f"agent-example-{uuid.uuid4().hex}"
    try:
        done = subprocess.run(
            [sys.executable, str(AGENT), "--tag", tag, "--timeout", "120"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        deadline = time.monotonic() + 15  # bounded: servers get their grace to stop
        while live_processes(tag.encode()) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "renegotiated:" in done.stdout
    assert ", 0 failed, answered by 2 servers, 1 renegotiations" in done.stdout
    assert LocalBackend(state_dir=tmp_path / "state").leases() == []
    assert live_processes(tag.encode()) == []
