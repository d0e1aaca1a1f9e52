"""The ledger is trustworthy or the lease is lost; a broken ledger is one clear error.

Each finding: deleting, replacing or truncating the ledger under a holder let a
rival take its GPUs while the holder renewed an unlinked inode; a damaged
ledger gave Tracebacks (and ``quote`` exited 0); a write lock held elsewhere
froze a holder's event loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from aicontract import GPU, Contract, LeaseLost, Negotiator, Terms, Workload
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.ledger import LEDGER_FILE, Ledger
from aicontract.errors import (
    CapacityUnavailable,
    IdempotencyConflict,
    LedgerError,
    TransientBackendError,
)
from procs import live_processes

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux processes")


def _running(marker: str) -> list[int]:
    return live_processes(marker.encode())


def _served(marker: str, **env: str) -> Contract:
    return Contract(
        name="served",
        gpus=GPU(count=2, models=["H100"]),
        terms=Terms(stop_grace="2s"),
        workload=Workload(
            command=(sys.executable, "-c", "import time; time.sleep(600)", marker), env=env
        ),
    )


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def _replace(path: Path) -> None:
    other = path.with_name("other.sqlite3")
    sqlite3.connect(other).close()
    _delete(path)
    os.replace(other, path)


def _truncate(path: Path) -> None:
    with open(path, "r+b") as ledger:
        ledger.truncate(0)


@pytest.mark.anyio
@pytest.mark.parametrize("damage", [_delete, _replace, _truncate])
async def test_a_lost_ledger_loses_the_lease_and_stops_its_work(
    backend: LocalBackend, tmp_path: Path, damage: object
) -> None:
    assert callable(damage)
    marker = f"{tmp_path}#lost"
    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(_served(marker))
    try:
        assert len(_running(marker)) == 1
        damage(backend.ledger.path)
        # A rival (another ledger handle: another process's view) may not take the
        # GPUs while the holder's work still runs.
        rival = LocalBackend()
        want = Contract(name="rival", gpus=GPU(count=2, models=["H100"]))
        if damage is not _truncate:  # a truncated file under a live WAL cannot be read yet
            offers = (await rival.quote(want)).offers
            with pytest.raises(CapacityUnavailable, match="missing from the ledger"):
                await rival.commit(offers[0], "rival-key")
        # The holder notices at its next renewal, and its work stops with the lease.
        with pytest.raises(LeaseLost):
            await lease.renew()
        await lease.release()
        assert _running(marker) == []
        offers = (await rival.quote(want)).offers
        taken = await rival.commit(offers[0], "rival-key")
        assert taken.env["CUDA_VISIBLE_DEVICES"] == "0,1"
        await taken.release()
        await rival.aclose()
    finally:
        await lease.release()
        await negotiator.aclose()


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aicontract", *args], env=env, capture_output=True, text=True
    )


@pytest.fixture
def cli_env(local_env: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(__file__).resolve().parents[2] / "src"), env.get("PYTHONPATH", "")]
    )
    return env


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database at all" * 200)


def _bad_header(path: Path) -> None:
    sqlite3.connect(path).execute("CREATE TABLE t (x)").connection.close()
    with open(path, "r+b") as ledger:
        ledger.write(b"SQLite format 2\x00")


def _directory(path: Path) -> None:
    path.mkdir()


def _foreign(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE leases (id TEXT PRIMARY KEY, owner TEXT)")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("damage", [_garbage, _bad_header, _directory, _foreign])
def test_a_damaged_ledger_is_one_clear_error_everywhere(
    cli_env: dict[str, str], local_env: Path, tmp_path: Path, damage: object
) -> None:
    assert callable(damage)
    local_env.mkdir(parents=True, exist_ok=True)
    damage(local_env / LEDGER_FILE)
    contract = tmp_path / "one.yaml"
    contract.write_text("name: one\nresources:\n  gpus: {count: 1}\n")
    for args in (
        ("leases",),
        ("release", "some-id"),
        ("quote", str(contract)),
        ("acquire", str(contract), "--", "true"),
    ):
        result = _cli(cli_env, *args)
        assert result.returncode != 0, (args, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, (args, result.stderr)
        assert f"ledger {local_env / LEDGER_FILE}" in result.stdout + result.stderr, args


def test_the_ledger_error_says_what_and_what_to_do(local_env: Path) -> None:
    local_env.mkdir(parents=True)
    _garbage(local_env / LEDGER_FILE)
    with pytest.raises(LedgerError) as caught:
        Ledger.in_dir(local_env).records()
    error = caught.value
    assert error.path == str(local_env / LEDGER_FILE)
    assert "damaged" in error.problem
    assert "move it aside" in error.remedy


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None or os.geteuid() != 0:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k none /mnt"],
        capture_output=True,
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _can_mount_tmpfs(), reason="mounting a small tmpfs is not permitted")
def test_a_full_disk_is_a_ledger_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "small"
    state.mkdir()
    contract = tmp_path / "one.yaml"
    contract.write_text("name: one\nresources:\n  gpus: {count: 1}\n")
    script = (
        f"mount -t tmpfs -o size=48k none {state} && "
        f"dd if=/dev/zero of={state}/fill bs=4k 2>/dev/null; "
        f"exec {sys.executable} -m aicontract acquire {contract} -- true"
    )
    result = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        env={**cli_env, "AICONTRACT_STATE_DIR": str(state)},
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "ledger" in result.stderr + result.stdout


@pytest.mark.anyio
async def test_a_locked_ledger_never_blocks_the_event_loop(backend: LocalBackend) -> None:
    """Found: another process holding SQLite's write lock froze a holder's loop for 19 s."""
    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(Contract(gpus=1))
    backend.ledger.lock_wait = 0.5
    other = sqlite3.connect(backend.ledger.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    ticks = 0
    try:
        async with anyio.create_task_group() as tg:

            async def tick() -> None:
                nonlocal ticks
                while True:
                    ticks += 1
                    await anyio.sleep(0.01)

            tg.start_soon(tick)
            # Not lost: a lock held elsewhere is transient (the heartbeat retries sooner).
            with pytest.raises(TransientBackendError, match="write lock"):
                await backend.renew(lease)
            tg.cancel_scope.cancel()
        assert ticks > 1  # the loop ran other tasks while the renewal waited
    finally:
        other.execute("ROLLBACK")
        other.close()
    await lease.release()
    await negotiator.aclose()


@pytest.mark.anyio
async def test_same_key_with_another_offer_is_a_conflict(backend: LocalBackend) -> None:
    """Found: the same key with a 3-GPU offer returned a lease saying 3 GPUs, env with one."""
    (one,) = (await backend.quote(Contract(gpus=GPU(count=1, models=["H100"])))).offers
    (two,) = (await backend.quote(Contract(gpus=GPU(count=2, models=["A100-80GB"])))).offers
    first = await backend.commit(one, "the-key")
    try:
        with pytest.raises(IdempotencyConflict, match="the-key"):
            await backend.commit(two, "the-key")
        again = await backend.commit(one, "the-key")  # a true retry still gets the lease
        assert again.env["CUDA_VISIBLE_DEVICES"] == first.env["CUDA_VISIBLE_DEVICES"]
    finally:
        await first.release()


@pytest.mark.anyio
async def test_one_key_from_two_holders_is_one_lease_and_one_workload(
    local_env: Path, tmp_path: Path
) -> None:
    """Found: the same key committed from two processes started the workload twice."""
    marker = f"{tmp_path}#twice"
    first, second = LocalBackend(), LocalBackend()  # two ledger handles: two holders
    (offer,) = (await first.quote(_served(marker))).offers
    lease = await first.commit(offer, "shared-key")
    try:
        with pytest.raises(IdempotencyConflict, match="another process"):
            await second.commit(offer, "shared-key")
        assert len(_running(marker)) == 1
        assert [r.id for r in first.ledger.records()] == ["shared-key"]
    finally:
        await lease.release()
        await first.aclose()
        await second.aclose()
    assert _running(marker) == []


@pytest.mark.anyio
async def test_a_commit_is_bounded_by_start_by(backend: LocalBackend) -> None:
    """Found: a commit that hung was still waiting at 20 s with start_by: 2s."""
    contract = Contract(gpus=1, start_by="1s")
    offer = (await backend.quote(contract)).offers[0]
    other = sqlite3.connect(backend.ledger.path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    backend.ledger.lock_wait = 30.0  # only start_by can end the wait
    try:
        with pytest.raises(CapacityUnavailable, match="start_by"):
            await backend.commit(offer, "bounded")
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert backend.ledger.get("bounded") is None


@pytest.mark.anyio
async def test_the_ledger_never_stores_secret_env_values(
    backend: LocalBackend, tmp_path: Path
) -> None:
    """Found: workload.env tokens were readable in the ledger with `strings`."""
    secret = "hf_s3cr3t_t0ken_value"
    marker = f"{tmp_path}#secret"
    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(_served(marker, HF_TOKEN=secret))
    try:
        assert lease.env["HF_TOKEN"] == secret  # the holder (and its workload) has it
        stored = b"".join(
            Path(f"{backend.ledger.path}{s}").read_bytes()
            for s in ("", "-wal")
            if Path(f"{backend.ledger.path}{s}").exists()
        )
        assert secret.encode() not in stored
        (record,) = backend.ledger.records()
        assert secret not in record.to_json().decode()
    finally:
        await lease.release()
        await negotiator.aclose()


@pytest.mark.anyio
async def test_secret_env_values_never_reach_a_debug_log_nor_the_record(
    backend: LocalBackend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every logger at DEBUG, a whole lease's life with a workload: the token is in the
    lease's env and nowhere else (no log line, no record entry)."""
    secret = "hf_l0g_s3cr3t_t0ken"
    marker = f"{tmp_path}#logged"
    caplog.set_level(logging.DEBUG)
    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(_served(marker, HF_TOKEN=secret))
    try:
        assert lease.env["HF_TOKEN"] == secret
        await lease.renew()
    finally:
        await lease.release()
        await negotiator.aclose()
    assert caplog.records  # DEBUG was on: the life of a lease logs something
    assert not [r for r in caplog.records if secret in r.getMessage()]
    assert negotiator.governance is not None
    record = negotiator.governance.record
    assert record is not None
    assert record.path.read_text().count(lease.id) >= 2  # its grant and its end
    assert secret not in record.path.read_text()


@pytest.mark.anyio
@pytest.mark.parametrize("end", ["revoke", "expire"])
async def test_a_lease_that_ends_stops_its_work_before_release(
    backend: LocalBackend, tmp_path: Path, end: str
) -> None:
    """Revoked or expired, the work stops at once; nobody has to call release() first."""
    marker = f"{tmp_path}#{end}"
    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(_served(marker))
    try:
        assert len(_running(marker)) == 1
        if end == "revoke":
            lease.revoke("the device reported an Xid error")
        else:
            lease.expires_at = lease.clock.time() - 1
            with pytest.raises(LeaseLost):
                await lease.renew()
        with anyio.fail_after(30):  # a bound, not a timing claim
            while _running(marker):
                await anyio.sleep(0.02)
    finally:
        await lease.release()
        await negotiator.aclose()


@pytest.mark.anyio
async def test_a_holder_seen_idle_is_not_reclaimed_once_it_holds_again(local_env: Path) -> None:
    """A holder between leases holds no exclusive lock; seen then, it must not be judged
    dead a moment later, when it holds a lease again (a rival would drop that lease)."""
    holder, rival = LocalBackend(), LocalBackend()
    both = Contract(name="both", gpus=GPU(count=2, models=["H100"]))
    first = await Negotiator([holder]).acquire(both)
    await first.release()
    token = holder.ledger._token
    assert not rival.ledger._holder_alive(token, 0.0)  # idle now: nothing to hold
    again = await Negotiator([holder]).acquire(both)
    try:
        (offer,) = (await rival.quote(Contract(gpus=GPU(count=1, models=["H100"])))).offers
    except ValueError:  # no offer at all: the quote saw the lease, as it should
        offer = None
    if offer is not None:
        with pytest.raises(CapacityUnavailable):
            await rival.commit(offer, "rival")
    assert holder.ledger.get(again.id) is not None
    await again.release()
    await holder.aclose()
    await rival.aclose()


@pytest.mark.anyio
async def test_releasing_the_last_lease_keeps_the_lock_while_a_grant_is_in_flight(
    backend: LocalBackend,
) -> None:
    """One task releasing its lease must not drop the holder lock under another task's
    grant, which may be inserting its row in a thread at that moment."""
    from aicontract.workload import lock_held

    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(Contract(gpus=1))
    ledger = backend.ledger
    holder_lock = ledger._holder_path(ledger._token)
    ledger._hold()  # another task's grant has begun
    await lease.release()
    assert lock_held(holder_lock) is True  # still exclusive: that grant may bind a lease
    ledger._granted(None)  # it bound nothing after all
    assert lock_held(holder_lock) is False
    await negotiator.aclose()
