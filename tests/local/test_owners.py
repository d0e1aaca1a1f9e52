"""One ledger per host, with owners: root and ``nobody`` on one host share it.

Found: with the default state dir, root and ``nobody`` both held
``CUDA_VISIBLE_DEVICES=0,1`` at once (a private ledger each); any process that
could write the ledger released any lease; the ledger was 0644.

The ``nobody`` side runs in a forked child that drops to uid/gid 65534 and uses
the library already imported (it need not be able to read our interpreter).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aicontract import GPU, Bytes, Contract, Negotiator, NoOffer
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.backend import SYSTEM_STATE_DIR, default_state_dir
from aicontract.backends.local.inventory import Inventory
from aicontract.errors import LeaseStateError, LedgerError

NOBODY = 65534
INVENTORY = """\
cpus: 4
memory: 16GiB
gpus:
  - {model: NVIDIA H100 80GB HBM3, memory: 80GiB}
  - {model: NVIDIA H100 80GB HBM3, memory: 80GiB}
"""

can_switch_uid = pytest.mark.skipif(
    not sys.platform.startswith("linux") or os.geteuid() != 0,
    reason="changing uid needs root",
)


def as_nobody(work: Callable[[], Any]) -> Any:
    """Run ``work()`` in a child process as uid/gid 65534; its JSON-able result."""
    # Load the event loop's modules first: the child, as nobody, may not be able to read
    # this interpreter's standard library.
    anyio.run(anyio.to_thread.run_sync, lambda: None)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            result = {"ok": work()}
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(result).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    result = json.loads(data)
    assert "ok" in result, result.get("error")
    return result["ok"]


@pytest.fixture
def shared(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A host-wide state dir as an admin would set it up: group-shared, setgid."""
    top = Path(tempfile.mkdtemp(prefix="aicontract-shared-", dir="/tmp"))
    os.chmod(top, 0o755)
    state = top / "state"
    state.mkdir(mode=0o2770)
    os.chown(state, 0, NOBODY)
    os.chmod(state, 0o2770)
    inventory = top / "inventory.yaml"
    inventory.write_text(INVENTORY)
    os.chmod(inventory, 0o644)
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(state))
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)
    yield state
    shutil.rmtree(top, ignore_errors=True)


def test_every_user_gets_the_host_ledger_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AICONTRACT_STATE_DIR", raising=False)
    monkeypatch.delenv("AICONTRACT_LEDGER_SCOPE", raising=False)
    assert default_state_dir() == SYSTEM_STATE_DIR
    monkeypatch.setenv("AICONTRACT_LEDGER_SCOPE", "user")
    assert default_state_dir() != SYSTEM_STATE_DIR  # only when asked


@can_switch_uid
def test_nobody_shares_the_default_ledger(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AICONTRACT_STATE_DIR", raising=False)
    monkeypatch.delenv("AICONTRACT_LEDGER_SCOPE", raising=False)
    assert as_nobody(lambda: str(default_state_dir())) == str(default_state_dir())


@can_switch_uid
def test_root_and_nobody_never_hold_the_same_gpus(shared: Path) -> None:
    async def hold_both() -> tuple[LocalBackend, Any]:
        backend = LocalBackend()
        lease = await Negotiator([backend]).acquire(
            Contract(name="roots", gpus=GPU(count=2, models=["H100"]))
        )
        return backend, lease

    backend, lease = anyio.run(hold_both)
    try:
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "0,1"

        def nobody_tries() -> dict[str, Any]:
            async def go() -> dict[str, Any]:
                mine = LocalBackend()
                out: dict[str, Any] = {}
                try:
                    await Negotiator([mine]).acquire(
                        Contract(name="nobodys", gpus=GPU(count=1, models=["H100"]))
                    )
                    out["acquired"] = True
                except NoOffer:
                    out["acquired"] = False
                records = mine.ledger.records()
                out["seen"] = [r.id for r in records]
                out["env"] = [r.env for r in records]
                try:
                    mine.ledger.release_as(lease.id)
                    out["released"] = True
                except LeaseStateError as exc:
                    out["released"] = str(exc)
                await mine.aclose()
                return out

            return anyio.run(go)

        seen = as_nobody(nobody_tries)
        assert seen["acquired"] is False  # root holds both H100s on the one ledger
        assert seen["seen"] == [lease.id]
        assert seen["env"] == [{}]  # another owner's env is not shown
        assert "only its owner or root" in seen["released"]
        assert backend.ledger.get(lease.id) is not None
        mode = stat.S_IMODE(os.stat(backend.ledger.path).st_mode)
        assert mode & 0o007 == 0, oct(mode)  # not world-readable
    finally:
        anyio.run(lease.release)
        anyio.run(backend.aclose)


@can_switch_uid
def test_a_ledger_nobody_may_not_write_is_a_ledger_error(tmp_path: Path) -> None:
    state = Path(tempfile.mkdtemp(prefix="aicontract-ro-", dir="/tmp"))
    try:
        os.chmod(state, 0o755)
        made = LocalBackend(state_dir=state)
        made.ledger.records()  # root creates it
        made.ledger.close()
        for path in state.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)

        host = Inventory(cpus=2, memory=Bytes("1GiB"))  # read here: nobody may not read /proc

        def nobody_leases() -> str:
            backend = LocalBackend(state_dir=state, inventory=host)
            try:
                anyio.run(Negotiator([backend]).acquire, Contract(name="ro", cpus=1))
            except (LedgerError, NoOffer) as exc:  # NoOffer: the quote already could not
                return str(exc)
            return "no error"

        said = as_nobody(nobody_leases)
        assert f"[local] ledger {state}" in said
        assert "read-only" in said or "permission" in said
    finally:
        shutil.rmtree(state, ignore_errors=True)
