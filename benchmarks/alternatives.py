"""What a fallback costs: acquire+release cycles/s for a contract with and without
``alternatives``, on the local backend, one process.

    python benchmarks/alternatives.py [--seconds 3]

The host (an inventory file) has 2 GPUs and 16 CPUs. Cases:

1. ``gpus: 1`` — the baseline.
2. ``gpus: 1``, else 8 CPUs — the first choice is granted.
3. ``gpus: 4``, else 8 CPUs — only the fallback fits (the first choice is refused).
4. the same with three fallbacks, the last one the one that fits.

A contract with alternatives is quoted once per choice (all at once, in one task
group), so each choice adds a quote. Figures are printed as ratios to the baseline,
with the machine; nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import anyio

import aicontract as ac
from aicontract.backends.local import LocalBackend
from aicontract.negotiate import Negotiator

INVENTORY = {
    "cpus": 16,
    "memory": "64GiB",
    "gpus": [{"model": "L4", "memory": "24GiB"}, {"model": "L4", "memory": "24GiB"}],
}


async def _cycles(contract: ac.Contract, seconds: float) -> float:
    negotiator = Negotiator([LocalBackend()])
    done, start = 0, time.perf_counter()
    while time.perf_counter() < start + seconds:
        for _ in range(50):
            lease = await negotiator.acquire(contract)
            await lease.release()
        done += 50
    elapsed = time.perf_counter() - start
    await negotiator.aclose()
    return done / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"Python {platform.python_version()}"
    )
    cpus = {"cpus": 8}
    cases = [
        ("gpus: 1", ac.Contract(name="b", gpus=1)),
        (
            "gpus: 1, else 8 CPUs (first choice granted)",
            ac.Contract(name="b", gpus=1).with_(alternatives=[cpus]),
        ),
        (
            "gpus: 4, else 8 CPUs (fallback granted)",
            ac.Contract(name="b", gpus=4).with_(alternatives=[cpus]),
        ),
        (
            "gpus: 4, else 3, else 2 GPUs of H100, else 8 CPUs (last granted)",
            ac.Contract(name="b", gpus=4).with_(
                alternatives=[
                    {"gpus": {"count": 3}},
                    {"gpus": {"count": 2, "models": ["H100"]}},
                    cpus,
                ]
            ),
        ),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        inventory = Path(tmp) / "inventory.json"
        inventory.write_text(json.dumps(INVENTORY))
        os.environ["AICONTRACT_INVENTORY"] = str(inventory)
        baseline = None
        for number, (name, contract) in enumerate(cases):
            os.environ["AICONTRACT_STATE_DIR"] = str(Path(tmp) / f"state{number}")
            rate = anyio.run(_cycles, contract, args.seconds)
            baseline = baseline or rate
            print(f"{name:66s} {rate:7,.0f} cycles/s  ({rate / baseline:.2f} x baseline)")


if __name__ == "__main__":
    main()
