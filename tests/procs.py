"""Which processes are alive, read from /proc (any PID namespace), for leak checks."""

from __future__ import annotations

import os


def live_processes(marker: bytes, *, unless: bytes | None = None) -> list[int]:
    """PIDs of live (not zombie) processes with ``marker`` among their arguments.

    ``unless``: skip processes that also have this argument (the holder's own CLI,
    say, whose command line names the workload too).
    """
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in args and (unless is None or unless not in args) and state != b"Z":
            found.append(int(pid))
    return found
