"""``aicontract metrics``: every monitored lease on this host in the Prometheus text format.

It reads what monitors publish (see :mod:`aicontract.monitor.snapshot`) and needs the
``prometheus`` extra (``pip install 'aicontract[prometheus]'``). With
``--serve`` it keeps answering scrapes on ``http://ADDR:PORT/metrics``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ..monitor.snapshot import monitor_dir, read_snapshots
from .output import EXIT_ERROR, friendly
from .watch import monitor_dir_option

_STATE = {"undetermined": -1.0, "met": 0.0, "violated": 1.0}


class SnapshotCollector:
    """A prometheus_client collector over the published monitor snapshots."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def collect(self) -> Iterator[Any]:
        """One family per figure, one sample per lease (and objective, SLI)."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        lease_labels = ["lease", "backend", "contract", "state", "policy"]
        info = GaugeMetricFamily(
            "aicontract_lease_info", "A monitored lease (value 1)", labels=lease_labels
        )
        expires = GaugeMetricFamily(
            "aicontract_lease_expires_at_seconds", "Lease expiry (epoch)", labels=["lease"]
        )
        state = GaugeMetricFamily(
            "aicontract_objective_state",
            "Objective state: -1 undetermined, 0 met, 1 violated",
            labels=["lease", "objective"],
        )
        value = GaugeMetricFamily(
            "aicontract_objective_value",
            "The objective's SLI over its window (base units)",
            labels=["lease", "objective"],
        )
        last = GaugeMetricFamily(
            "aicontract_sli_value", "Last SLI sample (base units)", labels=["lease", "sli"]
        )
        samples = CounterMetricFamily("aicontract_sli_samples", "SLI samples", labels=["lease"])
        violations = CounterMetricFamily("aicontract_violations", "Violations", labels=["lease"])
        renegotiations = CounterMetricFamily(
            "aicontract_renegotiations", "Renegotiations", labels=["lease"]
        )
        for snapshot in read_snapshots(self.directory):
            for lease in snapshot.leases:
                info.add_metric(
                    [lease.id, lease.backend, lease.contract, lease.state, lease.policy], 1.0
                )
                expires.add_metric([lease.id], lease.expires_at)
                for o in lease.objectives:
                    state.add_metric([lease.id, o.key], _STATE.get(o.state, -1.0))
                    if o.value is not None:
                        value.add_metric([lease.id, o.key], o.value)
                for sli, v in lease.last.items():
                    last.add_metric([lease.id, sli], v)
                samples.add_metric([lease.id], lease.samples_total)
                violations.add_metric([lease.id], lease.violations_total)
                renegotiations.add_metric([lease.id], lease.renegotiations_total)
        yield from (info, expires, state, value, last, samples, violations, renegotiations)


def _registry(directory: Path) -> Any:
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        click.echo(
            "aicontract metrics needs prometheus_client: pip install 'aicontract[prometheus]'",
            err=True,
        )
        sys.exit(EXIT_ERROR)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(directory))
    return registry


@click.command()
@click.option("--serve", is_flag=True, help="Serve /metrics for Prometheus to scrape.")
@click.option("--port", default=9464, show_default=True, help="Port for --serve.")
@click.option("--addr", default="127.0.0.1", show_default=True, help="Address for --serve.")
@monitor_dir_option
@friendly
def metrics(serve: bool, port: int, addr: str, directory: Path | None) -> None:
    """Print (or serve) every monitored lease's metrics in the Prometheus text format."""
    registry = _registry(monitor_dir() if directory is None else directory)
    from prometheus_client import generate_latest, start_http_server

    if not serve:
        click.echo(generate_latest(registry).decode(), nl=False)
        return
    server, thread = start_http_server(port, addr=addr, registry=registry)
    click.echo(f"serving http://{addr}:{port}/metrics (Ctrl-C to stop)", err=True)
    try:
        while thread.is_alive():
            time.sleep(1)
    except KeyboardInterrupt:
        server.shutdown()


COMMANDS = [metrics]
