"""The record: an append-only, hash-chained log of every negotiation step.

Each entry is one JSON line whose ``hash`` is the SHA-256 of the entry's own
bytes (everything before ``"hash"``), and which names the hash of the entry
before it (``prev``) and its sequence number (``seq``). Changing any byte of
an entry breaks its hash; removing or reordering entries breaks the chain of
``prev`` and ``seq``; cutting entries off the end is caught by the head file
beside the record, which always names the last entry's number, hash and the
record's length. :func:`verify` checks all of it and names the first entry
that was changed, removed or reordered.

Many processes append to one record (every process on a host that
negotiates): each append holds an exclusive ``flock`` on the record, so the
chain stays one line; threads of one process share the record's open file,
which ``flock`` cannot tell apart, so they also take the record's thread lock.
Entries carry what was asked, offered, refused and granted, and why — never
secrets: a contract enters as its digest, name, tenant and template, never its
environment or labels.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import msgspec

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per record (no flock there)
    fcntl = None  # type: ignore[assignment]

__all__ = ["GENESIS", "Record", "Verification", "verify"]

GENESIS = "0" * 64
"""The ``prev`` of the first entry."""

_HASH_KEY = b',"hash":"'
_SUFFIX = len(_HASH_KEY) + 64 + 2  # ,"hash":"<64 hex>"}
MAX_LINE = 8 * 2**20
"""No entry is longer: a longer line (a crash's run of zeros, garbage) is damage, and is
read only this far, never whole into memory."""


def _bounded_lines(file: BinaryIO) -> Iterator[bytes]:
    """The file's lines, each at most :data:`MAX_LINE` bytes; a longer one is cut there
    (so it lacks its newline: callers call that damage)."""
    return iter(functools.partial(file.readline, MAX_LINE + 1), b"")


_HEAD_LINE = re.compile(rb"\d{20} \d{20} [0-9a-f]{64}\n?")
"""What a head holds: the last entry's number, the record's length, the last hash."""
_SCAN_CHUNK = 1 << 20
"""Bytes a scan reads at once."""
_HEAD_SIZE = 20 + 1 + 20 + 1 + 64 + 1  # "<seq> <size> <hash>\n", fixed width for pwrite
_encoder = msgspec.json.Encoder()
_LINK_KEYS = frozenset(("seq", "prev", "at", "kind", "hash"))


_generation = 0
"""Bumped in a forked child, so a Record knows to reopen its files without a getpid() call."""


def _forked() -> None:
    global _generation
    _generation += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


_sync_file = getattr(os, "fdatasync", os.fsync)
"""Flush a file's data to the disk (fdatasync where there is one: macOS has fsync only)."""


def _flock(fd: int, *, exclusive: bool) -> None:
    """Take or drop the record's lock (where there is no flock, one process per record)."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_UN)


class _Link(msgspec.Struct):
    """The two fields :func:`verify` needs from each entry (the rest is skipped unparsed)."""

    seq: int
    prev: str


_link_decoder = msgspec.json.Decoder(_Link)


@attrs.define(on_setattr=attrs.setters.NO_OP)  # no __setattr__ hook: appends set state
class Record:
    """One record file (``record.jsonl``) and its head (``record.head``).

    ``sync``: flush each entry to the disk (``fdatasync``) before the step it records
    goes on, so it survives a power loss or a kernel crash too — at the cost of a disk
    flush per entry. Off by default (``AICONTRACT_RECORD_SYNC=1`` turns it on): an
    entry is then in the kernel's page cache when ``append`` returns, which survives
    any crash of the process, as the local ledger's commits do (SQLite WAL,
    ``synchronous=NORMAL``).
    """

    path: Path = attrs.field(converter=Path)
    sync: bool = attrs.field(
        factory=lambda: os.environ.get("AICONTRACT_RECORD_SYNC", "").lower() in ("1", "true", "on")
    )
    _fd: int | None = attrs.field(default=None, init=False, repr=False)
    _head_fd: int | None = attrs.field(default=None, init=False, repr=False)
    _pid: int = attrs.field(default=-1, init=False, repr=False)
    """The fork generation the files were opened in."""
    _known: tuple[int, str, int] | None = attrs.field(default=None, init=False, repr=False)
    """(seq, hash, size) after this process's last append: no re-reading the head if unchanged."""
    _mutex: threading.RLock = attrs.field(factory=threading.RLock, init=False, repr=False)
    """Threads of this process: flock holds for the open file, so for all of them at once."""

    @classmethod
    def in_dir(cls, directory: str | Path) -> Record:
        """The record kept in a state dir, beside the local ledger."""
        return cls(Path(directory) / "record.jsonl")

    @property
    def head_path(self) -> Path:
        """Where the last entry's number, hash and the record's length are kept."""
        return self.path.with_suffix(".head")

    @classmethod
    def shared(cls, path: str | Path) -> Record:
        """One :class:`Record` per path in this process, so negotiators share its files."""
        key = Path(path).absolute()
        record = _SHARED.get(key)
        if record is None:
            record = _SHARED[key] = cls(key)
        return record

    def _thread_lock(self) -> threading.RLock:
        if self._pid != _generation:
            # A forked child has one thread: a lock another thread of its parent held
            # at the fork would never be released here.
            self._mutex = threading.RLock()
        return self._mutex

    def _open(self) -> tuple[int, int]:
        with self._thread_lock():
            return self._open_locked()

    def _open_locked(self) -> tuple[int, int]:
        if self._pid != _generation:
            # A forked child shares its parent's open files, and with them the flock:
            # it must open its own, or parent and child would both "hold" the lock.
            self.close()
            self._pid = _generation
        if self._fd is None or self._head_fd is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
                head = os.open(self.head_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            except OSError as exc:
                raise ConfigError(
                    f"cannot open the record {str(self.path)!r}: {exc.strerror}"
                ) from None
            self._fd, self._head_fd = fd, head
        return self._fd, self._head_fd

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the record's lock: no other process appends until the block ends.

        Appends inside the block (``append(..., locked=True)``) join it, so a
        check of the record and the entry that acts on it happen as one step.
        """
        with self._thread_lock():
            fd, _ = self._open_locked()
            _flock(fd, exclusive=True)
            try:
                yield
            finally:
                _flock(fd, exclusive=False)

    def append(
        self, kind: str, at: float, fields: dict[str, Any], *, locked: bool = False
    ) -> dict[str, Any]:
        """Append one entry (``kind`` at time ``at`` with ``fields``); return it with its hash.

        ``locked``: the caller already holds :meth:`locked`.
        """
        seq, prev, digest, _, _ = self._write(kind, at, fields, locked)
        return {"seq": seq, "prev": prev, "at": at, "kind": kind, **fields, "hash": digest}

    def write(
        self, kind: str, at: float, fields: dict[str, Any], *, locked: bool = False
    ) -> tuple[int, int]:
        """:meth:`append` without building the entry back (the negotiator's hot path): returns
        the byte offsets where the entry's line starts and ends in the record."""
        return self._write(kind, at, fields, locked)[3:]

    def _write(
        self, kind: str, at: float, fields: dict[str, Any], locked: bool
    ) -> tuple[int, str, str, int, int]:
        """Append one entry: its number, the hash before it, its own hash, and the offsets
        where its line starts and ends."""
        if _LINK_KEYS.isdisjoint(fields):
            # Everything but the link (seq, prev) is encoded before the lock is taken, so
            # the lock is held for the chain's own work only: the same bytes as encoding
            # {"seq", "prev", "at", "kind", **fields} at once.
            encoded = _encoder.encode(fields)
            rest = b',"at":%s,"kind":%s%s' % (
                _encoder.encode(at),
                _encoder.encode(kind),
                b"," + encoded[1:] if len(encoded) > 2 else b"}",
            )
        else:  # a field named like a link field: the slow path keeps dict semantics
            rest = b""
        mutex = self._thread_lock()
        mutex.acquire()  # reentrant: a caller in `locked()` holds it already
        fd, head_fd = (
            (self._fd, self._head_fd)
            if self._pid == _generation and self._fd is not None and self._head_fd is not None
            else self._open_locked()
        )
        if not locked:  # not `with self.locked()`: this is the hot path
            _flock(fd, exclusive=True)
        try:
            # The size is where the end is (seek to it: cheaper than fstat, same answer).
            size = os.lseek(fd, 0, os.SEEK_END)
            known = self._known
            if known is not None and known[2] == size:  # nobody appended since we did
                seq, prev = known[0], known[1]
            else:
                seq, prev, size = self._last(fd, head_fd, size)
            if rest:
                body = b'{"seq":%d,"prev":%s%s' % (seq + 1, _encoder.encode(prev), rest)
            else:
                entry = {"seq": seq + 1, "prev": prev, "at": at, "kind": kind, **fields}
                body = _encoder.encode(entry)
            digest = hashlib.sha256(body).hexdigest()
            line = b'%s,"hash":"%s"}\n' % (body[:-1], digest.encode())
            end = size + len(line)
            head = b"%020d %020d %s\n" % (seq + 1, end, digest.encode())
            try:
                os.write(fd, line)  # the entry first: a head never names a missing entry
                if self.sync:  # the entry on the disk before its head names it
                    _sync_file(fd)
                os.pwrite(head_fd, head, 0)
            except OSError as exc:
                # A record that cannot be written (disk full, read-only) refuses the work
                # it would have recorded, with a clear error rather than a traceback.
                raise ConfigError(
                    f"cannot write the record {str(self.path)!r}: {exc.strerror};"
                    " free space, or move it with AICONTRACT_RECORD"
                ) from None
            self._known = (seq + 1, digest, end)
        finally:
            if not locked:
                _flock(fd, exclusive=False)
            mutex.release()
        return seq + 1, prev, digest, size, end

    @staticmethod
    def _last(fd: int, head_fd: int, size: int) -> tuple[int, str, int]:
        """The last entry's number and hash, and the record's size: from the head, or the
        record's last line.

        The head lags the record only when a writer died between its two writes;
        then the record's own last line is the truth (it was written first). A
        record *shorter* than its head says lost entries: the chain goes on from
        the head, so the gap stays visible to :func:`verify` instead of being papered over.
        """
        head = os.pread(head_fd, _HEAD_SIZE, 0)
        # Zeros (a block allocated but never written, after a power loss): no head.
        if len(head) == _HEAD_SIZE and head[:1].isdigit():
            seq_text, size_text, digest = head.decode("ascii", "replace").split(" ", 2)
            if seq_text.isdigit() and size_text.isdigit() and int(size_text) >= size:
                return int(seq_text), digest.strip(), size
        if size == 0:
            return 0, GENESIS, 0
        tail = os.pread(fd, min(size, 1 << 16), max(0, size - (1 << 16)))
        last = tail.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        try:
            link = _link_decoder.decode(last[:-_SUFFIX] + b"}")
        except msgspec.DecodeError:
            raise ConfigError(
                "the record ends in a damaged entry; run `aicontract audit verify`"
            ) from None
        return link.seq, last[-_SUFFIX + len(_HASH_KEY) : -2].decode(), size

    def scan(self, offset: int = 0) -> Iterator[tuple[dict[str, Any], int]]:
        """Each whole entry from byte ``offset`` on, with the offset just after it.

        Reads in chunks at their own offsets (``pread``: no file position shared with
        another thread's scan), so catching up on a large record needs no more memory
        than a chunk and one entry; a line still being written (no newline yet) is left
        for later.
        """
        fd, _ = self._open()
        size = os.fstat(fd).st_size
        position, carry = offset, b""
        while position < size:  # nothing new (the common case in a loop): no read at all
            chunk = os.pread(fd, min(_SCAN_CHUNK, size - position), position)
            if not chunk:
                return
            position += len(chunk)
            lines = (carry + chunk).split(b"\n")
            carry = lines.pop()  # the part after the last newline: not a whole entry yet
            for line in lines:
                start, offset = offset, offset + len(line) + 1
                if line.strip():
                    try:
                        entry = msgspec.json.decode(line)
                    except msgspec.DecodeError:
                        raise ConfigError(
                            f"the record {str(self.path)!r} is damaged at byte {start}:"
                            " run `aicontract audit verify` to see where"
                        ) from None
                    yield entry, offset

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every entry, oldest first."""
        try:
            file = self.path.open("rb")
        except FileNotFoundError:
            return
        with file:
            for line in _bounded_lines(file):
                if len(line) > MAX_LINE:
                    raise msgspec.DecodeError(f"a line longer than {MAX_LINE} bytes")
                if line.strip():
                    yield msgspec.json.decode(line)

    def close(self) -> None:
        """Close the record's files (safe to repeat)."""
        for fd in (self._fd, self._head_fd):
            if fd is not None:
                os.close(fd)
        self._fd = self._head_fd = None
        self._known = None


_SHARED: dict[Path, Record] = {}


@attrs.frozen
class Verification:
    """The outcome of :func:`verify`: how many entries were checked and the first problem."""

    entries: int
    problem: str | None = None
    line: int | None = None

    @property
    def ok(self) -> bool:
        """True when every entry is intact, in order, and none is missing."""
        return self.problem is None


def verify(path: str | Path) -> Verification:
    """Check a record: every hash, the chain of ``prev``/``seq``, and the head file.

    Names the first entry that was changed, removed or reordered (by its line).
    """
    record = Record(Path(path))
    prev, expected, count = GENESIS, 1, 0
    sha256 = hashlib.sha256
    decode = _link_decoder.decode
    try:
        file: BinaryIO = record.path.open("rb")
    except FileNotFoundError:
        # No entries to read; the head below still tells a deleted record from a new one.
        file = io.BytesIO()
    with file:
        for number, line in enumerate(_bounded_lines(file), 1):
            if len(line) > MAX_LINE:
                return Verification(
                    count,
                    f"line {number} is longer than any record entry ({MAX_LINE} bytes)",
                    number,
                )
            line = line.rstrip(b"\n")
            body = line[:-_SUFFIX] + b"}"
            stored = line[-_SUFFIX + len(_HASH_KEY) : -2]
            if line[-_SUFFIX : -_SUFFIX + len(_HASH_KEY)] != _HASH_KEY or not line.endswith(b'"}'):
                return Verification(count, f"line {number} is not a record entry", number)
            try:
                link = decode(body)
            except msgspec.DecodeError:
                return Verification(count, f"line {number} is not a record entry", number)
            if sha256(body).hexdigest().encode() != stored:
                return Verification(
                    count,
                    f"entry {link.seq} (line {number}) was changed: its hash does not"
                    " match its content",
                    number,
                )
            if link.seq != expected:
                if link.seq > expected:
                    what = (
                        f"entry {expected} is missing (removed, or moved later)"
                        if link.seq == expected + 1
                        else f"entries {expected}..{link.seq - 1} are missing (removed or moved)"
                    )
                else:
                    what = f"entry {link.seq} is out of order"
                return Verification(
                    count,
                    f"{what}: line {number} holds entry {link.seq}, expected {expected}",
                    number,
                )
            if link.prev != prev:
                return Verification(
                    count,
                    f"entry {link.seq} (line {number}) does not follow the entry before"
                    " it: an entry before it was changed or replaced",
                    number,
                )
            prev, expected, count = stored.decode(), expected + 1, count + 1
    try:
        head: bytes | None = record.head_path.read_bytes().rstrip(b"\0")
    except FileNotFoundError:
        head = None
    if count and (head is None or (head and not _HEAD_LINE.fullmatch(head))):
        # Every append writes the head: a record with entries and no readable head had it
        # removed or damaged, and with it the only witness of entries cut from the end.
        # (Zeros alone are a crash's, not an edit's: a block allocated, never written.)
        what = "is missing" if head is None else "is damaged"
        return Verification(
            count,
            f"the head ({record.head_path.name}) {what}: entries removed from the end"
            " could not be told",
            count + 1,
        )
    if count and head:
        seq_text, _, rest = head.decode("ascii", "replace").partition(" ")
        digest = rest.partition(" ")[2].strip()
        if seq_text.isdigit() and int(seq_text) > count:
            return Verification(
                count,
                f"entries {count + 1}..{int(seq_text)} were removed from the end"
                f" (the head names entry {int(seq_text)})",
                count + 1,
            )
        if seq_text.isdigit() and int(seq_text) == count and digest != prev:
            return Verification(count, f"entry {count} (the last) was replaced", count)
    elif not count and head and head.strip():
        seq_text = head.decode("ascii", "replace").partition(" ")[0]
        if seq_text.isdigit() and int(seq_text) > 0:
            return Verification(0, f"all {int(seq_text)} entries were removed", 1)
    return Verification(count)
