"""Hostile tests (attacks that once worked, and guards of what held).

Every path the SDK reads points into ``tmp_path``.

Each test gets its own state dir (ledger and record), a made-up host with four
H100s, no policy and an empty template directory of its own; the template
catalog that a process reads is forgotten before and after each test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

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
def private_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private state dir, inventory and template dir; no policy."""
    from aicontract.governance import policy

    state = tmp_path / "state"
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    (tmp_path / "templates").mkdir()
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(state))
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_POLICY", "off")
    monkeypatch.setenv("AICONTRACT_TEMPLATES", str(tmp_path / "templates"))
    monkeypatch.setenv("COLUMNS", "250")
    for name in ("AICONTRACT_RECORD", "AICONTRACT_JURISDICTION", "AICONTRACT_BACKENDS"):
        monkeypatch.delenv(name, raising=False)
    policy._forget_catalog()
    yield state
    policy._forget_catalog()
