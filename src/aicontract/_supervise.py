"""The supervisor between a lease's holder and its workload (stdlib only; run as a script).

    python -I -S _supervise.py PARENT_PID GRACE CPUS CGROUP LOCK_FD -- COMMAND...

:mod:`aicontract.workload` starts this in a new session, so its pid is the
workload's process group. It exists for what a plain ``fork``/``exec`` cannot
give:

* a parent-death signal (``PR_SET_PDEATHSIG``): when the holder dies, even by
  SIGKILL, the kernel sends this process SIGTERM, and it stops the whole group
  (SIGTERM, ``GRACE`` seconds, then SIGKILL) so nothing outlives the lease;
* a cgroup v2 leaf (``CGROUP``, ``-`` for none) it joins before starting the
  command, so descendants that leave the process group still cannot escape;
* CPU pinning (``CPUS``, ``-`` for none) applied before the command starts, so
  there is no moment where the command runs on CPUs it was not granted;
* the lease's workload lock (``LOCK_FD``, ``-`` for none), passed on to the
  command: the kernel keeps that ``flock`` held while any process of the
  workload runs, which is how a reclaimer in any PID namespace knows it is gone.

It never imports aicontract (the interpreter runs isolated, ``-I -S``), so it
starts quickly and is unaffected by the workload's ``PYTHONPATH``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 75  # the holder was already gone when we started: run nothing


def _set_parent_death_signal(sig: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the holder's reclaimer still stops us
        pass


def _others_in_group(pgid: int, me: int) -> list[int]:
    """Pids of this process group other than ours (``/proc``; empty where there is none)."""
    out: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
            # fields[0] is the state; a zombie is already dead, only unreaped.
            if int(fields[2]) == pgid and fields[0] != b"Z":
                out.append(int(entry))
        except (OSError, IndexError, ValueError):
            continue
    return out


def _cgroup_procs(cgroup: str | None, me: int) -> list[int]:
    if cgroup is None:
        return []
    try:
        with open(os.path.join(cgroup, "cgroup.procs")) as procs:
            return [int(p) for p in procs.read().split() if int(p) != me]
    except (OSError, ValueError):
        return []


def _signal_all(pgid: int, me: int, cgroup: str | None, sig: int) -> None:
    for pid in set(_others_in_group(pgid, me)) | set(_cgroup_procs(cgroup, me)):
        with contextlib.suppress(OSError):
            os.kill(pid, sig)


def _stop_all(pgid: int, me: int, cgroup: str | None, grace: float) -> None:
    """SIGTERM every other process of the workload, wait ``grace``, SIGKILL what is left."""
    _signal_all(pgid, me, cgroup, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not _others_in_group(pgid, me) and not _cgroup_procs(cgroup, me):
            return
        time.sleep(0.02)
    _signal_all(pgid, me, cgroup, signal.SIGKILL)
    if cgroup is not None:
        with contextlib.suppress(OSError), open(os.path.join(cgroup, "cgroup.kill"), "w") as kill:
            kill.write("1")
    # SIGKILL lands when the target is next scheduled: hold the workload lock until it has.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and (_others_in_group(pgid, me) or _cgroup_procs(cgroup, me)):
        time.sleep(0.01)


def main(argv: list[str]) -> int:
    """Run the command under supervision; return its exit status (128+N for signal N)."""
    _set_parent_death_signal(signal.SIGTERM)
    parent, grace_s, cpus_s, cgroup_s, lock_s, sep, *command = argv
    # The holder may have died between fork and prctl: then no signal will ever come.
    if os.getppid() != int(parent) or sep != "--" or not command:
        return EXIT_ORPHANED
    grace = float(grace_s)
    cgroup = None if cgroup_s == "-" else cgroup_s
    me = os.getpid()
    pgid = os.getpgid(0)
    if cgroup is not None:
        try:
            with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                procs.write(str(me))
        except OSError:
            cgroup = None  # the host would not let us: the process group still holds
    if cpus_s != "-" and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(0, {int(c) for c in cpus_s.split(",")})
    stopping: list[int] = []

    def on_term(signum: int, frame: object) -> None:
        # The holder died (parent-death signal) or asked us to stop: stop the group.
        stopping.append(signum)

    def on_forwarded(signum: int, frame: object) -> None:
        # SIGINT/SIGHUP reach the command through the group; the supervisor stays.
        pass

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_forwarded)
    signal.signal(signal.SIGHUP, on_forwarded)
    pass_fds = () if lock_s == "-" else (int(lock_s),)
    try:
        child = subprocess.Popen(command, pass_fds=pass_fds)
    except OSError as exc:
        print(f"aicontract: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127
    if pass_fds:
        os.close(pass_fds[0])  # the command holds the lock now; we must not outlive it holding it
    while True:
        try:
            status = child.wait(timeout=0.1 if not stopping else 0.02)
            break
        except subprocess.TimeoutExpired:
            pass
        if stopping or os.getppid() != int(parent):
            _stop_all(pgid, me, cgroup, grace)
            status = child.wait()
            break
    # Whatever the command left behind in its group or cgroup goes with it.
    _stop_all(pgid, me, cgroup, grace)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
