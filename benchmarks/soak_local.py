"""Soak: SIGKILL random lease holders with running workloads; count what leaks.

    python benchmarks/soak_local.py [--kills 100] [--holders 8] [--gpus 8]

Keeps ``--holders`` ``aicontract acquire FILE -- sh -c 'sleep 600 & sleep 600'``
processes running on a fake host with ``--gpus`` GPUs, SIGKILLs a random one
(after a random moment) until ``--kills`` holders were killed, then kills the
rest and waits for the ledger to reclaim everything. Prints:

* leaked processes: workload processes (found by a marker in their environment)
  still running after every holder is dead and the ledger is empty;
* leaked devices: device rows still in the ledger after reclaiming;
* how long each killed holder's workload outlived it (median, max).

Both leak counts must be 0. Nothing is asserted; the figures are printed.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aicontract.backends.local.ledger import Ledger


def _marked() -> dict[str, list[int]]:
    """Live workload processes (pids) per ``SOAK_MARK`` in their environment."""
    found: dict[str, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as env:
                variables = env.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as stat:
                if stat.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    continue
        except OSError:
            continue
        for variable in variables:
            if variable.startswith(b"SOAK_MARK="):
                found.setdefault(variable[10:].decode(), []).append(int(pid))
    return found


def main() -> None:
    """Run the soak and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--holders", type=int, default=8)
    parser.add_argument("--gpus", type=int, default=8)
    args = parser.parse_args()
    rng = random.Random(int(os.environ.get("SOAK_SEED", "0")) or None)
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        inventory = top / "inventory.yaml"
        devices = ", ".join(["{model: H100, memory: 80GiB}"] * args.gpus)
        inventory.write_text(f"cpus: 64\nmemory: 512GiB\ngpus: [{devices}]\n")
        state = top / "state"
        env = {
            **os.environ,
            "AICONTRACT_INVENTORY": str(inventory),
            "AICONTRACT_STATE_DIR": str(state),
        }
        running: dict[str, subprocess.Popen[bytes]] = {}
        killed: dict[str, float] = {}  # mark -> when its holder was SIGKILLed
        outlived: list[float] = []

        def start() -> None:
            mark = secrets.token_hex(6)
            contract = top / f"{mark}.yaml"
            contract.write_text(
                f"name: soak\nresources:\n  gpus: {{count: {rng.choice((1, 2))}}}\n"
                "terms: {start_by: 120s, stop_grace: 2s}\n"
                f"workload:\n  env: {{SOAK_MARK: '{mark}'}}\n"
            )
            running[mark] = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aicontract",
                    "acquire",
                    str(contract),
                    "--",
                    "sh",
                    "-c",
                    "sleep 600 & sleep 600",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        def settle() -> None:
            alive = _marked()
            now = time.monotonic()
            for mark, at in list(killed.items()):
                if mark not in alive:
                    outlived.append(now - at)
                    del killed[mark]

        def kill(mark: str) -> None:
            holder = running.pop(mark)
            holder.send_signal(signal.SIGKILL)
            holder.wait()
            killed[mark] = time.monotonic()

        started = time.monotonic()
        for _ in range(args.holders):
            start()
        kills = 0
        while kills < args.kills:
            deadline = time.monotonic() + rng.uniform(0.05, 0.8)
            while time.monotonic() < deadline:
                settle()
                time.sleep(0.01)
            kill(rng.choice(list(running)))
            kills += 1
            start()
            if kills % 20 == 0:
                print(f"  {kills} holders killed", flush=True)
        for mark in list(running):
            kill(mark)
            kills += 1
        last_kill = time.monotonic()
        # Every holder is dead: parent-death signals and reclaimers must stop every
        # workload, and the ledger must free every device.
        ledger = Ledger.in_dir(state)
        while time.monotonic() < last_kill + 60:
            settle()
            ledger.reclaim()
            if not killed and not ledger.records():
                break
            time.sleep(0.02)
        all_free = time.monotonic() - last_kill
        leaked = _marked()
        leaked_devices = ledger.run(
            lambda conn: conn.execute("SELECT COUNT(*) FROM devices").fetchone()[0]
        )
        ledger.close()
        for pids in leaked.values():  # never leave them behind, whatever the figure says
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
        print(
            f"{kills} holders SIGKILLed with running workloads in"
            f" {last_kill - started:.0f}s; all work and devices free"
            f" {all_free:.2f}s after the last kill"
        )
        if outlived:
            print(
                f"a killed holder's workload outlived it by: median"
                f" {statistics.median(outlived) * 1000:.0f} ms,"
                f" max {max(outlived) * 1000:.0f} ms ({len(outlived)} measured)"
            )
        print(f"leaked processes: {sum(len(p) for p in leaked.values())}")
        print(f"leaked devices: {leaked_devices}")


if __name__ == "__main__":
    main()
