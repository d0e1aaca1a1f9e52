"""Hostile: a process that used the blocking face forks, and the child uses it too.

``multiprocessing`` forks by default on Linux before Python 3.14, so a script that
acquired with ``aicontract.lease(...)`` / ``acquire_sync`` and then starts a pool
whose workers acquire their own leases is ordinary code. A fork copies the
blocking face's portal object but not its thread: the child's calls went to a
loop that does not run there, and hung for ever. Each child must get its own
lease, the parent's lease must stay the parent's, and everything must end released.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")

SCRIPT = """\
import json, multiprocessing as mp, sys
import aicontract
from aicontract import Contract, Objective, Terms

plain = Contract(name="plain", gpus=1)
watched = Contract(
    name="watched", gpus=1, objectives=[Objective(sli="latency_p99", op="<=", target="1s")]
)

def child(q, contract):
    with aicontract.lease(contract) as held:
        q.put(held.env["CUDA_VISIBLE_DEVICES"])
    lease = aicontract.acquire_sync(contract)
    q.put(lease.env["CUDA_VISIBLE_DEVICES"])
    aicontract.release_sync(lease)

if __name__ == "__main__":
    out = {}
    ctx = mp.get_context("fork")
    for contract in (plain, watched):
        mine = aicontract.acquire_sync(contract)
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q, contract))
        p.start()
        p.join(60)  # a bound for a broken run: the child hung
        hung = p.is_alive()
        if hung:
            p.kill()
            p.join()
        got = []
        while not q.empty():
            got.append(q.get())
        out[contract.name] = {
            "parent": mine.env["CUDA_VISIBLE_DEVICES"],
            "child": got,
            "hung": hung,
            "exitcode": p.exitcode,
            "parent_active": mine.is_active,
        }
        aicontract.release_sync(mine)
    print(json.dumps(out))
"""


def test_a_forked_child_uses_the_blocking_face_on_its_own(
    private_state: Path, tmp_path: Path
) -> None:
    script = tmp_path / "forks.py"
    script.write_text(SCRIPT)
    src = str(Path(__file__).resolve().parents[2] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for name in ("plain", "watched"):
        seen = out[name]
        assert not seen["hung"], f"{name}: the forked child hung: {seen}"
        assert seen["exitcode"] == 0, seen
        assert seen["parent_active"], seen
        # The child's GPU is never the parent's, which it still held.
        assert len(seen["child"]) == 2, seen
        assert seen["parent"] not in seen["child"], seen
    from aicontract.backends.local import LocalBackend

    assert LocalBackend(state_dir=private_state).ledger.records() == []
