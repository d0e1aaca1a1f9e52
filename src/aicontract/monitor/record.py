"""The performance record: what each placement actually delivered against each SLI.

A *placement* is where a lease ran: backend, region, GPU model and workload
kind (``local/local/H100/inference``). For each placement and objective SLI
(``latency_p99``, ``throughput``) the record keeps what monitors measured —
how many measurements, their mean and worst, when last seen — and when the
placement last violated an objective on that SLI.

The negotiator reads it (:meth:`PerformanceRecord.predict`): an offer whose
placement has evidence gets a predicted value; an offer predicted to break an
objective is dropped with the evidence; the rest rank by predicted margin,
and a placement that violated an objective recently ranks last, so a
replacement goes elsewhere when anywhere else can serve.

It never predicts without evidence: fewer than ``min_evidence`` measurements,
or none within ``horizon`` seconds, and :meth:`~PerformanceRecord.predict`
returns ``None``. The process keeps one record (:func:`performance_record`);
local placements are also kept per host, in ``<state dir>/performance.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

import attrs
import msgspec

from ..contract import Contract, Objective
from ..offer import Grant

__all__ = ["Evidence", "PerformanceRecord", "performance_record", "placement_of"]

log = logging.getLogger("aicontract.monitor")


class Evidence(msgspec.Struct, kw_only=True):
    """What one placement delivered on one objective SLI (values in base units)."""

    count: int = 0
    mean: float = 0.0
    worst: float | None = None
    last_at: float = 0.0
    violated_at: float | None = None


def placement_of(backend: str, region: str, grant: Grant, contract: Contract) -> str:
    """The placement key of an offer or lease: ``backend/region/gpu model/workload kind``."""
    kind = contract.workload.kind if contract.workload is not None else "-"
    return f"{backend}/{region}/{grant.gpu_model or '-'}/{kind}"


def _worse(objective: Objective, a: float, b: float) -> float:
    # For "<=" targets (latency, error rate) bigger is worse; for ">=" (throughput) smaller.
    return max(a, b) if objective.op in ("<=", "<") else min(a, b)


@attrs.define(eq=False)
class PerformanceRecord:
    """Evidence per placement and objective SLI; see the module's docstring.

    ``path`` keeps the placements of the ``local`` backend across processes
    on this host; others live as long as the process.
    """

    path: Path | None = None
    min_evidence: int = 3
    horizon: float = 3600.0
    """Evidence older than this (seconds) no longer predicts anything."""
    _data: dict[str, dict[str, Evidence]] = attrs.field(factory=dict)
    _lock: threading.Lock = attrs.field(factory=threading.Lock)

    def __attrs_post_init__(self) -> None:
        if self.path is not None:
            with contextlib.suppress(OSError, msgspec.DecodeError):
                self._data = msgspec.json.decode(
                    self.path.read_bytes(), type=dict[str, dict[str, Evidence]]
                )

    def observe(self, placement: str, objective: Objective, value: float, at: float) -> None:
        """Record that ``placement`` delivered ``value`` on ``objective``'s SLI at ``at``."""
        with self._lock:
            evidence = self._data.setdefault(placement, {}).setdefault(objective.sli, Evidence())
            evidence.count += 1
            evidence.mean += (value - evidence.mean) / min(evidence.count, 20)  # recent-weighted
            evidence.worst = (
                value if evidence.worst is None else _worse(objective, evidence.worst, value)
            )
            evidence.last_at = max(evidence.last_at, at)

    def violated(self, placement: str, objective: Objective, at: float) -> None:
        """Mark ``placement`` as having violated ``objective`` at ``at``."""
        with self._lock:
            evidence = self._data.setdefault(placement, {}).setdefault(objective.sli, Evidence())
            evidence.violated_at = at

    def evidence(self, placement: str, sli: str) -> Evidence | None:
        """What the record holds for ``placement`` and ``sli`` (a copy), if anything."""
        with self._lock:
            found = self._data.get(placement, {}).get(sli)
            return None if found is None else msgspec.structs.replace(found)

    def predict(self, placement: str, objective: Objective, now: float) -> float | None:
        """The value ``placement`` is likely to deliver on ``objective``'s SLI, or ``None``.

        ``None`` unless there are at least ``min_evidence`` measurements, the
        last within ``horizon`` seconds of ``now``.
        """
        found = self.evidence(placement, objective.sli)
        if found is None or found.count < self.min_evidence:
            return None
        if now - found.last_at > self.horizon:
            return None
        return found.mean

    def recently_violated(self, placement: str, contract: Contract, now: float) -> bool:
        """True when ``placement`` violated one of ``contract``'s objectives within the horizon."""
        for objective in contract.objectives:
            found = self.evidence(placement, objective.sli)
            violated_at = found.violated_at if found is not None else None
            if violated_at is not None and now - violated_at <= self.horizon:
                return True
        return False

    def save(self) -> None:
        """Write the local placements to :attr:`path` (atomically); others stay in memory."""
        if self.path is None:
            return
        with self._lock:
            local = {k: v for k, v in self._data.items() if k.startswith("local/")}
            data = msgspec.json.encode(local)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save the performance record to %s: %s", self.path, exc)


_records: dict[Path, PerformanceRecord] = {}
_record_lock = threading.Lock()


def performance_record() -> PerformanceRecord:
    """This process's record (local placements kept per host in the state dir)."""
    from .snapshot import monitor_dir

    path = monitor_dir().parent / "performance.json"
    with _record_lock:
        if path not in _records:  # one per state dir: AICONTRACT_STATE_DIR may change
            _records[path] = PerformanceRecord(path=path)
        return _records[path]
