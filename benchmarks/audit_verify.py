"""The record: how fast entries are appended, and how fast `aicontract audit verify` checks them.

    python benchmarks/audit_verify.py [--entries 1000000]

1. Appends N grant-sized entries through `Record.append` (one lock, hash and write each).
2. Verifies the whole record (`aicontract.governance.verify`, what `audit verify` runs).
Figures are printed with the machine they were measured on; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from aicontract.governance import Record, verify


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        record = Record(Path(tmp) / "record.jsonl")
        fields = {
            "contract": "bench",
            "digest": "ab" * 32,
            "tenant": "team-a",
            "template": "train-eu@1.2",
            "identity": "user:alice",
            "backend": "local",
            "lease": "",
            "gpus": 1,
            "grant": "1 x H100 (80GiB)",
            "region": "local",
            "jurisdiction": "DE",
            "price": "0 USD/h",
        }
        start = time.perf_counter()
        for i in range(args.entries):
            fields["lease"] = f"lease-{i:012d}"
            record.append("grant", 1.7e9 + i, fields)
        appended = time.perf_counter() - start
        record.close()
        size = record.path.stat().st_size
        print(
            f"append: {args.entries / appended:,.0f} entries/s "
            f"({appended / args.entries * 1e6:.1f} µs each, {size / 2**20:,.0f} MiB)"
        )
        start = time.perf_counter()
        result = verify(record.path)
        checked = time.perf_counter() - start
        print(
            f"verify: {result.entries:,} entries in {checked:.2f} s "
            f"({result.entries / checked:,.0f} entries/s), ok={result.ok}"
        )


if __name__ == "__main__":
    main()
