"""What the CLI prints can be trusted: plain JSON, whole tables, sizes for people,
errors that name their file, and both ends of a lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result

from aicontract import GPU, Contract, LeaseNotFound, Negotiator, NoOffer
from aicontract.backends.local import LocalBackend
from aicontract.cli import main
from aicontract.cli.output import exit_status


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def shell(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, its output piped (as ``| python -m json.tool`` would)."""
    return subprocess.run(
        [sys.executable, "-m", "aicontract", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=60,
        check=False,
    )


@pytest.fixture
def contract_file(tmp_path: Path) -> Path:
    path = tmp_path / "one-h100.yaml"
    path.write_text("name: one\nresources:\n  gpus: {count: 1, models: [H100]}\n  cpus: 1\n")
    return path


@pytest.fixture
def too_big(tmp_path: Path) -> Path:
    path = tmp_path / "too-big.yaml"
    path.write_text("name: big\nresources:\n  gpus: {count: 8, models: [H100]}\n")
    return path


LONG_NAME = "a-contract-name-much-longer-than-a-narrow-terminal-is-wide"


@pytest.fixture
def held(local_env: Path) -> Iterator[object]:
    contract = Contract(name=LONG_NAME, gpus=GPU(count=1, models=["L4"]))
    backend = LocalBackend()
    lease = anyio.run(Negotiator([backend]).acquire, contract)
    yield lease
    anyio.run(lease.release)
    anyio.run(backend.aclose)


@pytest.mark.parametrize("command", [["inventory"], ["leases"], ["quote", "CONTRACT"]])
def test_json_is_never_coloured(held: object, contract_file: Path, command: list[str]) -> None:
    args = [str(contract_file) if a == "CONTRACT" else a for a in command]
    done = shell(*args, "--json", env={"FORCE_COLOR": "1", "TERM": "xterm-256color"})
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    json.loads(done.stdout)  # what `| python -m json.tool` needs


def test_leases_are_not_truncated_when_piped(held: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    table = run("leases").stdout
    assert LONG_NAME in table
    assert "…" not in table


def test_sizes_and_counts_read_for_people(local_env: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd.yaml"
    odd.write_text("cpus: 1\nmemory: 24683652KiB\ngpus: []\n")
    result = CliRunner(env={"AICONTRACT_INVENTORY": str(odd)}).invoke(main, ["inventory"])
    assert result.exit_code == 0, result.output
    assert "1 CPU, 23.5GiB memory" in result.stdout
    assert "KiB" not in result.stdout


def test_quote_errors_name_the_file(local_env: Path, contract_file: Path) -> None:
    result = run("quote", str(contract_file), "--backend", "nope")
    assert result.exit_code == 2
    assert f"error: {contract_file}: no backend named 'nope'" in result.stderr


def test_acquire_no_offer_names_the_file(local_env: Path, too_big: Path) -> None:
    result = run("acquire", str(too_big))
    assert result.exit_code == 1
    assert f"no offer: {too_big}: no offer satisfies contract 'big'" in result.stderr


def test_acquire_shows_the_heartbeat_and_the_contract_end(local_env: Path, tmp_path: Path) -> None:
    timed = tmp_path / "timed.yaml"
    timed.write_text("name: t\nresources: {cpus: 1}\nterms: {duration: 2h}\n")
    result = run("acquire", str(timed), "--", sys.executable, "-c", "pass")
    assert result.exit_code == 0, result.stderr
    assert "heartbeat:" in result.stderr
    assert "lapses at" in result.stderr
    assert "term: the contract's duration ends at" in result.stderr
    assert ", 1 CPU " in result.stderr or "1 CPU on" in result.stderr
    untimed = tmp_path / "untimed.yaml"
    untimed.write_text("name: u\nresources: {cpus: 1}\n")
    result = run("acquire", str(untimed), "--json", "--", sys.executable, "-c", "pass")
    data = json.loads(result.stdout)
    assert data["ends_at"] is None
    assert data["expires_at"] > 0


def test_acquire_can_accept_a_counter_offer(local_env: Path, too_big: Path) -> None:
    script = "import os; print(os.environ['CUDA_VISIBLE_DEVICES'])"
    refused = run("acquire", str(too_big), "--", sys.executable, "-c", script)
    assert refused.exit_code == 1
    result = run(
        "acquire", str(too_big), "--accept-counter-offer", "--", sys.executable, "-c", script
    )
    assert result.exit_code == 0, result.stderr
    assert "accepting counter-offer: local: 2 x H100 (80GiB)" in result.stderr
    assert "leased" in result.stderr
    assert run("leases", "--json").stdout.strip() == "[]"  # released after the command


def test_one_exit_status_map() -> None:
    assert exit_status(NoOffer("c", [])) == 1
    assert exit_status(LeaseNotFound("x", "gone")) == 1
    from aicontract import ConfigError

    assert exit_status(ConfigError("bad")) == 2


def test_gc_without_a_cluster_is_a_clean_error(local_env: Path, tmp_path: Path) -> None:
    result = run("gc", "--kubeconfig", str(tmp_path / "missing"))
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ")


def test_quote_against_a_backend_that_cannot_answer_exits_2(
    local_env: Path, contract_file: Path
) -> None:
    from aicontract import ConfigError, register_backend, unregister_backend

    class Broken(LocalBackend):
        async def quote(self, contract: Contract) -> Any:
            raise ConfigError("the ledger is damaged")

    register_backend("broken", Broken)
    try:
        for args in (["quote", str(contract_file)], ["quote", "--json", str(contract_file)]):
            result = run(*args, "--backend", "broken")
            assert result.exit_code == 2, result.output
    finally:
        unregister_backend("broken")
