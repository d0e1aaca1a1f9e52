"""``aicontract acquire --torchrun`` refuses clearly, before leasing anything, when the
run cannot start: no script, a contract that is not a training run, no PyTorch, or a
lease without a world (these need no PyTorch themselves).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from aicontract import register_backend, unregister_backend
from aicontract.backends.local.ledger import Ledger
from aicontract.cli import main
from aicontract.clock import system_clock
from fakes import FakeBackend


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def torch_present(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI believe PyTorch is installed (these tests never start it)."""
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        if name == "torch":
            return importlib.machinery.ModuleSpec("torch", None)
        return real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def contract(tmp_path: Path) -> Path:
    path = tmp_path / "ddp.yaml"
    path.write_text("name: ddp\nresources: {cpus: 1}\nworkload: {kind: training}\n")
    return path


def test_torchrun_needs_a_script(local_env: Path, contract: Path, torch_present: None) -> None:
    result = run("acquire", str(contract), "--torchrun")
    assert result.exit_code == 2
    assert "--torchrun needs a training script after --" in result.stderr
    assert Ledger.in_dir(local_env).records() == []


@pytest.mark.parametrize("interpreter", ["python", "python3", "/usr/bin/python3.11"])
def test_torchrun_wants_the_script_not_the_interpreter(
    local_env: Path, contract: Path, torch_present: None, interpreter: str
) -> None:
    result = run("acquire", str(contract), "--torchrun", "--", interpreter, "train.py")
    assert result.exit_code == 2
    assert "--torchrun runs a Python script itself" in result.stderr
    assert Ledger.in_dir(local_env).records() == []


def test_torchrun_refuses_a_contract_that_is_not_training(
    local_env: Path, tmp_path: Path, torch_present: None
) -> None:
    serving = tmp_path / "serve.yaml"
    serving.write_text("name: serve\nresources: {cpus: 1}\nworkload: {kind: inference}\n")
    result = run("acquire", str(serving), "--torchrun", "--", "train.py")
    assert result.exit_code == 2
    assert "$.workload.kind" in result.stderr
    assert "inference" in result.stderr
    assert "allowed: training, or no workload section" in result.stderr
    assert str(serving) in result.stderr


def test_torchrun_without_pytorch_says_so_before_leasing(
    local_env: Path, contract: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "torch" else real(name, *args),
    )
    result = run("acquire", str(contract), "--torchrun", "--", "train.py")
    assert result.exit_code == 2
    assert "--torchrun needs PyTorch" in result.stderr
    assert "leased" not in result.stderr
    assert Ledger.in_dir(local_env).records() == []


@pytest.fixture
def worldless() -> Iterator[None]:
    """A backend that grants leases but no training world (as most do today)."""
    register_backend("worldless", lambda: FakeBackend(name="worldless", clock=system_clock))
    yield
    unregister_backend("worldless")


def test_torchrun_on_a_lease_without_a_world_is_an_error(
    local_env: Path, contract: Path, torch_present: None, worldless: None
) -> None:
    result = run("acquire", str(contract), "-b", "worldless", "--torchrun", "--", "train.py")
    assert result.exit_code == 2
    assert "has no training world" in result.stderr
    assert "worldless" in result.stderr
