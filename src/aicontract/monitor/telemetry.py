"""Metrics and spans for negotiations, commits, lease states, SLI samples and violations.

Two optional exporters, each used only when its package is installed:

* OpenTelemetry (``pip install aicontract[otel]``): instruments from the global
  meter and tracer providers — configure the SDK as you do for the rest of
  your program and aicontract's figures go where yours go;
* prometheus_client (``pip install aicontract[prometheus]``): metrics in a
  registry (the default one unless you pass another), for a program that
  already serves ``/metrics``. For leases held by other processes see
  ``aicontract metrics --serve``.

Without either, :func:`default_telemetry` returns a :class:`Telemetry` that
does nothing; neither package is imported, and callers skip the work of
building attributes (``telemetry.enabled`` is False).

The record (:mod:`aicontract.governance.record`) leaves as OpenTelemetry log
records: :func:`emit_record` hands entries to a logger from the Logs API (the
global provider, or one you pass), and :func:`export_record_otlp_json` writes them,
through the SDK, as OTLP/JSON lines a collector's ``otlpjsonfile`` receiver reads
(``aicontract audit export --format otel``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from ..leases import Lease, LeaseState
    from ..observation import ObjectiveState, Sample, Violation

__all__ = [
    "MultiTelemetry",
    "OpenTelemetry",
    "PrometheusTelemetry",
    "Telemetry",
    "default_telemetry",
    "emit_record",
    "export_record_otlp_json",
    "record_attributes",
]

_OBJECTIVE_STATE_VALUE = {"undetermined": -1.0, "met": 0.0, "violated": 1.0}


class Telemetry:
    """Receives what the monitor sees. This base does nothing and costs nothing."""

    enabled: bool = False

    @contextlib.contextmanager
    def span(self, name: str, **attributes: str | int | float) -> Iterator[None]:
        """A span around a block (negotiation, commit, renegotiation)."""
        yield

    def negotiation(self, contract: str, outcome: str, offers: int, seconds: float) -> None:
        """One negotiation ended (``outcome``: ``leased``, ``no-offer``, ``error``)."""

    def commit(self, lease: Lease) -> None:
        """A lease was committed."""

    def lease_state(self, lease: Lease, old: LeaseState, new: LeaseState) -> None:
        """A lease changed state."""

    def sample(self, lease_id: str, sample: Sample) -> None:
        """One SLI sample arrived."""

    def objective_state(self, lease_id: str, key: str, state: ObjectiveState) -> None:
        """An objective changed state."""

    def violation(self, violation: Violation) -> None:
        """A violation fired."""

    def renegotiation(self, lease_id: str, outcome: str) -> None:
        """A renegotiation ended (``replaced``, ``no-offer``, ``refused``)."""


@attrs.define(eq=False)
class MultiTelemetry(Telemetry):
    """Forwards to several exporters."""

    parts: Sequence[Telemetry] = ()
    enabled: bool = True

    @contextlib.contextmanager
    def span(self, name: str, **attributes: str | int | float) -> Iterator[None]:
        """Spans from every part, nested."""
        with contextlib.ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.span(name, **attributes))
            yield

    def negotiation(self, contract: str, outcome: str, offers: int, seconds: float) -> None:
        """Forward."""
        for part in self.parts:
            part.negotiation(contract, outcome, offers, seconds)

    def commit(self, lease: Lease) -> None:
        """Forward."""
        for part in self.parts:
            part.commit(lease)

    def lease_state(self, lease: Lease, old: LeaseState, new: LeaseState) -> None:
        """Forward."""
        for part in self.parts:
            part.lease_state(lease, old, new)

    def sample(self, lease_id: str, sample: Sample) -> None:
        """Forward."""
        for part in self.parts:
            part.sample(lease_id, sample)

    def objective_state(self, lease_id: str, key: str, state: ObjectiveState) -> None:
        """Forward."""
        for part in self.parts:
            part.objective_state(lease_id, key, state)

    def violation(self, violation: Violation) -> None:
        """Forward."""
        for part in self.parts:
            part.violation(violation)

    def renegotiation(self, lease_id: str, outcome: str) -> None:
        """Forward."""
        for part in self.parts:
            part.renegotiation(lease_id, outcome)


class OpenTelemetry(Telemetry):
    """Exports through the OpenTelemetry API (global providers unless given)."""

    enabled = True

    def __init__(self, meter_provider: Any = None, tracer_provider: Any = None) -> None:
        from opentelemetry import metrics, trace

        from .._version import __version__

        meter = metrics.get_meter("aicontract", __version__, meter_provider=meter_provider)
        self._tracer = trace.get_tracer("aicontract", __version__, tracer_provider=tracer_provider)

        # Every instrument is named aicontract.<what>; most are plain counters.
        def counter(name: str, description: str) -> Any:
            return meter.create_counter(f"aicontract.{name}", description=description)

        self._negotiations = counter("negotiations", "Negotiations, by outcome")
        self._offers = counter("offers", "Acceptable offers seen in negotiations")
        self._commits = counter("commits", "Leases committed")
        self._transitions = counter("lease.transitions", "Lease state changes")
        self._leases = meter.create_up_down_counter(
            "aicontract.leases", description="Leases by state"
        )
        self._samples = meter.create_histogram(
            "aicontract.sli", description="SLI samples, in base units (s, 1/s, fraction)"
        )
        self._objectives = counter("objective.transitions", "Objective state changes")
        self._violations = counter("violations", "Violations, by severity")
        self._renegotiations = counter("renegotiations", "Renegotiations, by outcome")

    @contextlib.contextmanager
    def span(self, name: str, **attributes: str | int | float) -> Iterator[None]:
        """An OpenTelemetry span."""
        with self._tracer.start_as_current_span(name, attributes=attributes):
            yield

    def negotiation(self, contract: str, outcome: str, offers: int, seconds: float) -> None:
        """Count the negotiation and its offers."""
        self._negotiations.add(1, {"contract": contract, "outcome": outcome})
        self._offers.add(offers, {"contract": contract})

    def commit(self, lease: Lease) -> None:
        """Count the commit."""
        self._commits.add(1, {"backend": lease.backend.name, "guarantee": lease.guarantee})
        self._leases.add(1, {"state": lease.state.value})

    def lease_state(self, lease: Lease, old: LeaseState, new: LeaseState) -> None:
        """Count the transition; move the lease between state gauges."""
        self._transitions.add(1, {"from": old.value, "to": new.value})
        self._leases.add(-1, {"state": old.value})
        self._leases.add(1, {"state": new.value})

    def sample(self, lease_id: str, sample: Sample) -> None:
        """Record the value."""
        self._samples.record(sample.value, {"sli": sample.sli, "source": sample.source})

    def objective_state(self, lease_id: str, key: str, state: ObjectiveState) -> None:
        """Count the objective's change."""
        self._objectives.add(1, {"objective": key, "state": state.value})

    def violation(self, violation: Violation) -> None:
        """Count the violation and mark it on the current span."""
        self._violations.add(1, {"objective": violation.key, "severity": violation.severity})
        from opentelemetry import trace

        trace.get_current_span().add_event(
            "aicontract.violation",
            {
                "lease": violation.lease_id,
                "objective": violation.key,
                "severity": violation.severity,
            },
        )

    def renegotiation(self, lease_id: str, outcome: str) -> None:
        """Count the renegotiation."""
        self._renegotiations.add(1, {"outcome": outcome})


_PROM_LOCK = threading.Lock()
_PROM_BY_REGISTRY: dict[int, PrometheusTelemetry] = {}


class PrometheusTelemetry(Telemetry):
    """Exports to a prometheus_client registry (use :meth:`for_registry` to share one)."""

    enabled = True

    def __init__(self, registry: Any = None) -> None:
        import prometheus_client as prom

        if registry is None:
            registry = prom.REGISTRY
        kw: dict[str, Any] = {"registry": registry}
        self.registry = registry
        self._negotiations = prom.Counter(
            "aicontract_negotiations", "Negotiations, by outcome", ["outcome"], **kw
        )
        self._offers = prom.Counter("aicontract_offers", "Acceptable offers seen", **kw)
        self._commits = prom.Counter("aicontract_commits", "Leases committed", ["backend"], **kw)
        self._leases = prom.Gauge("aicontract_leases", "Leases by state", ["state"], **kw)
        self._sli = prom.Gauge(
            "aicontract_sli_value", "Last SLI sample, base units", ["lease", "sli"], **kw
        )
        self._samples = prom.Counter("aicontract_sli_samples", "SLI samples", ["sli"], **kw)
        self._objective = prom.Gauge(
            "aicontract_objective_state",
            "Objective state: -1 undetermined, 0 met, 1 violated",
            ["lease", "objective"],
            **kw,
        )
        self._violations = prom.Counter(
            "aicontract_violations", "Violations", ["objective", "severity"], **kw
        )
        self._renegotiations = prom.Counter(
            "aicontract_renegotiations", "Renegotiations", ["outcome"], **kw
        )
        # The labelled children a sample updates, kept: ``labels()`` costs more than the
        # update itself, and a busy workload reports thousands of samples a second.
        self._sample_children: dict[tuple[str, str], tuple[Any, Any]] = {}

    @classmethod
    def for_registry(cls, registry: Any = None) -> PrometheusTelemetry:
        """The one exporter for ``registry`` (metrics register once per registry)."""
        with _PROM_LOCK:
            key = id(registry)
            if key not in _PROM_BY_REGISTRY:
                _PROM_BY_REGISTRY[key] = cls(registry)
            return _PROM_BY_REGISTRY[key]

    def negotiation(self, contract: str, outcome: str, offers: int, seconds: float) -> None:
        """Count it."""
        self._negotiations.labels(outcome).inc()
        self._offers.inc(offers)

    def commit(self, lease: Lease) -> None:
        """Count it."""
        self._commits.labels(lease.backend.name).inc()
        self._leases.labels(lease.state.value).inc()

    def lease_state(self, lease: Lease, old: LeaseState, new: LeaseState) -> None:
        """Move the lease between states."""
        self._leases.labels(old.value).dec()
        self._leases.labels(new.value).inc()
        if new.is_final:
            self._forget(lease.id)

    def _forget(self, lease_id: str) -> None:
        for key in [k for k in self._sample_children if k[0] == lease_id]:
            self._sample_children.pop(key, None)
        for gauge in (self._sli, self._objective):
            for labels in [k for k in _label_sets(gauge) if k and k[0] == lease_id]:
                with contextlib.suppress(KeyError):
                    gauge.remove(*labels)

    def sample(self, lease_id: str, sample: Sample) -> None:
        """Keep the last value."""
        key = (lease_id, sample.sli)
        children = self._sample_children.get(key)
        if children is None:
            children = (self._sli.labels(lease_id, sample.sli), self._samples.labels(sample.sli))
            self._sample_children[key] = children
        children[0].set(sample.value)
        children[1].inc()

    def objective_state(self, lease_id: str, key: str, state: ObjectiveState) -> None:
        """Set the state gauge."""
        self._objective.labels(lease_id, key).set(_OBJECTIVE_STATE_VALUE[state.value])

    def violation(self, violation: Violation) -> None:
        """Count it."""
        self._violations.labels(violation.key, violation.severity).inc()

    def renegotiation(self, lease_id: str, outcome: str) -> None:
        """Count it."""
        self._renegotiations.labels(outcome).inc()


def _label_sets(metric: Any) -> list[tuple[str, ...]]:
    with metric._lock:  # prometheus_client keeps children in a private dict
        return list(metric._metrics)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def default_telemetry() -> Telemetry:
    """OpenTelemetry and/or Prometheus export for what is installed; a no-op otherwise."""
    parts: list[Telemetry] = []
    if _installed("opentelemetry") and _installed("opentelemetry.metrics"):
        parts.append(OpenTelemetry())
    if _installed("prometheus_client"):
        parts.append(PrometheusTelemetry.for_registry(None))
    if not parts:
        return Telemetry()
    return parts[0] if len(parts) == 1 else MultiTelemetry(parts)


# -- the record as OpenTelemetry log records -------------------------------------------

RECORD_LOGGER = "aicontract.record"
_RECORD_SEVERITY = {
    "refuse": "WARN",
    "no-offer": "WARN",
    "budget": "WARN",
    "violation": "WARN",
    "commit-failed": "ERROR",
}


def record_attributes(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A record entry as log attributes: ``aicontract.<key>``, values kept typed.

    Numbers, text and booleans stay as they are, lists of text become arrays, and
    anything else (rare: nested objects) its JSON text; empty values are left out.
    """
    out: dict[str, Any] = {}
    for key, value in entry.items():
        if value is None or key == "at":  # `at` is the record's timestamp
            continue
        if isinstance(value, (bool, int, float, str)):
            out[f"aicontract.{key}"] = value
        elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            out[f"aicontract.{key}"] = tuple(value)
        else:
            out[f"aicontract.{key}"] = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return out


def emit_record(
    entries: Iterable[Mapping[str, Any]],
    *,
    logger_provider: Any = None,
    describe: Callable[[Mapping[str, Any]], str] | None = None,
) -> int:
    """Emit record entries as OpenTelemetry log records; return how many.

    Through the Logs API's logger ``aicontract.record`` from ``logger_provider``
    (default: the global one your SDK configuration set, and nothing happens
    without one). Each record's time is the entry's ``at``; its body the one-line
    ``describe(entry)`` (default: its kind); refusals, budget warnings and
    violations are ``WARN``, failed commits ``ERROR``, the rest ``INFO``.
    """
    from opentelemetry._logs import LogRecord, SeverityNumber, get_logger

    from .._version import __version__

    logger = get_logger(RECORD_LOGGER, __version__, logger_provider=logger_provider)
    count = 0
    for entry in entries:
        level = _RECORD_SEVERITY.get(str(entry.get("kind")), "INFO")
        logger.emit(
            LogRecord(
                timestamp=int(float(entry.get("at") or 0) * 1e9),
                severity_text=level,
                severity_number=getattr(SeverityNumber, level),
                body=describe(entry) if describe else str(entry.get("kind")),
                attributes=record_attributes(entry),
            )
        )
        count += 1
    return count


def _any_value(value: Any) -> dict[str, Any]:
    """One OTLP/JSON ``AnyValue`` (int64 as a string, as proto3 JSON writes it)."""
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    if isinstance(value, bytes):
        import base64

        return {"bytesValue": base64.b64encode(value).decode()}
    return {"stringValue": str(value)}


def _key_values(attributes: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in (attributes or {}).items()]


def otlp_json(records: Sequence[Any]) -> dict[str, Any]:
    """SDK log records as one OTLP/JSON ``ExportLogsServiceRequest``, by resource and scope."""
    resources: dict[int, tuple[Any, dict[tuple[str, str], list[dict[str, Any]]]]] = {}
    for readable in records:
        record = readable.log_record
        scope = readable.instrumentation_scope
        key = (getattr(scope, "name", ""), getattr(scope, "version", None) or "")
        # The SDK's ReadableLogRecord carries the resource; before 1.39 its LogData's record did.
        resource = getattr(readable, "resource", None) or getattr(record, "resource", None)
        _, scopes = resources.setdefault(id(resource), (resource, {}))
        item: dict[str, Any] = {
            "timeUnixNano": str(record.timestamp or 0),
            "observedTimeUnixNano": str(record.observed_timestamp or 0),
            "severityNumber": record.severity_number.value if record.severity_number else 0,
            "severityText": record.severity_text or "",
            "body": _any_value(record.body),
            "attributes": _key_values(record.attributes),
        }
        if record.trace_id:
            item["traceId"] = f"{record.trace_id:032x}"
            item["spanId"] = f"{record.span_id:016x}"
        scopes.setdefault(key, []).append(item)
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": _key_values(getattr(resource, "attributes", None))},
                "scopeLogs": [
                    {"scope": {"name": name, "version": version}, "logRecords": items}
                    for (name, version), items in scopes.items()
                ],
            }
            for resource, scopes in resources.values()
        ]
    }


def export_record_otlp_json(
    entries: Iterable[Mapping[str, Any]],
    out: IO[str],
    *,
    describe: Callable[[Mapping[str, Any]], str] | None = None,
    batch: int = 512,
) -> int:
    """Write record entries to ``out`` as OTLP/JSON lines (one export request per line).

    Built with the OpenTelemetry SDK — a ``LoggerProvider`` with the resource
    ``service.name=aicontract``, the entries emitted through :func:`emit_record`,
    and an exporter that writes each batch as the JSON a collector's
    ``otlpjsonfile`` receiver reads. Synchronous: nothing is dropped, however
    long the record. Needs ``opentelemetry-sdk`` (``pip install 'aicontract[otel]'``).
    """
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    try:  # renamed in SDK 1.39 (LogExportResult before)
        from opentelemetry.sdk._logs.export import LogRecordExportResult as Result
    except ImportError:  # pragma: no cover - older SDKs
        from opentelemetry.sdk._logs.export import (  # type: ignore[assignment]
            LogExportResult as Result,
        )

    pending: list[Any] = []

    def flush() -> None:
        if pending:
            out.write(json.dumps(otlp_json(pending), ensure_ascii=False) + "\n")
            pending.clear()

    class _Collect:
        """A synchronous exporter that batches records into lines here."""

        def export(self, records: Sequence[Any]) -> Any:
            pending.extend(records)
            if len(pending) >= batch:
                flush()
            return Result.SUCCESS

        def shutdown(self) -> None:
            flush()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            flush()
            return True

    provider = LoggerProvider(resource=Resource.create({"service.name": "aicontract"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(_Collect()))  # type: ignore[arg-type]
    try:
        return emit_record(entries, logger_provider=provider, describe=describe)
    finally:
        provider.shutdown()
