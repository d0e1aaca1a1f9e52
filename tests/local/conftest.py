"""The local backend's made-up host (``local_env``, ``state_dir`` and ``backend`` are in
the root conftest and use ``inventory_file`` from here).

The inventory is a file (``AICONTRACT_INVENTORY``) so these tests see the same
GPUs on every machine, GPU or not; the ledger is real SQLite in ``tmp_path``,
so nothing leaks into (or out of) the user's own state dir.
"""

from __future__ import annotations

from pathlib import Path

import pytest

INVENTORY = """\
cpus: 8
memory: 64GiB
disk: 1TiB
gpus:
  - {model: NVIDIA H100 80GB HBM3, memory: 80GiB, compute_capability: "9.0"}
  - {model: NVIDIA H100 80GB HBM3, memory: 80GiB, compute_capability: "9.0"}
  - {model: NVIDIA A100-SXM4-80GB, memory: 80GiB, compute_capability: "8.0"}
  - {model: NVIDIA A100-SXM4-80GB, memory: 80GiB, compute_capability: "8.0"}
  - {model: NVIDIA L4, memory: 24GiB, compute_capability: "8.9"}
  - id: MIG-4f1c2a3b-0000-0000-0000-000000000001
    model: NVIDIA A100-SXM4-40GB
    memory: 10GiB
    compute_capability: "8.0"
    mig_profile: 1g.10gb
"""
"""Ids 0-1 are H100s, 2-3 A100-80GB, 4 an L4, and one MIG slice with its UUID as id."""


@pytest.fixture
def inventory_file(tmp_path: Path) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(INVENTORY)
    return path
