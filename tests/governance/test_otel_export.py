"""The record as OpenTelemetry log records: through the Logs API, and as OTLP/JSON lines."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor

from aicontract.cli import main
from aicontract.governance import Record
from aicontract.monitor.telemetry import emit_record, export_record_otlp_json, record_attributes

try:  # renamed in SDK 1.39
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
except ImportError:  # pragma: no cover - older SDKs
    from opentelemetry.sdk._logs.export import (  # type: ignore[attr-defined,no-redef]
        InMemoryLogExporter as InMemoryLogRecordExporter,
    )


def _record(path: Path) -> list[dict[str, Any]]:
    record = Record(path)
    record.append(
        "grant",
        1000.5,
        {"lease": "l1", "tenant": "team-a", "gpus": 2, "offers": ["a", "b"], "price": None},
    )
    record.append("refuse", 1001.0, {"tenant": "team-b", "refusals": ["quotas.gpus: 5 > 4"]})
    record.append("commit-failed", 1002.0, {"tenant": "team-a", "reason": "boom"})
    record.close()
    return list(Record(path).entries())


def test_entries_go_through_the_logs_api_with_typed_attributes(tmp_path: Path) -> None:
    entries = _record(tmp_path / "record.jsonl")
    exporter = InMemoryLogRecordExporter()
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    assert emit_record(entries, logger_provider=provider) == 3
    logs = exporter.get_finished_logs()
    assert [log.instrumentation_scope.name for log in logs] == ["aicontract.record"] * 3
    grant, refuse, failed = (log.log_record for log in logs)
    assert grant.timestamp == 1_000_500_000_000
    assert (grant.severity_text, refuse.severity_text, failed.severity_text) == (
        "INFO",
        "WARN",
        "ERROR",
    )
    assert grant.body == "grant"
    assert grant.attributes is not None
    assert grant.attributes["aicontract.gpus"] == 2
    assert tuple(grant.attributes["aicontract.offers"]) == ("a", "b")
    assert grant.attributes["aicontract.hash"] == entries[0]["hash"]
    assert "aicontract.price" not in grant.attributes  # None is left out
    assert "aicontract.at" not in grant.attributes  # it is the timestamp


def test_nested_values_become_json_text() -> None:
    assert record_attributes({"x": {"b": 1, "a": [1]}, "ok": True}) == {
        "aicontract.x": '{"a": [1], "b": 1}',
        "aicontract.ok": True,
    }


def test_otlp_json_lines_batch_and_keep_every_entry(tmp_path: Path) -> None:
    record = Record(tmp_path / "record.jsonl")
    for i in range(5):
        record.append("grant", 2000.0 + i, {"lease": f"l{i}", "tenant": "t", "gpus": i})
    record.close()
    out = io.StringIO()
    written = export_record_otlp_json(Record(record.path).entries(), out, batch=2)
    assert written == 5
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3  # 2 + 2 + 1
    records = [
        item
        for line in lines
        for resource in line["resourceLogs"]
        for scope in resource["scopeLogs"]
        for item in scope["logRecords"]
    ]
    assert [r["timeUnixNano"] for r in records] == [str((2000 + i) * 10**9) for i in range(5)]
    gpus = [next(a for a in r["attributes"] if a["key"] == "aicontract.gpus") for r in records]
    assert [g["value"] for g in gpus] == [{"intValue": str(i)} for i in range(5)]
    resource = lines[0]["resourceLogs"][0]
    service = {a["key"]: a["value"] for a in resource["resource"]["attributes"]}
    assert service["service.name"] == {"stringValue": "aicontract"}
    assert resource["scopeLogs"][0]["scope"]["name"] == "aicontract.record"


@pytest.mark.parametrize("tenant", [None, "team-b"])
def test_cli_export_otel(tmp_path: Path, tenant: str | None) -> None:
    path = tmp_path / "record.jsonl"
    entries = _record(path)
    args = ["audit", "export", "--record", str(path), "--format", "otel"]
    if tenant:
        args += ["--tenant", tenant]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    (request,) = [json.loads(line) for line in result.output.splitlines()]
    logs = request["resourceLogs"][0]["scopeLogs"][0]["logRecords"]
    wanted = [e for e in entries if tenant is None or e["tenant"] == tenant]
    assert len(logs) == len(wanted)
    assert logs[0]["body"]["stringValue"].startswith(f"#{wanted[0]['seq']} ")
    if tenant:
        assert logs[0]["severityText"] == "WARN"
        assert logs[0]["severityNumber"] == 13
