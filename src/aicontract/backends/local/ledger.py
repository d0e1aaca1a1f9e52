"""The local ledger: who holds what on this host, shared by every process (SQLite).

Why SQLite: it is on every Python, its ``BEGIN IMMEDIATE`` transactions
serialise writers across processes, and WAL mode survives a writer killed
mid-transaction. Two facts make over-granting impossible (guarantee 1): every
grant runs check-and-insert inside one immediate transaction, and each device
(a GPU, a CPU core) is a row whose primary key is the device, so the database
itself refuses to hand one out twice.

A lease row carries its holder's pid (and the process's start time, so a
recycled pid is not mistaken for the holder) and an expiry that heartbeats
push forward. Expired leases, and leases whose holder process is gone, are
reclaimed (guarantee 4).
"""

from __future__ import annotations

import itertools
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import attrs
import msgspec

from ...errors import CapacityUnavailable, ConfigError
from ...leases import LeaseRecord

__all__ = ["Allocation", "Demand", "Ledger", "process_start_time"]

# The schema's version is in the name: a ledger only describes live processes, so a
# new schema simply starts a new file rather than migrating an old one.
LEDGER_FILE = "ledger-v2.sqlite3"

# How long a holder seen alive is trusted before its pid is checked again.
LIVENESS_CACHE = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    holder_pid INTEGER NOT NULL,
    holder_start INTEGER,
    expires_at REAL NOT NULL,
    memory INTEGER NOT NULL DEFAULT 0,
    disk INTEGER NOT NULL DEFAULT 0,
    record BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    lease_id TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, device)
) WITHOUT ROWID;
"""


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, started: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    if started is None:
        return True
    now_started = process_start_time(pid)
    return now_started is None or now_started == started


_HELD_DEVICES = (
    "SELECT d.kind, d.device FROM devices d JOIN leases l ON l.id = d.lease_id"
    " WHERE l.expires_at >= ?"
)
_HELD_DEVICES_BY_LEASE = (
    "SELECT d.kind, d.device, d.lease_id FROM devices d JOIN leases l ON l.id = d.lease_id"
    " WHERE l.expires_at >= ?"
)
_HELD_AMOUNTS = (
    "SELECT COALESCE(SUM(memory), 0), COALESCE(SUM(disk), 0) FROM leases WHERE expires_at >= ?"
)


@attrs.frozen
class Demand:
    """What one grant needs: how many of which candidate devices, and amounts."""

    gpu_candidates: tuple[str, ...]
    gpus: int
    cpu_candidates: tuple[int, ...]
    cpus: int
    memory: int
    memory_total: int
    disk: int = 0
    disk_total: int | None = None


@attrs.frozen
class Allocation:
    """The devices one grant bound: GPU ids (for ``CUDA_VISIBLE_DEVICES``) and CPU ids."""

    lease_id: str
    gpus: tuple[str, ...]
    cpus: tuple[int, ...]
    existing: LeaseRecord | None = None


@attrs.define
class Ledger:
    """A SQLite ledger in ``state_dir``; one connection per process, opened lazily."""

    path: Path
    _conn: sqlite3.Connection | None = attrs.field(default=None, repr=False)
    _pid: int = attrs.field(factory=os.getpid, repr=False)
    _my_start: int | None = attrs.field(default=None, repr=False)
    _liveness: dict[tuple[int, int | None], tuple[bool, float]] = attrs.field(
        factory=dict, repr=False
    )

    @classmethod
    def in_dir(cls, state_dir: str | os.PathLike[str]) -> Ledger:
        """The ledger file inside ``state_dir`` (created if missing)."""
        directory = Path(state_dir)
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot create state dir {str(directory)!r}: {exc}") from None
        return cls(directory / LEDGER_FILE)

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection (reopened after a fork: SQLite connections must not cross one)."""
        if self._conn is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._my_start = process_start_time(self._pid)
            conn = sqlite3.connect(
                self.path, timeout=60, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=60000")
            conn.executescript(_SCHEMA)
            self._conn = conn
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this process's connection."""
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    # -- reclaiming ----------------------------------------------------------------------

    def _reclaim(self, conn: sqlite3.Connection, now: float, *, check_holders: bool) -> int:
        removed = conn.execute("DELETE FROM leases WHERE expires_at < ?", (now,)).rowcount
        if not check_holders:
            return removed
        dead = [(lease_id,) for lease_id in self._orphans(conn)]
        if dead:
            conn.executemany("DELETE FROM leases WHERE id = ?", dead)
        return removed + len(dead)

    def _orphans(self, conn: sqlite3.Connection) -> list[str]:
        """Leases whose holder process is gone (liveness cached briefly per process)."""
        clock = time.monotonic()
        orphans = []
        for lease_id, pid, started in conn.execute(
            "SELECT id, holder_pid, holder_start FROM leases WHERE holder_pid != ?", (self._pid,)
        ):
            cached = self._liveness.get((pid, started))
            if cached is None or clock - cached[1] > LIVENESS_CACHE:
                cached = (_alive(pid, started), clock)
                self._liveness[(pid, started)] = cached
            if not cached[0]:
                orphans.append(lease_id)
        return orphans

    def reclaim(self, now: float | None = None) -> int:
        """Drop expired leases and leases whose holder died; return how many."""
        with self._write() as conn:
            return self._reclaim(conn, time.time() if now is None else now, check_holders=True)

    # -- granting ------------------------------------------------------------------------

    def grant(
        self,
        lease_id: str,
        make_record: Callable[[tuple[str, ...], tuple[int, ...]], LeaseRecord],
        demand: Demand,
        now: float | None = None,
    ) -> Allocation:
        """Bind devices and amounts to a new lease, atomically, or raise CapacityUnavailable.

        ``make_record(gpu_ids, cpu_ids)`` builds the record stored for the lease once
        its devices are chosen. The lease id is the idempotency key: a second call
        with the same id returns the first grant (with ``existing`` set) and binds
        nothing.
        """
        now = time.time() if now is None else now
        with self._write() as conn:
            # _choose ignores expired leases, but their device rows still hold the devices'
            # keys: drop them first, or the INSERT below trips over them (and a retried
            # commit would be handed back an expired grant whose devices are free again).
            self._reclaim(conn, now, check_holders=False)
            try:
                gpu_ids, cpu_ids = self._choose(conn, demand, now)
            except CapacityUnavailable:
                # A retried commit finds its own first grant holding the capacity.
                existing = self._existing(conn, lease_id)
                if existing is not None:
                    return existing
                if not self._reclaim(conn, now, check_holders=True):
                    raise
                gpu_ids, cpu_ids = self._choose(conn, demand, now)
            record = make_record(gpu_ids, cpu_ids)
            try:
                conn.execute(
                    "INSERT INTO leases (id, holder_pid, holder_start, expires_at, memory, disk,"
                    " record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        lease_id,
                        self._pid,
                        self._my_start,
                        record.expires_at,
                        demand.memory,
                        demand.disk,
                        record.to_json(),
                    ),
                )
            except sqlite3.IntegrityError:
                existing = self._existing(conn, lease_id)
                if existing is None:  # pragma: no cover - the insert failed for its key
                    raise
                return existing
            conn.executemany(
                "INSERT INTO devices (kind, device, lease_id) VALUES (?, ?, ?)",
                [("gpu", g, lease_id) for g in gpu_ids]
                + [("cpu", str(c), lease_id) for c in cpu_ids],
            )
            return Allocation(lease_id, gpu_ids, cpu_ids)

    def _existing(self, conn: sqlite3.Connection, lease_id: str) -> Allocation | None:
        row = conn.execute("SELECT record FROM leases WHERE id = ?", (lease_id,)).fetchone()
        if row is None:
            return None
        record = LeaseRecord.from_json(row[0])
        gpus = tuple(g for g in record.details.get("gpus", "").split(",") if g)
        cpus = tuple(int(c) for c in record.details.get("cpus", "").split(",") if c)
        return Allocation(lease_id, gpus, cpus, existing=record)

    def _choose(
        self, conn: sqlite3.Connection, demand: Demand, now: float
    ) -> tuple[tuple[str, ...], tuple[int, ...]]:
        used_gpus: set[str] = set()
        used_cpus: set[str] = set()
        if demand.gpus or demand.cpus:
            for kind, device in conn.execute(_HELD_DEVICES, (now,)):
                (used_gpus if kind == "gpu" else used_cpus).add(device)
        free_gpus = (g for g in demand.gpu_candidates if g not in used_gpus)
        gpu_ids = tuple(itertools.islice(free_gpus, demand.gpus))
        if len(gpu_ids) < demand.gpus:
            raise CapacityUnavailable("local", f"{demand.gpus} GPUs wanted, {len(gpu_ids)} free")
        cpu_ids: tuple[int, ...] = ()
        if demand.cpus:
            free = (c for c in demand.cpu_candidates if str(c) not in used_cpus)
            cpu_ids = tuple(itertools.islice(free, demand.cpus))
        if len(cpu_ids) < demand.cpus:
            raise CapacityUnavailable("local", f"{demand.cpus} CPUs wanted, {len(cpu_ids)} free")
        if demand.memory or demand.disk:
            used_memory, used_disk = conn.execute(_HELD_AMOUNTS, (now,)).fetchone()
            if used_memory + demand.memory > demand.memory_total:
                raise CapacityUnavailable("local", "memory was granted meanwhile")
            if demand.disk_total is not None and used_disk + demand.disk > demand.disk_total:
                raise CapacityUnavailable("local", "disk was granted meanwhile")
        return gpu_ids, cpu_ids

    # -- reading -------------------------------------------------------------------------

    def usage(self, now: float | None = None) -> tuple[set[str], set[int], int, int]:
        """What live holders hold now: GPU ids, CPU ids, memory bytes, disk bytes.

        Two plain reads, no transaction: a quote may be a moment stale, and the
        commit re-checks everything inside its own transaction anyway.
        """
        now = time.time() if now is None else now
        conn = self.conn
        orphans = set(self._orphans(conn))
        memory = disk = 0
        if orphans:
            for lease_id, lease_memory, lease_disk in conn.execute(
                "SELECT id, memory, disk FROM leases WHERE expires_at >= ?", (now,)
            ):
                if lease_id not in orphans:
                    memory, disk = memory + lease_memory, disk + lease_disk
        else:
            memory, disk = conn.execute(_HELD_AMOUNTS, (now,)).fetchone()
        gpus: set[str] = set()
        cpus: set[int] = set()
        for kind, device, lease_id in conn.execute(_HELD_DEVICES_BY_LEASE, (now,)):
            if lease_id in orphans:
                continue
            if kind == "gpu":
                gpus.add(device)
            else:
                cpus.add(int(device))
        return gpus, cpus, int(memory), int(disk)

    def records(self, now: float | None = None) -> list[LeaseRecord]:
        """Every live lease on this host, oldest first (reclaiming dead ones first)."""
        self.reclaim(now)
        out = [
            msgspec.structs.replace(LeaseRecord.from_json(record), expires_at=expires_at)
            for record, expires_at in self.conn.execute("SELECT record, expires_at FROM leases")
        ]
        return sorted(out, key=lambda r: r.created_at)

    def get(self, lease_id: str) -> LeaseRecord | None:
        """One lease's record, or ``None``."""
        row = self.conn.execute(
            "SELECT record, expires_at FROM leases WHERE id = ?", (lease_id,)
        ).fetchone()
        if row is None:
            return None
        return msgspec.structs.replace(LeaseRecord.from_json(row[0]), expires_at=row[1])

    # -- renewing and releasing ----------------------------------------------------------

    def renew(self, lease_id: str, expires_at: float, now: float | None = None) -> bool:
        """Push a lease's expiry; ``False`` when the lease is gone (expired or released)."""
        now = time.time() if now is None else now
        # One statement is one transaction in autocommit mode: no BEGIN needed.
        updated = self.conn.execute(
            "UPDATE leases SET expires_at = ? WHERE id = ? AND expires_at >= ?",
            (expires_at, lease_id, now),
        ).rowcount
        return updated == 1

    def release(self, lease_id: str) -> bool:
        """Free a lease's devices and amounts; ``False`` when it was already gone."""
        # The devices go with it (ON DELETE CASCADE), in the same implicit transaction.
        return self.conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,)).rowcount == 1
