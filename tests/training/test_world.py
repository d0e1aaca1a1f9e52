"""A training lease's world on the local backend (no PyTorch needed here).

A lease whose workload is ``kind: training`` carries a :class:`~aicontract.World`:
one node, rendezvous on 127.0.0.1 at a port granted from the ledger like an
``auto`` port (so two live leases never share one), one process per granted GPU
or ``workload.procs_per_node`` on a CPU run. The workload's env carries it, the
ledger's row keeps it for every other process, and releasing frees its port.
"""

from __future__ import annotations

import itertools
import json
import socket
import sys
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner, Result

import aicontract as ac
from aicontract import GPU, Contract, Negotiator, Terms, Workload, World
from aicontract.backends.local import LocalBackend, ledger
from aicontract.backends.local.ledger import WORLD_PORT, Ledger
from aicontract.cli import main
from aicontract.errors import ContractError

pytestmark = pytest.mark.anyio


def training(**workload: object) -> Workload:
    return Workload(kind="training", **workload)  # type: ignore[arg-type]


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def port_rows(state: Path) -> list[str]:
    """The ports the ledger holds for leases, as the devices table has them."""
    import sqlite3

    with sqlite3.connect(Ledger.in_dir(state).path) as conn:
        return [d for (d,) in conn.execute("SELECT device FROM devices WHERE kind = 'port'")]


# -- who gets a world, and what it is --------------------------------------------------------


async def test_a_gpu_training_lease_runs_one_process_per_granted_gpu(
    backend: LocalBackend,
) -> None:
    contract = Contract(gpus=GPU(count=2), cpus=4, workload=training())
    async with await Negotiator([backend]).acquire(contract) as lease:
        world = lease.world
        assert world is not None
        assert (world.master_addr, world.nodes, world.node_rank) == ("127.0.0.1", 1, 0)
        assert world.procs_per_node == 2 == lease.grant.gpus
        assert 1 <= world.master_port <= 65535
        # The workload reads the world from its env, as torchrun and most launchers do.
        assert {k: lease.env[k] for k in world.env()} == world.env()
        # Two processes share four CPUs: two threads each, not four each.
        assert lease.env["OMP_NUM_THREADS"] == "2"
        # The rendezvous is no endpoint of the workload's: nothing to publish or wait on.
        assert lease.endpoints == {}
        assert WORLD_PORT not in lease.details.get("ports", "")


async def test_a_gpu_grant_overrides_procs_per_node(backend: LocalBackend) -> None:
    # procs_per_node is the CPU run's count: a GPU grant runs one process per GPU.
    contract = Contract(gpus=GPU(count=1), workload=training(procs_per_node=4))
    async with await Negotiator([backend]).acquire(contract) as lease:
        assert lease.world is not None
        assert lease.world.procs_per_node == 1


@pytest.mark.parametrize(("procs", "expected"), [(None, 1), (2, 2), (3, 3)])
async def test_a_cpu_run_takes_procs_per_node(
    backend: LocalBackend, procs: int | None, expected: int
) -> None:
    contract = Contract(cpus=2, workload=training(procs_per_node=procs))
    async with await Negotiator([backend]).acquire(contract) as lease:
        assert lease.world is not None
        assert lease.world.procs_per_node == expected
        assert lease.env["NPROC_PER_NODE"] == str(expected)
        assert lease.env["OMP_NUM_THREADS"] == str(max(1, 2 // expected))


@pytest.mark.parametrize("workload", [None, Workload(kind="batch"), Workload(kind="inference")])
async def test_other_leases_get_no_world_and_hold_no_port(
    backend: LocalBackend, local_env: Path, workload: Workload | None
) -> None:
    contract = Contract(gpus=GPU(count=1), workload=workload)
    async with await Negotiator([backend]).acquire(contract) as lease:
        assert lease.world is None
        assert "MASTER_PORT" not in lease.env
        assert port_rows(local_env) == []


async def test_the_contract_cannot_move_the_rendezvous(backend: LocalBackend) -> None:
    contract = Contract(cpus=1, workload=training(env={"MASTER_PORT": "1", "MASTER_ADDR": "x"}))
    async with await Negotiator([backend]).acquire(contract) as lease:
        assert lease.world is not None
        assert lease.env["MASTER_PORT"] == str(lease.world.master_port) != "1"
        assert lease.env["MASTER_ADDR"] == "127.0.0.1"


# -- the rendezvous port is capacity ---------------------------------------------------------


async def test_two_live_leases_never_share_a_rendezvous_port(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The kernel "proposes" the same two ports to every grant: only the ledger keeps
    # two leases apart (with a world port outside it, both would get the first).
    ports = free_ports(2)
    pool = itertools.cycle(ports)
    monkeypatch.setattr(ledger, "candidate_port", lambda: next(pool))
    contract = Contract(cpus=1, workload=training())
    negotiator = Negotiator([backend])
    async with await negotiator.acquire(contract) as first:
        pool = itertools.cycle(ports)  # the second grant is offered the first's port first
        async with await negotiator.acquire(contract) as second:
            assert first.world is not None
            assert second.world is not None
            assert {first.world.master_port, second.world.master_port} == set(ports)
            assert first.env["MASTER_PORT"] != second.env["MASTER_PORT"]


async def test_the_world_port_and_the_workloads_own_ports_differ(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = free_ports(2)
    pool = itertools.cycle(ports)
    monkeypatch.setattr(ledger, "candidate_port", lambda: next(pool))
    contract = Contract(cpus=1, workload=training(ports={"metrics": "auto"}))
    async with await Negotiator([backend]).acquire(contract) as lease:
        assert lease.world is not None
        metrics = int(lease.env["AICONTRACT_PORT_METRICS"])
        assert {metrics, lease.world.master_port} == set(ports)
        assert lease.endpoints == {"metrics": f"127.0.0.1:{metrics}"}


async def test_releasing_frees_the_rendezvous_port(
    backend: LocalBackend, local_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (only,) = free_ports(1)
    monkeypatch.setattr(ledger, "candidate_port", lambda: only)
    contract = Contract(cpus=1, workload=training())
    negotiator = Negotiator([backend])
    lease = await negotiator.acquire(contract)
    assert port_rows(local_env) == [str(only)]
    with pytest.raises(ac.NoOffer, match="rendezvous"):
        await negotiator.acquire(contract.with_(terms=Terms(start_by="0s")))
    await lease.release()
    assert port_rows(local_env) == []
    async with await negotiator.acquire(contract) as again:
        assert again.world is not None
        assert again.world.master_port == only


async def test_a_retried_commit_keeps_its_world(backend: LocalBackend) -> None:
    contract = Contract(cpus=1, workload=training(procs_per_node=2))
    (offer,) = (await backend.quote(contract)).offers
    first = await backend.commit(offer, "retry-key")
    try:
        again = await backend.commit(offer, "retry-key")
        assert again.world == first.world is not None
        assert again.env["MASTER_PORT"] == first.env["MASTER_PORT"]
    finally:
        await first.release()


async def test_a_launched_training_workload_is_not_waited_on_for_the_rendezvous(
    backend: LocalBackend,
) -> None:
    # Nothing binds MASTER_PORT until the launcher runs: readiness must not wait on it.
    contract = Contract(
        cpus=1,
        workload=training(command=[sys.executable, "-c", "import time; time.sleep(30)"]),
        terms=Terms(start_by="5s"),
    )
    async with await Negotiator([backend]).acquire(contract) as lease:
        assert lease.workload_state is not None
        assert lease.workload_state.value == "ready"
        assert lease.world is not None


# -- other processes see it ------------------------------------------------------------------


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


async def test_the_ledger_keeps_the_world_for_every_process(
    backend: LocalBackend, local_env: Path
) -> None:
    contract = Contract(name="ddp", cpus=2, workload=training(procs_per_node=2))
    async with await Negotiator([backend]).acquire(contract) as lease:
        (record,) = Ledger.in_dir(local_env).records()
        assert record.world == lease.world
        listed = await anyio.to_thread.run_sync(run, "leases", "--json")
        (row,) = json.loads(listed.stdout)
        assert World(**row["world"]) == lease.world
        assert lease.to_dict()["world"] == row["world"]


# -- the contract ----------------------------------------------------------------------------


def test_procs_per_node_in_a_document() -> None:
    contract = ac.loads("workload: {kind: training, procs_per_node: 2}", format="yaml")
    assert contract.workload is not None
    assert contract.workload.procs_per_node == 2
    assert ac.loads(ac.dumps(contract, format="json"), format="json") == contract


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("workload: {kind: training, procs_per_node: 0}", "outside 1..1024"),
        ("workload: {kind: training, procs_per_node: 5000}", "outside 1..1024"),
        ("workload: {procs_per_node: 2}", "training workloads only; this one's kind is batch"),
    ],
)
def test_procs_per_node_refusals_name_the_field(text: str, says: str) -> None:
    with pytest.raises(ContractError, match=r"\$\.workload\.procs_per_node") as caught:
        ac.loads(text, format="yaml")
    assert says in str(caught.value)


def test_torchrun_command_runs_the_script_in_the_world() -> None:
    world = World(master_addr="10.0.0.1", master_port=29500, nodes=2, procs_per_node=4)
    command = world.for_node(1).torchrun_command("train.py", "--epochs", "3")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:] == [
        "--nnodes=2",
        "--nproc-per-node=4",
        "--node-rank=1",
        "--master-addr=10.0.0.1",
        "--master-port=29500",
        "train.py",
        "--epochs",
        "3",
    ]
