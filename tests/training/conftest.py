"""Training leases' made-up host (``local_env`` and ``backend`` are in the root conftest).

The inventory is a file (``AICONTRACT_INVENTORY``), so every machine sees the
same two GPUs and four CPUs; the ledger is real SQLite in ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

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
def inventory_file(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return path
