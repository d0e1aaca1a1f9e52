"""What a Slurm cluster has and what is free on it, read from slurmrestd's answers.

Nodes give CPUs, memory and GRES (``gpu:h100:4``: the GPU model is the GRES
type) with what is allocated now (``alloc_cpus``, ``alloc_memory``,
``gres_used``); partitions give their nodes, state and limits (max time, max
nodes per job); running jobs give when their resources come back (their
``end_time``), which is how a best-effort offer estimates its start; and
reservations give nodes booked for named users or accounts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from .api import expand_hostlist, number, states, text

__all__ = [
    "BAD_NODE_STATES",
    "JobView",
    "NodeView",
    "PartitionView",
    "ReservationView",
    "estimate_start",
    "job_views",
    "node_views",
    "parse_gres",
    "partition_views",
    "reservation_views",
]

BAD_NODE_STATES = frozenset(
    {
        "DOWN",
        "DRAIN",
        "DRAINED",
        "DRAINING",
        "FAIL",
        "FAILING",
        "NOT_RESPONDING",
        "NO_RESPOND",
        "POWERED_DOWN",
        "POWER_DOWN",
        "POWERING_DOWN",
        "REBOOT_REQUESTED",
        "REBOOT_ISSUED",
        "MAINTENANCE",
        "MAINT",
        "FUTURE",
        "UNKNOWN",
        "INVALID",
    }
)
"""Node states (and flags) in which a node takes no new work."""

_GRES_ITEM = re.compile(r"^(?P<name>[^:()]+)(?::(?P<type>[^:()]+))?(?::(?P<count>\d+))?")


def parse_gres(value: Any) -> dict[str, int]:
    """GPU counts per type from a GRES string: ``gpu:h100:4,gpu:a100:2(S:0-1)``.

    Also reads ``gres_used`` (``gpu:h100:2(IDX:0-1)``) and TRES forms
    (``gres/gpu:h100=2``). An untyped ``gpu:4`` counts under ``""``.
    """
    out: dict[str, int] = {}
    for item in re.split(r",(?![^(]*\))", text(value)):
        item = item.strip().removeprefix("gres/").removeprefix("gres:")
        if not item or item.upper() in ("(NULL)", "N/A"):
            continue
        item = item.replace("=", ":")
        match = _GRES_ITEM.match(item)
        if match is None or match["name"] != "gpu":
            continue
        kind, count = match["type"], match["count"]
        if count is None and kind is not None and kind.isdigit():
            kind, count = None, kind  # gpu:4
        out[kind or ""] = out.get(kind or "", 0) + int(count if count is not None else 1)
    return out


@attrs.frozen
class NodeView:
    """One node as a quote sees it."""

    name: str
    address: str
    hostname: str
    partitions: frozenset[str]
    state: frozenset[str]
    reason: str
    cpus: int
    alloc_cpus: int
    memory_mb: int
    alloc_memory_mb: int
    gpus: Mapping[str, int]
    gpus_used: Mapping[str, int]
    features: frozenset[str]

    @property
    def usable(self) -> bool:
        """True when the node takes new work (not down, drained, failing or powered off)."""
        return not (self.state & BAD_NODE_STATES)

    @property
    def why_not(self) -> str:
        """The node's state and Slurm's reason, for rejections and faults."""
        words = "+".join(sorted(self.state)) or "unknown state"
        return f"{words}" + (f" ({self.reason})" if self.reason else "")

    @property
    def reserved(self) -> bool:
        """True while an active reservation holds the node."""
        return "RESERVED" in self.state

    def free_gpus(self, kind: str) -> int:
        """GPUs of GRES type ``kind`` not allocated now."""
        return max(0, self.gpus.get(kind, 0) - self.gpus_used.get(kind, 0))

    @property
    def free_cpus(self) -> int:
        """CPUs not allocated now."""
        return max(0, self.cpus - self.alloc_cpus)

    @property
    def free_memory_mb(self) -> int:
        """Memory (MB) not allocated now."""
        return max(0, self.memory_mb - self.alloc_memory_mb)


def node_views(nodes: Iterable[Mapping[str, Any]]) -> list[NodeView]:
    """Every node in the answer of ``GET /nodes``."""
    views = []
    for node in nodes:
        state = states(node.get("state")) | states(node.get("state_flags"))
        views.append(
            NodeView(
                name=str(node.get("name")),
                address=str(node.get("address") or node.get("name")),
                hostname=str(node.get("hostname") or node.get("name")),
                partitions=frozenset(str(p) for p in node.get("partitions") or ()),
                state=state,
                reason=str(node.get("reason") or ""),
                cpus=number(node.get("cpus")) or 0,
                alloc_cpus=number(node.get("alloc_cpus")) or 0,
                memory_mb=number(node.get("real_memory")) or 0,
                alloc_memory_mb=number(node.get("alloc_memory")) or 0,
                gpus=parse_gres(node.get("gres")),
                gpus_used=parse_gres(node.get("gres_used")),
                features=frozenset(
                    f
                    for f in text(node.get("active_features") or node.get("features")).split(",")
                    if f
                ),
            )
        )
    return views


@attrs.frozen
class PartitionView:
    """One partition: state and the limits a job must fit."""

    name: str
    up: bool
    default: bool
    max_time_minutes: int | None
    max_nodes: int | None
    preemption: frozenset[str]
    priority_tier: int
    nodes: frozenset[str]

    def holds(self, node: NodeView) -> bool:
        """True when ``node`` belongs to this partition.

        The partition's own node list decides: 22.05's ``/nodes`` lists every
        partition on a node that shares a host with another node.
        """
        if self.nodes:
            return node.name in self.nodes
        return self.name in node.partitions


def partition_views(partitions: Iterable[Mapping[str, Any]]) -> list[PartitionView]:
    """Every partition in the answer of ``GET /partitions``."""
    views = []
    for part in partitions:
        max_nodes = number(part.get("maximum_nodes_per_job"))
        limits = part.get("maximums") or {}
        if max_nodes is None and isinstance(limits, Mapping):
            max_nodes = number(limits.get("nodes"))
        max_time = number(part.get("max_time_limit"))
        if max_time is None and isinstance(limits, Mapping):
            max_time = number(limits.get("time"))
        state = states(part.get("state") or (part.get("partition") or {}).get("state"))
        flags = states(part.get("flags"))
        views.append(
            PartitionView(
                name=str(part.get("name")),
                up="UP" in state,
                default="DEFAULT" in flags,
                max_time_minutes=max_time if max_time is not None and max_time >= 0 else None,
                max_nodes=max_nodes if max_nodes is not None and max_nodes > 0 else None,
                preemption=states(part.get("preemption_mode")),
                priority_tier=number(part.get("priority_tier")) or 0,
                nodes=frozenset(expand_hostlist(text(_nodes_of(part)))),
            )
        )
    return views


def _nodes_of(part: Mapping[str, Any]) -> Any:
    nodes = part.get("nodes")
    if isinstance(nodes, Mapping):  # v0.0.40+: {"configured": "node[1-2]", ...}
        return nodes.get("configured") or nodes.get("total") or ""
    return nodes


@attrs.frozen
class JobView:
    """One job, as quote, commit and observe read it."""

    id: int
    name: str
    comment: str
    state: frozenset[str]
    reason: str
    nodes: tuple[str, ...]
    start_time: int | None
    end_time: int | None
    time_limit_minutes: int | None
    partition: str
    gpus_per_node: Mapping[str, int]
    cpus_by_node: Mapping[str, int]
    memory_by_node: Mapping[str, int]
    exit_code: int | None
    user: str = ""
    """Whose job it is (``user_name``; empty where the answer does not say)."""

    @property
    def running(self) -> bool:
        """True while the job holds its allocation and runs."""
        return "RUNNING" in self.state

    @property
    def pending(self) -> bool:
        """True while the job waits for resources."""
        return "PENDING" in self.state

    @property
    def finished(self) -> bool:
        """True once the job ended and gave everything back."""
        return not (self.state & {"RUNNING", "PENDING", "SUSPENDED", "COMPLETING", "CONFIGURING"})


def job_views(jobs: Iterable[Mapping[str, Any]]) -> list[JobView]:
    """Every job in the answer of ``GET /jobs`` (or ``GET /job/{id}``)."""
    views = []
    for job in jobs:
        nodes = tuple(expand_hostlist(text(job.get("nodes")))) if job.get("nodes") else ()
        resources = job.get("job_resources") or {}
        cpus: dict[str, int] = {}
        memory: dict[str, int] = {}
        allocated = resources.get("allocated_nodes") or resources.get("nodes") or []
        if isinstance(allocated, Mapping):  # v0.0.40+: {"count":.., "list":.., "allocation": [..]}
            allocated = allocated.get("allocation") or []
        for entry in allocated if isinstance(allocated, list) else []:
            if not isinstance(entry, Mapping):
                continue
            name = str(entry.get("nodename") or entry.get("name") or "")
            cores = 0
            for socket in (
                (entry.get("sockets") or {}).values()
                if isinstance(entry.get("sockets"), Mapping)
                else []
            ):
                cores += len((socket or {}).get("cores") or {})
            cpus[name] = number(entry.get("cpus")) or cores
            memory[name] = (
                number(entry.get("memory_allocated"))
                or number(
                    (entry.get("memory") or {}).get("allocated")
                    if isinstance(entry.get("memory"), Mapping)
                    else None
                )
                or 0
            )
        per_node = parse_gres(job.get("tres_per_node"))
        exit_code = job.get("exit_code")
        if isinstance(exit_code, Mapping):  # v0.0.40+: {"status": [...], "return_code": {...}}
            exit_code = exit_code.get("return_code")
        views.append(
            JobView(
                id=number(job.get("job_id")) or 0,
                name=str(job.get("name") or ""),
                comment=str(job.get("comment") or ""),
                state=states(job.get("job_state")),
                reason=str(job.get("state_reason") or ""),
                nodes=nodes,
                start_time=number(job.get("start_time")),
                end_time=number(job.get("end_time")),
                time_limit_minutes=number(job.get("time_limit")),
                partition=str(job.get("partition") or ""),
                gpus_per_node=per_node,
                cpus_by_node=cpus,
                memory_by_node=memory,
                exit_code=number(exit_code),
                user=str(job.get("user_name") or ""),
            )
        )
    return views


@attrs.frozen
class ReservationView:
    """One reservation: when, which nodes, for whom."""

    name: str
    nodes: tuple[str, ...]
    users: frozenset[str]
    accounts: frozenset[str]
    partition: str
    start_time: int | None
    end_time: int | None

    def usable_by(self, user: str | None, account: str | None) -> bool:
        """True when ``user`` (or ``account``) may run jobs in the reservation."""
        if user is not None and user in self.users:
            return True
        return account is not None and account in self.accounts


def reservation_views(reservations: Iterable[Mapping[str, Any]]) -> list[ReservationView]:
    """Every reservation in the answer of ``GET /reservations``."""
    views = []
    for resv in reservations:

        def names(value: Any) -> frozenset[str]:
            return frozenset(
                n.strip().lstrip("-") for n in text(value).split(",") if n.strip() and n[0] != "-"
            )

        views.append(
            ReservationView(
                name=str(resv.get("name")),
                nodes=tuple(expand_hostlist(text(resv.get("node_list")))),
                users=names(resv.get("users")),
                accounts=names(resv.get("accounts")),
                partition=str(resv.get("partition") or ""),
                start_time=number(resv.get("start_time")),
                end_time=number(resv.get("end_time")),
            )
        )
    return views


def estimate_start(
    candidates: Sequence[NodeView],
    jobs: Sequence[JobView],
    *,
    kind: str,
    gpus: int,
    cpus: int,
    memory_mb: int,
    count: int,
    now: float,
) -> float | None:
    """Seconds until ``count`` of ``candidates`` could each give the per-node need.

    Running jobs hand their resources back at their ``end_time`` (their time
    limit); the estimate ignores jobs queued ahead, so it is a lower bound —
    the scheduler's own answer for a submitted job is its ``start_time``.
    ``None`` when even an empty node could not.
    """
    ready_at: list[float] = []
    for node in candidates:
        if (
            node.gpus.get(kind, 0) < gpus
            or node.cpus < cpus
            or node.memory_mb < memory_mb
            or not node.usable
        ):
            continue
        free_gpus, free_cpus, free_mem = node.free_gpus(kind), node.free_cpus, node.free_memory_mb
        when = now
        ending = sorted(
            (j for j in jobs if j.running and node.name in j.nodes),
            key=lambda j: j.end_time or 0,
        )
        for job in ending:
            if free_gpus >= gpus and free_cpus >= cpus and free_mem >= memory_mb:
                break
            free_gpus += job.gpus_per_node.get(kind, 0)
            free_cpus += job.cpus_by_node.get(node.name, 0)
            free_mem += job.memory_by_node.get(node.name, 0)
            when = max(when, float(job.end_time or now))
        if free_gpus >= gpus and free_cpus >= cpus and free_mem >= memory_mb:
            ready_at.append(when)
    if len(ready_at) < count:
        return None
    return max(0.0, sorted(ready_at)[count - 1] - now)
