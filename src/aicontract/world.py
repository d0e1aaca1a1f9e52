"""The training world a lease carries: how many nodes, processes per node, this node's
rank, and the rendezvous endpoint every process meets at.

A lease for distributed training hands its workload the same facts ``torchrun``
(and most launchers) need: ``MASTER_ADDR``/``MASTER_PORT`` name the rendezvous,
granted by the backend like any other port, so two leases never share one.
"""

from __future__ import annotations

import sys

import msgspec

__all__ = ["World"]


class World(msgspec.Struct, frozen=True, kw_only=True):
    """Who takes part in a distributed run and where they meet.

    ``procs_per_node`` is one per granted GPU, or a count for CPU runs;
    ``node_rank`` is this node's place in ``0..nodes-1``.
    """

    master_addr: str
    master_port: int
    nodes: int = 1
    procs_per_node: int = 1
    node_rank: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.procs_per_node < 1:
            raise ValueError(
                f"a world needs at least one node and one process per node,"
                f" got {self.nodes} x {self.procs_per_node}"
            )
        if not 0 <= self.node_rank < self.nodes:
            raise ValueError(f"node_rank {self.node_rank} is outside 0..{self.nodes - 1}")
        if not 1 <= self.master_port <= 65535:
            raise ValueError(f"master_port {self.master_port} is outside 1..65535")

    @property
    def size(self) -> int:
        """Processes in the whole world: ``nodes * procs_per_node``."""
        return self.nodes * self.procs_per_node

    def for_node(self, rank: int) -> World:
        """The same world as seen from node ``rank``."""
        return msgspec.structs.replace(self, node_rank=rank)

    def env(self) -> dict[str, str]:
        """The variables a launcher reads: ``MASTER_ADDR``, ``MASTER_PORT``, ``NNODES``, ...

        ``WORLD_SIZE`` and ``RANK`` are left to the launcher, which sets them per process.
        """
        return {
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
            "NNODES": str(self.nodes),
            "NODE_RANK": str(self.node_rank),
            "NPROC_PER_NODE": str(self.procs_per_node),
        }

    def torchrun_args(self) -> list[str]:
        """``torchrun`` options that start this node's share of the world."""
        return [
            f"--nnodes={self.nodes}",
            f"--nproc-per-node={self.procs_per_node}",
            f"--node-rank={self.node_rank}",
            f"--master-addr={self.master_addr}",
            f"--master-port={self.master_port}",
        ]

    def torchrun_command(self, script: str, *args: str) -> list[str]:
        """The command that runs ``script ARGS`` under ``torchrun`` on this node's share.

        ``torchrun`` is started as ``python -m torch.distributed.run`` from this
        interpreter, so it is the PyTorch installed beside aicontract.
        """
        return [sys.executable, "-m", "torch.distributed.run", *self.torchrun_args(), script, *args]
