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
is busy or gone, the datagram is dropped and counted (:func:`dropped`). One
report is one small ``sendto`` on a non-blocking socket, so a workload can
report tens of thousands of samples a second. Only the socket's owner can
write to it: it lives in a directory only the holder's user may enter.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import msgspec

__all__ = ["REPORT_SOCKET_ENV", "ReportSocket", "dropped", "measure", "report"]

REPORT_SOCKET_ENV = "AICONTRACT_REPORT_SOCKET"
"""The env var naming the holder's report socket."""

log = logging.getLogger("aicontract.reporting")

_MAX_DATAGRAM = 64 * 1024


class _Report(msgspec.Struct, frozen=True, omit_defaults=True):
    """One datagram: figures measured at the same moment (base units unless ``unit``)."""

    values: dict[str, float]
    unit: str | None = None
    labels: dict[str, str] | None = None


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Report).decode


# -- the client (inside the workload) ----------------------------------------------------


class _Client:
    """One non-blocking datagram socket per process (a forked child makes its own)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.pid = os.getpid()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.dropped = 0


_client: _Client | None = None
_client_lock = threading.Lock()


def _socket() -> _Client | None:
    global _client
    path = os.environ.get(REPORT_SOCKET_ENV)
    if not path:
        return None
    client = _client
    if client is None or client.path != path or client.pid != os.getpid():
        with _client_lock:
            client = _client
            if client is None or client.path != path or client.pid != os.getpid():
                client = _client = _Client(path)
    return client


def _send(client: _Client, message: _Report) -> None:
    try:
        client.sock.sendto(_encode(message), client.path)
    except OSError as exc:
        # Full (the holder is behind), gone or refused: never block, never raise.
        client.dropped += 1
        if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.ENOENT):
            log.debug("report dropped: %s", exc)


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
    if sli is not None:
        if value is None:
            raise TypeError("report(sli, value): give a value")
        values = {sli: value, **values}
    if not values:
        raise TypeError("report() needs at least one figure, e.g. report(throughput=512)")
    client = _socket()
    if client is None:
        return
    figures = {k: float(v) for k, v in values.items()}
    _send(client, _Report(values=figures, unit=unit, labels=labels))


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
        figures = {sli: elapsed, "availability": float(ok)} if errors else {sli: elapsed}
        client = _socket()
        if client is not None:
            _send(client, _Report(values=figures))


def dropped() -> int:
    """How many reports this process dropped because its holder could not take them."""
    client = _client
    return client.dropped if client is not None and client.pid == os.getpid() else 0


# -- the holder's side ---------------------------------------------------------------------

Deliver = Callable[[str, float, "str | None", "dict[str, str] | None"], None]


class ReportSocket:
    """The holder's end: a datagram socket bound in a private directory, read in a loop.

    ``with ReportSocket() as reports:`` binds it (``reports.path`` is what
    goes into ``AICONTRACT_REPORT_SOCKET``); ``await reports.serve(deliver)``
    reads datagrams until cancelled, calling ``deliver(sli, value, unit,
    labels)`` for each figure. A malformed datagram is counted and skipped.
    """

    def __init__(self, name: str = "lease", *, buffer: int = 4 * 1024 * 1024) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="aicontract-"))  # mode 0700: ours only
        self.path = str(self.directory / f"{name[:40]}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        with contextlib.suppress(OSError):  # a bigger buffer rides out bursts; not essential
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        try:
            self.sock.bind(self.path)
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
        """Close the socket and remove its directory."""
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    def drain(self, deliver: Deliver) -> int:
        """Read every datagram waiting now; returns how many were read."""
        count = 0
        while True:
            try:
                data = self.sock.recv(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return count
            count += 1
            try:
                message = _decode(data)
            except msgspec.DecodeError:
                self.malformed += 1
                continue
            self.received += 1
            for sli, value in message.values.items():
                deliver(sli, value, message.unit, message.labels)

    async def serve(self, deliver: Deliver) -> None:
        """Deliver what workloads report, until cancelled."""
        while True:
            await anyio.wait_readable(self.sock)
            self.drain(deliver)
