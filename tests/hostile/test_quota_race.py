"""Hostile: many processes race for the last of a tenant's GPU quota at one moment.

Each process starts its acquire at the same instant (a shared start file) and
holds what it got until told to stop, so every grant counts against the quota
at once; the record's admissions (folded in by each process as it appends
them) must still let at most the quota through, and the record stays one chain.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

import aicontract as ac

RACERS = 5
QUOTA = 2


def _racer(env: dict[str, str], go: str, stop: str, out: str) -> None:
    os.environ.update(env)
    import aicontract as ac

    contract = ac.Contract(name="race", tenant="team-a", gpus=1)
    ac.release_sync(ac.acquire_sync(ac.Contract(name="warm", tenant="team-b", gpus=1)))
    Path(out + ".ready").write_text("")
    while not Path(go).exists():
        time.sleep(0.002)
    try:
        lease = ac.acquire_sync(contract)
    except ac.PolicyViolation:
        Path(out).write_text("refused")
        return
    Path(out).write_text("granted")
    while not Path(stop).exists():
        time.sleep(0.02)
    ac.release_sync(lease)


def test_a_quota_holds_when_processes_race_for_its_last_gpus(
    tmp_path: Path, private_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(f"tenants:\n  team-a: {{quotas: {{gpus: {QUOTA}}}}}\n")
    monkeypatch.setenv("AICONTRACT_POLICY", str(policy))
    env = {k: v for k, v in os.environ.items() if k.startswith("AICONTRACT_")}
    go, stop = tmp_path / "go", tmp_path / "stop"
    outs = [tmp_path / f"out-{n}" for n in range(RACERS)]
    spawn = mp.get_context("spawn")
    procs = [spawn.Process(target=_racer, args=(env, str(go), str(stop), str(out))) for out in outs]
    for p in procs:
        p.start()
    try:
        deadline = time.monotonic() + 120
        while not all(Path(f"{o}.ready").exists() for o in outs) and time.monotonic() < deadline:
            time.sleep(0.02)
        go.write_text("")
        while not all(o.exists() for o in outs) and time.monotonic() < deadline:
            time.sleep(0.02)
        results = sorted(o.read_text() for o in outs if o.exists())
        assert len(results) == RACERS, "a racer never answered"
        assert results.count("granted") == QUOTA, results
    finally:
        stop.write_text("")
        for p in procs:
            p.join(60)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, 9)
                p.join(5)
    assert [p.exitcode for p in procs] == [0] * RACERS
    assert ac.governance.verify(private_state / "record.jsonl").ok
