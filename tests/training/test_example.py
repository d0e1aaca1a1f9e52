"""The training example runs as its docs say, on the CPU: through ``aicontract acquire
examples/contracts/ddp-training.yaml --torchrun -- examples/train_ddp.py``.

It trains, reports its throughput to the lease's monitor (which records it for
the host), finishes, and leaves no lease and no process behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aicontract.backends.local.ledger import Ledger
from procs import live_processes

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed"),
]

EXAMPLES = Path(__file__).parent.parent.parent / "examples"
SCRIPT = EXAMPLES / "train_ddp.py"
CONTRACT = EXAMPLES / "contracts" / "ddp-training.yaml"


def test_the_ddp_example_trains_under_its_lease_and_leaves_nothing(local_env: Path) -> None:
    command = [sys.executable, "-m", "aicontract", "acquire", str(CONTRACT), "--torchrun"]
    done = subprocess.run(
        [*command, "--", str(SCRIPT), "--steps", "6"],
        env=os.environ.copy(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "world: 1 node(s) x 2 process(es)" in done.stderr
    assert "step 6/6" in done.stdout
    assert "trained 6 steps on 2 process(es) (gloo, cpu)" in done.stdout
    assert "replicas agree" in done.stdout
    # The monitor saw rank 0's reports against the contract's throughput objective.
    record = json.loads((local_env / "performance.json").read_text())
    assert record["local/local/-/training"]["throughput"]["count"] >= 1
    assert Ledger.in_dir(local_env).records() == []
    assert live_processes(str(SCRIPT).encode()) == []


def test_the_example_runs_alone_too(tmp_path: Path) -> None:
    # Without a lease or torchrun: a world of one, reports are no-ops.
    env = {k: v for k, v in os.environ.items() if k != "AICONTRACT_REPORT_SOCKET"}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--steps", "2", "--features", "8"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "trained 2 steps on 1 process(es) (gloo, cpu)" in done.stdout
