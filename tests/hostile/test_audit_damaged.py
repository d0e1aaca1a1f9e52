"""Hostile: ``aicontract audit`` over records someone removed or damaged.

``audit verify`` must exit 1 for a record whose entries were removed in any way
(cut from the end, emptied, the whole file deleted), and every ``audit``
command must answer a damaged or unreadable record with one clear message and
a non-zero status, never a Python traceback.
"""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from aicontract.cli import main
from aicontract.governance.record import Record, verify


def _filled(path: Path, count: int = 3) -> Record:
    record = Record(path)
    for i in range(count):
        record.append("grant", 1000.0 + i, {"lease": f"l{i}", "tenant": "team-a"})
    record.close()
    return record


def test_a_deleted_record_does_not_verify(tmp_path: Path) -> None:
    """Deleting the record file (its head stays) removed every entry: as emptying it
    does, verify says so. It used to answer "ok, 0 entries, chain intact"."""
    path = tmp_path / "record.jsonl"
    _filled(path)
    path.unlink()
    result = verify(path)
    assert not result.ok
    assert "3 entries" in (result.problem or "")
    out = CliRunner().invoke(main, ["audit", "verify", "--record", str(path)])
    assert out.exit_code == 1, out.output
    assert "TAMPERED" in out.output


def test_a_record_never_written_still_verifies(tmp_path: Path) -> None:
    """Neither record nor head: nothing was recorded there (a fresh host)."""
    assert verify(tmp_path / "none.jsonl").ok
    out = CliRunner().invoke(main, ["audit", "verify", "--record", str(tmp_path / "none.jsonl")])
    assert out.exit_code == 0, out.output
    assert "no record" in out.output
    assert "chain intact" not in out.output
