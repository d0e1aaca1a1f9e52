"""``aicontract validate``, ``aicontract schema`` and ``--version``."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from aicontract import __version__, json_schema
from aicontract.cli import main

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "contracts").iterdir())


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_validate_examples(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate", *map(str, EXAMPLES)])
    assert result.exit_code == 0, result.output
    for path in EXAMPLES:
        assert f"{path}: ok (" in result.stdout
    assert "ok (train-llama)" in result.stdout
    assert result.stderr == ""


def test_validate_quiet(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate", "-q", str(EXAMPLES[0])])
    assert result.exit_code == 0
    assert result.stdout == ""


def test_validate_bad_file(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: train\nresources:\n  memory: eighty\n")
    result = runner.invoke(main, ["validate", str(EXAMPLES[0]), str(bad)])
    assert result.exit_code == 1
    assert (
        f"{bad}: $.resources.memory: 'eighty' is not a byte quantity "
        "(allowed: a size like 80GiB, or a range like 40GiB..80GiB, 256GiB.. or >=24GiB)"
    ) in result.stderr
    assert "1 of 2 file(s) invalid" in result.stderr
    assert f"{EXAMPLES[0]}: ok" in result.stdout  # the good file is still reported


def test_validate_unknown_key_suggests(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "typo.json"
    bad.write_text('{"resources": {"gpu": {"count": 1}}}')
    result = runner.invoke(main, ["validate", str(bad)])
    assert result.exit_code == 1
    assert "unknown key 'gpu'; did you mean 'gpus'?" in result.stderr


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.yaml", b"", "the document is empty"),
        ("junk.yaml", b"\xff\xfe\x00junk", "not UTF-8"),
        ("contract.txt", b"name: a", "cannot tell the format"),
        ("dup.yaml", b"name: a\nname: b\n", "appears twice"),
    ],
)
def test_validate_refusals_never_traceback(
    runner: CliRunner, tmp_path: Path, name: str, content: bytes, says: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = runner.invoke(main, ["validate", str(path)])
    assert result.exit_code == 1
    assert says in result.stderr
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_validate_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 1
    assert "cannot read" in result.stderr


def test_validate_needs_a_file(runner: CliRunner) -> None:
    result = runner.invoke(main, ["validate"])
    assert result.exit_code == 2  # click's usage error


def test_schema_prints_valid_json_schema(runner: CliRunner) -> None:
    result = runner.invoke(main, ["schema"])
    assert result.exit_code == 0
    printed = json.loads(result.stdout)
    assert printed == json.loads(json.dumps(json_schema()))
    jsonschema.Draft202012Validator.check_schema(printed)


def test_schema_indent(runner: CliRunner) -> None:
    result = runner.invoke(main, ["schema", "--indent", "0"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json.loads(json.dumps(json_schema()))
    assert "\n  " not in result.stdout


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"aicontract, version {__version__}"


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(main, ["-h"])
    assert result.exit_code == 0
    assert "validate" in result.stdout
    assert "schema" in result.stdout
