"""What a backend that grants a gang (a lease on several nodes) hands its workload.

Every such backend names its nodes the same way (``host``, ``node-1``, ...) and
gives rank 0 the same launcher variables, from one :class:`~aicontract.World`.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..contract import Contract
from ..world import World

__all__ = [
    "DEFAULT_MASTER_PORT",
    "node_endpoints",
    "procs_per_node",
    "rendezvous_port",
    "world_env",
]

DEFAULT_MASTER_PORT = 29500
"""Where a gang meets when the workload names no ``master`` port (torchrun's default)."""


def rendezvous_port(contract: Contract, default: int = DEFAULT_MASTER_PORT) -> int:
    """The port a multi-node world meets at: the workload's ``master`` or ``rendezvous`` port."""
    ports = contract.workload.fixed_ports if contract.workload else {}
    return ports.get("master", ports.get("rendezvous", default))


def procs_per_node(contract: Contract, gpus_per_node: int) -> int:
    """Training processes on each node: one per granted GPU; on a CPU run, the
    workload's ``procs_per_node`` (default one), which share the node's CPUs."""
    if gpus_per_node:
        return gpus_per_node
    workload = contract.workload
    return (workload.procs_per_node if workload is not None else None) or 1


def node_endpoints(addresses: Sequence[str], contract: Contract) -> dict[str, str]:
    """A lease's endpoints on nodes at ``addresses``: ``host`` (rank 0), ``node-1``, ...,
    and each of the workload's ports on the host.
    """
    host = addresses[0]
    endpoints = {"host": host}
    for rank, address in enumerate(addresses[1:], start=1):
        endpoints[f"node-{rank}"] = address
    ports = contract.workload.ports if contract.workload else {}
    for port_name, port in sorted(ports.items()):
        endpoints[port_name] = f"{host}:{port}"
    return endpoints


def world_env(world: World, node_addresses: Sequence[str]) -> dict[str, str]:
    """The env rank 0 of a multi-node lease gets: the world's variables, ``WORLD_SIZE``
    (set here, for launchers that do not set it per process) and every node's address.
    """
    return {
        **world.env(),
        "WORLD_SIZE": str(world.size),
        "AICONTRACT_NODE_ADDRS": ",".join(node_addresses),
    }
