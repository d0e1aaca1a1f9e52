"""Hostile: a broken policy is blamed on the policy, not on the user's contract.

The policy a platform team publishes (``AICONTRACT_POLICY`` or
``/etc/aicontract/policy.yaml``) is read when a user acquires. If it is invalid,
the user must be told that the policy is, and which file it is — not shown an error
prefixed with their own contract file and a path (``$.tenants...``) that their
contract does not have.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import aicontract
from aicontract import ConfigError, Contract

pytestmark = pytest.mark.anyio

BROKEN = "tenants:\n  default:\n    quotas:\n      gpu_hours_per_day: 99999999999999999999\n"


@pytest.fixture
def broken_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    policy = tmp_path / "policy.yaml"
    policy.write_text(BROKEN)
    monkeypatch.setenv("AICONTRACT_POLICY", str(policy))
    return policy


def test_the_cli_names_the_policy_file_not_the_contract(
    broken_policy: Path, tmp_path: Path
) -> None:
    contract = tmp_path / "mine.yaml"
    contract.write_text("name: mine\nresources:\n  gpus: 1\n")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "aicontract", "acquire", str(contract), "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert str(broken_policy) in result.stderr
    assert "gpu_hours_per_day" in result.stderr
    assert str(contract) not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


async def test_the_api_raises_a_config_error_naming_the_policy(broken_policy: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        await aicontract.acquire(Contract(name="mine", gpus=1))
    assert str(broken_policy) in str(caught.value)
