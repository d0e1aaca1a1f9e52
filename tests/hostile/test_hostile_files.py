"""Hostile: contract files with odd GPU counts, and a record cut short with its head gone.

``gpus: 2`` and ``gpus: "1..8"`` are accepted where a GPU requirement goes; every
other shape must be one ContractError naming the field, the value and the
allowed form (guarantee 7): a count, a range or a GPU mapping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import aicontract as ac
from aicontract.cli import main
from aicontract.governance import Record
from aicontract.governance.record import verify

SHAPES = [
    "resources: {gpus: true}",
    "resources: {gpus: [2]}",
    "resources: {cpus: 1}\nalternatives: [{gpus: false}]",
    "resources: {cpus: 1}\nalternatives: [{gpus: [1, 2]}]",
]


@pytest.mark.parametrize("body", SHAPES)
def test_a_gpu_requirement_of_the_wrong_shape_names_every_allowed_form(
    tmp_path: Path, body: str
) -> None:
    """Not "expected object | null": a count and a range are allowed there too."""
    path = tmp_path / "c.yaml"
    path.write_text(f"name: x\n{body}\n")
    with pytest.raises(ac.ContractError) as info:
        ac.load(path)
    text = str(info.value)
    assert "gpus" in text
    assert "allowed" in text
    assert "whole number" in text or "1..8" in text, text
    for command in ("validate", "quote"):
        result = CliRunner().invoke(main, [command, str(path)])
        assert result.exit_code in (1, 2)
        assert "Traceback" not in result.output
        assert "allowed" in result.output, result.output


@pytest.mark.parametrize(
    ("value", "count"),
    [("2", "2"), ('"1..8"', "1..8"), ('" 2 "', "2"), ("2.0", "2"), ('"1.."', "1..")],
)
@pytest.mark.parametrize("where", ["resources", "alternatives"])
def test_a_gpu_count_is_read_the_same_in_resources_and_alternatives(
    tmp_path: Path, value: str, count: str, where: str
) -> None:
    path = tmp_path / "c.yaml"
    body = (
        f"resources: {{gpus: {value}}}"
        if where == "resources"
        else f"resources: {{cpus: 1}}\nalternatives: [{{gpus: {value}}}]"
    )
    path.write_text(f"name: x\n{body}\n")
    contract = ac.load(path)
    gpus = contract.resources.gpus if where == "resources" else contract.alternatives[0].gpus
    assert gpus is not None
    assert str(gpus.count).replace(" ", "") == count


def test_a_record_cut_short_with_its_head_removed_is_noticed(tmp_path: Path) -> None:
    """The last entries cut off and record.head deleted: a record with entries but no
    head was never written by aicontract (every append writes the head), so verify
    must not call it intact."""
    record = Record(tmp_path / "record.jsonl")
    for n in range(5):
        record.append("grant", 1.0 + n, {"lease": f"l{n}"})
    record.close()
    lines = record.path.read_bytes().splitlines(keepends=True)
    record.path.write_bytes(b"".join(lines[:3]))  # the last two grants are gone
    record.head_path.unlink()
    outcome = verify(record.path)
    assert not outcome.ok, "two entries cut from the end, head removed: verified intact"


def test_a_damaged_head_is_noticed(tmp_path: Path) -> None:
    """A head overwritten with garbage (so the tail check is skipped) is itself a finding."""
    record = Record(tmp_path / "record.jsonl")
    for n in range(3):
        record.append("grant", 1.0 + n, {"lease": f"l{n}"})
    record.close()
    lines = record.path.read_bytes().splitlines(keepends=True)
    record.path.write_bytes(b"".join(lines[:2]))
    record.head_path.write_bytes(b"not a head\n")
    assert not verify(record.path).ok


def test_a_damaged_line_in_the_record_is_one_clear_error_not_a_traceback(
    tmp_path: Path, private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Quotas read the record back: a damaged line in it (an edit, a crash's zeros) must
    refuse with one AIContractError that says where, not a bare msgspec.DecodeError."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("tenants:\n  t: {quotas: {gpus: 2}}\n")
    monkeypatch.setenv("AICONTRACT_POLICY", str(policy))
    contract = ac.Contract(name="a", tenant="t", gpus=1)
    ac.release_sync(ac.acquire_sync(contract))
    record = private_state / "record.jsonl"
    lines = record.read_bytes().splitlines(keepends=True)
    record.write_bytes(lines[0] + b'{"oops": \n' + b"".join(lines[1:]))
    # The next acquire (a new negotiator: its usage is read from the start) meets it.
    with pytest.raises(ac.AIContractError, match="record"):
        ac.acquire_sync(contract)
