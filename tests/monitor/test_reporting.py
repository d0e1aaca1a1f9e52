"""Workloads report from inside (issue 11): ``aicontract.report`` / ``aicontract.measure``.

A held, watched lease binds a local datagram socket and names it in
``AICONTRACT_REPORT_SOCKET``; a process started with the lease's env reports to
it without ever blocking, and the holder feeds the figures to its monitor.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import anyio
import pytest
from monitor_support import service_contract

import aicontract
from aicontract import Negotiator, Objective, VirtualClock
from aicontract.monitor import process_monitor
from aicontract.reporting import REPORT_SOCKET_ENV, ReportSocket, dropped
from fakes import FakeBackend

P99 = Objective(sli="latency_p99", op="<=", target="100ms", window="1m")
SRC = str(Path(aicontract.__file__).resolve().parent.parent)


@pytest.fixture(autouse=True)
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def test_reporting_outside_a_lease_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(REPORT_SOCKET_ENV, raising=False)
    aicontract.report(throughput=512, unit="tokens/s")
    with aicontract.measure("latency", errors=True):
        pass
    assert dropped() == 0
    with pytest.raises(TypeError, match="at least one figure"):
        aicontract.report()  # a wrong call is wrong everywhere


def test_reporting_never_blocks_when_the_holder_does_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ReportSocket("slow", buffer=4096) as reports:
        monkeypatch.setenv(REPORT_SOCKET_ENV, reports.path)
        before = dropped()
        for _ in range(20_000):  # far more than the socket buffers: the rest are dropped
            aicontract.report(latency=0.01)
        assert dropped() > before
        seen: list[tuple[str, float]] = []
        read = reports.drain(lambda sli, value, unit, labels: seen.append((sli, value)))
        assert 0 < read == len(seen) < 20_000
        assert seen[0] == ("latency", 0.01)
    aicontract.report(latency=0.01)  # the holder is gone: dropped, not raised


def test_a_malformed_datagram_is_counted_and_skipped() -> None:
    import socket

    with ReportSocket("bad") as reports:
        sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sender.sendto(b"not json", reports.path)
        sender.sendto(b'{"values": {"throughput": 5}}', reports.path)
        sender.close()
        seen: list[tuple[str, float]] = []
        reports.drain(lambda sli, value, unit, labels: seen.append((sli, value)))
    assert (reports.malformed, seen) == (1, [("throughput", 5.0)])


@pytest.mark.anyio
async def test_a_workload_process_reports_to_its_lease(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock
) -> None:
    script = (
        "import aicontract\n"
        "aicontract.report(latency=250, unit='ms')\n"
        "aicontract.report(throughput=512, unit='tokens/s')\n"
        "with aicontract.measure('step'):\n"
        "    pass\n"
    )
    lease = await aicontract.acquire(service_contract(P99), negotiator=negotiator)
    async with lease:
        assert REPORT_SOCKET_ENV in lease.env
        env = {**os.environ, **lease.env, "PYTHONPATH": SRC}
        await anyio.run_process([sys.executable, "-c", script], env=env, check=True)
        watch = process_monitor().watches[lease.id]
        with anyio.fail_after(10):
            while watch.samples_total < 3:
                await anyio.sleep(0.01)
        assert watch.last["latency"].value == pytest.approx(0.25)
        assert watch.last["throughput"].value == pytest.approx(512)
        assert watch.last["throughput"].labels == {"unit": "tokens"}
        assert watch.last["step"].value >= 0
    assert REPORT_SOCKET_ENV not in lease.env
    assert fake.leases == {}


def test_the_cli_holder_forwards_reports_and_publishes_for_watch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from click.testing import CliRunner

    from aicontract.cli import main

    monkeypatch.setenv("AICONTRACT_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.delenv("AICONTRACT_BACKENDS", raising=False)
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)
    (tmp_path / "inventory.yaml").write_text("cpus: 2\nmemory: 4GiB\n")
    contract = tmp_path / "svc.yaml"
    contract.write_text(
        "name: svc\nresources: {cpus: 1}\n"
        "objectives:\n  - {sli: latency_p99, op: '<=', target: 100ms, window: 1m}\n"
    )
    seen = tmp_path / "watch.txt"
    # The workload reports slow requests, then asks `aicontract watch` what it sees.
    script = f"""
import os, subprocess, sys, time
import aicontract
for _ in range(40):
    aicontract.report(latency=0.5)
    time.sleep(0.05)
for _ in range(100):
    out = subprocess.run([sys.executable, "-m", "aicontract", "watch", "--once",
                          os.environ["AICONTRACT_LEASE_ID"]], capture_output=True, text=True)
    if out.returncode == 0 and "violated" in out.stdout:
        break
    time.sleep(0.1)
open({str(seen)!r}, "w").write(out.stdout + out.stderr)
"""
    monkeypatch.setenv("PYTHONPATH", SRC)
    monkeypatch.setenv("COLUMNS", "200")
    with caplog.at_level(logging.WARNING, logger="aicontract.monitor"):
        result = CliRunner().invoke(
            main,
            ["acquire", str(contract), "--", sys.executable, "-c", script],
            catch_exceptions=False,
        )
    assert result.exit_code == 0, result.output
    assert any("latency_p99 <= 100ms violated" in r.getMessage() for r in caplog.records)
    shown = seen.read_text()
    assert "latency_p99<=100ms/1m" in shown
    assert "violated" in shown
