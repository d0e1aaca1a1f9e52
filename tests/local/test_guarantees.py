"""The local backend's promises, tested with real processes and a real SQLite ledger.

Guarantee 1 (never over-granted), 4 (nothing leaks when a holder dies) and
5 (a retried commit never makes two leases). Each test would fail if the
ledger lost its immediate transactions, its device primary keys, its
holder-liveness check or its idempotency key.
"""

from __future__ import annotations

import itertools
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections import defaultdict
from pathlib import Path

import anyio
import pytest

import aicontract as ac
from aicontract import Lease, Negotiator, Offer, TransientBackendError
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.ledger import LEDGER_FILE

GPUS = 4
INVENTORY = textwrap.dedent(
    f"""\
    cpus: 8
    memory: 64GiB
    gpus: [{", ".join(["{model: H100, memory: 80GiB}"] * GPUS)}]
    """
)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake 4-GPU host: inventory override and a private state dir."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    return tmp_path


def _contender(state_dir: str, inventory: str, cycles: int, log_path: str) -> None:
    """One process: acquire 1..2 GPUs, note when it held which, release; repeat."""
    os.environ["AICONTRACT_INVENTORY"] = inventory
    os.environ["AICONTRACT_STATE_DIR"] = state_dir
    contract = ac.Contract(name="contend", gpus=ac.GPU(count="1..2"), start_by="60s")

    async def run() -> None:
        negotiator = Negotiator([LocalBackend(ttl=30)], requote_wait_max=0.01)
        with open(log_path, "a", encoding="ascii") as log:
            for _ in range(cycles):
                held = await negotiator.acquire(contract)
                begin = time.monotonic()  # CLOCK_MONOTONIC: one clock for all processes
                gpus = held.env["CUDA_VISIBLE_DEVICES"]
                await anyio.sleep(0)
                end = time.monotonic()
                await held.release()
                log.write(f"{gpus} {begin!r} {end!r}\n")
        await negotiator.aclose()

    anyio.run(run)


def test_never_over_granted_across_processes(host: Path) -> None:
    """Guarantee 1: N processes x M cycles on K GPUs; no GPU is ever held twice at once."""
    processes, cycles = 6, 40
    ctx = mp.get_context("spawn")  # a fresh interpreter per holder, as real users have
    logs = [host / f"holder-{i}.log" for i in range(processes)]
    workers = [
        ctx.Process(
            target=_contender,
            args=(str(host / "state"), os.environ["AICONTRACT_INVENTORY"], cycles, str(log)),
        )
        for log in logs
    ]
    for worker in workers:
        worker.start()
    # Meanwhile, sample the ledger from outside: it must never show more than K GPUs.
    ledger = host / "state" / LEDGER_FILE
    most_seen = 0
    while any(w.is_alive() for w in workers):
        if ledger.exists():
            try:
                with sqlite3.connect(ledger, timeout=30) as conn:
                    (held,) = conn.execute(
                        "SELECT COUNT(*) FROM devices WHERE kind = 'gpu'"
                    ).fetchone()
                most_seen = max(most_seen, held)
            except sqlite3.OperationalError:  # schema not created yet
                pass
        time.sleep(0.005)
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    assert most_seen <= GPUS

    intervals: dict[str, list[tuple[float, float]]] = defaultdict(list)
    grants = 0
    for log in logs:
        for line in log.read_text().splitlines():
            gpus, begin, end = line.split()
            grants += 1
            for gpu in gpus.split(","):
                intervals[gpu].append((float(begin), float(end)))
    assert grants == processes * cycles
    assert set(intervals) <= {str(i) for i in range(GPUS)}
    for gpu, spans in intervals.items():
        spans.sort()
        for (_, end_a), (begin_b, _) in itertools.pairwise(spans):
            assert end_a <= begin_b, f"GPU {gpu} was held by two leases at once"


HOLDER = """
import os, sys, time
import aicontract as ac
from aicontract.backends.local import LocalBackend
lease = ac.acquire_sync(ac.Contract(name="doomed", gpus={gpus}),
                        backends=[LocalBackend(ttl={ttl})], keep_alive=True)
print(lease.env["CUDA_VISIBLE_DEVICES"], flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("ttl", [2.0, 3600.0], ids=["short-ttl", "long-ttl"])
def test_killed_holder_frees_its_gpus(host: Path, ttl: float) -> None:
    """Guarantee 4: a holder killed with SIGKILL frees its GPUs within TTL + 1 s.

    With a long TTL only the holder-liveness check can free them in time.
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(gpus=GPUS, ttl=ttl)],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == ",".join(str(i) for i in range(GPUS))
        backend = LocalBackend(ttl=5)
        with pytest.raises(ac.NoOffer):  # all GPUs are held while the holder lives
            ac.acquire_sync(ac.Contract(gpus=1), backends=[backend], keep_alive=False)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        # The bound is the contract's own deadline: TTL + 1 s (or 1 s for the pid check).
        contract = ac.Contract(gpus=GPUS, start_by=f"{min(ttl, 2.0) + 1:g}s")
        lease = ac.acquire_sync(contract, backends=[backend], keep_alive=False)
        assert lease.grant.gpus == GPUS
        ac.release_sync(lease)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


class _TimesOutAfterCommit(LocalBackend):
    """Commits for real, then reports a timeout once — as a lost reply would."""

    failed: bool = False

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        lease = await super().commit(offer, idempotency_key)
        if not type(self).failed:
            type(self).failed = True
            raise TransientBackendError(self.name, "timed out waiting for the reply")
        return lease


@pytest.mark.anyio
async def test_retried_commit_yields_one_lease(host: Path) -> None:
    """Guarantee 5: a commit retried after a timeout returns the first lease, not a second."""
    backend = _TimesOutAfterCommit()
    negotiator = Negotiator([backend], retry_wait_max=0.01)
    lease = await negotiator.acquire(ac.Contract(gpus=2))
    records = backend.ledger.records()
    assert [r.id for r in records] == [lease.id]
    gpus_held, _, _, _ = backend.ledger.usage()
    assert len(gpus_held) == 2
    await lease.release()
    assert backend.ledger.records() == []


FORGETFUL = """
import aicontract as ac
lease = ac.acquire_sync(ac.Contract(name="forgetful", gpus=2))
print(lease.id, flush=True)
# ...and the script ends without releasing: the sync face must not hang, and must
# give the GPUs back rather than leave them to the TTL.
"""


def test_sync_face_releases_forgotten_leases_at_exit(host: Path) -> None:
    """Guarantee 4 for scripts: a lease still held at interpreter exit is released."""
    done = subprocess.run(
        [sys.executable, "-c", FORGETFUL],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=120,  # a hang at exit (heartbeats never stopped) fails here
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    ledger = sqlite3.connect(host / "state" / LEDGER_FILE)
    assert ledger.execute("SELECT COUNT(*) FROM leases").fetchone() == (0,)


class _RepliesAlwaysLost(LocalBackend):
    """Every commit succeeds in the ledger and then reports a timeout."""

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        await super().commit(offer, idempotency_key)
        raise TransientBackendError(self.name, "timed out waiting for the reply")


@pytest.mark.anyio
async def test_exhausted_retries_leave_no_lease_behind(host: Path) -> None:
    """Guarantee 5 when retries run out: the unknown outcome is abandoned, not leaked."""
    backend = _RepliesAlwaysLost()
    negotiator = Negotiator([backend], retry_wait_max=0.01, commit_attempts=3)
    with pytest.raises(ac.NoOffer, match="timed out waiting for the reply"):
        await negotiator.acquire(ac.Contract(gpus=2))
    assert backend.ledger.records() == []
