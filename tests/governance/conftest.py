"""Fixtures for governance: a private state dir, record and template catalog per test.

Nothing here reads the user's own record, policy or templates: every path the
governance code looks at is pointed into ``tmp_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# tests/fakes.py lives one folder up; tests/ is not a package.
_TESTS = str(Path(__file__).resolve().parent.parent)
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)

INVENTORY = """\
cpus: 8
memory: 64GiB
gpus:
  - {model: H100, memory: 80GiB}
  - {model: H100, memory: 80GiB}
  - {model: H100, memory: 80GiB}
  - {model: H100, memory: 80GiB}
"""


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private state dir (record and ledger), no policy, no user templates."""
    state = tmp_path / "state"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(state))
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_POLICY", "off")
    monkeypatch.setenv("AICONTRACT_TEMPLATES", str(tmp_path / "templates"))
    monkeypatch.delenv("AICONTRACT_RECORD", raising=False)
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)
    monkeypatch.delenv("AICONTRACT_BACKENDS", raising=False)
    return state
