"""A lease holds over the work it guards: real holders, real workloads, real signals.

Every test here runs ``aicontract acquire`` (or the API) in separate processes,
kills or freezes the holder, and checks — from inside the *rival's* command,
the moment it starts — that the first workload and everything it started are
gone. Bounds on waiting (``_wait_for``) only keep a broken run from hanging;
nothing asserts how long anything took.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from procs import live_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")

# The workload: it and a grandchild in its process group carry a marker (the pids
# file's path + "#work") in their command lines: that is how the checks find them from
# any PID namespace. The holder's own command line, which names the workload too, has
# "acquire" in it and is left out.
WORK = """\
import os, subprocess, sys, time
marker = sys.argv[1]
pids = marker.removesuffix("#work")
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", marker])
with open(pids + ".tmp", "w") as f:
    f.write(f"{os.getpid()}\\n{child.pid}\\n")
os.rename(pids + ".tmp", pids)
while True:
    time.sleep(1)
"""

# The rival's command: were the first workload's processes gone when it started?
CHECK = """\
import os, sys
def running(marker):
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                args = f.read().split(b"\\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in args and b"acquire" not in args and state != b"Z":
            found.append(int(pid))
    return found
alive = running(sys.argv[1] + "#work")
open(sys.argv[2], "w").write("gone" if not alive else f"alive: {alive}")
"""


def _running(pids: Path) -> list[int]:
    """Live processes of the workload that writes ``pids`` (any PID namespace)."""
    return live_processes(f"{pids}#work".encode(), unless=b"acquire")


def _wait_for(predicate: object, what: str, bound: float = 60.0) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + bound
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def scripts(tmp_path: Path) -> tuple[Path, Path]:
    work, check = tmp_path / "work.py", tmp_path / "check.py"
    work.write_text(WORK)
    check.write_text(CHECK)
    return work, check


@pytest.fixture
def both_h100s(tmp_path: Path) -> Path:
    path = tmp_path / "both.yaml"
    path.write_text(
        "name: both\nresources:\n  gpus: {count: 2, models: [H100]}\nterms:\n"
        "  start_by: 90s\n  stop_grace: 3s\n"
    )
    return path


@pytest.fixture
def cli_env(local_env: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH", "")]
    )
    return env


def _cli(env: dict[str, str], *args: str, **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "aicontract", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[call-overload]
    )


def _rival_sees_work_gone(
    env: dict[str, str], contract: Path, check: Path, pids: Path, tmp_path: Path
) -> None:
    result = tmp_path / "rival.txt"
    rival = _cli(
        env, "acquire", str(contract), "--", sys.executable, str(check), str(pids), str(result)
    )
    _, err = rival.communicate(timeout=120)
    assert rival.returncode == 0, err.decode()
    assert result.read_text() == "gone"


def _holder_with_work(
    env: dict[str, str], contract: Path, work: Path, pids: Path
) -> subprocess.Popen[bytes]:
    holder = _cli(env, "acquire", str(contract), "--", sys.executable, str(work), f"{pids}#work")
    _wait_for(lambda: pids.exists() or holder.poll() is not None, "the workload to start")
    assert holder.poll() is None, holder.communicate()[1].decode()
    return holder


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGHUP])
def test_workload_dies_with_its_cli_holder(
    cli_env: dict[str, str],
    scripts: tuple[Path, Path],
    both_h100s: Path,
    tmp_path: Path,
    sig: signal.Signals,
) -> None:
    """Found: CMD kept running on the GPUs after its holder died, while a rival got them."""
    work, check = scripts
    pids = tmp_path / "pids"
    holder = _holder_with_work(cli_env, both_h100s, work, pids)
    holder.send_signal(sig)
    _, err = holder.communicate(timeout=60)
    if sig != signal.SIGKILL:
        assert holder.returncode == 128 + sig, err.decode()  # forwarded, then released
    _rival_sees_work_gone(cli_env, both_h100s, check, pids, tmp_path)
    assert _running(pids) == []


def test_workload_command_dies_with_its_killed_holder(
    cli_env: dict[str, str], scripts: tuple[Path, Path], tmp_path: Path
) -> None:
    """The same for a contract's own ``workload.command``, launched by the backend."""
    work, check = scripts
    pids = tmp_path / "pids"
    contract = tmp_path / "served.yaml"
    contract.write_text(
        "name: served\nresources:\n  gpus: {count: 2, models: [H100]}\nterms: {start_by: 90s}\n"
        + "workload:\n  command: "
        + json.dumps([sys.executable, str(work), f"{pids}#work"])
        + "\n"
    )
    holder = _cli(cli_env, "acquire", str(contract))
    _wait_for(lambda: pids.exists() or holder.poll() is not None, "the workload to start")
    holder.kill()
    holder.communicate(timeout=60)
    plain = tmp_path / "plain.yaml"
    plain.write_text(
        "name: plain\nresources:\n  gpus: {count: 2, models: [H100]}\nterms: {start_by: 90s}\n"
    )
    _rival_sees_work_gone(cli_env, plain, check, pids, tmp_path)


def test_frozen_holder_wakes_to_find_its_work_stopped(
    cli_env: dict[str, str], scripts: tuple[Path, Path], both_h100s: Path, tmp_path: Path
) -> None:
    """Found: a SIGSTOPped holder's lease expired, a rival got the GPUs, and after SIGCONT
    its command kept running on them."""
    work, check = scripts
    pids = tmp_path / "pids"
    env = {**cli_env, "AICONTRACT_LOCAL_TTL": "1"}
    holder = _holder_with_work(env, both_h100s, work, pids)
    os.kill(holder.pid, signal.SIGSTOP)
    try:
        _rival_sees_work_gone(env, both_h100s, check, pids, tmp_path)
    finally:
        os.kill(holder.pid, signal.SIGCONT)
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 3, err.decode()
    assert "its command was stopped" in err.decode()


def test_release_from_another_process_stops_the_work(
    cli_env: dict[str, str], scripts: tuple[Path, Path], both_h100s: Path, tmp_path: Path
) -> None:
    """Found: `aicontract release ID` freed the GPUs while the holder's command ran on."""
    work, check = scripts
    pids = tmp_path / "pids"
    holder = _holder_with_work(cli_env, both_h100s, work, pids)
    listed = subprocess.run(
        [sys.executable, "-m", "aicontract", "leases", "--json"],
        env=cli_env,
        capture_output=True,
        check=True,
    )
    (lease,) = json.loads(listed.stdout)
    released = subprocess.run(
        [sys.executable, "-m", "aicontract", "release", lease["id"]],
        env=cli_env,
        capture_output=True,
    )
    assert released.returncode == 0, released.stderr.decode()
    assert _running(pids) == []
    _, err = holder.communicate(timeout=60)
    assert holder.returncode == 3, err.decode()
    _rival_sees_work_gone(cli_env, both_h100s, check, pids, tmp_path)


def test_sigint_is_forwarded_to_the_workload(
    cli_env: dict[str, str], both_h100s: Path, tmp_path: Path
) -> None:
    """Found: SIGINT sent to the CLI alone was ignored until the child exited."""
    marker = tmp_path / "got-sigint"
    ready = tmp_path / "ready"
    script = tmp_path / "trap.py"
    script.write_text(
        "import signal, sys, time, pathlib\n"
        "def on_int(*_):\n"
        f"    pathlib.Path({str(marker)!r}).write_text('yes'); sys.exit(0)\n"
        "signal.signal(signal.SIGINT, on_int)\n"
        f"pathlib.Path({str(ready)!r}).write_text('1')\n"
        "while True: time.sleep(1)\n"
    )
    holder = _cli(cli_env, "acquire", str(both_h100s), "--", sys.executable, str(script))
    _wait_for(lambda: ready.exists() or holder.poll() is not None, "the workload to start")
    holder.send_signal(signal.SIGINT)
    _, err = holder.communicate(timeout=60)
    assert marker.read_text() == "yes"
    assert holder.returncode == 130, err.decode()
    assert subprocess.run(
        [sys.executable, "-m", "aicontract", "leases", "--json"], env=cli_env, capture_output=True
    ).stdout.strip() in (b"[]", b"")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="unshare --pid is not permitted here")
def test_holder_in_another_pid_namespace_is_alive_to_the_host(
    cli_env: dict[str, str], scripts: tuple[Path, Path], both_h100s: Path, tmp_path: Path
) -> None:
    """Found: pid + start time judged a holder in another PID namespace dead; the host
    deleted its row and handed out its GPUs. Both directions."""
    work, check = scripts
    pids = tmp_path / "pids"
    contained = subprocess.Popen(
        [
            "unshare",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            sys.executable,
            "-m",
            "aicontract",
            "acquire",
            str(both_h100s),
            "--",
            sys.executable,
            str(work),
            f"{pids}#work",
        ],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for(lambda: pids.exists() or contained.poll() is not None, "the contained workload")
        assert contained.poll() is None
        listed = subprocess.run(
            [sys.executable, "-m", "aicontract", "leases", "--json"],
            env=cli_env,
            capture_output=True,
            check=True,
        )
        assert len(json.loads(listed.stdout)) == 1  # not reclaimed as "dead"
        now = tmp_path / "now.yaml"
        now.write_text("name: now\nresources:\n  gpus: {count: 1, models: [H100]}\n")
        refused = subprocess.run(
            [sys.executable, "-m", "aicontract", "acquire", str(now), "--", "true"],
            env=cli_env,
            capture_output=True,
        )
        assert refused.returncode == 1, refused.stderr.decode()
    finally:
        contained.kill()
        contained.communicate(timeout=60)
    # The contained holder died with its namespace: now the host gets the GPUs, and the
    # contained workload was gone when its command started.
    _rival_sees_work_gone(cli_env, both_h100s, check, pids, tmp_path)


@pytest.mark.skipif(not _unshare_works(), reason="unshare --pid is not permitted here")
def test_host_holder_is_alive_to_a_contained_process(
    cli_env: dict[str, str], scripts: tuple[Path, Path], both_h100s: Path, tmp_path: Path
) -> None:
    work, _ = scripts
    pids = tmp_path / "pids"
    holder = _holder_with_work(cli_env, both_h100s, work, pids)
    try:
        now = tmp_path / "now.yaml"
        now.write_text("name: now\nresources:\n  gpus: {count: 1, models: [H100]}\n")
        inside = subprocess.run(
            [
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                sys.executable,
                "-m",
                "aicontract",
                "acquire",
                str(now),
                "--",
                "true",
            ],
            env=cli_env,
            capture_output=True,
        )
        assert inside.returncode == 1, inside.stderr.decode()
        assert holder.poll() is None
        assert len(_running(pids)) == 3  # supervisor, command, grandchild
    finally:
        holder.terminate()
        holder.communicate(timeout=60)


ESCAPE = """\
import os, sys, time
marker = sys.argv[1]
pids = marker.removesuffix("#work")
if os.fork() == 0:
    os.setsid()  # leaves the process group: only the cgroup still holds it
    for fd in range(3, 64):  # and lets go of the workload lock it inherited
        try:
            os.close(fd)
        except OSError:
            pass
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(600)", marker])
open(pids, "w").write("started")
while True:
    time.sleep(1)
"""


@pytest.mark.skipif(
    __import__("aicontract.workload", fromlist=["cgroup_parent"]).cgroup_parent() is None,
    reason="no writable cgroup v2 hierarchy here",
)
def test_a_descendant_that_leaves_the_group_is_still_stopped(
    cli_env: dict[str, str], both_h100s: Path, tmp_path: Path
) -> None:
    """Where the host allows a cgroup leaf, setsid() does not take work out of the lease."""
    escape = tmp_path / "escape.py"
    escape.write_text(ESCAPE)
    pids = tmp_path / "pids"
    holder = _cli(
        cli_env, "acquire", str(both_h100s), "--", sys.executable, str(escape), f"{pids}#work"
    )
    _wait_for(lambda: pids.exists() or holder.poll() is not None, "the workload to start")
    _wait_for(lambda: len(_running(pids)) == 3, "the escaped process")
    holder.kill()
    holder.communicate(timeout=60)
    _, check = tmp_path / "unused", tmp_path / "check.py"
    check.write_text(CHECK)
    _rival_sees_work_gone(cli_env, both_h100s, check, pids, tmp_path)


def test_a_per_user_ledger_is_only_used_when_asked_and_said(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    env = {k: v for k, v in cli_env.items() if k != "AICONTRACT_STATE_DIR"}
    env.update(AICONTRACT_LEDGER_SCOPE="user", XDG_STATE_HOME=str(tmp_path / "xdg"))
    contract = tmp_path / "one.yaml"
    contract.write_text("name: one\nresources:\n  gpus: {count: 1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "aicontract", "acquire", str(contract), "--", "true"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "per-user ledger" in result.stderr
    assert "other users on this host do not see these leases" in result.stderr


API_HOLDER = """\
import json, sys, time
import aicontract
from aicontract import GPU, Contract, Terms, Workload
work, marker, ready = sys.argv[1:4]
contract = Contract(
    name="api",
    gpus=GPU(count=2, models=["H100"]),
    terms=Terms(start_by="90s", stop_grace="2s"),
    workload=Workload(command=(sys.executable, work, marker)),
)
with aicontract.lease(contract) as lease:  # the blocking face: a portal thread runs it
    open(ready, "w").write(lease.env["CUDA_VISIBLE_DEVICES"])
    while True:
        time.sleep(1)
"""


def test_workload_dies_with_its_killed_api_holder(
    cli_env: dict[str, str], scripts: tuple[Path, Path], both_h100s: Path, tmp_path: Path
) -> None:
    """The same through the Python API (the blocking face, whose loop runs in a thread)."""
    work, check = scripts
    pids = tmp_path / "pids"
    ready = tmp_path / "ready"
    holder_script = tmp_path / "holder.py"
    holder_script.write_text(API_HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(holder_script), str(work), f"{pids}#work", str(ready)],
        env=cli_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for(lambda: (pids.exists() and ready.exists()) or holder.poll() is not None, "work")
    assert holder.poll() is None, holder.communicate()[1].decode()
    assert ready.read_text() == "0,1"
    holder.kill()
    holder.communicate(timeout=60)
    _rival_sees_work_gone(cli_env, both_h100s, check, pids, tmp_path)
