"""Real PyTorch on the CPU: torchrun on a lease, through the Python API and the CLI.

Two processes under one lease (``procs_per_node: 2``, gloo) meet at the lease's
rendezvous and all-reduce; two leases at once run two worlds side by side; a
torchrun run stops, workers and all, when its lease ends. These run in CI
(``.ci/run`` installs ``torch==2.13.0``) and skip only where torch is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from aicontract import Contract, Negotiator, Workload
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.ledger import Ledger
from aicontract.cli import main
from aicontract.leases import Lease
from procs import live_processes

pytestmark = [
    pytest.mark.torch,
    pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed"),
]

ALL_REDUCE = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    value = torch.tensor([float(rank + 1)])
    dist.all_reduce(value)
    seen = {
        "rank": rank,
        "size": dist.get_world_size(),
        "sum": value.item(),
        "master_port": os.environ["MASTER_PORT"],
        "lease": os.environ["AICONTRACT_LEASE_ID"],
    }
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as out:
        json.dump(seen, out)
    dist.destroy_process_group()
    """
)


@pytest.fixture
def all_reduce(tmp_path: Path) -> Path:
    script = tmp_path / "all_reduce.py"
    script.write_text(ALL_REDUCE)
    return script


def ddp_contract(name: str = "ddp") -> Contract:
    # One CPU for both processes: the fake host's CPU ids must exist on a small CI runner.
    return Contract(name=name, cpus=1, workload=Workload(kind="training", procs_per_node=2))


def agreed(out: Path, lease_id: str, port: int) -> None:
    """Both ranks ran in the lease's world and the all-reduce gave both the same sum."""
    seen = sorted((json.loads(p.read_text()) for p in out.glob("rank*.json")), key=str)
    assert [s["rank"] for s in sorted(seen, key=lambda s: s["rank"])] == [0, 1]
    for one in seen:
        assert one["size"] == 2
        assert one["sum"] == 3.0  # 1 + 2: each rank's value reached the other
        assert one["lease"] == lease_id
        assert one["master_port"] == str(port)


async def run_torchrun(backend: LocalBackend, lease: Lease, script: Path, out: Path) -> int:
    assert lease.world is not None
    process = await backend.run(lease, lease.world.torchrun_command(str(script), str(out)))
    with anyio.fail_after(180):
        return await process.wait()


@pytest.mark.anyio
async def test_two_processes_under_one_lease_all_reduce_and_agree(
    backend: LocalBackend, all_reduce: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    async with await Negotiator([backend]).acquire(ddp_contract()) as lease:
        assert lease.world is not None
        assert await run_torchrun(backend, lease, all_reduce, out) == 0
        agreed(out, lease.id, lease.world.master_port)


@pytest.mark.anyio
async def test_two_leases_at_once_run_two_worlds(
    backend: LocalBackend, all_reduce: Path, tmp_path: Path
) -> None:
    negotiator = Negotiator([backend])
    async with (
        await negotiator.acquire(ddp_contract("a")) as first,
        await negotiator.acquire(ddp_contract("b")) as second,
    ):
        assert first.world is not None
        assert second.world is not None
        assert first.world.master_port != second.world.master_port
        outs = [tmp_path / "a", tmp_path / "b"]
        codes: list[int] = []

        async def one(lease: Lease, out: Path) -> None:
            out.mkdir()
            codes.append(await run_torchrun(backend, lease, all_reduce, out))

        async with anyio.create_task_group() as tg:
            tg.start_soon(one, first, outs[0])
            tg.start_soon(one, second, outs[1])
        assert codes == [0, 0]
        agreed(outs[0], first.id, first.world.master_port)
        agreed(outs[1], second.id, second.world.master_port)


def test_acquire_torchrun_runs_the_script_in_the_lease_world(
    local_env: Path, all_reduce: Path, tmp_path: Path
) -> None:
    contract = tmp_path / "ddp.yaml"
    contract.write_text(
        "name: ddp\nresources: {cpus: 1}\nworkload: {kind: training, procs_per_node: 2}\n"
    )
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(
        main,
        ["acquire", str(contract), "--torchrun", "--", str(all_reduce), str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "world: 1 node(s) x 2 process(es), rendezvous 127.0.0.1:" in result.stderr
    port = int(result.stderr.split("rendezvous 127.0.0.1:")[1].split()[0])
    lease_id = result.stderr.split("leased ")[1].split(":")[0]
    agreed(out, lease_id, port)
    assert Ledger.in_dir(local_env).records() == []  # released after the run


def test_a_workload_less_contract_becomes_a_training_run(
    local_env: Path, all_reduce: Path, tmp_path: Path
) -> None:
    # No workload section: --torchrun says it is training; one process on a CPU run.
    contract = tmp_path / "cpu.yaml"
    contract.write_text("name: cpu\nresources: {cpus: 1}\n")
    out = tmp_path / "out"
    out.mkdir()
    result = CliRunner().invoke(
        main,
        ["acquire", str(contract), "--torchrun", "--", str(all_reduce), str(out)],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    assert "world: 1 node(s) x 1 process(es)" in result.stderr
    assert json.loads((out / "rank0.json").read_text())["sum"] == 1.0


SLEEPER = textwrap.dedent(
    """
    import os, sys, time
    import torch.distributed as dist

    dist.init_process_group("gloo")
    open(os.path.join(sys.argv[2], f"ready{dist.get_rank()}"), "w").close()
    time.sleep(600)
    """
)


def test_torchrun_and_its_workers_stop_when_the_lease_ends(local_env: Path, tmp_path: Path) -> None:
    """Released from elsewhere (``aicontract release``): the agent and every worker stop,
    though torchrun starts each worker in a session of its own."""
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    contract = tmp_path / "ddp.yaml"
    contract.write_text(
        "name: ddp\nresources: {cpus: 1}\nworkload: {kind: training, procs_per_node: 2}\n"
        "terms: {stop_grace: 5s}\n"
    )
    ready = tmp_path / "ready"
    ready.mkdir()
    marker = f"marker-{uuid.uuid4().hex}"
    command = [sys.executable, "-m", "aicontract", "acquire", str(contract), "--torchrun"]
    holder = subprocess.Popen(
        [*command, "--", str(script), marker, str(ready)],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 180
        while len(list(ready.iterdir())) < 2:
            assert holder.poll() is None, holder.communicate()[1].decode()
            assert time.monotonic() < deadline, "the workers never met"
            time.sleep(0.2)
        # The agent and both workers run (the holder's command line names the marker too).
        assert len(live_processes(marker.encode(), unless=b"acquire")) >= 3
        ledger = Ledger.in_dir(local_env)
        (record,) = ledger.records()
        assert ledger.release(record.id)
        assert holder.wait(timeout=60) == 3  # the lease was lost: its command was stopped
        assert live_processes(marker.encode()) == []
        assert ledger.records() == []
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
