"""Hostile: ``aicontract audit`` over records someone removed or damaged.

``audit verify`` must exit 1 for a record whose entries were removed in any way
(cut from the end, emptied, the whole file deleted), and every ``audit``
command must answer a damaged or unreadable record with one clear message and
a non-zero status, never a Python traceback.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
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


DAMAGED = {
    "a JSON list": b"[]\n",
    "a JSON number": b"1\n",
    "null": b"null\n",
    "nesting 100,000 deep": b"[" * 100_000 + b"]" * 100_000 + b"\n",
    "an object nested 100,000 deep": b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b"\n",
    "bytes that are not UTF-8": b"\xff\xfe\x00garbage\n",
}


@pytest.mark.parametrize("command", ["show", "export"])
@pytest.mark.parametrize("what", sorted(DAMAGED))
def test_show_and_export_refuse_a_damaged_record_clearly(
    tmp_path: Path, command: str, what: str
) -> None:
    """Lines that are JSON but no entry (a list, a number, deep nesting) got an
    AttributeError or RecursionError traceback from show, and export passed them on
    with exit 0. Each is the same clear "damaged" refusal a malformed line gets."""
    path = tmp_path / "record.jsonl"
    path.write_bytes(DAMAGED[what])
    out = CliRunner().invoke(main, ["audit", command, "--record", str(path)])
    assert out.exit_code != 0, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), repr(out.exception)
    assert "damaged" in out.output
    assert "aicontract audit verify" in out.output


@pytest.mark.parametrize("command", ["show", "export", "verify"])
def test_a_record_that_is_a_directory_is_one_clear_error(tmp_path: Path, command: str) -> None:
    """``--record`` naming a directory (or a file this user may not read) gave an
    IsADirectoryError traceback from every audit command."""
    path = tmp_path / "record.jsonl"
    path.mkdir()
    out = CliRunner().invoke(main, ["audit", command, "--record", str(path)])
    assert out.exit_code == 2, out.output
    assert out.exception is None or isinstance(out.exception, SystemExit), repr(out.exception)
    assert str(path) in out.output
    assert "cannot be read" in out.output


FORGED = [
    b'{"at": "x"}',
    b'{"at": 1e300}',
    b'{"kind": "refuse", "refusals": [1, 2]}',
    b'{"kind": "renew", "expires_at": "x"}',
]


@pytest.mark.parametrize("line", FORGED)
def test_show_shows_an_entry_with_forged_fields_without_a_traceback(
    tmp_path: Path, line: bytes
) -> None:
    """An entry whose fields have the wrong types (written by hand, not by the record)
    gave TypeError/OverflowError tracebacks from ``audit show``; it is shown as JSON,
    marked as no record entry (``audit verify`` says why)."""
    path = tmp_path / "record.jsonl"
    path.write_bytes(line + b"\n")
    out = CliRunner().invoke(main, ["audit", "show", "--record", str(path)])
    assert out.exit_code == 0, out.output
    assert out.exception is None, repr(out.exception)
    assert "not a record entry" in out.output


@pytest.mark.parametrize("command", ["show", "export", "verify"])
def test_a_line_longer_than_any_entry_is_refused_without_reading_it_whole(
    tmp_path: Path, command: str
) -> None:
    """A record whose tail is one endless line (a crash's run of zero bytes, a file
    replaced by garbage, ``--record /dev/zero``) was read whole into memory: a
    MemoryError traceback. A line longer than any entry is refused as damaged after
    reading a bounded part of it: here 1 GiB of zeros, read by a CLI allowed 600 MB."""
    path = tmp_path / "record.jsonl"
    _filled(path)
    with path.open("ab") as file:
        file.truncate(path.stat().st_size + 2**30)  # a hole: reads as zeros, takes no disk
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}

    def small() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (600 * 2**20, 600 * 2**20))

    out = subprocess.run(
        [sys.executable, "-m", "aicontract", "audit", command, "--record", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=small,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    assert "longer than" in out.stdout + out.stderr
