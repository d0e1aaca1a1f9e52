"""The record: every entry hash-chained; any edit, removal or reordering is caught."""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import uuid
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicontract.cli import main
from aicontract.governance.record import Record, verify


def _filled(path: Path, count: int = 10) -> Record:
    record = Record(path)
    for i in range(count):
        record.append("grant", 1000.0 + i, {"lease": f"l{i}", "tenant": "team-a", "gpus": i % 3})
    return record


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_intact_record_verifies(tmp_path: Path) -> None:
    record = _filled(tmp_path / "record.jsonl")
    result = verify(record.path)
    assert result.ok
    assert result.entries == 10
    entries = list(record.entries())
    assert [e["seq"] for e in entries] == list(range(1, 11))
    assert all(b["prev"] == a["hash"] for a, b in itertools.pairwise(entries))


def test_an_empty_or_missing_record_verifies(tmp_path: Path) -> None:
    assert verify(tmp_path / "none.jsonl").ok


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(index=st.integers(0, 9), data=st.data())
def test_an_edited_entry_is_caught(tmp_path: Path, index: int, data: st.DataObject) -> None:
    """Change one value of any entry (even keeping the JSON valid): verify names that entry."""
    path = tmp_path / f"edit-{uuid.uuid4().hex}.jsonl"
    _filled(path)
    lines = _lines(path)
    entry = json.loads(lines[index])
    key = data.draw(st.sampled_from(["lease", "tenant", "gpus", "at", "kind"]))
    entry[key] = data.draw(
        st.one_of(st.integers(), st.text(max_size=8)).filter(lambda v: v != entry[key])
    )
    lines[index] = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok
    assert result.line == index + 1
    assert "changed" in (result.problem or "")


def test_an_edit_with_a_recomputed_hash_is_caught(tmp_path: Path) -> None:
    """Recomputing the edited entry's own hash does not help: the next entry names the old one."""
    import hashlib

    path = tmp_path / "record.jsonl"
    _filled(path)
    lines = _lines(path)
    body = lines[3][: -len(b',"hash":"') - 64 - 3] + b"}"
    body = body.replace(b'"gpus":0', b'"gpus":7')
    digest = hashlib.sha256(body).hexdigest().encode()
    lines[3] = body[:-1] + b',"hash":"' + digest + b'"}\n'
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok
    assert result.line == 5
    assert "does not follow" in (result.problem or "")


@pytest.mark.parametrize("index", [0, 4, 9])
def test_a_deleted_entry_is_caught(tmp_path: Path, index: int) -> None:
    path = tmp_path / "record.jsonl"
    _filled(path)
    lines = _lines(path)
    del lines[index]
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok
    assert f"entry {index + 1} is missing" in (result.problem or "") or (
        index == 9 and "removed from the end" in (result.problem or "")
    )


def test_all_entries_deleted_is_caught(tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    _filled(path)
    path.write_bytes(b"")
    result = verify(path)
    assert not result.ok
    assert "removed" in (result.problem or "")


@pytest.mark.parametrize(("a", "b"), [(0, 1), (3, 7), (8, 9)])
def test_reordered_entries_are_caught(tmp_path: Path, a: int, b: int) -> None:
    path = tmp_path / "record.jsonl"
    _filled(path)
    lines = _lines(path)
    lines[a], lines[b] = lines[b], lines[a]
    path.write_bytes(b"".join(lines))
    result = verify(path)
    assert not result.ok
    assert result.line == a + 1
    assert f"line {a + 1} holds entry {b + 1}, expected {a + 1}" in (result.problem or "")


def test_replaced_last_entry_is_caught(tmp_path: Path) -> None:
    """A forged last entry with a valid hash and chain still disagrees with the head."""
    path = tmp_path / "record.jsonl"
    _filled(path)
    lines = _lines(path)
    head = (path.with_suffix(".head")).read_bytes()
    path.write_bytes(b"".join(lines[:-1]))
    (path.with_suffix(".head")).unlink()
    forged = Record(path)
    forged.append("grant", 5000.0, {"lease": "forged", "tenant": "team-a", "gpus": 0})
    forged.close()
    path.with_suffix(".head").write_bytes(head)  # the real head survived
    result = verify(path)
    assert not result.ok
    assert "replaced" in (result.problem or "")


def _appender(path: str, tag: int, count: int) -> None:
    record = Record(Path(path))
    for i in range(count):
        record.append("grant", float(i), {"lease": f"p{tag}-{i}", "tenant": "t", "gpus": 1})


def test_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    ctx = mp.get_context("spawn")
    workers = [ctx.Process(target=_appender, args=(str(path), i, 150)) for i in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
        assert worker.exitcode == 0
    result = verify(path)
    assert result.ok, result.problem
    assert result.entries == 450


def test_cli_audit_verify_exits_1_naming_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    _filled(path)
    runner = CliRunner()
    ok = runner.invoke(main, ["audit", "verify", "--record", str(path)])
    assert ok.exit_code == 0
    assert "10 entries" in ok.output
    lines = _lines(path)
    lines[2] = lines[2].replace(b'"team-a"', b'"team-b"')
    path.write_bytes(b"".join(lines))
    bad = runner.invoke(main, ["audit", "verify", "--record", str(path)])
    assert bad.exit_code == 1
    assert "entry 3 (line 3) was changed" in bad.output


def test_cli_audit_show_and_export_filter(tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    _filled(path)
    runner = CliRunner()
    shown = runner.invoke(main, ["audit", "show", "--record", str(path), "--lease", "l4"])
    assert shown.exit_code == 0
    assert shown.output.count("\n") == 1
    assert "lease=l4" in shown.output
    exported = runner.invoke(main, ["audit", "export", "--record", str(path), "--tenant", "team-a"])
    assert [json.loads(x)["seq"] for x in exported.output.splitlines()] == list(range(1, 11))
    otel = runner.invoke(main, ["audit", "export", "--record", str(path), "--format", "otel"])
    (request,) = [json.loads(line) for line in otel.output.splitlines()]
    first = request["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert first["timeUnixNano"] == str(10**12)
    assert first["attributes"]


def test_appending_after_a_cut_keeps_the_cut_visible(tmp_path: Path) -> None:
    """Entries cut off the end stay detected after more are appended (no laundering)."""
    path = tmp_path / "record.jsonl"
    record = _filled(path)
    record.close()
    lines = _lines(path)
    path.write_bytes(b"".join(lines[:-2]))
    _filled(path, 3)
    result = verify(path)
    assert not result.ok
    assert result.line == 9


def test_a_forked_child_opens_its_own_files(tmp_path: Path) -> None:
    """flock belongs to an open file: a child must not share its parent's, or both hold it."""
    record = Record.shared(tmp_path / "record.jsonl")
    assert Record.shared(tmp_path / "record.jsonl") is record
    record.append("grant", 1.0, {"lease": "parent"})
    with record.locked():  # the parent holds the lock while the child tries to take it
        child = mp.get_context("fork").Process(target=_lock_in_child, args=(record,))
        child.start()
        child.join()
    assert child.exitcode == 0  # the child's own file found the lock taken
    record.append("grant", 3.0, {"lease": "parent-again"})
    assert verify(record.path).entries == 2


def _lock_in_child(record: Record) -> None:
    fd, _ = record._open()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os._exit(0)
    os._exit(1)  # it took a lock the parent holds: it was sharing the parent's file


def test_cli_audit_show_on_a_damaged_record_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    _filled(path, 2)
    path.write_bytes(path.read_bytes() + b"{not json\n")
    result = CliRunner().invoke(main, ["audit", "show", "--record", str(path)])
    assert result.exit_code == 1
    assert "damaged" in result.output
    assert "Traceback" not in result.output


def test_a_zeroed_head_reads_as_none(tmp_path: Path) -> None:
    """A head left as zeros (a block allocated but never written, after a power loss)
    is no head: the chain goes on from the record's own last line."""
    path = tmp_path / "record.jsonl"
    record = _filled(path, 3)
    record.close()
    head = path.with_suffix(".head")
    head.write_bytes(b"\0" * len(head.read_bytes()))
    assert verify(path).ok
    again = Record(path)
    entry = again.append("grant", 2000.0, {"lease": "next", "tenant": "team-a"})
    again.close()
    assert entry["seq"] == 4
    result = verify(path)
    assert result.ok
    assert result.entries == 4
    assert head.read_bytes().startswith(b"00000000000000000004 ")


def test_sync_flushes_each_entry_before_its_head(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from aicontract.governance import record as record_module

    flushed: list[int] = []
    monkeypatch.setattr(record_module, "_sync_file", lambda fd: flushed.append(fd))
    plain = _filled(tmp_path / "plain.jsonl", 3)
    assert not plain.sync
    assert flushed == []
    monkeypatch.setenv("AICONTRACT_RECORD_SYNC", "1")
    synced = _filled(tmp_path / "synced.jsonl", 3)
    assert synced.sync
    assert len(flushed) == 3
    assert verify(synced.path).ok


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    entries=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=8),
            st.floats(allow_nan=False, allow_infinity=False),
            st.dictionaries(
                st.sampled_from(["lease", "kind", "hash", "at", "é\n", "x"]),
                st.none() | st.integers() | st.text(max_size=5) | st.lists(st.integers()),
            ),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_entries_are_the_bytes_of_one_encoded_dict(
    tmp_path: Path, entries: list[tuple[str, float, dict[str, object]]]
) -> None:
    """The append encodes its fields outside the lock and splices the link in: the line must
    be byte for byte what encoding ``{seq, prev, at, kind, **fields}`` at once gives, through
    ``append`` and through ``write`` (the same entry, without the copy) alike."""
    path = tmp_path / f"{uuid.uuid4().hex}.jsonl"
    record = Record(path)
    prev = "0" * 64
    for seq, (kind, at, fields) in enumerate(entries, 1):
        before = path.stat().st_size if path.exists() else 0
        if seq % 2:
            returned: dict[str, object] | None = record.append(kind, at, fields)
        else:  # where its line lies, and nothing else
            assert record.write(kind, at, fields) == (before, path.stat().st_size)
            returned = None
        body = msgspec.json.encode({"seq": seq, "prev": prev, "at": at, "kind": kind, **fields})
        digest = hashlib.sha256(body).hexdigest()
        assert _lines(path)[-1] == body[:-1] + b',"hash":"' + digest.encode() + b'"}\n'
        if returned is not None:
            assert (returned["seq"], returned["prev"], returned["hash"]) == (seq, prev, digest)
        prev = digest
    assert verify(path).ok


def test_offer_summaries_in_the_record_keep_what_a_counter_offer_relaxed() -> None:
    # The record's summary cache must not hand a counter-offer the plain offer's line.
    from aicontract import Contract
    from aicontract.governance.enforce import _summary
    from fakes import make_offer

    plain = make_offer("fake", Contract(name="s", gpus=2), 0.0)
    relaxed = msgspec.structs.replace(plain, details={"relaxed": "resources.gpus.count 4 -> 2"})
    assert "relaxed" not in _summary(plain)
    assert _summary(relaxed).endswith("(relaxed: resources.gpus.count 4 -> 2)")


@pytest.mark.anyio
async def test_a_recorded_lease_is_freed_once_released_without_the_garbage_collector(
    tmp_path: Path,
) -> None:
    """What the record's listeners hold must not make a lease a reference cycle: in a loop
    every released lease would wait for the garbage collector (a collection every few
    cycles), not be freed at once."""
    import gc
    import time
    import weakref

    from aicontract import Contract, Grant, Lease, Offer, Quote
    from aicontract.backends.base import Backend
    from aicontract.governance import Governance
    from aicontract.negotiate import Negotiator

    class Bare(Backend):
        """Keeps nothing of a lease once it is committed."""

        name = "bare"

        async def quote(self, contract: Contract) -> Quote:
            offer = Offer(
                id="o",
                backend=self.name,
                contract=contract,
                grant=Grant(gpus=1),
                guarantee="allocated",
                region="local",
                jurisdiction=None,
                provider="bare",
                isolation="shared",
                price=None,
                expires_at=time.time() + 60,
            )
            return Quote(offers=(offer,))

        async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
            return Lease(
                id=idempotency_key,
                contract=offer.contract,
                grant=offer.grant,
                backend=self,
                guarantee="allocated",
                expires_at=time.time() + 60,
            )

        async def renew(self, lease: Lease) -> float:
            return time.time() + 60

        async def release(self, lease: Lease) -> None:
            pass

    record = Record(tmp_path / "record.jsonl")
    negotiator = Negotiator([Bare()], governance=Governance(record=record))
    contract = Contract(name="x", gpus=1)
    gc.collect()
    gc.disable()
    try:
        lease = await negotiator.acquire(contract)
        await lease.release()
        released = weakref.ref(lease)
        del lease
        assert released() is None, gc.get_referrers(released())
    finally:
        gc.enable()
    assert [e["kind"] for e in record.entries()] == ["grant", "end"]
