"""Reporting from inside a workload: ``aicontract.report(...)``, ``aicontract.measure(...)``.

A held lease that a monitor watches gives every process started with its env
a way to report SLIs: ``AICONTRACT_REPORT_SOCKET`` names a local datagram
socket (``AF_UNIX``, ``SOCK_DGRAM``) that the lease's holder reads and feeds
to its monitor, as if the holder had called :meth:`Lease.report
<aicontract.leases.Lease.report>` itself::

    import aicontract

    aicontract.report(throughput=512, unit="tokens/s")
    with aicontract.measure("latency"):
        answer = model(prompt)

The client never blocks and never raises for want of a holder: outside a
lease (no ``AICONTRACT_REPORT_SOCKET``) a report is a no-op; when the holder
is busy, gone or not there yet, the datagram is dropped and counted
(:func:`dropped`). Figures a tight loop reports share datagrams, so a
workload can report well over a hundred thousand figures a second.

Each lease has its own socket, at a path known before it is bound
(:func:`report_socket_path`): a backend that starts the workload at commit
puts it in the workload's env, and the holder binds it once it holds the
lease. Only the socket's owner can write to it: it lives in a directory only
its user may enter (:func:`report_dir`).
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import hashlib
import logging
import os
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import msgspec

from .observation import figure_problem, reported_figures

__all__ = [
    "REPORT_SOCKET_ENV",
    "ReportSocket",
    "dropped",
    "flush",
    "measure",
    "report",
    "report_dir",
    "report_socket_path",
]

REPORT_SOCKET_ENV = "AICONTRACT_REPORT_SOCKET"
"""The env var naming the holder's report socket."""

log = logging.getLogger("aicontract.reporting")

_MAX_DATAGRAM = 64 * 1024
_MAX_PATH = 103 if sys.platform == "darwin" else 107
"""Longer ``AF_UNIX`` paths do not bind (108 bytes on Linux, 104 on macOS, with the NUL)."""
_BATCH = 64
"""At most this many figures travel in one datagram (about 1.5 KB)."""
_COALESCE = 0.002
"""Figures reported within this many seconds of the last datagram wait to share the next."""
_FLUSH_EVERY = 0.01
"""How often the flusher thread sends figures a tight loop left waiting when it stopped."""


class _Report(msgspec.Struct, frozen=True, omit_defaults=True):
    """One datagram: figures in base units unless ``unit``.

    ``values`` are figures measured at the same moment; ``samples`` are
    figures (in base units, no labels) that a tight loop reported one after
    another and that share a datagram to keep the workload's cost down.
    """

    values: dict[str, float] = msgspec.field(default_factory=dict)
    unit: str | None = None
    labels: dict[str, str] | None = None
    samples: list[tuple[str, float]] = msgspec.field(default_factory=list)


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Report).decode


# -- where report sockets live -----------------------------------------------------------


def report_dir() -> Path:
    """This user's private directory for report sockets (mode 0700, created when bound).

    ``$AICONTRACT_STATE_DIR/reports-<uid>``, else ``reports-<uid>`` in the
    per-user state dir. Only its owner may enter it, so only its owner's
    processes can write to a socket in it.
    """
    env = os.environ.get("AICONTRACT_STATE_DIR")
    if env:
        base = Path(env)
    else:
        import platformdirs

        base = Path(platformdirs.user_state_dir("aicontract"))
    return base / f"reports-{os.geteuid()}"


def report_socket_path(lease_id: str, *, create: bool = False) -> str:
    """Where the holder of lease ``lease_id`` binds its report socket: known before it binds.

    A backend that starts the workload itself (the local backend, at commit)
    puts it in the workload's env; the holder binds it once it holds the
    lease, and what the workload reported before that is dropped, never
    waited for. The name comes from the lease id (and the directory), so
    each lease of a renegotiation chain has its own socket. When
    :func:`report_dir` is too deep for a socket path, a per-user directory in
    the system's temporary directory is used instead. With ``create``, the
    directory is made (0700) or checked to be this user's alone first
    (:class:`PermissionError` when it is not: nobody else may receive what the
    workload reports).
    """
    directory = report_dir()
    # Short and fixed-length, so deep state dirs still fit in a socket path.
    digest = hashlib.blake2b(f"{directory}\0{lease_id}".encode(), digest_size=8).hexdigest()
    name = f"{digest}.sock"
    path = directory / name
    if len(os.fsencode(path)) > _MAX_PATH:
        path = Path(tempfile.gettempdir()) / f"aicontract-reports-{os.geteuid()}" / name
    if create:
        _private_dir(path.parent)
    return str(path)


def _private_dir(directory: Path) -> None:
    """Create ``directory`` (0700) or check that it is ours alone; OSError when it is not."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o700)
    info = os.lstat(directory)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise PermissionError(
            errno.EPERM,
            "not a directory of this user's alone; no report socket there",
            str(directory),
        )
    if info.st_mode & 0o077:
        os.chmod(directory, 0o700)  # ours, but others may enter it: close it first


def _clear_stale(path: str) -> None:
    """Remove a socket a holder that died left at ``path``; OSError when one is live there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(errno.EEXIST, "not a socket; leaving it alone", path)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)  # nobody reads it: stale
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, "another holder reads this report socket", path)


# -- the client (inside the workload) ----------------------------------------------------


class _Client:
    """One non-blocking datagram socket per process (a forked child makes its own).

    Figures without a unit or labels queue in ``pending`` when they come
    within :data:`_COALESCE` of the last datagram, and leave together (up to
    :data:`_BATCH` at a time): a tight loop pays one ``sendto`` for many
    figures. A flusher thread sends what such a loop left behind when it
    stopped, so no figure waits long.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.dropped = 0
        self.pending: deque[tuple[str, float]] = deque()
        self.sent_at = 0.0
        self.flusher = False

    def send(self, data: bytes, figures: int) -> None:
        try:
            self.sock.sendto(data, self.path)
        except OSError as exc:
            # Full (the holder is behind), gone or refused: never block, never raise.
            self.dropped += figures
            if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.ENOENT):
                log.debug("report dropped: %s", exc)

    def add(self, sli: str, value: float) -> None:
        pending = self.pending
        pending.append((sli, value))
        now = time.monotonic()
        if len(pending) >= _BATCH or now - self.sent_at >= _COALESCE:
            self.flush(now)
        elif not self.flusher:
            self.flusher = True
            threading.Thread(target=self._flush_loop, name="aicontract-report", daemon=True).start()

    def flush(self, now: float | None = None) -> None:
        """Send what is pending (popleft is atomic: reporting threads may append meanwhile)."""
        pending, batch = self.pending, []
        with contextlib.suppress(IndexError):
            for _ in range(_BATCH):
                batch.append(pending.popleft())
        self.sent_at = time.monotonic() if now is None else now
        if batch:
            self.send(_encode(_Report(samples=batch)), len(batch))

    def _flush_loop(self) -> None:
        while True:
            idle = 0
            while idle < 100:  # about a second with nothing to send: the thread ends
                time.sleep(_FLUSH_EVERY)
                if self.pid != os.getpid():
                    return
                if self.pending and time.monotonic() - self.sent_at >= _COALESCE:
                    self.flush()
                    idle = 0
                else:
                    idle += 1
            self.flusher = False
            if not self.pending:
                return
            self.flusher = True  # a figure came as the thread decided to end: stay


_client: _Client | None = None
_client_lock = threading.Lock()

# Reading os.environ decodes the value on every call (most of a report's cost in a
# tight loop). CPython keeps the raw values in os.environ._data and stores a new
# object on every change, so "the same object as last time" means "unchanged": the
# client re-reads the env only then. Elsewhere, the plain lookup every time.
_raw_env: Any = getattr(os.environ, "_data", None)
_raw_key: Any = os.environ.encodekey(REPORT_SOCKET_ENV) if _raw_env is not None else None
_UNSEEN = object()
_seen: tuple[Any, _Client | None] = (_UNSEEN, None)
"""The raw env value last looked at, and the client it meant (None: not in a lease)."""


def _forget_client() -> None:
    """In a forked child: its own socket, its own flusher thread (made on first report)."""
    global _client, _seen
    _client, _seen = None, (_UNSEEN, None)


os.register_at_fork(after_in_child=_forget_client)


def _socket() -> _Client | None:
    global _client, _seen
    raw = _UNSEEN
    if _raw_env is not None:
        raw = _raw_env.get(_raw_key)
        seen_raw, seen_client = _seen
        if raw is seen_raw:
            return seen_client
    path = os.environ.get(REPORT_SOCKET_ENV)
    client = _client
    if not path:
        client = None
    elif client is None or client.path != path:
        with _client_lock:
            client = _client
            if client is None or client.path != path:
                if client is not None:
                    client.flush()  # what the old socket still owed
                client = _client = _Client(path)
    if raw is not _UNSEEN:
        _seen = (raw, client)  # one assignment: other threads see both or neither
    return client


@atexit.register
def _flush_at_exit() -> None:
    flush()


def report(
    sli: str | None = None,
    value: float | None = None,
    *,
    unit: str | None = None,
    labels: dict[str, str] | None = None,
    **values: float,
) -> None:
    """Report figures to the lease this process runs under: ``report(throughput=512)``.

    The same call as :meth:`Lease.report <aicontract.leases.Lease.report>`:
    one ``sli``/``value`` pair or SLIs as keywords; ``unit`` converts (``"ms"``,
    ``"tokens/s"``, ``"%"``), else values are in base units. A no-op outside
    a lease; never blocks.
    """
    if sli is not None and value is not None and not values and unit is None and labels is None:
        # The common case (one figure, base units) skips building a dict: it is the hot path.
        figure = float(value)
        if figure_problem(sli, figure) is not None:
            reported_figures(sli, figure, values)  # raises what Lease.report raises
        client = _socket()
        if client is not None:
            client.add(sli, figure)
        return
    figures = reported_figures(sli, value, values)  # refuses what Lease.report refuses
    client = _socket()
    if client is None:
        return
    if unit is None and labels is None:
        for name, figure in figures.items():
            client.add(name, figure)
        return
    client.flush()  # keep the order figures were reported in
    client.send(_encode(_Report(values=figures, unit=unit, labels=labels)), len(figures))


@contextlib.contextmanager
def measure(sli: str = "latency", *, errors: bool = False) -> Iterator[None]:
    """Time the block and report it as ``sli``: ``with aicontract.measure("latency"):``.

    With ``errors``, also report ``availability`` — 1 when the block
    succeeds, 0 when it raises. A no-op outside a lease; never blocks.
    """
    started = time.perf_counter()
    ok = False
    try:
        yield
        ok = True
    finally:
        elapsed = time.perf_counter() - started
        client = _socket()
        if client is not None:
            client.add(sli, elapsed)
            if errors:
                client.add("availability", float(ok))


def flush() -> None:
    """Send now the figures waiting to share a datagram (they also go within ~10 ms, and at
    exit; call this before ``os._exit`` or ``exec``, which skip both)."""
    client = _client
    if client is not None and client.pid == os.getpid():
        while client.pending:
            client.flush()


def dropped() -> int:
    """How many figures this process dropped because its holder could not take them."""
    client = _client
    return client.dropped if client is not None and client.pid == os.getpid() else 0


# -- the holder's side ---------------------------------------------------------------------

Deliver = Callable[[str, float, "str | None", "dict[str, str] | None"], None]


class ReportSocket:
    """The holder's end: a datagram socket bound in a private directory, read in a loop.

    ``with ReportSocket(path=report_socket_path(lease.id)) as reports:`` binds
    it at a path the workload may already know (its directory is created
    0700, or must already be this user's alone; a socket a dead holder left
    there is replaced); ``ReportSocket(name)`` binds in a fresh private
    directory instead. ``reports.path`` is what goes into
    ``AICONTRACT_REPORT_SOCKET``; ``await reports.serve(deliver)`` reads
    datagrams until cancelled, calling ``deliver(sli, value, unit, labels)``
    for each figure. A malformed datagram is counted and skipped.
    """

    def __init__(
        self, name: str = "lease", *, path: str | None = None, buffer: int = 4 * 1024 * 1024
    ) -> None:
        self.directory: Path | None = None
        if path is None:
            self.directory = Path(tempfile.mkdtemp(prefix="aicontract-"))  # 0700: ours only
            path = str(self.directory / f"{name[:40]}.sock")
        else:
            _private_dir(Path(path).parent)
            _clear_stale(path)
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):  # a bigger buffer rides out bursts; not essential
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        try:
            self.sock.bind(self.path)
            self._inode = os.lstat(self.path).st_ino
        except OSError:
            self.close()
            raise
        self.received = 0
        self.malformed = 0

    def __enter__(self) -> ReportSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket and remove it (and its directory, when it made one)."""
        self.sock.close()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            return
        with contextlib.suppress(OSError, AttributeError):
            if os.lstat(self.path).st_ino == self._inode:  # still ours, not a newer holder's
                os.unlink(self.path)

    def drain(self, deliver: Deliver) -> int:
        """Deliver every figure waiting now; returns how many were delivered."""
        count = 0
        while True:
            try:
                data = self.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return count
            try:
                message = _decode(data)
            except msgspec.DecodeError:
                self.malformed += 1
                continue
            self.received += 1
            for sli, value in message.samples:
                deliver(sli, value, None, None)
            for sli, value in message.values.items():
                deliver(sli, value, message.unit, message.labels)
            count += len(message.samples) + len(message.values)

    async def serve(self, deliver: Deliver) -> None:
        """Deliver what workloads report, until cancelled."""
        while True:
            await anyio.wait_readable(self.sock)
            self.drain(deliver)
