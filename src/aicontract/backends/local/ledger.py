"""The local ledger: who holds what on this host, shared by every process (SQLite).

Why SQLite: it is on every Python, its ``BEGIN IMMEDIATE`` transactions
serialise writers across processes, and WAL mode survives a writer killed
mid-transaction. Two facts make over-granting impossible (guarantee 1): every
grant runs check-and-insert inside one immediate transaction, and each device
(a GPU, a CPU core) is a row whose primary key is the device, so the database
itself refuses to hand one out twice.

Liveness is a kernel lock, not a pid: each holder process keeps an exclusive
``flock`` on its own ``locks/<epoch>-<holder>.holder`` file in the state dir
while it holds leases (a shared one while it holds none), which the kernel
drops when the holder dies, in whatever PID namespace it ran. A lease whose holder is gone, or
whose expiry passed, is reclaimed — but its workload (recorded as a
:class:`~aicontract.workload.WorkloadRef`) is stopped first, and only once it is
gone are the devices freed (guarantee 4).

The ledger is trusted only while it is the file this process opened: a holder
checks the file's identity on every renewal, and a grant refuses while running
holders hold locks that the ledger has no row for (it was deleted or replaced
under them). Every SQLite failure becomes one :class:`~aicontract.errors.LedgerError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import itertools
import os
import random
import secrets
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Set
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import anyio
import attrs
import msgspec

from ...errors import CapacityUnavailable, IdempotencyConflict, LeaseStateError, LedgerError
from ...leases import LeaseRecord
from ...workload import WorkloadRef, lock_held, signal_ref, workload_alive

__all__ = ["WORLD_PORT", "Allocation", "Demand", "Ledger", "lock_name", "parse_ports"]

T = TypeVar("T")

# The schema's version is in the name: a ledger only describes live processes, so a
# new schema simply starts a new file rather than migrating an old one.
LEDGER_FILE = "ledger-v3.sqlite3"
SQLITE_MAGIC = b"SQLite format 3\x00"

# How long a holder seen alive is trusted before its lock is checked again.
LIVENESS_CACHE = 0.5
# How long a write waits for another process's transaction (off the event loop).
LOCK_WAIT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS leases (
    id TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    owner_uid INTEGER NOT NULL,
    expires_at REAL NOT NULL,
    memory INTEGER NOT NULL DEFAULT 0,
    disk INTEGER NOT NULL DEFAULT 0,
    workload BLOB,
    stopping_since REAL,
    record BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
    kind TEXT NOT NULL,
    device TEXT NOT NULL,
    lease_id TEXT NOT NULL REFERENCES leases (id) ON DELETE CASCADE,
    PRIMARY KEY (kind, device)
) WITHOUT ROWID;
"""
_SCHEMA_PROBE = (
    "SELECT id, holder, owner_uid, expires_at, memory, disk, workload, stopping_since, record"
    " FROM leases LIMIT 0"
)

# The held devices, one row per kind: the kind and its ids joined by _SEP (ids never hold
# it: the inventory allows letters, digits and /_.- only; CPUs and ports are numbers).
_SEP = "\x1f"
_HELD_DEVICES = "SELECT kind, group_concat(device, char(31)) FROM devices GROUP BY kind"
# The held devices, and (as kind _DUE) the leases a grant must reclaim first: one read.
_DUE = ""
_HELD_OR_DUE = (
    _HELD_DEVICES + " UNION ALL SELECT '', id FROM leases"
    " WHERE expires_at < ? OR stopping_since IS NOT NULL"
)
# What a quote reads: every lease that may be gone, and this holder's live ones summed
# (with the earliest of their expiries, for the snapshot).
_USAGE = (
    "SELECT id, holder, expires_at, workload, stopping_since, memory, disk FROM leases"
    " WHERE holder != ?1 OR expires_at < ?2 OR stopping_since IS NOT NULL"
    " UNION ALL SELECT NULL, NULL, MIN(expires_at), NULL, NULL,"
    " COALESCE(SUM(memory), 0), COALESCE(SUM(disk), 0) FROM leases"
    " WHERE holder = ?1 AND expires_at >= ?2 AND stopping_since IS NULL"
)
# Whether another connection committed since this one last asked (its own commits never
# change it): what tells a kept snapshot from a stale one.
_DATA_VERSION = "PRAGMA data_version"
_HELD_AMOUNTS = "SELECT COALESCE(SUM(memory), 0), COALESCE(SUM(disk), 0) FROM leases"


@functools.lru_cache(maxsize=64)
def _insert_devices(rows: int) -> str:
    """The statement that inserts ``rows`` device rows (one text per count, so the
    statement cache finds it without building it again)."""
    return "INSERT INTO devices (kind, device, lease_id) VALUES " + ", ".join(["(?, ?, ?)"] * rows)


def lock_name(lease_id: str) -> str:
    """The lock file's name for a lease (a hash: a lease id is caller-chosen text)."""
    return hashlib.sha256(lease_id.encode()).hexdigest()[:32]


def _share(directory: Path) -> None:
    """Make a new state directory group-shared (setgid), never open to everyone.

    Its group is ``aicontract`` where an admin made one (every user who leases
    belongs to it), else whatever the parent directory gives.
    """
    try:
        import grp

        gid = grp.getgrnam("aicontract").gr_gid
    except (ImportError, KeyError):
        gid = -1
    with contextlib.suppress(OSError):
        if gid != -1:
            os.chown(directory, -1, gid)
        os.chmod(directory, 0o2770)  # mkdir's mode is cut by the umask; this is not


def _read_record(conn: sqlite3.Connection, lease_id: str) -> LeaseRecord | None:
    """One lease's record as stored (its current ``expires_at``), or ``None``."""
    row = conn.execute("SELECT record, expires_at FROM leases WHERE id = ?", (lease_id,)).fetchone()
    if row is None:
        return None
    return msgspec.structs.replace(LeaseRecord.from_json(row[0]), expires_at=row[1])


def _ledger_error(path: Path, exc: BaseException, waited: float = LOCK_WAIT) -> LedgerError:
    """One clear error for whatever SQLite or the OS said about the ledger."""
    text = str(exc).lower()
    where = str(path)
    if "locked" in text or "busy" in text:
        return LedgerError(
            where,
            f"another process has held its write lock for more than {waited:g}s",
            f"find it with `fuser {where}` and stop it, then retry",
        )
    if "readonly" in text or "read-only" in text:
        return LedgerError(
            where, "is read-only", "make it (and its -wal and -shm files) writable, then retry"
        )
    if "full" in text:
        return LedgerError(where, "the disk is full", "free space on its file system, then retry")
    if isinstance(exc, PermissionError) or "permission" in text or "access" in text:
        return LedgerError(
            where,
            "permission denied",
            "ask an admin to add you to the ledger's group, or set AICONTRACT_STATE_DIR",
        )
    if "not a database" in text or "malformed" in text or "corrupt" in text:
        return LedgerError(
            where,
            "is damaged (not a readable SQLite ledger)",
            "move it aside (its leases are lost; their holders stop their work when they"
            " next renew) or set AICONTRACT_STATE_DIR",
        )
    if "no such column" in text or "no such table" in text or "schema" in text:
        return LedgerError(
            where,
            "has a foreign schema (not an aicontract ledger of this version)",
            "move it aside or set AICONTRACT_STATE_DIR",
        )
    if "unable to open" in text or isinstance(exc, OSError):
        return LedgerError(
            where,
            f"cannot be opened ({str(exc)[:80]})",
            "check that it is a file in a writable directory, or set AICONTRACT_STATE_DIR",
        )
    return LedgerError(where, f"failed: {str(exc)[:80]}", "retry; if it persists, move it aside")


# How many kernel-chosen ports to try before saying none is free.
PORT_TRIES = 64

WORLD_PORT = "_world"
"""The port name a training lease's rendezvous (``MASTER_PORT``) is granted under.

It starts with ``_``, which no ``workload.ports`` name may, so it never meets a
workload's own port; it is granted, held and freed like an ``auto`` port.
"""


def parse_ports(text: str) -> dict[str, int]:
    """``name=port,name=port`` (a record's ``details["ports"]``) as a dict."""
    return {n: int(p) for n, _, p in (i.partition("=") for i in text.split(",") if i)}


def candidate_port() -> int:
    """A port nothing on 127.0.0.1 binds at this moment, as the kernel picks one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", 0))
        except OSError as exc:
            raise CapacityUnavailable(
                "local", f"no port can be bound on 127.0.0.1 ({exc.strerror})"
            ) from None
        return int(probe.getsockname()[1])


def _bindable(port: int) -> bool:
    """Can 127.0.0.1:``port`` be bound now (by the workload, a moment later)?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_ports(names: tuple[str, ...], used: Set[int]) -> dict[str, int]:
    """One port per name that no live lease holds and that 127.0.0.1 can bind now.

    The kernel proposes a port; the ledger's rows rule out ports granted to
    leases whose workload has not bound them yet, and a bind rules out ports
    someone outside the ledger serves on. Both checks run inside the grant's
    transaction, so two live leases never get the same port.
    """
    granted: dict[str, int] = {}
    taken = set(used)
    for name in names:
        for _ in range(PORT_TRIES):
            port = candidate_port()
            if port not in taken and _bindable(port):
                granted[name] = port
                taken.add(port)
                break
        else:
            what = (
                "the training world's rendezvous (MASTER_PORT)"
                if name == WORLD_PORT
                else f"workload.ports.{name}"
            )
            raise CapacityUnavailable("local", f"no free port for {what} after {PORT_TRIES} tries")
    return granted


# How long a writer waiting for another's lock pauses between tries (give or take half).
_BUSY_PAUSE = 0.001


def _busy(exc: sqlite3.OperationalError) -> bool:
    """Did SQLite refuse because another connection holds its lock (try again later)?"""
    text = str(exc)
    return "locked" in text or "busy" in text


def _retrying(fn: Callable[[], T], wait: float) -> T:
    """``fn()``, run again after a short pause while SQLite's lock is busy, for at most
    ``wait`` seconds (then the busy error is raised). ``fn`` must fail before changing
    anything when the lock is busy (a write that cannot begin), so running it again is safe.

    SQLite's own busy handler is unfair: it sleeps longer the longer a writer has
    waited (1 ms at first, 100 ms after a while), so writers that keep coming back
    take the lock in between, and one that has waited a while may keep missing it
    until its wait runs out while the ledger was never stuck. Here every waiter tries
    again after the same short pause however long it has waited, so waiters take turns.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            left = deadline - time.monotonic()
            if left <= 0 or not _busy(exc):
                raise
        time.sleep(min(left, _BUSY_PAUSE * random.uniform(0.5, 1.5)))


_generation = 0
"""Bumped in a forked child, so a Ledger knows to look at its pid again without asking
for it (a system call) on every use."""


def _forked() -> None:
    global _generation
    _generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class _Transaction:
    """``with``: BEGIN IMMEDIATE … COMMIT, or ROLLBACK on an error (a plain class, not a
    generator: this is on every grant's path)."""

    __slots__ = ("conn",)

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            return
        try:
            self.conn.execute("COMMIT")
        except sqlite3.Error:
            # Never leave a transaction open on a connection that is used again.
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise


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
    # Names of the ports to grant (``workload.ports`` given as ``auto``).
    ports: tuple[str, ...] = ()
    # Chooses the GPU and CPU ids from what is free (held GPU ids, held CPU ids), inside
    # the grant's transaction; raises CapacityUnavailable. None: the first free ones.
    place: Callable[[Set[str], Set[int]], tuple[tuple[str, ...], tuple[int, ...]]] | None = None


@attrs.frozen
class Allocation:
    """The devices one grant bound: GPU ids (for ``CUDA_VISIBLE_DEVICES``) and CPU ids.

    ``existing`` is set when the lease id was already granted (a retried
    commit); ``mine`` says whether that grant belongs to this process.
    """

    lease_id: str
    gpus: tuple[str, ...]
    cpus: tuple[int, ...]
    existing: LeaseRecord | None = None
    mine: bool = True
    ports: dict[str, int] = attrs.field(factory=dict)


class _Snapshot(NamedTuple):
    """What the ledger held when this process last read it whole, kept up to date by
    this process's own grants and releases, so that a quote (and the grant after it)
    need not read it again while nothing else changed.

    It is only ever taken of a clean ledger (every lease live: unexpired, not being
    stopped, its holder alive), and it is trusted only while all of that still holds:

    - ``version`` is ``PRAGMA data_version`` on ``conn``, read before the reads it
      summarises: it changes as soon as any other connection (another process, or this
      process's other connection) commits. This process's own commits on ``conn`` do
      not change it, so every write on ``conn`` either applies its change here
      (:meth:`Ledger._grant`, :meth:`Ledger.release_own`) or drops the snapshot.
    - ``expires``: the earliest expiry of its leases; from then on one may be due.
    - ``others``: the other holders of its leases, each still checked alive (as a full
      read checks them) before it is used.
    """

    conn: sqlite3.Connection
    version: int
    gpus: frozenset[str]
    cpus: frozenset[int]
    ports: frozenset[int]
    memory: int
    disk: int
    expires: float
    others: frozenset[str]

    def plus(self, grant: _Owned, expires_at: float) -> _Snapshot:
        """After this process granted ``grant`` (new sets: a set handed out never changes)."""
        return self._moved(grant, 1, expires_at if expires_at < self.expires else self.expires)

    def minus(self, grant: _Owned) -> _Snapshot:
        """After this process released ``grant`` (its expiry may stay the earliest: that
        only ends the snapshot sooner)."""
        return self._moved(grant, -1, self.expires)

    def _moved(self, grant: _Owned, sign: int, expires: float) -> _Snapshot:
        """With ``grant`` added (``sign`` 1) or taken away (-1)."""
        return _Snapshot(
            self.conn,
            self.version,
            _moved(self.gpus, grant.gpus, sign),
            _moved(self.cpus, grant.cpus, sign),
            _moved(self.ports, grant.ports, sign),
            self.memory + sign * grant.memory,
            self.disk + sign * grant.disk,
            expires,
            self.others,
        )


_T_ID = TypeVar("_T_ID", str, int)


def _moved(held: frozenset[_T_ID], ids: tuple[_T_ID, ...], sign: int) -> frozenset[_T_ID]:
    if not ids:
        return held
    return held.union(ids) if sign > 0 else held.difference(ids)


class _Owned(NamedTuple):
    """What one of this process's leases holds, as its grant bound it."""

    gpus: tuple[str, ...]
    cpus: tuple[int, ...]
    ports: tuple[int, ...]
    memory: int
    disk: int


class _Used:
    """What every lease holds, as one grant's transaction sees it (expired or not: a
    lease's devices are free only once its row is gone)."""

    __slots__ = ("amounts", "cpus", "gpus", "ports")

    def __init__(
        self,
        gpus: Set[str],
        cpus: Set[int],
        ports: Set[int],
        amounts: tuple[int, int] | None = None,
    ) -> None:
        self.gpus, self.cpus, self.ports = gpus, cpus, ports
        # Memory and disk bytes, read when a grant needs them.
        self.amounts = amounts

    @classmethod
    def of(cls, held: Iterable[tuple[str, str]], gpu_ids: Mapping[str, str]) -> _Used:
        """From :data:`_HELD_DEVICES` rows (the :data:`_DUE` ones skipped); ``gpu_ids``
        names this process's GPUs by their ledger keys (see :attr:`Ledger.gpu_keys`)."""
        gpus: set[str] = set()
        cpus: set[int] = set()
        ports: set[int] = set()
        for kind, devices in held:
            if kind == "gpu":
                keys = devices.split(_SEP)
                gpus.update([gpu_ids.get(k, k) for k in keys] if gpu_ids else keys)
            elif kind == "cpu":
                cpus.update(map(int, devices.split(_SEP)))
            elif kind == "port":
                ports.update(map(int, devices.split(_SEP)))
        return cls(gpus, cpus, ports)


@attrs.define
class Ledger:
    """A SQLite ledger file and its lock dir; one pair of connections per process."""

    path: Path
    lock_dir: Path = attrs.field(default=None)
    lock_wait: float = LOCK_WAIT
    _fast: sqlite3.Connection | None = attrs.field(default=None, repr=False)
    _patient: sqlite3.Connection | None = attrs.field(default=None, repr=False)
    _identity: tuple[int, int] | None = attrs.field(default=None, repr=False)
    _stamped: tuple[int, int] | None = attrs.field(default=None, repr=False)
    """The ledger file (device, inode) this process's holder lock file names."""
    _pid: int = attrs.field(factory=os.getpid, repr=False)
    _generation: int = attrs.field(default=-1, repr=False)
    """The fork generation this process's connections were checked in (see _forked)."""
    _token: str = attrs.field(factory=lambda: secrets.token_hex(8), repr=False)
    _mutex: threading.Lock = attrs.field(factory=threading.Lock, repr=False)
    _epoch: str = attrs.field(default="", repr=False)
    _holder_fd: int | None = attrs.field(default=None, repr=False)
    _held: set[str] = attrs.field(factory=set, repr=False)
    _granting: int = attrs.field(default=0, repr=False)
    _hold_mutex: threading.Lock = attrs.field(factory=threading.Lock, repr=False)
    _working: set[str] = attrs.field(factory=set, repr=False)
    _clean_locks: tuple[int, int, str, tuple[int, int] | None] | None = attrs.field(
        default=None, repr=False
    )
    _liveness: dict[str, float] = attrs.field(factory=dict, repr=False)
    _snapshot: _Snapshot | None = attrs.field(default=None, repr=False)
    # This process's leases and what each holds (what a release takes off the snapshot).
    _owned: dict[str, _Owned] = attrs.field(factory=dict, repr=False)
    # The key each GPU is held under, by id, where the two differ: its UUID. Ids are how
    # this process names a GPU (CUDA_VISIBLE_DEVICES); a container or an outer scheduler
    # numbers the same GPU otherwise, and only the UUID is the same in every process.
    _gpu_keys: Mapping[str, str] = attrs.field(factory=dict, init=False, repr=False)
    _gpu_ids: Mapping[str, str] = attrs.field(factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.lock_dir is None:
            self.lock_dir = self.path.parent / "locks"

    def key_gpus(self, keys: Mapping[str, str]) -> None:
        """Hold each GPU under ``keys[id]`` (its UUID) rather than its id, where given.

        The ledger is shared by every process and container on the host, and they
        need not number GPUs alike: a container sees its one GPU as ``0``, a Slurm job
        counts its GPUs from ``0``, an outer ``CUDA_VISIBLE_DEVICES`` makes ids UUIDs.
        Held under its UUID, a GPU is the same row whoever holds it; this process
        still reads and grants it by its own id.
        """
        self._gpu_keys = {gpu: key for gpu, key in keys.items() if key != gpu}
        self._gpu_ids = {key: gpu for gpu, key in self._gpu_keys.items()}
        self._snapshot = None  # what it knew was named the old way

    @classmethod
    def in_dir(cls, state_dir: str | os.PathLike[str]) -> Ledger:
        """The ledger file inside ``state_dir`` (created if missing)."""
        directory = Path(state_dir)
        locks = directory / "locks"
        try:
            for path in (directory, locks):
                if not path.is_dir():
                    path.mkdir(parents=True, exist_ok=True)
                    _share(path)
        except OSError as exc:
            raise LedgerError(
                str(directory / LEDGER_FILE),
                f"its directory cannot be created ({exc.strerror})",
                "have root create it, group-writable for every user who leases"
                " (install -d -m 2770 -g aicontract DIR), or keep a private ledger with"
                " AICONTRACT_LEDGER_SCOPE=user, or name one with AICONTRACT_STATE_DIR",
            ) from None
        return cls(directory / LEDGER_FILE, locks)

    # -- connections ---------------------------------------------------------------------

    def _open(self, busy_ms: int, *, setup: bool = False) -> sqlite3.Connection:
        if self.path.is_dir():
            raise LedgerError(
                str(self.path), "is a directory", "move it aside or set AICONTRACT_STATE_DIR"
            )
        if not self.path.exists():
            # Created here, group-shared and never readable by everyone, before SQLite
            # opens it: SQLite gives its -wal and -shm files the database's mode.
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o660)
            except FileExistsError:
                pass
            except OSError as exc:
                raise _ledger_error(self.path, exc) from None
            else:
                try:
                    os.fchmod(fd, 0o660)  # whatever the umask took away
                finally:
                    os.close(fd)
        try:
            conn = sqlite3.connect(
                self.path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=0")  # the setup waits its turn (_retrying)

            def set_up() -> None:
                if setup:  # the journal mode is kept in the file, the schema too: once is enough
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(_SCHEMA)
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA foreign_keys=ON")
                conn.execute(_SCHEMA_PROBE)

            _retrying(set_up, self.lock_wait)  # each step may run again: all are idempotent
            conn.execute(f"PRAGMA busy_timeout={busy_ms}")
        except (sqlite3.Error, OSError) as exc:
            raise _ledger_error(self.path, exc, self.lock_wait) from None
        return conn

    def _connections(self) -> tuple[sqlite3.Connection, sqlite3.Connection]:
        """The connections (reopened after a fork: SQLite connections must not cross one)."""
        if self._generation != _generation or self._fast is None or self._patient is None:
            # (the pid is asked only here: a fork moves the generation, see _forked)
            self._generation = _generation
            if self._pid != os.getpid():
                # The parent's connections, lock and leases are the parent's.
                self._fast = self._patient = None
                if self._holder_fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self._holder_fd)
                self._holder_fd = None
                self._held.clear()
                self._owned.clear()
                self._snapshot = None
                self._token = secrets.token_hex(8)
                self._mutex = threading.Lock()
                self._hold_mutex = threading.Lock()
                self._granting = 0
            self._pid = os.getpid()
            if self._fast is not None and self._patient is not None:
                return self._fast, self._patient  # the same process: nothing to reopen
            self._patient = self._open(int(self.lock_wait * 1000), setup=True)
            self._fast = self._open(0)
            patient = self._patient

            def epoch() -> str:
                # The epoch names this ledger file's generation (see _unknown_holders);
                # only a new file needs a write to get one.
                row = patient.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
                if row is None:
                    with self._write(patient) as conn:
                        conn.execute(
                            "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                            (secrets.token_hex(8),),
                        )
                        row = conn.execute("SELECT value FROM meta WHERE key = 'epoch'").fetchone()
                return str(row[0])

            try:
                patient.execute("PRAGMA busy_timeout=0")
                self._epoch = _retrying(epoch, self.lock_wait)
            except sqlite3.Error as exc:
                raise _ledger_error(self.path, exc, self.lock_wait) from None
            try:
                st = os.stat(self.path)
            except OSError as exc:
                raise _ledger_error(self.path, exc) from None
            self._identity = (st.st_dev, st.st_ino)
        return self._fast, self._patient

    @property
    def conn(self) -> sqlite3.Connection:
        """The (patient) connection, for reads outside a transaction."""
        return self._connections()[1]

    def run(self, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        """Run ``fn(conn, *args)`` here, waiting up to ``wait`` (default ``lock_wait``)
        seconds for other writers."""
        _, patient = self._connections()
        wait = self.lock_wait if wait is None else min(wait, self.lock_wait)
        left = self._take_turn(wait)
        try:
            patient.execute(f"PRAGMA busy_timeout={int(left * 1000)}")
            return fn(patient, *args)
        except sqlite3.Error as exc:
            self._snapshot = None  # whatever failed may have changed what it knew
            raise _ledger_error(self.path, exc, wait) from None
        finally:
            self._mutex.release()

    def _take_turn(self, wait: float) -> float:
        """Take this process's turn on its connections (``_mutex``), waiting at most
        ``wait`` seconds; what is left of ``wait`` for SQLite's own lock.

        Another thread's call may hold the turn while it waits out its own lock_wait:
        a wait for the turn without a bound would add all of that to ours (and a
        deadline cannot interrupt a thread), so it counts against ``wait``."""
        began = time.monotonic()
        timeout = max(0.0, wait) if wait < threading.TIMEOUT_MAX else -1
        if not self._mutex.acquire(timeout=timeout):
            busy = sqlite3.OperationalError("database is locked (by this process's other calls)")
            raise _ledger_error(self.path, busy, wait)
        return max(0.0, wait - (time.monotonic() - began))

    def run_fair(self, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        """:meth:`run` for an ``fn`` that may run again from the start when SQLite's lock
        was busy (it failed before changing anything): waits for other writers taking
        turns with them, at most ``wait`` (default ``lock_wait``) seconds.

        SQLite's own busy handler would let a writer that has waited long keep missing
        the lock while others come back for it (see :func:`_retrying`): here every
        waiter tries again after the same short pause, so waiters take turns.
        """
        _, patient = self._connections()
        wait = self.lock_wait if wait is None else min(wait, self.lock_wait)

        def attempt() -> T:
            try:
                return fn(patient, *args)
            except sqlite3.Error:
                self._snapshot = None  # whatever failed may have changed what it knew
                raise

        left = self._take_turn(wait)
        try:
            patient.execute("PRAGMA busy_timeout=0")  # the waiting is done here
            return _retrying(attempt, left)
        except sqlite3.Error as exc:
            raise _ledger_error(self.path, exc, wait) from None
        finally:
            self._mutex.release()

    async def arun(self, fn: Callable[..., T], *args: Any, wait: float | None = None) -> T:
        """Run ``fn(conn, *args)`` without ever blocking the event loop on another's lock.

        First on the loop, taking SQLite's write lock without waiting (the
        uncontended case costs no thread hop); when another process holds it,
        in a worker thread that waits for it, taking turns with other waiters
        (:meth:`run_fair`), at most ``wait`` (default ``lock_wait``) seconds.
        The loop runs on meanwhile: renewals keep their deadline. ``fn`` must be
        able to run again from the start after a busy lock (it fails before
        changing anything), as the fast path's try already needs.
        """
        done, value = self.try_now(fn, *args)
        if done:
            return value  # type: ignore[return-value]
        return await anyio.to_thread.run_sync(
            functools.partial(self.run_fair, fn, *args, wait=wait)
        )

    def try_now(self, fn: Callable[..., T], *args: Any) -> tuple[bool, T | None]:
        """:meth:`arun`'s fast path alone: ``(True, fn(conn, *args))`` when SQLite's
        lock was free, ``(False, None)`` when another process (or thread) held it.

        It never waits and never yields to the event loop, so a caller that must
        not be cancelled half-way needs no cancel scope for it (only for the wait).
        """
        fast, _ = self._connections()
        if self._mutex.acquire(blocking=False):
            try:
                return True, fn(fast, *args)
            except sqlite3.OperationalError as exc:
                self._snapshot = None  # whatever failed may have changed what it knew
                if not _busy(exc):
                    raise _ledger_error(self.path, exc) from None
            except sqlite3.Error as exc:
                self._snapshot = None
                raise _ledger_error(self.path, exc) from None
            finally:
                self._mutex.release()
        return False, None

    @staticmethod
    def _write(conn: sqlite3.Connection) -> _Transaction:
        """One immediate (write-locked) transaction on ``conn``: committed when the block
        ends, rolled back when it raises."""
        return _Transaction(conn)

    def close(self) -> None:
        """Close this process's connections and drop its holder lock."""
        if self._pid == os.getpid():
            for conn in (self._fast, self._patient):
                if conn is not None:
                    conn.close()
            if self._holder_fd is not None:
                with contextlib.suppress(OSError):
                    os.unlink(self._holder_path(self._token))
                os.close(self._holder_fd)
        self._holder_fd = None
        self._held.clear()
        self._owned.clear()
        self._snapshot = None
        self._fast = self._patient = None

    def check_identity(self) -> str | None:
        """Why the ledger file is no longer the one this process opened, or ``None``.

        Deleted, replaced (another inode at the path) or truncated (no SQLite
        header): the leases this process holds in it can no longer be trusted.
        """
        if self._identity is None:
            return None
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the ledger {self.path} was deleted"
        except OSError as exc:
            return f"the ledger {self.path} cannot be read ({exc.strerror})"
        if (st.st_dev, st.st_ino) != self._identity:
            return f"the ledger {self.path} was replaced by another file"
        try:
            with open(self.path, "rb") as ledger:
                header = ledger.read(len(SQLITE_MAGIC))
        except OSError as exc:
            return f"the ledger {self.path} cannot be read ({exc.strerror})"
        if header != SQLITE_MAGIC:
            return f"the ledger {self.path} was truncated or overwritten"
        return None

    # -- holder locks --------------------------------------------------------------------

    def workload_lock(self, lease_id: str) -> str:
        """Where a lease's workload lock lives (see :mod:`aicontract.workload`)."""
        return str(self.lock_dir / f"{lock_name(lease_id)}.work")

    def _holder_path(self, token: str) -> Path:
        return self.lock_dir / f"{self._epoch}-{token}.holder"

    def _hold(self) -> None:
        """Hold this process's holder lock exclusively (before a grant) and count the grant."""
        with self._hold_mutex:
            if self._holder_fd is None:
                path = self._holder_path(self._token)
                try:
                    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
                except OSError as exc:
                    raise _ledger_error(path, exc) from None
                self._holder_fd = fd
            if self._stamped != self._identity and self._identity is not None:
                # Which ledger file its leases are in, written before the exclusive lock:
                # a copy of the ledger put back in its place (same epoch, another file)
                # then tells this holder's leases are not in it (see _unknown_holders).
                stamp = b"%d %d\n" % self._identity
                os.pwrite(self._holder_fd, stamp, 0)
                os.ftruncate(self._holder_fd, len(stamp))
                self._stamped = self._identity
            # Exclusive while holding leases: that is what a reclaimer's probe looks for.
            fcntl.flock(self._holder_fd, fcntl.LOCK_EX)
            self._granting += 1

    def _granted(self, lease_id: str | None) -> None:
        """A grant that :meth:`_hold` counted is over (``None``: it bound nothing)."""
        with self._hold_mutex:
            self._granting -= 1
            if lease_id is not None:
                self._held.add(lease_id)
            self._unhold_if_idle()

    def _let_go(self, lease_id: str) -> None:
        """A lease this process held is gone."""
        with self._hold_mutex:
            self._held.discard(lease_id)
            self._unhold_if_idle()

    def _unhold_if_idle(self) -> None:
        # Back to a shared lock only with no lease held and no grant in flight (another
        # task's grant may be inserting its row right now, in a thread).
        if not self._held and not self._granting and self._holder_fd is not None:
            fcntl.flock(self._holder_fd, fcntl.LOCK_SH)

    def _holder_alive(self, token: str, clock: float) -> bool:
        """Does the holder ``token`` still hold its lock?

        Only "alive" is remembered (briefly): a holder judged dead once may be
        a holder that had just let go of its last lease and takes a new one a
        moment later, so "dead" is always asked afresh.
        """
        cached = self._liveness.get(token)
        if cached is not None and clock - cached < LIVENESS_CACHE:
            return True
        held = lock_held(self._holder_path(token))
        # A lock we may not read is someone else's: judge it alive (its expiry still ends it).
        if held is False:
            self._liveness.pop(token, None)
            return False
        self._liveness[token] = clock
        return True

    def _drop_holder(self, token: str) -> None:
        """Remove a dead holder's lock file (only if truly nobody holds it)."""
        path = self._holder_path(token)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def _unknown_holders(self) -> int:
        """Running holders of leases in another ledger at this path (it was deleted or replaced).

        Their lock files carry another epoch, or, for a copy of this very ledger put
        back in its place (the same epoch), name another ledger file. Until they
        notice (at their next renewal) and stop their work, their devices may be in use.
        """
        try:
            st = os.stat(self.lock_dir)
        except OSError:
            return 0
        # Holders come and go by creating and removing files, which moves the dir's
        # mtime: an unchanged dir was clean at the last look and still is.
        seen = (st.st_mtime_ns, st.st_ino, self._epoch, self._identity)
        if seen == self._clean_locks:
            return 0
        try:
            names = os.listdir(self.lock_dir)
        except OSError:
            return 0
        mine = f"{self._epoch}-"
        me = self._holder_path(self._token).name
        unknown = 0
        for name in names:
            if not name.endswith(".holder") or name == me:
                continue
            if name.startswith(mine) and not self._stamped_elsewhere(self.lock_dir / name):
                continue
            held = lock_held(self.lock_dir / name)  # exclusive: it holds leases
            if held is not False:
                unknown += 1
        self._clean_locks = seen if not unknown else None
        return unknown

    def _stamped_elsewhere(self, path: Path) -> bool:
        """Does a holder lock file of this epoch name another ledger file than ours?"""
        try:
            with open(path, "rb") as file:
                text = file.read(64).split()
        except OSError:
            return False
        if len(text) != 2 or not all(part.isdigit() for part in text):
            return False  # not stamped yet (it stamps before it locks), or an older holder
        return (int(text[0]), int(text[1])) != self._identity

    # -- reclaiming ----------------------------------------------------------------------

    def _reclaim(self, conn: sqlite3.Connection, now: float, *, check_holders: bool) -> int:
        """Stop the workloads of expired and dead-holder leases; free those whose work is gone.

        A lease whose workload still runs keeps its devices: it is sent SIGTERM
        (once; ``stopping_since`` remembers when), SIGKILL after its grace, and
        freed by a later reclaim once its workload lock is free.
        """
        clock = time.monotonic()
        query = "SELECT id, holder, expires_at, workload, stopping_since FROM leases"
        if not check_holders:
            query += " WHERE expires_at < ? OR stopping_since IS NOT NULL"
        rows = conn.execute(query, (now,) if not check_holders else ()).fetchall()
        freed = 0
        if rows:
            self._snapshot = None  # what it stops or frees changes what is held
        for lease_id, holder, expires_at, workload, stopping_since in rows:
            if (
                expires_at >= now
                and stopping_since is None
                and (holder == self._token or self._holder_alive(holder, clock))
            ):
                continue
            if workload is not None:
                ref = msgspec.json.decode(workload, type=WorkloadRef)
                if workload_alive(ref):
                    if stopping_since is None:
                        signal_ref(ref, signal.SIGTERM)
                        conn.execute(
                            "UPDATE leases SET stopping_since = ? WHERE id = ?", (now, lease_id)
                        )
                    elif now - stopping_since > ref.grace:
                        signal_ref(ref, signal.SIGKILL)
                    continue
            conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
            self._owned.pop(lease_id, None)
            with contextlib.suppress(OSError):
                os.unlink(self.workload_lock(lease_id))
            if workload is not None:
                cgroup = msgspec.json.decode(workload, type=WorkloadRef).cgroup
                if cgroup is not None:
                    with contextlib.suppress(OSError):
                        os.rmdir(cgroup)  # empty now; its holder died before removing it
            if holder != self._token and not self._holder_alive(holder, clock):
                self._drop_holder(holder)
            freed += 1
        return freed

    def reclaim(self, now: float | None = None) -> int:
        """Stop dead or expired leases' workloads and free their devices; return how many."""

        return self.run(self._reclaim_op, time.time() if now is None else now)

    # -- granting ------------------------------------------------------------------------

    async def agrant(
        self,
        lease_id: str,
        make_record: Callable[[tuple[str, ...], tuple[int, ...], dict[str, int]], LeaseRecord],
        demand: Demand,
        now: float | None = None,
        wait: float | None = None,
    ) -> Allocation:
        """Bind devices and amounts to a new lease, atomically, or raise CapacityUnavailable.

        ``make_record(gpu_ids, cpu_ids, ports)`` builds the record stored for the lease
        once its devices (and its ``auto`` ports, by name) are chosen. The lease id is
        the idempotency key: a second call with the same id returns the first grant
        (with ``existing`` set) and binds nothing. This process holds the lease's
        holder lock from then on.
        """
        now = time.time() if now is None else now
        self._connections()
        self._check_still_same()
        self._hold()
        try:
            allocation = await self.arun(self._grant, lease_id, make_record, demand, now, wait=wait)
        except BaseException:
            self._granted(None)
            raise
        self._granted(lease_id)
        return allocation

    def grant_now(
        self,
        lease_id: str,
        make_record: Callable[[tuple[str, ...], tuple[int, ...], dict[str, int]], LeaseRecord],
        demand: Demand,
        now: float | None = None,
    ) -> Allocation | None:
        """:meth:`agrant` when it needs no wait; ``None`` (nothing bound) when another
        process holds SQLite's lock: then :meth:`agrant` waits for it."""
        now = time.time() if now is None else now
        self._connections()
        self._check_still_same()
        self._hold()
        try:
            done, allocation = self.try_now(self._grant, lease_id, make_record, demand, now)
        except BaseException:
            self._granted(None)
            raise
        self._granted(lease_id if done else None)
        return allocation

    def _check_still_same(self) -> None:
        """Before a grant: is the ledger still the file we opened? Reopen it if we may."""
        try:
            st = os.stat(self.path)
            same = (st.st_dev, st.st_ino) == self._identity
        except OSError:
            same = False
        if same:
            return
        if self._held or self._granting:
            raise LedgerError(
                str(self.path),
                "was deleted or replaced while this process held leases in it",
                "those leases are lost (their work stops at their next renewal); retry then",
            )
        self.close()
        self._connections()

    def _grant(
        self,
        conn: sqlite3.Connection,
        lease_id: str,
        make_record: Callable[[tuple[str, ...], tuple[int, ...], dict[str, int]], LeaseRecord],
        demand: Demand,
        now: float,
    ) -> Allocation:
        snapshot, self._snapshot = self._snapshot, None  # kept only if this grant is plain
        with self._write(conn):
            used: _Used | None = None
            if snapshot is not None and snapshot.conn is conn and now <= snapshot.expires:
                # Nobody else can commit while this transaction holds the write lock: if
                # nobody did since the snapshot, it is what the ledger holds, and no lease
                # in it is due yet (none expired, none being stopped).
                if conn.execute(_DATA_VERSION).fetchone()[0] == snapshot.version:
                    used = _Used(
                        snapshot.gpus,
                        snapshot.cpus,
                        snapshot.ports,
                        (snapshot.memory, snapshot.disk),
                    )
                else:
                    snapshot = None
            else:
                snapshot = None
            if used is None:
                # Expired leases' devices are free only once their workloads are stopped.
                # One statement reads what is held and whether any lease is due for
                # reclaiming (the common case: none, and the devices read are the ones to
                # choose from).
                held = conn.execute(_HELD_OR_DUE, (now,)).fetchall()
                if not any(kind == _DUE for kind, _ in held):
                    used = _Used.of(held, self._gpu_ids)
                else:
                    self._reclaim(conn, now, check_holders=False)
            unknown = self._unknown_holders()
            if unknown:
                raise CapacityUnavailable(
                    "local",
                    f"{unknown} running lease holder(s) are missing from the ledger {self.path}"
                    " (deleted or replaced?); they stop their work at their next renewal",
                )
            for _ in range(2):
                try:
                    gpu_ids, cpu_ids, ports = self._choose(conn, demand, used)
                except CapacityUnavailable:
                    used = snapshot = None  # whatever happens next changes what is held
                    # A retried commit finds its own first grant holding the capacity.
                    existing = self._existing(conn, lease_id)
                    if existing is not None:
                        kept = self._keep_or_refuse(conn, existing, now)
                        if kept is not None:
                            return kept
                        continue  # its dead holder's row is gone: grant afresh
                    if not self._reclaim(conn, now, check_holders=True):
                        raise
                    gpu_ids, cpu_ids, ports = self._choose(conn, demand, None)
                record = make_record(gpu_ids, cpu_ids, ports)
                try:
                    conn.execute(
                        "INSERT INTO leases (id, holder, owner_uid, expires_at, memory, disk,"
                        " record) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (
                            lease_id,
                            self._token,
                            os.geteuid(),
                            record.expires_at,
                            demand.memory,
                            demand.disk,
                            record.to_json(),
                        ),
                    )
                except sqlite3.IntegrityError:
                    used = snapshot = None
                    existing = self._existing(conn, lease_id)
                    if existing is None:  # pragma: no cover - the insert failed for its key
                        raise
                    kept = self._keep_or_refuse(conn, existing, now)
                    if kept is None:
                        continue  # its dead holder's row is gone: grant afresh
                    return kept
                values: list[str] = []
                keys = self._gpu_keys
                for g in gpu_ids:
                    values += ("gpu", keys.get(g, g), lease_id)
                for c in cpu_ids:
                    values += ("cpu", str(c), lease_id)
                for p in ports.values():
                    values += ("port", str(p), lease_id)
                if values:
                    # One statement for every device (SQLite caches one per row count).
                    conn.execute(_insert_devices(len(values) // 3), values)
                owned = _Owned(gpu_ids, cpu_ids, tuple(ports.values()), demand.memory, demand.disk)
                expires_at = record.expires_at
                break
            else:  # pragma: no cover - a key reclaimed twice in one go
                raise IdempotencyConflict("local", f"lease {lease_id} kept changing hands; retry")
        # Committed (the block above ends in COMMIT): the snapshot follows this grant.
        self._owned[lease_id] = owned
        if snapshot is not None:
            self._snapshot = snapshot.plus(owned, expires_at)
        return Allocation(lease_id, gpu_ids, cpu_ids, ports=ports)

    def _keep_or_refuse(
        self, conn: sqlite3.Connection, existing: Allocation, now: float
    ) -> Allocation | None:
        """A key already granted: ours is a retry; a live other holder's is a conflict.

        ``None`` when the other holder was dead and its lease is reclaimed now.
        """
        if existing.mine:
            return existing
        self._reclaim(conn, now, check_holders=True)
        if self._existing(conn, existing.lease_id) is None:
            return None
        raise IdempotencyConflict(
            "local",
            f"lease {existing.lease_id} is held by another process; an idempotency key"
            " belongs to one holder",
        )

    def _existing(self, conn: sqlite3.Connection, lease_id: str) -> Allocation | None:
        row = conn.execute("SELECT record, holder FROM leases WHERE id = ?", (lease_id,)).fetchone()
        if row is None:
            return None
        record = LeaseRecord.from_json(row[0])
        gpus = tuple(g for g in record.details.get("gpus", "").split(",") if g)
        cpus = tuple(int(c) for c in record.details.get("cpus", "").split(",") if c)
        ports = parse_ports(record.details.get("ports", ""))
        return Allocation(
            lease_id, gpus, cpus, existing=record, mine=row[1] == self._token, ports=ports
        )

    def _choose(
        self, conn: sqlite3.Connection, demand: Demand, used: _Used | None
    ) -> tuple[tuple[str, ...], tuple[int, ...], dict[str, int]]:
        """The devices and ports for ``demand``; ``used``: what is held, as just read in
        this transaction (``None``: read it here)."""
        if used is None:
            # Every row counts, expired or not: a lease's devices are free only once its
            # row is gone, which is only once its workload is.
            used = _Used.of(conn.execute(_HELD_DEVICES).fetchall(), self._gpu_ids)
        if demand.place is not None:
            placed = demand.place(used.gpus, used.cpus)
            if len(placed[0]) != demand.gpus or len(placed[1]) != demand.cpus:
                raise CapacityUnavailable(
                    "local", f"{demand.gpus} GPUs and {demand.cpus} CPUs wanted, fewer chosen"
                )
            self._check_amounts(conn, demand, used)
            return placed[0], placed[1], _free_ports(demand.ports, used.ports)
        used_gpus = used.gpus
        free_gpus = (g for g in demand.gpu_candidates if g not in used_gpus)
        gpu_ids = tuple(itertools.islice(free_gpus, demand.gpus))
        if len(gpu_ids) < demand.gpus:
            raise CapacityUnavailable("local", f"{demand.gpus} GPUs wanted, {len(gpu_ids)} free")
        cpu_ids: tuple[int, ...] = ()
        if demand.cpus:
            used_cpus = used.cpus
            free = (c for c in demand.cpu_candidates if c not in used_cpus)
            cpu_ids = tuple(itertools.islice(free, demand.cpus))
        if len(cpu_ids) < demand.cpus:
            raise CapacityUnavailable("local", f"{demand.cpus} CPUs wanted, {len(cpu_ids)} free")
        self._check_amounts(conn, demand, used)
        return gpu_ids, cpu_ids, _free_ports(demand.ports, used.ports)

    @staticmethod
    def _check_amounts(conn: sqlite3.Connection, demand: Demand, used: _Used) -> None:
        if demand.memory or demand.disk:
            if used.amounts is None:
                used.amounts = conn.execute(_HELD_AMOUNTS).fetchone()
            used_memory, used_disk = used.amounts
            if used_memory + demand.memory > demand.memory_total:
                raise CapacityUnavailable("local", "memory was granted meanwhile")
            if demand.disk_total is not None and used_disk + demand.disk > demand.disk_total:
                raise CapacityUnavailable("local", "disk was granted meanwhile")

    # -- workloads -----------------------------------------------------------------------

    async def set_workload(
        self, lease_id: str, ref: WorkloadRef | None, now: float | None = None
    ) -> bool:
        """Record (or clear) the workload a lease runs; ``False`` when the lease is gone.

        Gone includes expired (``now`` past its expiry, not yet reclaimed) and being
        stopped by another process: no work may start on a lease that has ended.
        """
        blob = msgspec.json.encode(ref) if ref is not None else None
        now = time.time() if now is None else now
        self._working.add(lease_id)

        def op(conn: sqlite3.Connection) -> bool:
            self._snapshot = None  # a write of ours the snapshot does not follow
            cursor = conn.execute(
                "UPDATE leases SET workload = ? WHERE id = ? AND holder = ?"
                " AND expires_at >= ? AND stopping_since IS NULL",
                (blob, lease_id, self._token, now),
            )
            return cursor.rowcount == 1

        return await self.arun(op)

    # -- reading -------------------------------------------------------------------------

    def usage(self, now: float | None = None) -> tuple[Set[str], Set[int], int, int]:
        """:meth:`ausage`, blocking."""
        now = time.time() if now is None else now
        held, stoppable = self.run(self._usage, now)
        if stoppable:
            self.run(self._reclaim_op, now)
            held, _ = self.run(self._usage, now)
        return held

    async def ausage(self, now: float | None = None) -> tuple[Set[str], Set[int], int, int]:
        """What leases hold now: GPU ids, CPU ids, memory bytes, disk bytes (sets that
        are never changed once handed out).

        Plain reads, no transaction: a quote may be a moment stale, and the
        commit re-checks everything inside its own transaction anyway. Leases
        that a commit would reclaim at once (holder gone or expired, workload
        gone) do not count; when a dead or expired lease's workload still runs,
        it is told to stop first (its devices still count until it has).
        """
        now = time.time() if now is None else now
        held, stoppable = await self.arun(self._usage, now)
        if stoppable:
            await self.arun(self._reclaim_op, now)
            held, _ = await self.arun(self._usage, now)
        return held

    def usage_now(self, now: float) -> tuple[Set[str], Set[int], int, int] | None:
        """:meth:`ausage` when it needs no wait: ``None`` when another process holds
        SQLite's lock, or when a lease's workload must be stopped first (then
        :meth:`ausage` does both)."""
        done, found = self.try_now(self._usage, now)
        if not done or found is None or found[1]:
            return None
        return found[0]

    def _reclaim_op(self, conn: sqlite3.Connection, now: float) -> int:
        with self._write(conn):
            return self._reclaim(conn, now, check_holders=True)

    def _usage(
        self, conn: sqlite3.Connection, now: float
    ) -> tuple[tuple[Set[str], Set[int], int, int], bool]:
        clock = time.monotonic()
        snapshot = self._snapshot
        version: int | None = None
        if snapshot is not None and snapshot.conn is conn and now <= snapshot.expires:
            (version,) = conn.execute(_DATA_VERSION).fetchone()
            if version == snapshot.version and (
                not snapshot.others
                or all(self._holder_alive(holder, clock) for holder in snapshot.others)
            ):
                return (snapshot.gpus, snapshot.cpus, snapshot.memory, snapshot.disk), False
        self._snapshot = None
        if version is None:
            # Read before the ledger is: a commit by anyone else after this moment moves
            # it, so the snapshot taken below can never outlive what it describes.
            (version,) = conn.execute(_DATA_VERSION).fetchone()
        gone: set[str] = set()
        stoppable, clean = False, True
        memory = disk = 0
        expires = float("inf")
        others: set[str] = set()
        # One statement gives who may be gone and the amounts held; this holder's own live
        # leases come summed in one row (id NULL): nothing about them needs a look.
        for (
            lease_id,
            holder,
            expires_at,
            workload,
            stopping_since,
            lease_memory,
            lease_disk,
        ) in conn.execute(_USAGE, (self._token, now)):
            if lease_id is None or (
                expires_at >= now and stopping_since is None and self._holder_alive(holder, clock)
            ):
                memory, disk = memory + lease_memory, disk + lease_disk
                if expires_at is not None:
                    expires = min(expires, expires_at)
                if holder is not None:
                    others.add(holder)
                continue
            clean = False
            if workload is None:
                gone.add(lease_id)
                continue
            ref = msgspec.json.decode(workload, type=WorkloadRef)
            if not workload_alive(ref):
                gone.add(lease_id)
                continue
            if stopping_since is None or now - stopping_since > ref.grace:
                stoppable = True  # its workload must be told (SIGTERM, later SIGKILL)
            memory, disk = memory + lease_memory, disk + lease_disk
        gpus: set[str] = set()
        cpus: set[int] = set()
        if not gone:  # the common case: every held device counts, read a kind at a time
            used = _Used.of(conn.execute(_HELD_DEVICES), self._gpu_ids)
            gpus, cpus, ports = set(used.gpus), set(used.cpus), used.ports
            if clean:
                self._snapshot = _Snapshot(
                    conn=conn,
                    version=version,
                    gpus=frozenset(gpus),
                    cpus=frozenset(cpus),
                    ports=frozenset(ports),
                    memory=int(memory),
                    disk=int(disk),
                    expires=expires,
                    others=frozenset(others),
                )
                snapshot = self._snapshot
                return (snapshot.gpus, snapshot.cpus, snapshot.memory, snapshot.disk), False
            return (gpus, cpus, int(memory), int(disk)), stoppable
        for kind, device, lease_id in conn.execute("SELECT kind, device, lease_id FROM devices"):
            if lease_id in gone:
                continue
            if kind == "gpu":
                gpus.add(self._gpu_ids.get(device, device))
            elif kind == "cpu":
                cpus.add(int(device))
        return (gpus, cpus, int(memory), int(disk)), stoppable

    def records(self, now: float | None = None, uid: int | None = None) -> list[LeaseRecord]:
        """Every live lease on this host, oldest first (reclaiming dead ones first).

        Leases owned by another user than ``uid`` (default: ours; root sees all)
        come without their env.
        """
        self.reclaim(now)
        uid = os.geteuid() if uid is None else uid

        def op(conn: sqlite3.Connection) -> list[LeaseRecord]:
            out = []
            for record, expires_at, owner in conn.execute(
                "SELECT record, expires_at, owner_uid FROM leases"
            ):
                lease = LeaseRecord.from_json(record)
                changes: dict[str, Any] = {"expires_at": expires_at}
                if uid not in (0, owner):
                    changes["env"] = {}
                out.append(msgspec.structs.replace(lease, **changes))
            return out

        return sorted(self.run(op), key=lambda r: r.created_at)

    def get(self, lease_id: str) -> LeaseRecord | None:
        """One lease's record, or ``None``."""
        return self.run(_read_record, lease_id)

    async def aget(self, lease_id: str) -> LeaseRecord | None:
        """:meth:`get` without blocking the event loop."""
        return await self.arun(_read_record, lease_id)

    async def still_held(self, lease_id: str) -> bool:
        """Is the lease still this process's, and not being stopped by someone else?"""

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM leases WHERE id = ? AND holder = ? AND stopping_since IS NULL",
                (lease_id, self._token),
            ).fetchone()
            return row is not None

        return await self.arun(op)

    # -- renewing and releasing ----------------------------------------------------------

    async def arenew(self, lease_id: str, expires_at: float, now: float | None = None) -> bool:
        """Push a lease's expiry; ``False`` when the lease is gone (expired, released, lost).

        A lease being stopped by a reclaimer is gone too, even if its row is still there.
        """
        now = time.time() if now is None else now

        def op(conn: sqlite3.Connection) -> bool:
            snapshot = self._snapshot
            if snapshot is not None and snapshot.conn is conn:
                # The snapshot holds the earliest expiry: a renewal may bring one nearer.
                self._snapshot = snapshot._replace(expires=min(snapshot.expires, expires_at))
            # One statement is one transaction in autocommit mode: no BEGIN needed.
            return (
                conn.execute(
                    "UPDATE leases SET expires_at = ? WHERE id = ? AND holder = ?"
                    " AND expires_at >= ? AND stopping_since IS NULL",
                    (expires_at, lease_id, self._token, now),
                ).rowcount
                == 1
            )

        return await self.arun(op)

    def _release(self, conn: sqlite3.Connection, lease_id: str, uid: int | None) -> bool:
        self._snapshot = None  # a write of ours the snapshot does not follow
        self._owned.pop(lease_id, None)
        with self._write(conn):
            row = conn.execute("SELECT owner_uid FROM leases WHERE id = ?", (lease_id,)).fetchone()
            if row is None:
                gone = False
            else:
                (owner,) = row
                if uid is not None and uid not in (0, owner):
                    raise LeaseStateError(
                        lease_id,
                        f"it belongs to uid {owner}; only its owner or root may release it",
                    )
                # The devices go with it (ON DELETE CASCADE), in the same transaction.
                conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
                with contextlib.suppress(OSError):
                    os.unlink(self.workload_lock(lease_id))
                gone = True
        if lease_id in self._held:
            self._let_go(lease_id)
        return gone

    async def arelease(self, lease_id: str) -> bool:
        """Free a lease this process holds; ``False`` when it was already gone."""
        return await self.arun(self.release_own, lease_id)

    def release_own(self, conn: sqlite3.Connection, lease_id: str) -> bool:
        """Free a lease this process holds, on ``conn`` (for :meth:`run`/:meth:`try_now`)."""
        # One statement is one transaction (the devices go with it, ON DELETE CASCADE);
        # only this holder's row: another holder's lease is never ours to drop.
        snapshot, self._snapshot = self._snapshot, None
        try:
            gone = (
                conn.execute(
                    "DELETE FROM leases WHERE id = ? AND holder = ?", (lease_id, self._token)
                ).rowcount
                == 1
            )
        finally:
            owned = self._owned.pop(lease_id, None)
            if lease_id in self._held:
                self._let_go(lease_id)
        if snapshot is not None and snapshot.conn is conn:
            # What this release took away, when the snapshot knows it (a commit by anyone
            # else before or after the delete still moves the version: the next use drops it).
            if not gone:
                self._snapshot = snapshot
            elif owned is not None:
                self._snapshot = snapshot.minus(owned)
        if lease_id in self._working:
            self._working.discard(lease_id)
            with contextlib.suppress(OSError):
                os.unlink(self.workload_lock(lease_id))
        return gone

    def release(self, lease_id: str) -> bool:
        """Free a lease as its owner or root may (``aicontract release``): ``release_as``."""
        return self.release_as(lease_id)

    def release_as(self, lease_id: str, uid: int | None = None) -> bool:
        """Free any lease on the host as user ``uid`` (default: ours): its owner or root only.

        Its holder sees the lease revoked at its next renewal and stops its workload;
        a workload whose holder is gone is stopped here first.
        """
        uid = os.geteuid() if uid is None else uid

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT owner_uid, holder, workload FROM leases WHERE id = ?", (lease_id,)
            ).fetchone()
            if row is None:
                return False
            owner, holder, workload = row
            if uid not in (0, owner):
                raise LeaseStateError(
                    lease_id, f"it belongs to uid {owner}; only its owner or root may release it"
                )
            if workload is not None and holder != self._token:
                # Stop it here rather than trust a holder that may be frozen or gone; its
                # devices stay held until it is gone (a holder sees the lease lost).
                ref = msgspec.json.decode(workload, type=WorkloadRef)
                if workload_alive(ref):
                    self._snapshot = None  # a write of ours the snapshot does not follow
                    with self._write(conn):
                        conn.execute(
                            "UPDATE leases SET stopping_since = ? WHERE id = ?",
                            (time.time(), lease_id),
                        )
                    signal_ref(ref, signal.SIGTERM)
                    deadline = time.monotonic() + ref.grace
                    while workload_alive(ref) and time.monotonic() < deadline:
                        time.sleep(0.02)
                    if workload_alive(ref):
                        signal_ref(ref, signal.SIGKILL)
                        deadline = time.monotonic() + 1.0
                        while workload_alive(ref) and time.monotonic() < deadline:
                            time.sleep(0.02)
                    if workload_alive(ref):
                        return True  # out of our reach: reclaimed once its own holder stops it
            self._release(conn, lease_id, uid)
            return True  # gone now, whether we or its holder (seeing its work stop) freed it

        return self.run(op)
