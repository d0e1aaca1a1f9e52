"""Workloads the backend launches report to their own lease (issue 11, item 2).

A contract's ``workload.command`` is started by the local backend at commit,
before anyone holds the lease: it must still find its lease's report socket
(``AICONTRACT_REPORT_SOCKET``, known before it starts, bound once the lease is
held), in every face. And each lease of a renegotiation chain hears its own
workload: a replacement's early reports never count for the lease it replaces.

Every test ends with a leak check: no lease in the ledger, no workload alive.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import time
import uuid
from pathlib import Path

import anyio
import anyio.abc
import pytest

import aicontract
from aicontract import Contract, Lease, Negotiator, Objective, ObjectiveState, Violation, Workload
from aicontract.backends.local import LocalBackend
from aicontract.monitor import process_monitor
from aicontract.reporting import REPORT_SOCKET_ENV
from procs import live_processes

SRC = str(Path(aicontract.__file__).resolve().parent.parent)
THROUGHPUT = Objective(sli="throughput", op=">=", target="1000/s", window="3s")

# Reports the figure in CONTROL (re-read each time) every 20 ms, forever; the marker
# argument lets the leak check find it.
REPORTER = """
import sys, time
import aicontract
control = sys.argv[1]
while True:
    try:
        value = float(open(control).read())
    except (OSError, ValueError):
        value = None
    if value is not None:
        aicontract.report(throughput=value)
    time.sleep(0.02)
"""


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A host with 4 CPUs and a state dir of its own; the workload imports this tree."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("cpus: 4\nmemory: 8GiB\n")
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("PYTHONPATH", SRC)
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)
    monkeypatch.delenv(REPORT_SOCKET_ENV, raising=False)
    return tmp_path / "state"


def reporter_contract(tmp_path: Path, marker: str) -> tuple[Contract, Path]:
    control = tmp_path / f"control-{marker}"
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    workload = Workload(
        kind="inference", command=(sys.executable, str(script), str(control), marker)
    )
    contract = Contract(name="reporter", cpus=1, objectives=[THROUGHPUT], workload=workload)
    return contract, control


def states(lease: Lease) -> list[ObjectiveState]:
    return list(lease.current.objective_states.values())


def no_leak(state_dir: Path, marker: str) -> None:
    """Nothing left: no lease in the ledger, no workload alive (bounded wait for exits)."""
    assert LocalBackend(state_dir=state_dir).ledger.records() == []
    for _ in range(200):
        if not live_processes(marker.encode()):
            break
        time.sleep(0.05)
    assert live_processes(marker.encode()) == []


def test_the_socket_lives_in_a_private_directory_and_goes_with_the_holder(host: Path) -> None:
    path = aicontract.reporting.report_socket_path("lease-1")
    assert path.startswith(str(host))
    with aicontract.reporting.ReportSocket(path=path) as reports:
        directory = Path(reports.path).parent
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert directory.stat().st_uid == os.geteuid()
        assert stat.S_ISSOCK(Path(path).lstat().st_mode)
        # Another holder may not take a live socket from under this one.
        with pytest.raises(OSError, match="another holder"):
            aicontract.reporting.ReportSocket(path=path)
    assert not Path(path).exists()
    # A socket a dead holder left behind is replaced, not refused.
    stale = aicontract.reporting.ReportSocket(path=path)
    stale.sock.close()
    with aicontract.reporting.ReportSocket(path=path) as again:
        assert again.path == path


def test_a_directory_of_someone_else_is_refused(host: Path) -> None:
    path = Path(aicontract.reporting.report_socket_path("lease-2"))
    path.parent.parent.mkdir(parents=True, exist_ok=True)
    path.parent.symlink_to(host.parent)  # not a directory of ours alone: a link elsewhere
    with pytest.raises(PermissionError):
        aicontract.reporting.ReportSocket(path=str(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a directory to another user needs root")
@pytest.mark.anyio
async def test_a_workload_never_reports_into_another_users_directory(
    host: Path, tmp_path: Path
) -> None:
    marker = f"reporter-{uuid.uuid4().hex[:8]}"
    contract, _ = reporter_contract(tmp_path, marker)
    directory = aicontract.reporting.report_dir()
    directory.mkdir(parents=True, mode=0o700)
    os.chown(directory, 4321, 4321)  # someone else got there first
    backend = LocalBackend(state_dir=host)
    async with backend:
        lease = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
        async with lease:
            environ = Path(f"/proc/{lease.details['pid']}/environ").read_bytes().split(b"\0")
            given = [e for e in environ if e.startswith(REPORT_SOCKET_ENV.encode() + b"=")]
            assert given == []  # the workload runs, but is given no socket there
            assert not lease.env[REPORT_SOCKET_ENV].startswith(str(directory))
    no_leak(host, marker)


@pytest.mark.anyio
async def test_async_acquire_hears_the_workload_the_backend_started(
    host: Path, tmp_path: Path
) -> None:
    marker = f"reporter-{uuid.uuid4().hex[:8]}"
    contract, control = reporter_contract(tmp_path, marker)
    control.write_text("5000")
    seen: list[Violation] = []
    backend = LocalBackend(state_dir=host)
    async with backend:
        lease = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
        async with lease:
            lease.on_violation(seen.append)
            assert lease.env[REPORT_SOCKET_ENV].startswith(str(host))
            with anyio.fail_after(30):
                while states(lease) != [ObjectiveState.MET]:
                    await anyio.sleep(0.05)
            control.write_text("5")  # the workload now reports far too little
            with anyio.fail_after(30):
                while not seen:
                    await anyio.sleep(0.05)
            assert states(lease) == [ObjectiveState.VIOLATED]
            assert seen[0].lease_id == lease.id
            assert seen[0].key.startswith("throughput")
            assert process_monitor().watches[lease.id].last["throughput"].source == "workload"
    no_leak(host, marker)


def test_the_sync_face_hears_the_workload_the_backend_started(host: Path, tmp_path: Path) -> None:
    marker = f"reporter-{uuid.uuid4().hex[:8]}"
    contract, control = reporter_contract(tmp_path, marker)
    control.write_text("5000")
    seen: list[Violation] = []
    negotiator = Negotiator([LocalBackend(state_dir=host)])
    with aicontract.lease(contract, negotiator=negotiator) as lease:
        lease.on_violation(seen.append)
        for _ in range(600):
            if states(lease) == [ObjectiveState.MET]:
                break
            time.sleep(0.05)
        assert states(lease) == [ObjectiveState.MET]
        control.write_text("5")
        for _ in range(600):
            if seen:
                break
            time.sleep(0.05)
        assert seen, "no violation although the workload reported 5/s against 1000/s"
        assert states(lease) == [ObjectiveState.VIOLATED]
    no_leak(host, marker)


def test_the_cli_without_a_command_hears_the_contracts_workload(
    host: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from click.testing import CliRunner

    from aicontract.cli import main

    marker = f"reporter-{uuid.uuid4().hex[:8]}"
    control = tmp_path / "control"
    control.write_text("5")
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    contract = tmp_path / "svc.yaml"
    contract.write_text(
        "name: svc\nresources: {cpus: 1}\n"
        f"workload: {{kind: inference, command: [{sys.executable}, {script}, {control}, {marker}]}}"
        "\n"
        "objectives:\n  - {sli: throughput, op: '>=', target: 1000/s, window: 3s}\n"
        # The violation ends the hold (the CLI returns); the duration bounds a test that fails.
        "terms: {on_violation: release, duration: 60s}\n"
    )
    with caplog.at_level(logging.WARNING, logger="aicontract.monitor"):
        result = CliRunner().invoke(main, ["acquire", str(contract)], catch_exceptions=False)
    assert any("throughput >= 1000/s violated" in r.getMessage() for r in caplog.records), (
        result.output
    )
    assert "released" in result.output
    no_leak(host, marker)


@pytest.mark.anyio
async def test_a_replacements_early_reports_are_its_own(host: Path, tmp_path: Path) -> None:
    """The replacement's workload reports before the switch: never for the old lease."""
    marker = f"replacement-{uuid.uuid4().hex[:8]}"
    script = tmp_path / "reporter.py"
    script.write_text(REPORTER)
    control = tmp_path / "control"
    control.write_text("123456")  # what the replacement's workload reports
    contract = Contract(name="served", cpus=1, objectives=[THROUGHPUT], on_violation="renegotiate")
    backend = LocalBackend(state_dir=host)
    started: list[anyio.abc.Process] = []
    checked: list[str] = []
    async with backend:
        handle = await aicontract.acquire(contract, negotiator=Negotiator([backend]))
        old_watch = process_monitor().watches[handle.id]

        async def start_on(new: Lease) -> None:
            # Runs before the switch, while the old lease still serves.
            assert new.env[REPORT_SOCKET_ENV] != handle.env[REPORT_SOCKET_ENV]
            process = await anyio.open_process(
                [sys.executable, str(script), str(control), marker],
                env={**os.environ, **new.env},
            )
            started.append(process)
            replacement_socket = new.env[REPORT_SOCKET_ENV]
            with anyio.fail_after(20):
                # The holder read its figures from its own socket; the switch is not made.
                while (entry := old_watch.reports.get(new.id)) is None or entry.socket.received < 3:
                    await anyio.sleep(0.02)
            assert entry.socket.path == replacement_socket
            assert all(s.value != 123456 for s in old_watch.recent), "counted for the old lease"
            assert handle.current is handle
            checked.append(new.id)

        handle.on_replacement(start_on)
        heard: list[float] = []
        try:
            async with handle:
                with anyio.fail_after(30):
                    while handle.current is handle:
                        handle.report(throughput=5)  # the old lease serves far too little
                        await anyio.sleep(0.02)
                new = handle.current
                assert checked == [new.id]
                new_watch = process_monitor().watches[new.id]
                new_watch.listeners.append(lambda s: heard.append(s.value))
                with anyio.fail_after(30):
                    while states(handle) != [ObjectiveState.MET]:
                        await anyio.sleep(0.05)
                assert 123456 in heard  # after the switch, the replacement hears its workload
        finally:
            for process in started:
                process.kill()
                await process.wait()
    no_leak(host, marker)
