"""Where a local acquire+release cycle's time goes, layer by layer, and the ceiling it implies.

    python benchmarks/local_floor.py [--cycles 3000]

Measures, in one process, CPU microseconds per cycle (this process's CPU time, so
other load on the machine moves it least):

1. the public API: ``Negotiator.acquire`` + ``Lease.release`` (record on, as shipped);
2. the local backend alone: ``LocalBackend.quote`` + ``commit`` + ``release``, no
   negotiator, no policy, no record;
3. the record alone: the two entries a cycle appends (grant, release);
4. SQLite alone: the two write transactions a cycle needs (a grant that inserts a
   lease and its device, a release that deletes them), in WAL mode with
   ``synchronous=NORMAL`` as the ledger runs it, with no Python around them.

The last two are floors no change above them can go below while the ledger is SQLite
and the record a hash-chained file; the ceiling line says how many cycles a second
they leave room for. Figures are printed with the machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import tempfile
import time
from pathlib import Path

import anyio

import aicontract as ac
from aicontract.backends.local import LocalBackend
from aicontract.governance import Record
from aicontract.negotiate import Negotiator


def _inventory(directory: Path) -> Path:
    path = directory / "inventory.yaml"
    devices = ", ".join(["{model: H100, memory: 80GiB}"] * 8)
    path.write_text(f"cpus: 64\nmemory: 512GiB\ngpus: [{devices}]\n")
    return path


def _per_cycle(start: float, cycles: int) -> float:
    return (time.process_time() - start) / cycles * 1e6


async def _public(cycles: int) -> float:
    negotiator = Negotiator([LocalBackend()])
    contract = ac.Contract(name="floor", gpus=1)
    for _ in range(100):  # warm-up: imports, caches, the ledger file
        await (await negotiator.acquire(contract)).release()
    start = time.process_time()
    for _ in range(cycles):
        await (await negotiator.acquire(contract)).release()
    spent = _per_cycle(start, cycles)
    await negotiator.aclose()
    return spent


async def _backend(cycles: int) -> float:
    backend = LocalBackend()
    contract = ac.Contract(name="floor", gpus=1)

    async def cycle(i: int) -> None:
        offer = (await backend.quote(contract)).offers[0]
        lease = await backend.commit(offer, f"floor-{i}")
        await backend.release(lease)

    for i in range(100):
        await cycle(-i - 1)
    start = time.process_time()
    for i in range(cycles):
        await cycle(i)
    spent = _per_cycle(start, cycles)
    await backend.aclose()
    return spent


def _record(directory: Path, cycles: int) -> float:
    record = Record(directory / "floor-record.jsonl")
    fields = {"lease": "0123456789abcdef0123", "backend": "local", "tenant": "default"}
    start = time.process_time()
    for i in range(cycles):
        record.append("grant", float(i), fields)
        record.append("release", float(i), fields)
    return _per_cycle(start, cycles)


def _sqlite(directory: Path, cycles: int) -> float:
    conn = sqlite3.connect(directory / "floor.sqlite3", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE leases (id TEXT PRIMARY KEY, record BLOB) WITHOUT ROWID")
    conn.execute(
        "CREATE TABLE devices (kind TEXT, device TEXT, lease_id TEXT, PRIMARY KEY (kind, device))"
        " WITHOUT ROWID"
    )
    body = b"x" * 900  # about what a lease record weighs
    start = time.process_time()
    for i in range(cycles):
        lease_id = f"{i:020d}"
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO leases VALUES (?, ?)", (lease_id, body))
        conn.execute("INSERT INTO devices VALUES ('gpu', ?, ?)", (str(i % 8), lease_id))
        conn.execute("COMMIT")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM devices WHERE lease_id = ?", (lease_id,))
        conn.execute("DELETE FROM leases WHERE id = ?", (lease_id,))
        conn.execute("COMMIT")
    spent = _per_cycle(start, cycles)
    conn.close()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=3000)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        os.environ["AICONTRACT_INVENTORY"] = str(_inventory(directory))
        os.environ["AICONTRACT_STATE_DIR"] = str(directory / "state")
        public = anyio.run(_public, args.cycles)
        backend = anyio.run(_backend, args.cycles)
        record = _record(directory, args.cycles)
        sqlite = _sqlite(directory, args.cycles)
    floor = record + sqlite
    rows = [
        ("public API (negotiator, policy, record, backend)", public),
        ("local backend alone (quote, commit, release)", backend),
        ("record alone (2 entries)", record),
        ("SQLite alone (2 write transactions)", sqlite),
    ]
    for label, value in rows:
        print(f"  {label:<50} {value:8.1f} µs CPU per cycle ({public / value:5.2f}x public)")
    print(
        f"ceiling with SQLite + the record and nothing else: {1e6 / floor:,.0f} cycles/s;"
        f" the public API now: {1e6 / public:,.0f} cycles/s"
    )


if __name__ == "__main__":
    main()
