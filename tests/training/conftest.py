"""Fixtures for training leases: a made-up host with GPUs, a private ledger, a backend.

The inventory is a file (``AICONTRACT_INVENTORY``), so every machine sees the
same two GPUs and four CPUs; the ledger is real SQLite in ``tmp_path``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aicontract.backends.local import LocalBackend

INVENTORY = """\
cpus: 4
memory: 16GiB
numa:
  - {id: 0, cpus: "0-3", memory: 16GiB}
gpus:
  - {model: NVIDIA L4, memory: 24GiB, compute_capability: "8.9", numa: 0}
  - {model: NVIDIA L4, memory: 24GiB, compute_capability: "8.9", numa: 0}
"""


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point library and CLI at the fake host and a private ledger; return the state dir."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    state = tmp_path / "state"
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(state))
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)
    monkeypatch.delenv("AICONTRACT_BACKENDS", raising=False)
    return state


@pytest.fixture
def backend(local_env: Path) -> Iterator[LocalBackend]:
    local = LocalBackend()
    yield local
    if local._ledger is not None:
        local._ledger.close()
