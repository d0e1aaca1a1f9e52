"""What the platform team sees: published snapshots, `watch`, `metrics`, OpenTelemetry."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from monitor_support import service_contract

from aicontract import Monitor, Negotiator, Objective, VirtualClock
from aicontract.cli import main
from aicontract.monitor.snapshot import read_snapshots
from aicontract.monitor.telemetry import Telemetry

pytestmark = pytest.mark.anyio

P90 = Objective(sli="latency_p90", op="<=", target="200ms", window="1m")
KEY = "latency_p90<=200ms/1m"


async def _violated_lease(monitor: Monitor, clock: VirtualClock) -> str:
    lease = await monitor.acquire(service_contract(P90))
    for second in range(20):
        await clock.advance(1)
        lease.report(latency=0.9 if second >= 10 else 0.01)
    await clock.advance(1)
    monitor.publish_now()  # as the publishing loop does every publish_interval
    return lease.id


async def test_watch_and_metrics_read_what_the_monitor_publishes(
    negotiator: Negotiator, clock: VirtualClock, tmp_path: Path
) -> None:
    pytest.importorskip("prometheus_client")
    monitor = Monitor(negotiator, publish_dir=tmp_path, publish_interval=1.0, telemetry=Telemetry())
    async with monitor:
        lease_id = await _violated_lease(monitor, clock)
        [snapshot] = read_snapshots(tmp_path)
        [lease] = snapshot.leases
        assert lease.id == lease_id
        assert lease.violations_total == 2  # a warning, then escalated to critical
        assert lease.objectives[0].state == "violated"
        runner = CliRunner()
        shown = runner.invoke(main, ["watch", lease_id, "--once", "--dir", str(tmp_path)])
        assert shown.exit_code == 0, shown.output
        assert "latency_p90<=200ms/1m" in shown.output
        assert "violated" in shown.output
        text = runner.invoke(main, ["metrics", "--dir", str(tmp_path)])
        assert text.exit_code == 0, text.output
        state = f'aicontract_objective_state{{lease="{lease_id}",objective="{KEY}"}} 1.0'
        assert state in text.output
        assert f'aicontract_violations_total{{lease="{lease_id}"}} 2.0' in text.output
    assert read_snapshots(tmp_path) == []  # the file goes with the monitor
    missing = CliRunner().invoke(main, ["watch", "nope", "--once", "--dir", str(tmp_path)])
    assert missing.exit_code == 1
    assert "no monitor publishes lease nope" in missing.output


async def test_opentelemetry_and_prometheus_exporters(
    negotiator: Negotiator, clock: VirtualClock
) -> None:
    pytest.importorskip("opentelemetry.sdk")
    prom = pytest.importorskip("prometheus_client")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from aicontract.monitor.telemetry import MultiTelemetry, OpenTelemetry, PrometheusTelemetry

    reader = InMemoryMetricReader()
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    registry = prom.CollectorRegistry()
    telemetry = MultiTelemetry(
        [
            OpenTelemetry(MeterProvider(metric_readers=[reader]), tracer_provider),
            PrometheusTelemetry.for_registry(registry),
        ]
    )
    async with Monitor(negotiator, publish=False, telemetry=telemetry) as monitor:
        lease_id = await _violated_lease(monitor, clock)
    data = reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {
        "aicontract.negotiations",
        "aicontract.commits",
        "aicontract.sli",
        "aicontract.violations",
        "aicontract.objective.transitions",
    } <= names
    assert "aicontract.acquire" in {s.name for s in spans.get_finished_spans()}
    text = prom.generate_latest(registry).decode()
    assert (
        f'aicontract_objective_state{{lease="{lease_id}",objective="latency_p90<=200ms/1m"}} 1.0'
        in text
    )
    assert 'aicontract_violations_total{objective="latency_p90<=200ms/1m",severity=' in text


def test_without_extras_nothing_is_imported() -> None:
    import subprocess
    import sys

    code = (
        "import sys, importlib.util as u\n"
        "real = u.find_spec\n"
        "u.find_spec = lambda name, *a: None if name.startswith(('opentelemetry', 'prometheus'))"
        " else real(name, *a)\n"
        "from aicontract.monitor.telemetry import default_telemetry\n"
        "from aicontract import monitor\n"
        "t = default_telemetry()\n"
        "assert type(t).__name__ == 'Telemetry' and not t.enabled\n"
        "assert not [m for m in sys.modules if m.startswith(('opentelemetry', 'prometheus'))]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_prometheus_samples_keep_the_last_value_and_go_with_the_lease() -> None:
    prom = pytest.importorskip("prometheus_client")
    from types import SimpleNamespace

    from aicontract import LeaseState, Sample
    from aicontract.monitor.telemetry import PrometheusTelemetry

    registry = prom.CollectorRegistry()
    telemetry = PrometheusTelemetry.for_registry(registry)
    for value in (1.0, 2.5):
        telemetry.sample("lease-a", Sample(sli="throughput", value=value, at=0.0))
    telemetry.sample("lease-b", Sample(sli="throughput", value=7.0, at=0.0))
    text = prom.generate_latest(registry).decode()
    assert 'aicontract_sli_value{lease="lease-a",sli="throughput"} 2.5' in text
    assert 'aicontract_sli_samples_total{sli="throughput"} 3.0' in text
    lease = SimpleNamespace(id="lease-a", state=LeaseState.RELEASED)
    telemetry.lease_state(lease, LeaseState.ACTIVE, LeaseState.RELEASED)  # type: ignore[arg-type]
    telemetry.sample("lease-b", Sample(sli="throughput", value=8.0, at=0.0))
    text = prom.generate_latest(registry).decode()
    assert 'lease="lease-a"' not in text
    assert 'aicontract_sli_value{lease="lease-b",sli="throughput"} 8.0' in text
