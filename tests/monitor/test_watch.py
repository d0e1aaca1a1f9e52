"""``aicontract watch`` (issue 11): follows the chain at once, values in units, plain off a tty."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from monitor_support import service_contract

from aicontract import Lease, Objective
from aicontract.cli import main
from aicontract.clock import VirtualClock
from aicontract.monitor import Monitor
from aicontract.monitor.snapshot import read_snapshots
from aicontract.monitor.telemetry import Telemetry
from aicontract.negotiate import Negotiator
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

P90 = Objective(sli="latency_p90", op="<=", target="200ms", window="5s")


async def _renegotiated(monitor: Monitor, clock: VirtualClock) -> Lease:
    handle = await monitor.acquire(service_contract(P90, policy="renegotiate"))
    for _ in range(20):
        await clock.advance(1)
        handle.report(latency=0.9)
        if handle.current is not handle:
            return handle
    raise AssertionError("no renegotiation happened")


async def test_a_switch_is_published_at_once(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock, tmp_path: Path
) -> None:
    # The periodic publish is an hour away: only the switch itself can tell readers.
    monitor = Monitor(
        negotiator, publish_dir=tmp_path, publish_interval=3600, telemetry=Telemetry()
    )
    async with monitor:
        handle = await _renegotiated(monitor, clock)
        await clock.advance(0)
        [snapshot] = read_snapshots(tmp_path)
        old = next(lease for lease in snapshot.leases if lease.id == handle.id)
        assert old.replaced_by == handle.current.id
        await handle.release()
    assert fake.leases == {}


async def test_watch_off_a_terminal_prints_plain_lines_in_units_along_the_chain(
    negotiator: Negotiator, fake: FakeBackend, clock: VirtualClock, tmp_path: Path
) -> None:
    monitor = Monitor(
        negotiator, publish_dir=tmp_path, publish_interval=3600, telemetry=Telemetry()
    )
    async with monitor:
        handle = await _renegotiated(monitor, clock)
        replacement = handle.current
        for _ in range(3):
            await clock.advance(1)
            handle.report(latency=0.00211478)
        await clock.advance(1)
        monitor.publish_now()
        once = CliRunner().invoke(main, ["watch", handle.id, "--once", "--dir", str(tmp_path)])
        await handle.release()
        monitor.publish_now()
        # CliRunner's output is not a terminal: plain lines, no redrawing table.
        result = CliRunner().invoke(
            main, ["watch", handle.id, "--interval", "0.01", "--dir", str(tmp_path)]
        )
    assert fake.leases == {}
    assert once.exit_code == 0, once.output
    assert "2.11ms" in once.output
    assert "0.00211478" not in once.output
    assert result.exit_code == 0, result.output
    out = result.output
    assert "\x1b[" not in out  # no terminal codes in a pipe
    assert f"lease {replacement.id}" in out  # followed the chain to the replacement
    assert "sample latency = 2.11ms" in out
    assert f"lease {replacement.id} released" in out
    assert "0.00211478" not in out


async def test_violation_text_gives_the_window_as_people_write_it(
    negotiator: Negotiator, clock: VirtualClock
) -> None:
    async with Monitor(negotiator, publish=False, telemetry=Telemetry()) as monitor:
        lease = await monitor.acquire(
            service_contract(Objective(sli="latency_p99", op="<=", target="100ms", window="5m"))
        )
        texts: list[str] = []
        lease.on_violation(lambda v: texts.append(v.describe()))
        for _ in range(30):
            await clock.advance(1)
            lease.report(latency=0.5)
        await lease.release()
    assert texts
    # The fastest burn-rate window is 1/72 of 5m: 4.1666... s, once printed as 4166666667ns.
    assert "ms over 4.17s, budget burning" in texts[0], texts
