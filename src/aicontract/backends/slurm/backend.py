"""The Slurm backend: a lease is a batch job holding an allocation, through slurmrestd.

Quote reads nodes, partitions, reservations (and, for a start estimate,
running jobs); commit submits a job with the contract's GRES, CPUs, memory,
node count and time limit, named after the idempotency key, and returns once
Slurm runs it; renew checks it still runs (and asks for a longer time limit
when the lease was extended); release cancels it and waits until it is gone;
observe turns preemption, node failure, drained or down nodes and job failure
into faults. See ``docs/backends/slurm.md``.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shlex
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import anyio
import attrs
import msgspec

from ...clock import Clock, system_clock
from ...contract import Contract, GuaranteeLevel
from ...errors import (
    CapacityUnavailable,
    ConfigError,
    LeaseLost,
    QuotaExceeded,
    TransientBackendError,
)
from ...governance.identity import Identity, local_identity, unix_user_identity
from ...gpu_models import compute_capability_of, pick_model
from ...leases import Lease, WorkloadState
from ...observation import Fault, Observation
from ...offer import Grant, Offer, Quote, Rejection, check_offer, summarise_rejections
from ...units import Bytes, CountRange, Duration, Money
from ...world import World
from ..base import (
    Backend,
    fixed_ports_only,
    granted_lease,
    key_name,
    lease_env,
    offer_details,
    rank_env,
)
from ..gang import (
    DEFAULT_MASTER_PORT,
    node_endpoints,
    procs_per_node,
    rendezvous_port,
    world_env,
)
from ..http import retry_until
from .api import SlurmAPI, SlurmError
from .quote import (
    BAD_NODE_STATES,
    JobView,
    NodeView,
    PartitionView,
    ReservationView,
    estimate_start,
    job_views,
    node_views,
    partition_views,
    reservation_views,
)

__all__ = ["SlurmBackend", "job_name", "node_env"]

log = logging.getLogger("aicontract.slurm")
_T = TypeVar("_T")

MIB = 2**20
# Pending reasons that no amount of waiting cures: fail the commit at once.
HOPELESS_REASONS = frozenset(
    {
        "PartitionTimeLimit",
        "PartitionNodeLimit",
        "PartitionConfig",
        "BadConstraints",
        "InvalidAccount",
        "InvalidQOS",
        "AccountNotAllowed",
        "QOSNotAllowed",
        "ReqNodeNotAvail, UnavailableNodes",
        "ReservationNotUsable",
    }
)


def job_name(idempotency_key: str) -> str:
    """The job name (and lease id) a commit under ``idempotency_key`` uses: stable, short."""
    return key_name(idempotency_key, prefix="aic", longest=48, keep=24, digest=16)


def _comment(idempotency_key: str) -> str:
    return f"aicontract key={idempotency_key}"


def node_env(lease: Lease, rank: int) -> dict[str, str]:
    """The env for node ``rank`` of a Slurm lease (``lease.env`` is rank 0's)."""
    return rank_env(lease, rank, int(lease.env.get("NNODES", "1")))


@attrs.frozen
class _Shape:
    """What one job asks of each node, and how many nodes."""

    nodes: int
    gpus: int
    cpus: int
    memory_mb: int


@attrs.define(eq=False)
class SlurmBackend(Backend):
    """Leases on a Slurm cluster: each is a batch job that holds the contract's allocation.

    ``url`` is slurmrestd's address (``http://host:6820``, or ``unix:///path`` for a
    local socket with ``rest_auth/local``); default ``$SLURMRESTD_URL``. ``token``
    (default ``$SLURM_JWT``, else ``scontrol token``) and ``user`` authenticate.
    ``partitions`` limits which partitions are offered (default: every partition
    that is up); ``account``, ``qos`` and ``constraint`` go on every job. The
    cluster is in one place: ``region`` and ``jurisdiction``. ``price_per_gpu_hour``
    (and ``gpu_prices`` per GRES type) price offers when the site charges; unset,
    offers cost nothing. ``gpu_models`` names the product behind a GRES type
    (``{"h100": "H100-80GB"}``; default: the type upper-cased) and ``gpu_memory``
    its memory. ``preemptible_partitions`` names partitions whose jobs another
    partition may preempt (slurmrestd does not show ``PreemptType``); their offers
    say ``preemptible``.
    """

    name = "slurm"

    url: str | None = None
    token: str | None = attrs.field(default=None, repr=False)
    user: str | None = None
    version: str | None = None
    partitions: Sequence[str] = ()
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    region: str = "on-prem"
    jurisdiction: str | None = None
    provider: str = "slurm"
    price_per_gpu_hour: str | None = None
    gpu_prices: Mapping[str, str] = attrs.field(factory=dict)
    gpu_models: Mapping[str, str] = attrs.field(factory=dict)
    gpu_memory: Mapping[str, str] = attrs.field(factory=dict)
    default_cpus: int = 1
    default_memory: Bytes = attrs.field(default=Bytes("1GiB"), converter=Bytes)
    default_time: Duration = attrs.field(default=Duration("1h"), converter=Duration)
    max_nodes: int = 8
    use_reservations: bool = True
    preemptible_partitions: Sequence[str] = ()
    lease_ttl: float = 60.0
    offer_ttl: float = 15.0
    schedule_timeout: float = 30.0
    release_timeout: float = 60.0
    poll_interval: float = 0.2
    poll_max: float = 2.0
    workdir: str = "/tmp"
    output: str = "/dev/null"
    master_port: int = DEFAULT_MASTER_PORT
    clock: Clock = system_clock
    api: SlurmAPI | None = attrs.field(default=None, repr=False)
    _leases: dict[str, Lease] = attrs.field(factory=dict, init=False, repr=False)
    _key_locks: dict[str, anyio.Lock] = attrs.field(factory=dict, init=False, repr=False)

    # -- plumbing ------------------------------------------------------------------------

    @property
    def rest(self) -> SlurmAPI:
        """The slurmrestd client (built from the options on first use)."""
        if self.api is None:
            url = self.url or os.environ.get("SLURMRESTD_URL")
            if not url:
                raise ConfigError(
                    "the slurm backend needs slurmrestd's address: pass url= or set"
                    " SLURMRESTD_URL (http://host:6820 or unix:///path/to/socket)"
                )
            self.api = SlurmAPI(
                url, user=self.user, token=self.token, version=self.version, backend=self.name
            )
        return self.api

    @property
    def _user(self) -> str | None:
        return self.rest.user

    def _product(self, kind: str) -> str:
        return self.gpu_models.get(kind) or kind.upper() or "GPU"

    def _price(self, kind: str | None, gpus: int, contract: Contract) -> Money:
        text = self.gpu_prices.get(kind or "") or self.price_per_gpu_hour
        if text is None:
            # A site that does not charge: free, in the currency the contract counts in.
            return Money.per_hour(0, contract.terms.currency)
        per_gpu = Money(text)
        return Money.per_hour(per_gpu.amount * max(1, gpus), per_gpu.currency)

    # -- quoting -------------------------------------------------------------------------

    def _summarise(self, problems: Mapping[str, list[Rejection]]) -> list[Rejection]:
        """One rejection per requirement, listing what the cluster has instead."""
        return summarise_rejections(self.name, problems, most=6, sep="; ", last="; and ")

    async def quote(self, contract: Contract) -> Quote:
        """Offers per partition and GPU type: ``allocated`` when free now, else ``best-effort``
        with an estimated start; ``reserved`` inside a reservation the user may use."""
        refused = fixed_ports_only(self.name, contract)
        if refused is not None:
            return refused
        api = self.rest
        nodes = node_views(await api.nodes())
        parts = partition_views(await api.partitions())
        reservations = reservation_views(await api.reservations()) if self.use_reservations else []
        jobs: list[JobView] | None = None
        now = self.clock.time()
        problems: dict[str, list[Rejection]] = {}
        offers: list[Offer] = []
        counter: list[Offer] = []
        wider: list[tuple[int, int]] = []

        def reject(requirement: str, wanted: str, available: str) -> None:
            problems.setdefault(requirement, []).append(
                Rejection.of(self.name, requirement, wanted, available)
            )

        misfits = contract.placement.misfits(
            region=self.region, jurisdiction=self.jurisdiction, provider=self.provider
        )
        if misfits:
            for requirement, wanted, found in misfits:
                reject(requirement, wanted, found)
            return Quote(rejections=tuple(self._summarise(problems)))
        if contract.placement.isolation == "dedicated-host":
            reject(
                "placement.isolation",
                "dedicated-host",
                "whole nodes (exclusive jobs), not hosts: slurmd nodes may share a host",
            )
            return Quote(rejections=tuple(self._summarise(problems)))
        wanted_parts = list(self.partitions) or [p.name for p in parts]
        by_name = {p.name: p for p in parts}
        for part_name in wanted_parts:
            part = by_name.get(part_name)
            if part is None:
                reject("partition", part_name, f"no such partition ({', '.join(by_name)})")
                continue
            if not part.up:
                reject("partition", f"{part_name} up", f"{part_name} is not up")
                continue
            minutes = self._minutes(contract, part)
            if isinstance(minutes, str):
                reject("terms.duration", str(contract.terms.duration), minutes)
                continue
            members = [n for n in nodes if part.holds(n)]
            for kind, model in self._kinds(contract, members, reject):
                shape = self._shape(contract, part, members, kind, reject, wider)
                if shape is None:
                    continue
                choices: list[tuple[GuaranteeLevel, float, Sequence[NodeView], str | None]] = []
                open_nodes = [n for n in members if not n.reserved]
                free = self._free(open_nodes, shape, kind, contract)
                if len(free) >= shape.nodes:
                    choices.append(("allocated", 0.0, free, None))
                else:
                    if jobs is None:
                        jobs = job_views(await api.jobs())
                    start = estimate_start(
                        [n for n in open_nodes if self._exclusive_ok(n, contract, idle=False)],
                        jobs,
                        kind=kind or "",
                        gpus=shape.gpus,
                        cpus=shape.cpus,
                        memory_mb=shape.memory_mb,
                        count=shape.nodes,
                        now=now,
                    )
                    if start is not None:
                        choices.append(("best-effort", start, open_nodes, None))
                    else:
                        usable = sum(1 for n in open_nodes if n.usable)
                        reject(
                            "capacity",
                            f"{shape.nodes} node(s) with {self._need(shape, kind)}",
                            f"{usable} usable node(s) in {part.name}; "
                            + "; ".join(f"{n.name}: {n.why_not}" for n in members if not n.usable)[
                                :300
                            ],
                        )
                for resv in reservations:
                    inside = self._in_reservation(resv, part, members, shape, kind, contract, now)
                    if isinstance(inside, str):
                        if inside:
                            reject("reservation", resv.name, inside)
                        continue
                    choices.append(inside)
                for guarantee, start_in, candidates, resv_name in choices:
                    offer = self._offer(
                        contract,
                        part,
                        kind,
                        model,
                        shape,
                        minutes,
                        guarantee,
                        start_in,
                        candidates,
                        resv_name,
                        now,
                    )
                    found_problems = check_offer(offer, contract, now)
                    if not found_problems:
                        offers.append(offer)
                        continue
                    for rejection in found_problems:
                        problems.setdefault(rejection.requirement, []).append(rejection)
                    if all(r.requirement == "terms.start_by" for r in found_problems):
                        counter.append(_relaxed(offer))
        if offers:
            return Quote(offers=tuple(offers), counter_offers=tuple(counter))
        if wider:
            counter += await self._wider(contract, wider)
        if not problems:
            reject("partition", "a partition", "none configured or found")
        return Quote(rejections=tuple(self._summarise(problems)), counter_offers=tuple(counter))

    def _minutes(self, contract: Contract, part: PartitionView) -> int | str:
        """The job's time limit in minutes, or why the partition does not allow it."""
        duration = contract.terms.duration
        limit = part.max_time_minutes
        if duration is None:
            minutes = math.ceil(self.default_time.seconds / 60)
            return minutes if limit is None else min(minutes, limit)
        minutes = max(1, math.ceil(duration.seconds / 60))
        if limit is not None and minutes > limit:
            return f"partition {part.name} allows at most {_hms(limit)}"
        return minutes

    def _kinds(
        self, contract: Contract, members: Sequence[NodeView], reject: Any
    ) -> list[tuple[str | None, str | None]]:
        """Each GRES type the contract accepts on these nodes, with its contract model name."""
        gpus = contract.resources.gpus
        if gpus is None:
            return [(None, None)]
        kinds = sorted({k for n in members for k, c in n.gpus.items() if c > 0})
        if not kinds:
            reject("resources.gpus", f"{gpus.count} x GPU", "no GPU GRES on these nodes")
            return []
        out: list[tuple[str | None, str | None]] = []
        for kind in kinds:
            model = pick_model(gpus.models, self._product(kind))
            if model is None:
                reject("resources.gpus.models", "/".join(gpus.models), self._product(kind))
                continue
            out.append((kind, model))
        order = {m: i for i, m in enumerate(gpus.models)}
        out.sort(key=lambda km: order.get(km[1] or "", len(order)))
        return out

    def _shape(
        self,
        contract: Contract,
        part: PartitionView,
        members: Sequence[NodeView],
        kind: str | None,
        reject: Any,
        wider: list[tuple[int, int]],
    ) -> _Shape | None:
        """Nodes and per-node GPUs/CPUs/memory for the contract on this partition.

        ``resources.nodes`` nodes (one by default), each given the contract's GPUs,
        CPUs and memory: what one job's ``--nodes``/``--gres`` per node hold. A GPU
        count no node holds is refused; when the count would fit spread over several
        nodes, ``(nodes, GPUs per node)`` is added to ``wider``, for a counter-offer
        (such a job runs on several nodes, so it never grants ``nodes: 1``).
        """
        res = contract.resources
        holders = [n for n in members if kind is None or n.gpus.get(kind, 0) > 0]
        if not holders:
            return None
        most_nodes = min(self.max_nodes, part.max_nodes or self.max_nodes, len(holders))
        if res.nodes > most_nodes:
            reject(
                "resources.nodes",
                f"{res.nodes} nodes",
                f"at most {most_nodes} node(s) in {part.name}"
                + (f" with gpu:{kind}" if kind else ""),
            )
            return None
        per_gpus = 0
        if res.gpus is not None and kind is not None:
            cap = max(n.gpus.get(kind, 0) for n in holders)
            count = res.gpus.count
            granted = count.grant(cap)
            if granted is None:
                if res.nodes == 1:
                    spread = _spread(count, cap, most_nodes)
                    if spread is not None:
                        wider.append(spread)
                    hint = (
                        f"; {spread[0]} nodes x {spread[1]} would hold them"
                        f" (resources.nodes: {spread[0]}, gpus: {spread[1]} per node)"
                        if spread is not None
                        else ""
                    )
                    reject(
                        "resources.gpus.count",
                        f"{count} x {self._product(kind)} on one node",
                        f"at most {cap} per node in {part.name}{hint}",
                    )
                else:
                    reject(
                        "resources.gpus.count",
                        f"{count} x {self._product(kind)} per node",
                        f"at most {cap} per node in {part.name}",
                    )
                return None
            per_gpus = int(granted)
        cap_cpus = max(n.cpus for n in holders)
        per_cpus = self.default_cpus
        if res.cpus is not None:
            cpus = res.cpus.grant(cap_cpus)
            if cpus is None:
                reject("resources.cpus", f"{res.cpus} per node", f"{cap_cpus} per node")
                return None
            per_cpus = int(cpus)
        cap_mb = max(n.memory_mb for n in holders)
        per_mb = max(1, self.default_memory.bytes // MIB)
        if res.memory is not None:
            memory = res.memory.grant(Bytes(cap_mb * MIB))
            if memory is None:
                reject("resources.memory", f"{res.memory} per node", f"{cap_mb} MB per node")
                return None
            per_mb = -(-memory.bytes // MIB)
        if res.disk is not None:
            reject("resources.disk", str(res.disk), "Slurm nodes do not say (TmpDisk is not read)")
            return None
        return _Shape(nodes=res.nodes, gpus=per_gpus, cpus=per_cpus, memory_mb=per_mb)

    async def _wider(self, contract: Contract, wider: Sequence[tuple[int, int]]) -> list[Offer]:
        """Counter-offers for a GPU count no one node holds: the same GPUs as a gang of
        ``nodes`` nodes with ``per`` GPUs each, quoted afresh, each saying what it relaxed."""
        res, gpus = contract.resources, contract.resources.gpus
        assert gpus is not None
        out: list[Offer] = []
        for nodes, per in sorted(set(wider)):
            gang = msgspec.structs.replace(
                res, nodes=nodes, gpus=msgspec.structs.replace(gpus, count=CountRange(per))
            )
            relaxed = (
                f"resources.nodes 1 -> {nodes}; resources.gpus.count {gpus.count} -> {per} per node"
            )
            quote = await self.quote(contract.with_(resources=gang))
            for offer in (*quote.offers, *quote.counter_offers):
                earlier = offer.details.get("relaxed")
                what = f"{relaxed}; {earlier}" if earlier else relaxed
                out.append(
                    msgspec.structs.replace(offer, details={**offer.details, "relaxed": what})
                )
            if out:
                break  # the fewest nodes that can be had is the closest to the contract
        return out

    def _exclusive_ok(self, node: NodeView, contract: Contract, *, idle: bool) -> bool:
        if contract.placement.isolation != "dedicated-node" or not idle:
            return True
        return node.alloc_cpus == 0 and not any(node.gpus_used.values())

    def _free(
        self, nodes: Sequence[NodeView], shape: _Shape, kind: str | None, contract: Contract
    ) -> list[NodeView]:
        return [
            n
            for n in nodes
            if n.usable
            and (kind is None or n.free_gpus(kind) >= shape.gpus)
            and n.free_cpus >= shape.cpus
            and n.free_memory_mb >= shape.memory_mb
            and self._exclusive_ok(n, contract, idle=True)
        ]

    def _need(self, shape: _Shape, kind: str | None) -> str:
        gpus = f"{shape.gpus} x gpu:{kind}, " if kind else ""
        return f"{gpus}{shape.cpus} CPUs, {shape.memory_mb} MB each"

    def _in_reservation(
        self,
        resv: ReservationView,
        part: PartitionView,
        members: Sequence[NodeView],
        shape: _Shape,
        kind: str | None,
        contract: Contract,
        now: float,
    ) -> tuple[GuaranteeLevel, float, Sequence[NodeView], str | None] | str:
        """A ``reserved`` choice inside ``resv``, or why not ("" when it does not concern us)."""
        if not resv.usable_by(self._user, self.account):
            return ""
        if resv.partition and resv.partition != part.name:
            return ""
        inside = [n for n in members if n.name in resv.nodes]
        if not inside:
            return ""
        start = float(resv.start_time or now)
        end = float(resv.end_time) if resv.end_time else math.inf
        duration = contract.terms.duration
        if end <= now or (duration is not None and max(start, now) + duration.seconds > end):
            return f"ends at {end:.0f}, before the contract's {duration} would"
        free = self._free(inside, shape, kind, contract)
        if len(free) < shape.nodes:
            return f"{len(free)} of its nodes can take {self._need(shape, kind)}"
        return ("reserved", max(0.0, start - now), free, resv.name)

    def _offer(
        self,
        contract: Contract,
        part: PartitionView,
        kind: str | None,
        model: str | None,
        shape: _Shape,
        minutes: int,
        guarantee: GuaranteeLevel,
        start_in: float,
        candidates: Sequence[NodeView],
        reservation: str | None,
        now: float,
    ) -> Offer:
        gpus = shape.gpus * shape.nodes
        memory = self.gpu_memory.get(kind or "")
        # The grant is per node, Grant.nodes of them: what the job holds on each.
        grant = Grant(
            gpus=shape.gpus,
            gpu_model=model if gpus else None,
            gpu_memory=Bytes(memory) if memory and gpus else None,
            gpu_compute_capability=compute_capability_of(self._product(kind))
            if kind and gpus
            else None,
            cpus=shape.cpus,
            memory=Bytes(shape.memory_mb * MIB),
            nodes=shape.nodes,
        )
        details = {
            "partition": part.name,
            "nodes": str(shape.nodes),
            "gpus_per_node": str(shape.gpus),
            "cpus_per_node": str(shape.cpus),
            "memory_mb_per_node": str(shape.memory_mb),
            "time_limit": str(minutes),
            "candidates": ",".join(n.name for n in candidates[:16]),
        }
        if kind:
            details["gres_type"] = kind
        if reservation:
            details["reservation"] = reservation
        if contract.placement.isolation == "dedicated-node":
            details["exclusive"] = "1"
        ident = "|".join([self.name, part.name, kind or "", guarantee, reservation or ""])
        return Offer(
            id=f"slurm-{hashlib.sha256(ident.encode()).hexdigest()[:12]}",
            backend=self.name,
            contract=contract,
            grant=grant,
            guarantee=guarantee,
            region=self.region,
            jurisdiction=self.jurisdiction,
            provider=self.provider,
            isolation="dedicated-node"
            if contract.placement.isolation == "dedicated-node"
            else "shared",
            price=self._price(kind, gpus, contract),
            expires_at=now + self.offer_ttl,
            start_in=start_in,
            preemptible=part.name in self.preemptible_partitions
            or bool(part.preemption & {"CANCEL", "REQUEUE", "SUSPEND"}),
            details=details,
        )

    # -- committing ----------------------------------------------------------------------

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        """Submit the job (or find the one a previous attempt submitted) and wait until it runs."""
        self._refuse_foreign(offer)
        lock = self._key_locks.setdefault(idempotency_key, anyio.Lock())
        async with lock:
            held = self._leases.get(idempotency_key)
            if held is not None and not held.state.is_final:
                return held
            name = job_name(idempotency_key)
            start_by = offer.contract.terms.start_by
            deadline = anyio.current_time() + (
                start_by.seconds if start_by is not None else self.schedule_timeout
            )
            job = await self._retrying(deadline, self._find_job, name, idempotency_key)
            job_id = job.id if job is not None else None
            try:
                if job_id is None:
                    job_id = await self._submit(offer, name, idempotency_key, deadline)
                    job_id = await self._one_job(name, idempotency_key, job_id, deadline)
                else:
                    log.info("slurm: found job %s already submitted as %s", job_id, name)
                running = await self._wait_running(job_id, deadline)
                lease = await self._retrying(
                    deadline, self._lease, offer, idempotency_key, name, running
                )
            except BaseException as failure:
                with anyio.CancelScope(shield=True):
                    await self._undo_commit(name, idempotency_key, job_id, failure)
                raise
            self._leases[idempotency_key] = lease
            return lease

    async def _retrying(
        self, deadline: float, call: Callable[..., Awaitable[_T]], *args: Any
    ) -> _T:
        """``call(*args)``, again after a transient error, until ``deadline``: slurmctld
        restarting (an upgrade, a failover) leaves slurmrestd without answers for seconds."""
        return await retry_until(
            deadline, call, *args, backend="slurm", first=self.poll_interval, most=self.poll_max
        )

    async def _submit(self, offer: Offer, name: str, key: str, deadline: float) -> int:
        """Submit the job once: after a transient failure, the job is looked for by name
        (the submit may have reached slurmctld) before it is submitted again."""
        wait = self.poll_interval
        while True:
            try:
                job_id = await self.rest.submit(*self._job(offer, name, key))
            except TransientBackendError as exc:
                if anyio.current_time() + wait >= deadline:
                    raise
                log.info("slurm: submitting %s: %s; retrying in %.1fs", name, exc, wait)
                await anyio.sleep(wait)
                wait = min(self.poll_max, wait * 2)
                found = await self._retrying(deadline, self._find_job, name, key)
                if found is None:
                    continue
                job_id = found.id
            log.info("slurm: submitted job %s for %s", job_id, name)
            return job_id

    async def _one_job(self, name: str, key: str, ours: int, deadline: float) -> int:
        """The one job of ``key``: the lowest id of those live, ours cancelled if not it.

        Another process committing the same key at the same instant may have looked,
        found nothing and submitted too. Slurm numbers jobs in the order it takes them,
        so the lowest id was there for every later submit's look: each commit keeps it,
        and only it, whichever looks first.
        """
        jobs = await self._retrying(deadline, self._find_jobs, name, key)
        first = min((j.id for j in jobs), default=ours)
        if first < ours:
            log.info("slurm: job %s of %s was there first; cancelling ours, %s", first, name, ours)
            await self._retrying(deadline, self._cancel_and_wait, ours, deadline)
            return first
        return ours

    async def _undo_commit(
        self, name: str, key: str, job_id: int | None, failure: BaseException
    ) -> None:
        """Cancel what a failed commit submitted; never raises in place of ``failure``.

        The undo talks to slurmrestd too and may fail its own way (an expired token,
        the daemon gone): that is logged and noted on ``failure``, which the caller
        raises, since it is what says why the commit failed.
        """
        step = f"look for job {name}"
        until = anyio.current_time() + self.release_timeout
        try:
            with anyio.move_on_after(self.release_timeout):
                if job_id is None:
                    # The submit may have reached slurmctld with its answer lost (a
                    # cancel, a timeout): the job is found by its name, or none was made.
                    job = await self._retrying(until, self._find_job, name, key)
                    job_id = job.id if job is not None else None
                if job_id is not None:
                    step = f"cancel job {job_id}"
                    await self._retrying(until, self._cancel_and_wait, job_id, until)
        except Exception as exc:
            note = f"then, undoing the commit, could not {step}: {exc}"
            log.warning("slurm: after a failed commit (%s), could not %s: %s", failure, step, exc)
            add_note = getattr(failure, "add_note", None)  # Python 3.11+
            if add_note is not None:
                add_note(note)
            elif failure.__context__ is None:
                failure.__context__ = exc

    async def _find_job(self, name: str, key: str) -> JobView | None:
        """The live job a commit under ``key`` submitted before (a retry finds it); of
        several (two processes submitted at once), the first Slurm took."""
        return min(await self._find_jobs(name, key), key=lambda j: j.id, default=None)

    async def _find_jobs(self, name: str, key: str) -> list[JobView]:
        """Every live job submitted under ``key`` by the user this backend acts as.

        Keys are the callers' words: another user may have picked the same one, and
        that user's job is never ours to take (nor to cancel ours for).
        """
        owner = self._owner
        return [
            job
            for job in job_views(await self.rest.jobs())
            if job.name == name
            and job.comment == _comment(key)
            and not job.finished
            and (not job.user or job.user == owner)
        ]

    @property
    def _owner(self) -> str:
        """The user jobs are submitted as: the JWT's, else (a unix socket) this process's."""
        return self.rest.user or local_identity().name

    def _job(self, offer: Offer, name: str, key: str) -> tuple[dict[str, Any], str]:
        """The job description and batch script for ``offer``."""
        contract, details = offer.contract, offer.details
        nodes = int(details.get("nodes", "1"))
        workload = contract.workload
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", **lease_env(contract, name)}
        job: dict[str, Any] = {
            "name": name,
            "comment": _comment(key),
            "partition": details["partition"],
            "time_limit": int(details.get("time_limit", "60")),
            # A node count as text: 22.05 reads the documented [min, max] list as one node.
            "nodes": str(nodes),
            "tasks_per_node": 1,
            "cpus_per_task": int(details.get("cpus_per_node", "1")),
            "memory_per_node": int(details.get("memory_mb_per_node", "1024")),
            "requeue": False,
            "current_working_directory": self.workdir,
            "standard_output": self.output,
            "standard_error": self.output,
            "environment": env,
        }
        per_node = int(details.get("gpus_per_node", "0"))
        if per_node and details.get("gres_type"):
            job["gres"] = f"gpu:{details['gres_type']}:{per_node}"
        if details.get("reservation"):
            job["reservation"] = details["reservation"]
        if details.get("exclusive"):
            job["exclusive"] = "exclusive"
        for field, value in (
            ("account", self.account),
            ("qos", self.qos),
            ("constraints", self.constraint),
        ):
            if value:
                job[field] = value
        if workload is not None and workload.command:
            # The command runs as a job step on every node of the allocation.
            body = (
                f"exec srun --nodes={nodes} --ntasks-per-node=1 -- {shlex.join(workload.command)}"
            )
        else:
            # Nothing to run: hold the allocation until released or out of time.
            body = "exec sleep infinity"
        return job, f"#!/bin/sh\n# aicontract lease {name}\n{body}\n"

    async def _wait_running(self, job_id: int, deadline: float) -> JobView:
        """Poll the job until it runs; CapacityUnavailable when it cannot before ``deadline``."""
        delay = self.poll_interval
        reason = "no word from the scheduler yet"
        while True:
            raw = await self._retrying(deadline, self.rest.job, job_id)
            if raw is None:
                raise CapacityUnavailable(self.name, f"job {job_id} vanished before it ran")
            job = job_views([raw])[0]
            if job.running and job.nodes:
                return job
            if job.finished:
                raise CapacityUnavailable(
                    self.name,
                    f"job {job_id} ended {'+'.join(sorted(job.state))} before it ran"
                    f" ({job.reason})",
                )
            reason = job.reason or reason
            if reason in HOPELESS_REASONS:
                raise CapacityUnavailable(
                    self.name, f"job {job_id} cannot run here: Slurm says {reason}"
                )
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                raise CapacityUnavailable(
                    self.name,
                    f"job {job_id} did not start before the deadline (pending: {reason});"
                    " cancelled",
                )
            # The backfill scheduler's expected start: when even Slurm expects the job
            # after the deadline, waiting for it is pointless.
            expected = (job.start_time or 0) - self.clock.time()
            if job.pending and expected > remaining + self.poll_max:
                raise CapacityUnavailable(
                    self.name,
                    f"job {job_id} would not start before the deadline: Slurm expects it in"
                    f" {expected:.0f}s (pending: {reason}); cancelled",
                )
            await anyio.sleep(min(delay, remaining))
            delay = min(self.poll_max, delay * 1.5)

    async def _lease(self, offer: Offer, key: str, name: str, job: JobView) -> Lease:
        contract = offer.contract
        views = {n.name: n for n in node_views(await self.rest.nodes())}
        addresses = [views[n].address if n in views else n for n in job.nodes]
        endpoints = node_endpoints(addresses, contract)
        per_node = int(offer.details.get("gpus_per_node", "0"))
        world = World(
            master_addr=addresses[0],
            master_port=rendezvous_port(contract, self.master_port),
            nodes=len(job.nodes),
            procs_per_node=procs_per_node(contract, per_node),
        )
        now = self.clock.time()
        # The lease's term starts when Slurm started the job: its time limit counts from there.
        started = float(job.start_time) if job.start_time and job.start_time <= now else now
        details = {
            "job_id": str(job.id),
            "partition": job.partition,
            "nodes": ",".join(job.nodes),
            "idempotency_key": key,
        }
        if offer.details.get("reservation"):
            details["reservation"] = offer.details["reservation"]
        slurm_env = {
            "SLURM_JOB_ID": str(job.id),
            "SLURM_JOB_NODELIST": ",".join(job.nodes),
            "SLURM_JOB_PARTITION": job.partition,
            "GPUS_PER_NODE": str(per_node),
        }
        return granted_lease(
            self,
            offer,
            name,
            # The job runs: its GRES, CPUs and memory are bound to it, whatever the offer said.
            guarantee="allocated",
            expires_at=now + self.lease_ttl,
            ends_at=float(job.end_time) if job.end_time else None,
            endpoints=endpoints,
            env=lease_env(contract, name, slurm_env, world_env(world, addresses)),
            details=details | offer_details(offer),
            world=world,
            created_at=started,
        )

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:
        """Cancel whatever a commit under ``idempotency_key`` submitted (found by name)."""
        self._leases.pop(idempotency_key, None)
        job = await self._find_job(job_name(idempotency_key), idempotency_key)
        if job is not None:
            await self._cancel_and_wait(job.id)

    # -- renewing, extending, releasing ------------------------------------------------------

    async def renew(self, lease: Lease) -> float:
        """Check the job still runs; when the lease was extended, lengthen its time limit."""
        job_id = lease.details["job_id"]
        raw = await self.rest.job(job_id)
        if raw is None:
            raise LeaseLost(lease.id, f"job {job_id} is gone")
        job = job_views([raw])[0]
        if not job.running:
            raise LeaseLost(
                lease.id, f"job {job_id} is {'+'.join(sorted(job.state))} ({job.reason})"
            )
        end = float(job.end_time) if job.end_time else math.inf
        ends_at = lease.ends_at
        if ends_at is not None and job.start_time and ends_at > end:
            end = await self._extend(lease, job, ends_at)
        return min(self.clock.time() + self.lease_ttl, end)

    async def _extend(self, lease: Lease, job: JobView, ends_at: float) -> float:
        """Ask Slurm for a time limit reaching ``ends_at``; the new end time."""
        assert job.start_time is not None
        minutes = math.ceil((ends_at - job.start_time) / 60)

        def refuse(why: str) -> QuotaExceeded:
            # Take the extension back so the heartbeat does not ask again, and say why.
            lease.extension = max(0.0, lease.extension - (ends_at - float(job.end_time or 0)))
            return QuotaExceeded(self.name, f"cannot extend job {job.id} to {_hms(minutes)}: {why}")

        part = next(
            (p for p in partition_views(await self.rest.partitions()) if p.name == job.partition),
            None,
        )
        limit = part.max_time_minutes if part is not None else None
        if part is not None and limit is not None and minutes > limit:
            raise refuse(f"partition {part.name} allows at most {_hms(limit)}")
        try:
            await self.rest.update(job.id, {"time_limit": minutes})
        except SlurmError as exc:
            raise refuse(f"Slurm refused ({exc.detail})") from exc
        log.info("slurm: job %s time limit now %s", job.id, _hms(minutes))
        return float(job.start_time + minutes * 60)

    async def release(self, lease: Lease) -> None:
        """Cancel the job and wait until Slurm has let go of its nodes. Safe to repeat.

        A controller away (restarting) is waited for, up to ``release_timeout``: a job
        left running would hold its nodes to its time limit.
        """
        job_id = lease.details.get("job_id")
        if job_id:
            until = anyio.current_time() + self.release_timeout
            # The bound is on the whole release, every attempt included: a caller's
            # release is shielded from cancellation, so this is the only bound it has.
            with anyio.move_on_after(self.release_timeout) as scope:
                await self._retrying(until, self._cancel_and_wait, int(job_id), until)
            if scope.cancelled_caught:
                raise TransientBackendError(
                    self.name,
                    f"job {job_id} not cancelled within release_timeout"
                    f" ({self.release_timeout:g}s): slurmctld did not answer in time",
                )
        for key, held in list(self._leases.items()):
            if held is lease:
                del self._leases[key]

    async def _cancel_and_wait(self, job_id: int, until: float | None = None) -> None:
        """Cancel ``job_id`` and wait for it to finish: at most ``release_timeout``, and
        never past ``until`` (anyio's clock) where given."""
        await self.rest.cancel(job_id)
        delay = self.poll_interval
        wait = self.release_timeout
        if until is not None:
            wait = min(wait, max(0.0, until - anyio.current_time()))
        with anyio.move_on_after(wait):
            while True:
                raw = await self.rest.job(job_id)
                if raw is None or job_views([raw])[0].finished:
                    return
                await anyio.sleep(delay)
                delay = min(self.poll_max, delay * 1.5)
        raise TransientBackendError(
            self.name, f"job {job_id} still there {wait:g}s after cancelling"
        )

    # -- observing -----------------------------------------------------------------------

    async def observe(self, lease: Lease) -> Observation:
        """Faults from the job (preempted, failed, cancelled, out of time) and its nodes
        (down, drained, failing); a fault revokes the lease with Slurm's reason."""
        job_id = lease.details["job_id"]
        now = self.clock.time()
        raw = await self.rest.job(job_id)
        faults: list[Fault] = []
        workload: str | None = None
        has_command = bool(lease.contract.workload and lease.contract.workload.command)
        if raw is None:
            # A finished command's job is purged after MinJobAge: that is not a fault.
            if not (has_command and lease.workload_state == WorkloadState.COMPLETED):
                faults.append(
                    Fault(kind="capacity-revoked", at=now, reason=f"job {job_id} is gone")
                )
        else:
            job = job_views([raw])[0]
            if has_command:
                workload = "completed" if job.finished else "ready" if job.running else None
            # The nodes first: a node taken down is the cause, the job's end its effect.
            names = set(job.nodes) | set(lease.details.get("nodes", "").split(","))
            for node in node_views(await self.rest.nodes()):
                if node.name in names and node.state & BAD_NODE_STATES:
                    faults.append(
                        Fault(
                            kind="node-lost",
                            at=now,
                            reason=f"node {node.name} is {node.why_not}",
                        )
                    )
            faults.extend(_job_faults(job, now, has_command))
        if faults:
            lease.revoke("; ".join(f.reason for f in faults))
        return Observation(faults=tuple(faults), workload=workload)

    async def identity(self) -> Identity:
        """The Slurm user this backend's jobs run as, as slurmrestd authenticates it.

        Over a unix socket (``rest_auth/local``) slurmrestd knows the caller from the
        socket: this process's OS user and groups. With a JWT, the user the token was
        issued for (``X-SLURM-USER-NAME``; slurmrestd refuses a token minted for anyone
        else), with that user's Unix groups on this host where it has an account (the
        groups Slurm's ``AllowGroups`` checks). ``account`` is not part of it: it is
        what a job is charged to, chosen by the caller, not who the caller is.
        """
        rest = self.rest
        if rest.user is None:
            source = f"{self.name} (rest_auth/local: the socket's peer)"
            return msgspec.structs.replace(local_identity(), source=source)
        return unix_user_identity(rest.user, f"{self.name} (JWT for {rest.user})")

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self.api is not None:
            await self.api.aclose()
        self.api = None


def _job_faults(job: JobView, now: float, has_command: bool) -> list[Fault]:
    words = "+".join(sorted(job.state))
    why = f"job {job.id} {words}" + (f" ({job.reason})" if job.reason not in ("", "None") else "")
    if "PREEMPTED" in job.state:
        return [Fault(kind="preempted", at=now, reason=why)]
    if job.state & {"NODE_FAIL", "BOOT_FAIL"}:
        return [Fault(kind="node-lost", at=now, reason=why)]
    if job.state & {"FAILED", "OUT_OF_MEMORY"}:
        return [Fault(kind="workload-exited", at=now, reason=f"{why}, exit {job.exit_code}")]
    if job.state & {"TIMEOUT", "DEADLINE"}:
        return [Fault(kind="capacity-revoked", at=now, reason=f"{why}: its time limit passed")]
    if "CANCELLED" in job.state:
        return [Fault(kind="capacity-revoked", at=now, reason=f"{why}: cancelled")]
    if "COMPLETED" in job.state and not has_command:
        return [Fault(kind="capacity-revoked", at=now, reason=f"{why}: ended")]
    if job.pending:
        return [Fault(kind="capacity-revoked", at=now, reason=f"{why}: requeued, not running")]
    if "SUSPENDED" in job.state:
        return [Fault(kind="preempted", at=now, reason=f"{why}: suspended")]
    return []


def _spread(count: CountRange, cap: int, most_nodes: int) -> tuple[int, int] | None:
    """The fewest nodes (and the most GPUs on each, at most ``cap``) whose total lies in
    ``count``: ``8`` on 4-GPU nodes is ``(2, 4)``; ``None`` when no such split exists."""
    for nodes in range(2, most_nodes + 1):
        top = min(cap, count.max // nodes if count.max is not None else cap)
        for per in range(top, 0, -1):
            if nodes * per in count:
                return nodes, per
    return None


def _hms(minutes: int) -> str:
    days, rest = divmod(minutes, 1440)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def _relaxed(offer: Offer) -> Offer:
    """A counter-offer: the same grant without the contract's start deadline."""
    contract = offer.contract
    terms = msgspec.structs.replace(contract.terms, start_by=None)
    return msgspec.structs.replace(offer, contract=contract.with_(terms=terms))
