"""``aicontract watch LEASE_ID``: a lease's samples and violations as a live table.

It reads what the monitor watching the lease publishes (see
:mod:`aicontract.monitor.snapshot`), so it works from any process on the host, and
follows the lease through renegotiations.
"""

from __future__ import annotations

import sys
import time
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..monitor.snapshot import LeaseSnapshot, monitor_dir, read_snapshots

_STATE_STYLE = {"met": "green", "violated": "bold red", "undetermined": "dim"}


def find_lease(lease_id: str, directory: Path) -> LeaseSnapshot | None:
    """The newest snapshot of ``lease_id`` — or of the lease that replaced it."""
    wanted, seen = lease_id, set()
    found: LeaseSnapshot | None = None
    while wanted not in seen:
        seen.add(wanted)
        matches = [
            (m.written_at, lease)
            for m in read_snapshots(directory)
            for lease in m.leases
            if lease.id == wanted
        ]
        if not matches:
            return found
        found = max(matches, key=lambda pair: pair[0])[1]
        if found.replaced_by is None:
            return found
        wanted = found.replaced_by
    return found


def _clock(at: float | None) -> str:
    return "-" if at is None else datetime.fromtimestamp(at).strftime("%H:%M:%S")


def render(lease: LeaseSnapshot) -> Group:
    """The lease as tables: header, objectives, recent samples, violations."""
    head = Text.assemble(
        (f"lease {lease.id}", "bold"),
        f"  {lease.contract} on {lease.backend}  ",
        (lease.state, "green" if lease.state in ("active", "renewing") else "red"),
        f"  expires {_clock(lease.expires_at)}  policy {lease.policy}"
        f" ({lease.renegotiations_left} renegotiations left this hour)",
    )
    objectives = Table(title="objectives", expand=True)
    for column in ("objective", "state", "value", "since"):
        objectives.add_column(column)
    for o in lease.objectives:
        objectives.add_row(
            o.key, Text(o.state, _STATE_STYLE.get(o.state, "")), o.display, _clock(o.changed_at)
        )
    samples = Table(title=f"samples ({lease.samples_total} so far)", expand=True)
    for column in ("time", "sli", "value", "source", "labels"):
        samples.add_column(column)
    for s in lease.recent:
        labels = ",".join(f"{k}={v}" for k, v in s.labels.items())
        samples.add_row(_clock(s.at), s.sli, f"{s.value:.6g}", s.source, labels)
    violations = Table(title=f"violations ({lease.violations_total} so far)", expand=True)
    for column in ("time", "severity", "what"):
        violations.add_column(column)
    for v in lease.violations:
        style = "bold red" if v.severity in ("critical", "fatal") else "yellow"
        violations.add_row(_clock(v.at), Text(v.severity, style), v.text)
    parts: list[Table | Text] = [head]
    if lease.endpoints:
        parts.append(
            Text("endpoints: " + ", ".join(f"{k}={v}" for k, v in lease.endpoints.items()))
        )
    parts += [objectives, samples, violations]
    return Group(*parts)


monitor_dir_option = click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=None,
    help="Where monitors publish (default: the state dir's monitor/).",
)
"""The ``--dir`` option of the commands that read what monitors publish."""


@click.command()
@click.argument("lease_id")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@monitor_dir_option
def watch(lease_id: str, interval: float, once: bool, directory: Path | None) -> None:
    """Stream a lease's SLI samples and violations as a live table."""
    directory = monitor_dir() if directory is None else directory
    console = Console()
    lease = find_lease(lease_id, directory)
    if lease is None:
        click.echo(
            f"no monitor publishes lease {lease_id} in {directory}"
            " (is a Monitor watching it, with publish on?)",
            err=True,
        )
        sys.exit(1)
    if once:
        console.print(render(lease))
        return
    with Live(render(lease), console=console, refresh_per_second=4) as live:
        try:
            while lease.state in ("active", "renewing", "pending"):
                time.sleep(interval)
                lease = find_lease(lease_id, directory) or lease
                live.update(render(lease))
        except KeyboardInterrupt:
            return


COMMANDS = [watch]
