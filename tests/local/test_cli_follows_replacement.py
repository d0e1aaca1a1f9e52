"""``aicontract acquire FILE -- CMD`` follows a renegotiation (issue 11).

With ``on_violation: renegotiate``, the CLI's command is the workload: when the
lease is replaced, the command starts on the replacement (with its env) before
the switch, the old lease's command is stopped once the old lease is drained
and released, and the CLI exits with the status of the command on the lease
serving at the end — or, on a signal, stops every command and releases every
lease of the chain. Nothing is left: no lease in the ledger, no process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

import aicontract
from aicontract.backends.local import LocalBackend
from aicontract.cli import main
from procs import live_processes

SRC = str(Path(aicontract.__file__).resolve().parent.parent)

CONTRACT = """\
name: svc
resources: {cpus: 1}
objectives:
  - {sli: latency_p99, op: '<=', target: 100ms, window: 1m}
terms: {on_violation: renegotiate, drain: 500ms, max_renegotiations_per_hour: 1}
"""


def workload(log: Path, *, then: str) -> str:
    """The command: the first instance is slow (it reports so) until it is stopped;
    the one on the replacement records its lease and then does ``then``."""
    return f"""
import os, pathlib, sys, time
import aicontract
log = pathlib.Path({str(log)!r})
first = not log.exists()
with log.open("a") as f:
    f.write(os.environ["AICONTRACT_LEASE_ID"] + "\\n")
if first:
    while True:
        aicontract.report(latency=0.9)
        time.sleep(0.02)
{then}
"""


@pytest.fixture
def contract_file(local_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("PYTHONPATH", SRC)  # the commands import aicontract to report
    path = tmp_path / "svc.yaml"
    path.write_text(CONTRACT)
    return path


def _no_process_left(marker: bytes) -> None:
    deadline = time.monotonic() + 15
    while live_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert live_processes(marker) == []


def test_the_command_follows_the_replacement_and_its_status_is_passed(
    contract_file: Path, tmp_path: Path
) -> None:
    log, marker = tmp_path / "leases.txt", f"aicontract-follow-{uuid.uuid4().hex}"
    script = workload(log, then="time.sleep(1.5)\nsys.exit(7)")
    result = CliRunner().invoke(
        main,
        ["acquire", str(contract_file), "--", sys.executable, "-c", script, marker],
        catch_exceptions=False,
    )
    assert result.exit_code == 7, result.output  # the replacement's command's status
    first, second = log.read_text().split()
    assert first != second  # one command per lease, each with its own lease's env
    assert f"replaced by {second}" in result.output
    assert LocalBackend().leases() == []
    _no_process_left(marker.encode())


def test_a_signal_after_a_replacement_stops_every_command_and_releases_every_lease(
    contract_file: Path, tmp_path: Path
) -> None:
    log, marker = tmp_path / "leases.txt", f"aicontract-follow-{uuid.uuid4().hex}"
    script = workload(log, then="time.sleep(120)")
    command = [sys.executable, "-c", script, marker]
    holder = subprocess.Popen(
        [sys.executable, "-m", "aicontract", "acquire", str(contract_file), "--", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and len(log.read_text().split()) == 2):
            assert holder.poll() is None, "the holder exited before the replacement"
            assert time.monotonic() < deadline, "no replacement within 60 s"
            time.sleep(0.05)
        os.kill(holder.pid, signal.SIGTERM)  # the holder only: it forwards to the commands
        assert holder.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    assert LocalBackend().leases() == []
    _no_process_left(marker.encode())


def test_a_lease_released_from_elsewhere_is_replaced_and_the_command_follows(
    contract_file: Path, tmp_path: Path
) -> None:
    """Revocation under ``renegotiate``: the holder does not exit with the killed command;
    a replacement is acquired (no make-before-break: the old one is gone) and runs it."""
    contract_file.write_text(
        "name: svc\nresources: {cpus: 1}\n"
        "terms: {on_violation: renegotiate, drain: 500ms, max_renegotiations_per_hour: 1}\n"
    )
    log, marker = tmp_path / "leases.txt", f"aicontract-follow-{uuid.uuid4().hex}"
    script = f"""
import os, pathlib, sys, time
log = pathlib.Path({str(log)!r})
first = not log.exists()
with log.open("a") as f:
    f.write(os.environ["AICONTRACT_LEASE_ID"] + "\\n")
time.sleep(120 if first else 0.5)
sys.exit(5)
"""
    command = [sys.executable, "-c", script, marker]
    holder = subprocess.Popen(
        [sys.executable, "-m", "aicontract", "acquire", str(contract_file), "--", *command],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not log.exists():
            assert holder.poll() is None, "the holder exited before its command started"
            assert time.monotonic() < deadline, "the command did not start within 60 s"
            time.sleep(0.05)
        [first] = log.read_text().split()
        assert LocalBackend().release_by_id(first)  # as `aicontract release ID` would
        assert holder.wait(timeout=60) == 5  # the command on the replacement ended it
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    first_again, second = log.read_text().split()
    assert first_again == first
    assert second != first
    assert LocalBackend().leases() == []
    _no_process_left(marker.encode())


def test_holding_without_a_command_follows_the_replacement(contract_file: Path) -> None:
    contract_file.write_text(
        "name: svc\nresources: {cpus: 1}\n"
        "terms: {on_violation: renegotiate, max_renegotiations_per_hour: 1}\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-m", "aicontract", "acquire", str(contract_file)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def held() -> list[str]:
        return [r.id for r in LocalBackend().leases()]

    try:
        deadline = time.monotonic() + 60
        while not held():
            assert holder.poll() is None, "the holder exited before holding"
            assert time.monotonic() < deadline, "no lease within 60 s"
            time.sleep(0.05)
        [first] = held()
        assert LocalBackend().release_by_id(first)
        while held() in ([], [first]):
            assert holder.poll() is None, "the holder exited instead of following"
            assert time.monotonic() < deadline, "no replacement within 60 s"
            time.sleep(0.05)
        [second] = held()
        os.killpg(holder.pid, signal.SIGINT)
        _, said = holder.communicate(timeout=60)
        assert holder.returncode == 130
    finally:
        if holder.poll() is None:
            os.killpg(holder.pid, signal.SIGKILL)
    assert f"lease {first} replaced by {second}" in said
    assert LocalBackend().leases() == []
