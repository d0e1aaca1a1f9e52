"""What a monitor publishes for other processes: ``aicontract watch`` and ``aicontract metrics``.

Each monitoring process writes one small JSON file (``<state dir>/monitor/
<pid>-<id>.json``), replaced atomically every couple of seconds: its leases,
their objectives' states and values, the last value of each SLI and the last
few samples and violations. Everything in it is bounded, so the file's size
does not grow with time. Readers skip files of processes that are gone.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import msgspec

from ..observation import Sample

__all__ = [
    "LeaseSnapshot",
    "MonitorSnapshot",
    "ObjectiveSnapshot",
    "ViolationSnapshot",
    "monitor_dir",
    "read_snapshots",
    "write_snapshot",
]


class ObjectiveSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One objective: its key, state and value over its window (base units)."""

    key: str
    sli: str
    op: str
    target: str
    window: float
    state: str
    value: float | None
    display: str
    changed_at: float | None = None


class ViolationSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One violation, as text and figures."""

    key: str
    severity: str
    at: float
    since: float
    observed: float | None
    text: str


class LeaseSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """One monitored lease."""

    id: str
    backend: str
    contract: str
    state: str
    policy: str
    expires_at: float
    endpoints: dict[str, str]
    objectives: list[ObjectiveSnapshot]
    last: dict[str, float]
    samples_total: int
    violations_total: int
    renegotiations_total: int
    renegotiations_left: int
    recent: list[Sample]
    violations: list[ViolationSnapshot]
    replaced_by: str | None = None
    reason: str | None = None


class MonitorSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one monitor watches."""

    pid: int
    written_at: float
    leases: list[LeaseSnapshot]


def monitor_dir() -> Path:
    """Where monitors publish: ``$AICONTRACT_STATE_DIR/monitor`` or the per-user state dir's."""
    env = os.environ.get("AICONTRACT_STATE_DIR")
    if env:
        return Path(env) / "monitor"
    import platformdirs

    return Path(platformdirs.user_state_dir("aicontract")) / "monitor"


def write_snapshot(path: Path, snapshot: MonitorSnapshot) -> None:
    """Replace ``path`` with ``snapshot`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A name of its own per write: the periodic publisher (in a worker thread) and
    # the final publish on exit may overlap, and must not rename each other's file.
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(msgspec.json.encode(snapshot))
    os.replace(tmp, path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_snapshots(directory: Path | None = None) -> list[MonitorSnapshot]:
    """Every live monitor's snapshot in ``directory`` (default :func:`monitor_dir`)."""
    directory = monitor_dir() if directory is None else directory
    out: list[MonitorSnapshot] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            snapshot = msgspec.json.decode(path.read_bytes(), type=MonitorSnapshot)
        except (OSError, msgspec.DecodeError):
            continue
        if not _alive(snapshot.pid):
            with contextlib.suppress(OSError):
                path.unlink()
            continue
        out.append(snapshot)
    return out
