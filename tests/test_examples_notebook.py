"""examples/notebook.ipynb runs on a real Jupyter kernel (nbclient) and leaves nothing behind.

It acquires a monitored lease on the local backend, reports latencies, must see
its p99 objective violated, and releases the lease: the ledger is empty after.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aicontract.backends.local import LocalBackend

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).parent.parent / "examples" / "notebook.ipynb"


def outputs(cell: object) -> str:
    """What a code cell printed."""
    return "".join(str(o.get("text", "")) for o in getattr(cell, "outputs", []))


def test_the_notebook_sees_a_violation_and_releases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("cpus: 2\nmemory: 4GiB\n")
    # The kernel inherits this env: a made-up host and a private ledger.
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("AICONTRACT_BACKENDS", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    )
    client.execute()  # raises CellExecutionError when a cell fails
    code = [c for c in notebook.cells if c.cell_type == "code"]
    violation, released = outputs(code[-2]), outputs(code[-1])
    assert "no violation" not in violation
    assert "latency_p99" in violation
    assert "violated" in violation
    assert released.strip() == "released"
    assert LocalBackend(state_dir=tmp_path / "state").leases() == []
