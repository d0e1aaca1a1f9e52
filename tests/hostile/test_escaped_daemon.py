"""Hostile: a command that starts a daemon in a new session, on a host without cgroups.

``aicontract acquire FILE -- sh -c 'setsid server & ...'`` is how many scripts start a
background server. Without a writable cgroup v2 hierarchy (most hosts, for a user who
is not root) the daemon has left the workload's process group, so the group-wide stop
misses it; but it still holds the workload lock it inherited, which is how the backend
knows it is part of the work. When the lease ends it must be stopped like the rest —
before the devices go to anyone else — not left running on them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import live_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")

# The rival's command: is any process of the first lease's work still running?
CHECK = """\
import os, sys
found = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
        state = open(f"/proc/{pid}/stat", "rb").read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        continue
    if (sys.argv[1] + "#daemon").encode() in args and state != b"Z":
        found.append(pid)
open(sys.argv[2], "w").write("gone" if not found else f"alive: {found}")
"""


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aicontract", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_a_daemon_that_left_the_group_but_holds_the_lock_is_stopped(
    private_state: Path, tmp_path: Path
) -> None:
    marker = f"escaped-daemon-{tmp_path}"
    contract = tmp_path / "both.yaml"
    contract.write_text(
        "name: both\nresources:\n  gpus: {count: 2, models: [H100]}\nterms:\n  stop_grace: 2s\n"
    )
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "AICONTRACT_CGROUPS": "off",  # as on a host that gives us no cgroup leaf
    }
    daemon = (
        f"setsid {sys.executable} -c 'import time; time.sleep(600)' {marker}#daemon"
        " >/dev/null 2>&1 &"
    )
    try:
        first = _cli(env, "acquire", str(contract), "--", "sh", "-c", daemon)
        assert first.returncode == 0, first.stderr
        result = tmp_path / "rival.txt"
        rival = _cli(
            env, "acquire", str(contract), "--", sys.executable, str(check), marker, str(result)
        )
        assert rival.returncode == 0, rival.stderr
        assert result.read_text() == "gone"
    finally:
        for pid in live_processes(f"{marker}#daemon".encode()):
            os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while live_processes(f"{marker}#daemon".encode()) and time.monotonic() < deadline:
            time.sleep(0.05)


def test_a_killed_holders_escaped_daemon_is_stopped_before_its_gpus_are_granted(
    private_state: Path, tmp_path: Path
) -> None:
    """The same daemon, its holder SIGKILLed: the supervisor stops the group, and the
    reclaimer that the rival's acquire runs must stop the daemon before the GPUs move."""
    marker = f"escaped-orphan-{tmp_path}"
    contract = tmp_path / "both.yaml"
    contract.write_text(
        "name: both\nresources:\n  gpus: {count: 2, models: [H100]}\n"
        "terms:\n  stop_grace: 2s\n  start_by: 90s\n"
    )
    check = tmp_path / "check.py"
    check.write_text(CHECK)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "AICONTRACT_CGROUPS": "off",
    }
    daemon = (
        f"setsid {sys.executable} -c 'import time; time.sleep(600)' {marker}#daemon"
        " >/dev/null 2>&1 & sleep 600"
    )
    holder = subprocess.Popen(
        [sys.executable, "-m", "aicontract", "acquire", str(contract), "--", "sh", "-c", daemon],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not live_processes(f"{marker}#daemon".encode()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert live_processes(f"{marker}#daemon".encode()), "the daemon never started"
        holder.kill()
        holder.wait(60)
        result = tmp_path / "rival.txt"
        rival = _cli(
            env, "acquire", str(contract), "--", sys.executable, str(check), marker, str(result)
        )
        assert rival.returncode == 0, rival.stderr
        assert result.read_text() == "gone"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(60)
        for pid in live_processes(f"{marker}#daemon".encode()):
            os.kill(pid, 9)
        deadline = time.monotonic() + 30
        while live_processes(f"{marker}#daemon".encode()) and time.monotonic() < deadline:
            time.sleep(0.05)
