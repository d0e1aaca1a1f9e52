"""Hostile: the local ledger's kept snapshot against real processes.

Several spawned processes lease GPUs, CPUs and ports over and over on one
made-up host while the test SIGKILLs some of them mid-lease and runs
``aicontract leases`` (which reclaims dead holders' leases) from yet another
process. Each worker proves what it was granted is its own *in fact*: it takes
a non-blocking exclusive ``flock`` on one claim file per GPU, CPU and port for as
long as it holds them (the kernel drops a killed worker's locks at once, as it
drops its holder lock). A claim another live process still holds is a double
grant. Every worker must also be granted again after the kills (a freed device
is offered again), and the ledger must end empty.
"""

from __future__ import annotations

import fcntl
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKERS = 4
ROUNDS = 25
AICONTRACT = str(Path(sys.executable).with_name("aicontract"))


def _claim(claims: Path, name: str) -> int:
    fd = os.open(claims / name, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        (claims.parent / f"double-{name}-{os.getpid()}").write_text(name)
        raise SystemExit(3) from None
    return fd


def _worker(env: dict[str, str], claims: str, done: str, seed: int) -> None:
    """Lease 1..2 GPUs, 2 CPUs and one auto port, claim them, hold a moment, let go."""
    os.environ.update(env)
    import aicontract as ac

    rng = random.Random(seed)
    where = Path(claims)
    contract = ac.Contract(
        name="w",
        gpus="1..2",
        cpus=2,
        workload=ac.Workload(kind="inference", ports={"http": "auto"}),
    )
    granted = 0
    for _ in range(ROUNDS):
        try:
            lease = ac.acquire_sync(contract)
        except ac.NoOffer:
            time.sleep(rng.uniform(0.01, 0.05))
            continue
        details = lease.details
        names = [f"gpu-{g}" for g in details.get("gpus", "").split(",") if g]
        names += [f"cpu-{c}" for c in details.get("cpus", "").split(",") if c]
        names += [f"port-{p.partition('=')[2]}" for p in details.get("ports", "").split(",") if p]
        fds = [_claim(where, name) for name in names]
        time.sleep(rng.uniform(0.0, 0.08))
        for fd in fds:
            os.close(fd)  # the claims go before the lease does
        ac.release_sync(lease)
        granted += 1
    Path(done).write_text(str(granted))


def test_no_device_is_granted_twice_among_processes_killed_and_reclaimed(
    tmp_path: Path, private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICONTRACT_RECORD", "off")
    monkeypatch.setenv("AICONTRACT_LOCAL_TTL", "3")
    env = {k: v for k, v in os.environ.items() if k.startswith("AICONTRACT_")}
    claims = tmp_path / "claims"
    claims.mkdir()
    spawn = mp.get_context("spawn")
    rng = random.Random(7)
    procs: list[tuple[mp.process.BaseProcess, Path]] = []

    def start(n: int) -> None:
        done = tmp_path / f"done-{n}"
        p = spawn.Process(target=_worker, args=(env, str(claims), str(done), n))
        p.start()
        procs.append((p, done))

    for n in range(WORKERS):
        start(n)
    try:
        killed = 0
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and any(p.is_alive() for p, _ in procs):
            time.sleep(rng.uniform(0.2, 0.5))
            alive = [p for p, _ in procs if p.is_alive() and p.pid is not None]
            if killed < 3 and alive:
                victim = rng.choice(alive)
                os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
                victim.join(10)
                killed += 1
                start(100 + killed)  # a newcomer must find the victim's devices again
            subprocess.run(
                [AICONTRACT, "leases"], env=os.environ, capture_output=True, timeout=60, check=False
            )
        doubles = sorted(p.name for p in tmp_path.glob("double-*"))
        assert not doubles, f"granted to two live processes at once: {doubles}"
        survivors = [(p, done) for p, done in procs if p.exitcode != -signal.SIGKILL]
        assert [p.exitcode for p, _ in survivors] == [0] * len(survivors)
        # Every survivor, the newcomers after each kill among them, was granted again.
        assert all(int(done.read_text()) > 0 for _, done in survivors)
    finally:
        for p, _ in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
            p.join(10)
    from aicontract.backends.local import LocalBackend

    backend = LocalBackend(state_dir=private_state)
    try:
        assert backend.ledger.records() == [], "a killed holder's lease was never reclaimed"
        used_gpus, used_cpus, _, _ = backend.ledger.usage()
        assert not used_gpus
        assert not used_cpus
    finally:
        backend.ledger.close()
