"""``aicontract watch LEASE_ID``: a lease's samples and violations as a live table.

It reads what the monitor watching the lease publishes (see
:mod:`aicontract.monitor.snapshot`), so it works from any process on the host, and
follows the lease through renegotiations. Off a terminal (piped, in a log) it
prints plain lines as things happen instead of redrawing a table.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import click
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..errors import ContractError
from ..monitor.objectives import sample_sli
from ..monitor.snapshot import LeaseSnapshot, monitor_dir, read_snapshots
from ..observation import Sample, format_as, format_sample
from ..units import parse_target
from .output import path_option

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


_ACTIVE = ("active", "renewing", "pending")


def sample_text(lease: LeaseSnapshot, sample: Sample) -> str:
    """A sample's value in its unit: the unit of the objective that reads it, else its name's."""
    for objective in lease.objectives:
        if sample_sli(objective.sli) == sample.sli and not sample.labels.get("unit"):
            try:
                return format_as(parse_target(objective.target), sample.value)
            except ContractError:
                break
    return format_sample(sample.sli, sample.value, sample.labels)


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
        samples.add_row(_clock(s.at), s.sli, sample_text(lease, s), s.source, labels)
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


monitor_dir_option = path_option(
    "--dir",
    "directory",
    help="Where monitors publish (default: the state dir's monitor/).",
)
"""The ``--dir`` option of the commands that read what monitors publish."""


class PlainFollower:
    """Prints what changes about a lease (and its replacements) as plain lines."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.lease_id: str | None = None
        self.states: dict[str, str] = {}
        self.seen: dict[tuple[str, float, str, float], None] = {}

    def _new(self, key: tuple[str, float, str, float]) -> bool:
        if key in self.seen:
            return False
        self.seen[key] = None
        if len(self.seen) > 512:  # bounded: only recent samples can come again
            del self.seen[next(iter(self.seen))]
        return True

    def show(self, lease: LeaseSnapshot) -> None:
        """Print what is new in ``lease`` since the last call."""
        if lease.id != self.lease_id:
            if self.lease_id is not None:
                self.echo(f"{_clock(time.time())} lease {self.lease_id} replaced by {lease.id}")
            self.lease_id = lease.id
            self.echo(
                f"{_clock(time.time())} lease {lease.id}: {lease.contract} on {lease.backend},"
                f" {lease.state}, policy {lease.policy}"
                + "".join(f", endpoint {k}={v}" for k, v in lease.endpoints.items())
            )
        for o in lease.objectives:
            key = f"{lease.id}/{o.key}"
            if self.states.get(key) != o.state:
                self.states[key] = o.state
                self.echo(f"{_clock(o.changed_at)} objective {o.key}: {o.state} ({o.display})")
        for sample in lease.recent:
            if self._new((lease.id, sample.at, sample.sli, sample.value)):
                self.echo(
                    f"{_clock(sample.at)} sample {sample.sli} = {sample_text(lease, sample)}"
                    f" ({sample.source})"
                )
        for v in lease.violations:
            if self._new((lease.id, v.at, f"violation {v.key}", v.since)):
                self.echo(f"{_clock(v.at)} {v.severity}: {v.text}")
        key = f"{lease.id}/lease"
        if lease.state not in _ACTIVE and self.states.get(key) != lease.state:
            self.states[key] = lease.state
            reason = f": {lease.reason}" if lease.reason else ""
            self.echo(f"{_clock(time.time())} lease {lease.id} {lease.state}{reason}")


_GONE_AFTER = 3
"""Polls without any snapshot of the lease before saying its monitor is gone."""


@click.command()
@click.argument("lease_id")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print the table once and exit.")
@click.option(
    "--plain/--table",
    default=None,
    help="Plain lines as things happen, or a live table. Default: a table on a terminal.",
)
@monitor_dir_option
def watch(
    lease_id: str, interval: float, once: bool, plain: bool | None, directory: Path | None
) -> None:
    """Stream a lease's SLI samples and violations, following it through renegotiations."""
    directory = monitor_dir() if directory is None else directory
    console = Console()
    lease = find_lease(lease_id, directory)
    if lease is None:
        click.echo(
            f"no monitor publishes lease {lease_id} in {directory} (is it held by a process"
            " that watches it: aicontract acquire, aicontract.lease(...), a Monitor?)",
            err=True,
        )
        sys.exit(1)
    if once:
        console.print(render(lease))
        return
    if plain is None:
        plain = not console.is_terminal
    lease_found = lease

    def follow(show: Callable[[LeaseSnapshot], None]) -> None:
        current: LeaseSnapshot = lease_found
        missing = 0
        show(current)
        while current.state in _ACTIVE:
            time.sleep(interval)
            found = find_lease(current.id, directory)  # follows replacements from there
            if found is None:
                missing += 1
                if missing >= _GONE_AFTER:
                    click.echo(f"the monitor of lease {current.id} is gone", err=True)
                    sys.exit(1)
                continue
            missing, current = 0, found
            show(current)

    try:
        if plain:
            follower = PlainFollower(lambda line: click.echo(line))
            follow(follower.show)
        else:
            with Live(render(lease), console=console, refresh_per_second=4) as live:
                follow(lambda current: live.update(render(current)))
    except KeyboardInterrupt:
        return


COMMANDS = [watch]
