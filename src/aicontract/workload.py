"""Supervised workloads: the processes a lease runs live and die with the lease.

Any backend that runs a command on this host for a lease uses :func:`spawn`.
The command runs under a tiny supervisor (``_supervise.py``) that is

* the leader of a process group of its own (the workload's *pgid*), so one
  ``killpg`` reaches every process the command starts;
* in a cgroup v2 leaf of its own where the host lets us create one (so even a
  descendant that calls ``setsid`` cannot escape; :func:`cgroup_parent` says
  where, ``AICONTRACT_CGROUPS=off`` turns it off), and without one elsewhere;
* tied to its holder by a parent-death signal: if the holder dies, even by
  SIGKILL, the supervisor stops the group (SIGTERM, the grace period, SIGKILL);
* the keeper of the lease's *workload lock*, an ``flock`` that the kernel keeps
  held while any process of the workload is alive, in whatever PID namespace.

:class:`WorkloadRef` is what another process needs to judge and stop a
workload (a ledger stores it), and :func:`stop_ref` stops one from there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio
import anyio.abc
import attrs
import msgspec

__all__ = [
    "Supervised",
    "WorkloadRef",
    "cgroup_parent",
    "lock_held",
    "lock_holders",
    "pid_namespace",
    "process_start_time",
    "signal_ref",
    "spawn",
    "workload_alive",
]

log = logging.getLogger("aicontract.workload")

SUPERVISOR = str(Path(__file__).with_name("_supervise.py"))
DEFAULT_GRACE = 10.0


class WorkloadRef(msgspec.Struct, frozen=True, kw_only=True):
    """Enough about a running workload for any process on the host to judge and stop it.

    ``pgid`` and ``start`` (the group leader's start time, in clock ticks since
    boot) are meaningful only in PID namespace ``pidns`` (``pgid`` 0: not started
    yet); ``cgroup`` (a path
    under the cgroup v2 mount) and ``lock`` (the workload lock file) hold in
    every namespace that shares them.
    """

    pgid: int
    start: int | None = None
    pidns: int | None = None
    cgroup: str | None = None
    lock: str | None = None
    grace: float = 10.0
    """Seconds between SIGTERM and SIGKILL when it is stopped."""


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def pid_namespace() -> int | None:
    """The inode of this process's PID namespace (``None`` where /proc does not say)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


@functools.lru_cache(maxsize=1)
def cgroup_parent() -> Path | None:
    """The cgroup v2 directory where workload leaves can be made, or ``None``.

    That is this process's own cgroup in the unified hierarchy, when it is
    writable (root on most hosts, a delegated user slice under systemd).
    """
    if os.environ.get("AICONTRACT_CGROUPS", "").lower() in ("off", "0", "no", "false"):
        return None
    try:
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
        own = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    mount = next((m.split()[4] for m in mounts if " - cgroup2 " in m), None)
    path = next((line[3:] for line in own if line.startswith("0::")), None)
    if mount is None or path is None:
        return None
    where = Path(mount) / path.lstrip("/")
    if not os.access(where, os.W_OK) or not (where / "cgroup.procs").exists():
        return None
    return where


def _make_cgroup(name: str) -> str | None:
    parent = cgroup_parent()
    if parent is None:
        return None
    leaf = parent / f"aicontract-{name}"
    try:
        leaf.mkdir(mode=0o755, exist_ok=True)
    except OSError as exc:
        log.debug("no cgroup for the workload (%s); its process group still holds it", exc)
        return None
    return str(leaf)


def _remove_cgroup(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.rmdir(path)


def lock_held(path: str | os.PathLike[str]) -> bool | None:
    """Is the ``flock`` on ``path`` held by some process? ``None`` when we cannot tell.

    A missing file is a lock nobody holds. The kernel drops a lock when the
    last process holding it exits, whatever its PID namespace.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        return None
    finally:
        os.close(fd)  # also drops the shared lock we may just have taken
    return False


def lock_holders(path: str | os.PathLike[str]) -> list[int]:
    """The processes (other than this one) that have the workload lock ``path`` open for
    writing, as the workload's processes do: read from ``/proc/*/fd``, so only those this
    user may look at (its own; root: all). A process that left the workload's group and
    cgroup but kept the lock is found here. A reader probing the lock (:func:`lock_held`,
    which opens it read-only) is not.
    """
    try:
        lock = os.stat(path)
    except OSError:
        return []
    me = str(os.getpid())
    found: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or entry == me:
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.stat(f"/proc/{entry}/fd/{fd}")
                if (target.st_dev, target.st_ino) != (lock.st_dev, lock.st_ino):
                    continue
                with open(f"/proc/{entry}/fdinfo/{fd}") as info:
                    flags = next(
                        int(line.split()[1], 8) for line in info if line.startswith("flags:")
                    )
            except (OSError, ValueError, StopIteration, IndexError):
                continue
            if flags & os.O_ACCMODE == os.O_RDWR:
                found.append(int(entry))
                break
    return found


def _cgroup_pids(cgroup: str | None) -> list[int]:
    if cgroup is None:
        return []
    try:
        return [int(p) for p in Path(cgroup, "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def _group_is_ours(ref: WorkloadRef) -> bool:
    """May ``ref.pgid`` be signalled from here (same PID namespace, not a recycled pid)?"""
    if ref.pgid <= 0:  # not started yet (only its lock is known): never our own group
        return False
    if ref.pidns is not None and ref.pidns != pid_namespace():
        return False
    leader_start = process_start_time(ref.pgid)
    # A pid in use as a group id is never handed out again, so a group with no leader
    # left is still the workload's; a leader with another start time is someone else.
    return leader_start is None or ref.start is None or leader_start == ref.start


def workload_alive(ref: WorkloadRef) -> bool:
    """Is any process of the workload still running?

    Alive when any of its marks says so: the workload lock is held (that
    answers across PID namespaces), its cgroup has processes, or its process
    group does (where that group is ours to see).
    """
    if ref.lock is not None and lock_held(ref.lock) is not False:
        return True
    if _cgroup_pids(ref.cgroup):
        return True
    if not _group_is_ours(ref):
        return False
    try:
        os.killpg(ref.pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left (their parent is gone or frozen) is a group that runs nothing.
    return _group_has_live_member(ref.pgid)


def _group_has_live_member(pgid: int) -> bool:
    try:
        entries = os.listdir("/proc")
    except OSError:
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] != b"Z":
            return True
    return False


def signal_ref(ref: WorkloadRef, sig: int) -> bool:
    """Send ``sig`` to every process of the workload we can reach; ``True`` if any was."""
    reached = False
    if ref.cgroup is not None:
        if sig == signal.SIGKILL:
            with contextlib.suppress(OSError):
                Path(ref.cgroup, "cgroup.kill").write_text("1")
                reached = True
        for pid in _cgroup_pids(ref.cgroup):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
                reached = True
    if _group_is_ours(ref):
        with contextlib.suppress(OSError):
            os.killpg(ref.pgid, sig)
            reached = True
    if ref.lock is not None and lock_held(ref.lock):
        # Left the group (setsid, a double fork) without a cgroup to keep it, but kept
        # the lock it inherited: it is still the workload.
        for pid in lock_holders(ref.lock):
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
                reached = True
    return reached


@attrs.define(eq=False)
class Supervised:
    """A workload this process started: wait for it, signal it, stop it."""

    process: anyio.abc.Process
    ref: WorkloadRef
    grace: float = DEFAULT_GRACE

    @property
    def pid(self) -> int:
        """The supervisor's pid, which is also the workload's process group id."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The command's exit status (128+N when signal N ended it), ``None`` while it runs."""
        code = self.process.returncode
        if code is not None and code < 0:
            return 128 - code
        return code

    async def wait(self) -> int:
        """Wait for the command to end; its exit status."""
        await self.process.wait()
        code = self.returncode
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the whole workload (how the CLI forwards Ctrl-C and friends)."""
        signal_ref(self.ref, sig)

    async def stop(self, grace: float | None = None) -> int:
        """SIGTERM the workload, wait up to ``grace`` seconds, then SIGKILL whatever is left.

        Shielded from cancellation: a stop that was started always finishes,
        so a cancelled holder never leaves its work running.
        """
        grace = self.grace if grace is None else grace
        with anyio.CancelScope(shield=True):
            if self.process.returncode is None:
                signal_ref(self.ref, signal.SIGTERM)
                with anyio.move_on_after(grace + 0.5):
                    await self.process.wait()
                if self.process.returncode is None:
                    signal_ref(self.ref, signal.SIGKILL)
                    await self.process.wait()
            # The supervisor stops what the command left behind; if it was killed
            # itself, this does.
            if workload_alive(msgspec.structs.replace(self.ref, lock=None)):
                signal_ref(self.ref, signal.SIGKILL)
            lock = self.ref.lock
            if lock is not None and lock_held(lock) and lock_holders(lock):
                # Out of the group and cgroup, but holding the lock: the work, all the same.
                signal_ref(self.ref, signal.SIGTERM)
                with anyio.move_on_after(grace):
                    while lock_holders(lock):
                        await anyio.sleep(0.05)
                if lock_holders(lock):
                    signal_ref(self.ref, signal.SIGKILL)
                    with anyio.move_on_after(2.0):  # SIGKILL lands when next scheduled
                        while lock_holders(lock):
                            await anyio.sleep(0.02)
            _remove_cgroup(self.ref.cgroup)
            await self.process.aclose()
        code = self.returncode
        assert code is not None
        return code


def _open_lock(path: str) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


async def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    cpus: Sequence[int] = (),
    grace: float = DEFAULT_GRACE,
    lock: str | None = None,
    name: str | None = None,
    stdin: int | None = subprocess.DEVNULL,
) -> Supervised:
    """Start ``command`` with exactly ``env``, supervised (see the module's docstring).

    ``cpus`` pins it before it runs; ``grace`` is how long it has between
    SIGTERM and SIGKILL when stopped; ``lock`` is the path of the workload lock
    file to hold while it runs; ``name`` names its cgroup leaf (none without a
    name). Output goes where ours goes. Raises :class:`OSError` when the lock
    is already held (that workload is running).
    """
    lock_fd = _open_lock(lock) if lock is not None else None
    cgroup = _make_cgroup(name) if name is not None else None
    args = [
        sys.executable,
        "-I",
        "-S",
        SUPERVISOR,
        str(os.getpid()),
        repr(float(grace)),
        ",".join(map(str, cpus)) or "-",
        cgroup or "-",
        str(lock_fd) if lock_fd is not None else "-",
        "--",
        *command,
    ]
    try:
        process = await anyio.open_process(
            args,
            env=dict(env),
            stdin=stdin,
            stdout=None,
            stderr=None,
            start_new_session=True,
            pass_fds=(lock_fd,) if lock_fd is not None else (),
        )
    except BaseException:
        _remove_cgroup(cgroup)
        raise
    finally:
        if lock_fd is not None:
            os.close(lock_fd)  # the supervisor holds it now (same open file, same lock)
    ref = WorkloadRef(
        pgid=process.pid,
        start=process_start_time(process.pid),
        pidns=pid_namespace(),
        cgroup=cgroup,
        lock=lock,
        grace=grace,
    )
    return Supervised(process=process, ref=ref, grace=grace)
