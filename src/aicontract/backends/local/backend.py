"""The local backend: this host's CPUs, memory and GPUs, shared safely by its processes.

It needs nothing installed or running: the inventory comes from the host (NVML
for GPUs when ``nvidia-ml-py`` is present), and the :class:`~.ledger.Ledger`
in the state dir makes every grant exclusive across processes. Offers are
free (price 0), in region ``local``, at guarantee level ``allocated``: a
commit binds specific devices, and the lease's env pins the workload to them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence, Set
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.abc
import attrs
import platformdirs
from msgspec.structs import replace

from ...clock import Clock, system_clock
from ...contract import GPU, Contract
from ...errors import (
    BackendError,
    CapacityUnavailable,
    IdempotencyConflict,
    LeaseLost,
    LedgerError,
    TransientBackendError,
)
from ...gpu_models import capability, pick_model
from ...leases import Lease, LeaseRecord, LeaseState, WorkloadState
from ...observation import Fault, Observation, Sample
from ...offer import Grant, Offer, Quote, Rejection
from ...reporting import REPORT_SOCKET_ENV, report_socket_path
from ...units import Bytes, CountRange, Duration, Money
from ...workload import DEFAULT_GRACE, Supervised, WorkloadRef, pid_namespace, spawn
from ...world import World
from ..base import Backend
from ..gang import procs_per_node
from .inventory import GPUDevice, Inventory, host_inventory
from .ledger import WORLD_PORT, Demand, Ledger, lock_name, parse_ports
from .topology import Choice, Topology

__all__ = [
    "SYSTEM_STATE_DIR",
    "LocalBackend",
    "default_state_dir",
    "port_env",
    "state_dir_scope",
]

log = logging.getLogger("aicontract.local")

OFFER_TTL = 10.0


SYSTEM_STATE_DIR = Path("/var/lib/aicontract")
"""The host's one ledger, shared by every user and container that mounts it."""


def state_dir_scope() -> str:
    """Which ledger :func:`default_state_dir` picks: ``env``, ``user`` or ``host``."""
    if os.environ.get("AICONTRACT_STATE_DIR"):
        return "env"
    if os.environ.get("AICONTRACT_LEDGER_SCOPE", "").lower() == "user":
        return "user"
    return "host"


def default_state_dir() -> Path:
    """Where the ledger lives: one per host unless asked otherwise.

    ``AICONTRACT_STATE_DIR`` when set; else the per-user state dir
    (``~/.local/state/aicontract``) when ``AICONTRACT_LEDGER_SCOPE=user`` — then
    other users' leases are invisible, so the CLI says so; else
    ``/var/lib/aicontract``, shared by every user (its group) and container.
    """
    scope = state_dir_scope()
    if scope == "env":
        return Path(os.environ["AICONTRACT_STATE_DIR"])
    if scope == "user":
        return Path(platformdirs.user_state_dir("aicontract"))
    return SYSTEM_STATE_DIR


def _stored_record(record: LeaseRecord) -> LeaseRecord:
    """What the ledger keeps of a lease: no value of the contract's own env.

    The ledger is readable by every user of the host's ledger group; the env a
    contract passes to its workload may hold tokens. The holder keeps them in
    memory only.
    """
    workload = record.contract.workload
    granted = {k: v for k, v in record.env.items() if k.startswith(("AICONTRACT_", "CUDA_"))}
    if workload is None or not workload.env:
        return replace(record, env=granted)
    redacted = replace(workload, env=dict.fromkeys(workload.env, "<redacted>"))
    return replace(record, env=granted, contract=record.contract.with_(workload=redacted))


@functools.lru_cache(maxsize=16)
def _free(currency: str) -> Money:
    """A zero price in ``currency`` (a Money is immutable: one per currency will do)."""
    return Money.per_hour(0, currency)


def _grants_world(contract: Contract) -> bool:
    """Does a lease for ``contract`` get a training world? Only a training workload's does:
    its rendezvous port is capacity, and other leases need not pay for one.
    """
    return contract.workload is not None and contract.workload.kind == "training"


def _gpu_keys(inventory: Inventory) -> dict[str, str]:
    """What the ledger holds each GPU under: its UUID where the inventory knows it
    (the one name every process and container on the host agrees on)."""
    return {g.id: g.uuid for g in inventory.gpus if g.uuid}


def _world(contract: Contract, gpu_ids: Sequence[str], port: int) -> World:
    """This host's whole world: one node, meeting on 127.0.0.1 at the granted ``port``.

    One process per granted GPU; a CPU run (no GPU granted) runs
    ``workload.procs_per_node`` processes, default one, which share the granted CPUs.
    """
    return World(
        master_addr="127.0.0.1",
        master_port=port,
        procs_per_node=procs_per_node(contract, len(gpu_ids)),
    )


def _named_ports(ports: dict[str, int]) -> dict[str, int]:
    """The workload's own granted ports: everything but the world's rendezvous."""
    return {n: p for n, p in ports.items() if n != WORLD_PORT}


def _weakest_capability(devices: Sequence[GPUDevice]) -> str | None:
    """The lowest compute capability among ``devices`` (what the grant can promise)."""
    known = [d.compute_capability for d in devices if d.compute_capability]
    if not known or len(known) != len(devices):
        return None
    return min(known, key=capability)


def _fits(device: GPUDevice, gpus: GPU) -> bool:
    """Does one device meet the contract's per-GPU requirements (model aside)?"""
    if gpus.memory is not None and device.memory not in gpus.memory:
        return False
    if gpus.compute_capability and capability(device.compute_capability) < capability(
        gpus.compute_capability
    ):
        return False
    if gpus.mig is not None and device.mig_profile != gpus.mig:
        return False
    # (interconnect is a property of the set, not of a device: the topology chooses it)
    return gpus.mig is not None or device.mig_profile is None


# How many offers' choices a backend remembers until their commit (offers not committed
# are forgotten oldest first).
_CHOSEN_KEPT = 64
# How many topology choices and descriptions a backend remembers (emptied when full).
_CHOICES_KEPT = 256


class _Chosen(NamedTuple):
    """The GPU set a quote chose for one offer, and from what: the ledger's held sets
    (immutable snapshot sets, so the same objects mean the same contents), the offer's
    contract, grant and candidates. A commit of that very offer that finds the same
    sets held makes the same (deterministic) choice: it takes this one instead."""

    contract: Contract
    grant: Grant
    candidates: str
    used_gpus: Set[str]
    used_cpus: Set[int]
    choice: Choice

    def holds_for(self, offer: Offer) -> bool:
        """Is ``offer`` the offer this was chosen for, unchanged?"""
        return (
            offer.grant is self.grant
            and offer.contract is self.contract
            and offer.details.get("gpu_candidates") == self.candidates
        )


@attrs.define(eq=False)
class LocalBackend(Backend):
    """Leases on this host, exclusive across all its processes.

    ``ttl`` is how long a lease lives without a heartbeat (``AICONTRACT_LOCAL_TTL``,
    default 30 s); a holder that dies is noticed sooner, by its lock.
    ``jurisdiction`` is where this host is (for contracts that require one;
    default ``AICONTRACT_JURISDICTION``).
    """

    name = "local"

    state_dir: Path = attrs.field(factory=default_state_dir, converter=Path)
    ttl: float = attrs.field(factory=lambda: float(os.environ.get("AICONTRACT_LOCAL_TTL") or 30.0))
    jurisdiction: str | None = attrs.field(
        factory=lambda: os.environ.get("AICONTRACT_JURISDICTION") or None
    )
    region: str = "local"
    clock: Clock = system_clock
    _inventory: Inventory | None = attrs.field(default=None, alias="inventory")
    _ledger: Ledger | None = attrs.field(default=None, init=False, repr=False)
    _processes: dict[str, Supervised] = attrs.field(factory=dict, init=False, repr=False)
    # Per GPU requirement: the inventory's devices that meet it, by the model they count as.
    _fitting: dict[GPU, dict[str, list[GPUDevice]]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _topology: Topology | None = attrs.field(default=None, init=False, repr=False)
    _cpu_pool: tuple[int, ...] | None = attrs.field(default=None, init=False, repr=False)
    _chosen: dict[str, _Chosen] = attrs.field(factory=dict, init=False, repr=False)
    # Topology choices by what they were made from (see _choose), and grants' descriptions.
    _choices: dict[tuple[object, ...], Choice | None] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _described: dict[tuple[tuple[str, ...], tuple[int, ...]], Choice] = attrs.field(
        factory=dict, init=False, repr=False
    )

    @property
    def cpu_pool(self) -> tuple[int, ...]:
        """The inventory's CPU ids (``cpu_list``), made once: the inventory is kept."""
        if self._cpu_pool is None:
            self._cpu_pool = self.inventory.cpu_list
        return self._cpu_pool

    @property
    def topology(self) -> Topology:
        """The inventory's GPU/NUMA topology, precomputed once."""
        if self._topology is None:
            self._topology = self.inventory.topology()
        return self._topology

    @property
    def inventory(self) -> Inventory:
        """What this host has (read once, then kept)."""
        if self._inventory is None:
            self._inventory = host_inventory(self.state_dir)
            if self._ledger is not None:
                self._ledger.key_gpus(_gpu_keys(self._inventory))
        return self._inventory

    @property
    def ledger(self) -> Ledger:
        """The host-wide ledger in ``state_dir``."""
        if self._ledger is None:
            self._ledger = Ledger.in_dir(self.state_dir)
            if self._inventory is not None:
                self._ledger.key_gpus(_gpu_keys(self._inventory))
        return self._ledger

    def leases(self) -> list[LeaseRecord]:
        """Every lease held on this host, by any process (what ``aicontract leases`` lists)."""
        return self.ledger.records()

    def release_by_id(self, lease_id: str) -> bool:
        """Release a lease held by any process on this host; False when none has that id."""
        return self.ledger.release(lease_id)

    # -- quoting -------------------------------------------------------------------------

    async def quote(self, contract: Contract) -> Quote:
        """What this host could grant now, from its inventory minus the ledger."""
        _ = self.inventory  # read first: the ledger holds GPUs under the keys it gives
        return self._quote(contract, await self.ledger.ausage(self.clock.time()))

    def quote_now(self, contract: Contract) -> Quote | None:
        """:meth:`quote` when it needs no wait, else ``None`` (another process holds the
        ledger's lock, or a dead holder's work must be stopped first): the negotiator
        then awaits :meth:`quote` under its deadline. A quote that cannot wait needs
        no deadline, and a deadline's timer costs more than the quote's own work."""
        if type(self).quote is not LocalBackend.quote:
            return None  # a subclass quotes its own way: ask it (a test's broken backend)
        _ = self.inventory  # read first: the ledger holds GPUs under the keys it gives
        held = self.ledger.usage_now(self.clock.time())
        return None if held is None else self._quote(contract, held)

    def _quote(self, contract: Contract, held: tuple[Set[str], Set[int], int, int]) -> Quote:
        """The quote for ``contract`` given what the ledger holds (GPU ids, CPU ids, memory
        and disk bytes)."""
        inv = self.inventory
        used_gpus, used_cpus, used_memory, used_disk = held
        rejections: list[Rejection] = []
        res = contract.resources

        def reject(requirement: str, wanted: object, available: object) -> None:
            rejections.append(
                Rejection(
                    backend=self.name,
                    requirement=requirement,
                    wanted=str(wanted),
                    available=str(available),
                )
            )

        if res.nodes > 1:  # one host; gangs of nodes are for cluster backends
            reject("resources.nodes", f"{res.nodes} nodes", "1 node (this host)")
        cpus = 0
        if res.cpus is not None:
            free_cpus = sum(1 for c in self.cpu_pool if c not in used_cpus)
            granted_cpus = res.cpus.grant(free_cpus)
            if granted_cpus is None:
                reject("resources.cpus", res.cpus, f"{free_cpus} free of {inv.cpus}")
            cpus = granted_cpus or 0
        memory: Bytes | None = None
        if res.memory is not None:
            free_memory = Bytes(max(0, inv.memory.bytes - used_memory))
            memory = res.memory.grant(free_memory)
            if memory is None:
                reject(
                    "resources.memory",
                    res.memory,
                    f"{free_memory.human()} free of {inv.memory.human()}",
                )
        disk: Bytes | None = None
        if res.disk is not None:
            if inv.disk is None:
                reject("resources.disk", res.disk, "no disk in the inventory")
            else:
                free_disk = Bytes(max(0, inv.disk.bytes - used_disk))
                disk = res.disk.grant(free_disk)
                if disk is None:
                    reject("resources.disk", res.disk, f"{free_disk.human()} free")

        choices: list[tuple[str | None, list[GPUDevice]]] = [(None, [])]
        counter: list[Offer] = []
        if res.gpus is not None:
            choices, problems, counter = self._gpu_choices(contract, res.gpus, used_gpus)
            # A counter-offer relaxes only the GPUs; it carries the rest of the grant, and
            # there is none when something else is missing too.
            counter = [
                replace(o, grant=replace(o.grant, cpus=cpus, memory=memory, disk=disk))
                for o in counter
                if not rejections
            ]
            rejections.extend(problems)
        if rejections:
            return Quote(rejections=tuple(rejections), counter_offers=tuple(counter))

        now = self.clock.time()
        offers = []
        local = contract.placement.locality == "numa"
        for model, devices in choices:
            count = 0
            if res.gpus is not None:
                count = res.gpus.count.grant(len(devices)) or 0
            choice: Choice | None = None
            if local or (devices and not self._flat_for(contract)):
                choice = self._choose(
                    contract, devices, used_gpus, count, cpus, used_cpus, memory, local=local
                )
                if choice is None:
                    problem = self._misplaced(contract, devices, used_gpus, count)
                    rejections.append(problem)
                    relaxed = None
                    if problem.requirement == "resources.gpus.interconnect" and model:
                        relaxed = self._counter_offer(contract, model, devices, used_gpus, count)
                    if relaxed is not None:
                        grant = replace(relaxed.grant, cpus=cpus, memory=memory, disk=disk)
                        counter.append(replace(relaxed, grant=grant))
                    continue
            first = devices[0] if devices else None
            grant = Grant(
                gpus=len(choice.gpus) if choice is not None else count,
                gpu_model=model,
                gpu_memory=first.memory if first else None,
                gpu_compute_capability=_weakest_capability(devices),
                gpu_interconnect=(
                    choice.interconnect
                    if choice is not None
                    else ("pcie" if count > 1 else None)  # one host: PCIe at least
                ),
                gpu_mig=first.mig_profile if first else None,
                cpus=cpus,
                memory=memory,
                disk=disk,
                numa_nodes=choice.numa_nodes if choice is not None else (),
            )
            offer = self._offer(contract, grant, devices, now)
            offers.append(offer)
            if (
                choice is not None
                and isinstance(used_gpus, frozenset)
                and isinstance(used_cpus, frozenset)
            ):
                if len(self._chosen) >= _CHOSEN_KEPT:
                    del self._chosen[next(iter(self._chosen))]
                self._chosen[offer.id] = _Chosen(
                    contract, grant, offer.details["gpu_candidates"], used_gpus, used_cpus, choice
                )
        if not offers:
            return Quote(rejections=tuple(rejections), counter_offers=tuple(counter))
        return Quote(offers=tuple(offers), counter_offers=tuple(counter))

    def _choose(
        self,
        contract: Contract,
        devices: Sequence[GPUDevice],
        used_gpus: Set[str],
        count: int,
        cpus: int,
        used_cpus: Set[int],
        memory: Bytes | None,
        *,
        local: bool,
    ) -> Choice | None:
        """The GPU set (and CPUs) this host would grant now; with a range of GPUs and
        NVLink asked for, the most GPUs that one NVLink domain still holds."""
        gpus = contract.resources.gpus
        nvlink = gpus is not None and gpus.interconnect == "nvlink"
        least = (gpus.count.min or 1) if gpus is not None else 0
        ids = tuple([d.id for d in devices])
        memory_bytes = memory.bytes if memory is not None else 0
        key: tuple[object, ...] | None = None
        if isinstance(used_gpus, frozenset) and isinstance(used_cpus, frozenset):
            # The choice depends on nothing else (the topology and CPU pool are fixed), and
            # a loop asks again and again with the same held sets: choose once per state.
            key = (ids, used_gpus, used_cpus, count, least, nvlink, cpus, local, memory_bytes)
            if key in self._choices:
                return self._choices[key]
        choice = self._choose_now(
            ids, used_gpus, count, least, nvlink, cpus, used_cpus, local, memory_bytes
        )
        if key is not None:
            if len(self._choices) >= _CHOICES_KEPT:
                self._choices.clear()
            self._choices[key] = choice
        return choice

    def _choose_now(
        self,
        ids: tuple[str, ...],
        used_gpus: Set[str],
        count: int,
        least: int,
        nvlink: bool,
        cpus: int,
        used_cpus: Set[int],
        local: bool,
        memory: int,
    ) -> Choice | None:
        """:meth:`_choose`, worked out."""
        for size in range(count, least - 1, -1) if nvlink else (count,):
            choice = self.topology.choose(
                ids,
                used_gpus,
                size,
                nvlink=nvlink and size > 1,
                cpus=cpus,
                cpu_pool=self.cpu_pool,
                used_cpus=used_cpus,
                local=local,
                memory=memory,
            )
            if choice is not None:
                return choice
        return None

    def _misplaced(
        self, contract: Contract, devices: Sequence[GPUDevice], used: Set[str], count: int
    ) -> Rejection:
        """Why no GPU set (with CPUs) meets the contract's interconnect or locality."""
        gpus = contract.resources.gpus
        if gpus is not None and gpus.interconnect == "nvlink" and count > 1:
            linked = self.topology.largest_nvlink_set([d.id for d in devices if d.id not in used])
            if linked < count:
                return Rejection(
                    backend=self.name,
                    requirement="resources.gpus.interconnect",
                    wanted=f"nvlink between {gpus.count} GPUs",
                    available=f"at most {linked} free GPUs linked by NVLink",
                )
        where = "the NUMA nodes of the free GPUs" if devices else "one NUMA node"
        has = (
            "no NUMA nodes (the inventory lists none)"
            if not self.inventory.numa
            else f"not enough free CPUs or memory on {where}"
        )
        return Rejection(
            backend=self.name,
            requirement="placement.locality",
            wanted="CPUs and memory on the GPUs' NUMA nodes",
            available=has,
        )

    def _gpu_choices(
        self, contract: Contract, gpus: GPU, used: Set[str]
    ) -> tuple[list[tuple[str | None, list[GPUDevice]]], list[Rejection], list[Offer]]:
        """Per acceptable model, the free devices that fit; else why not."""
        inv = self.inventory
        fitting = self._fitting.get(gpus)
        if fitting is None:  # the inventory is fixed, so which devices fit is too
            fitting = {}
            for device in inv.gpus:
                model = pick_model(gpus.models, device.model)
                if model is not None and _fits(device, gpus):
                    fitting.setdefault(model, []).append(device)
            self._fitting[gpus] = fitting
        by_model: dict[str, list[GPUDevice]] = {}
        for model, devices in fitting.items():
            # (the cached list itself when nothing is used: callers only read it)
            left = [d for d in devices if d.id not in used] if used else devices
            if left:
                by_model[model] = left
        order = gpus.models or tuple(by_model)
        need = gpus.count.min or 1
        choices: list[tuple[str | None, list[GPUDevice]]] = [
            (m, by_model[m]) for m in order if len(by_model.get(m, ())) >= need
        ]
        if choices:
            return choices, [], []
        fitting_total = sum(len(devices) for devices in fitting.values())
        have = ", ".join(sorted({f"{d.model} ({d.memory})" for d in inv.gpus})) or "no GPUs"
        if not fitting_total:
            wanted = " ".join(
                p
                for p in (
                    "/".join(gpus.models) or "any model",
                    f"memory {gpus.memory}" if gpus.memory else "",
                    f"compute capability >= {gpus.compute_capability}"
                    if gpus.compute_capability
                    else "",
                    f"MIG {gpus.mig}" if gpus.mig else "",
                )
                if p
            )
            problem = Rejection(
                backend=self.name, requirement="resources.gpus", wanted=wanted, available=have
            )
            return [], [problem], []
        best_model, best = max(by_model.items(), key=lambda kv: len(kv[1]), default=(None, []))
        free = len(best)
        problem = Rejection(
            backend=self.name,
            requirement="resources.gpus.count",
            wanted=f"{gpus.count} x {'/'.join(gpus.models) or 'GPU'}",
            available=f"at most {free} free of one model; {fitting_total} fit in all ({have})",
        )
        counter: list[Offer] = []
        if free and best_model is not None:
            offer = self._counter_offer(contract, best_model, best, used, free)
            if offer is not None:
                counter.append(offer)
        return [], [problem], counter

    def _counter_offer(
        self,
        contract: Contract,
        model: str,
        devices: Sequence[GPUDevice],
        used: Set[str],
        size: int,
    ) -> Offer | None:
        """An offer of ``size`` GPUs of ``model`` (fewer than asked), for a contract relaxed
        to match; with NVLink asked, the most of them that one NVLink domain holds."""
        gpus = contract.resources.gpus
        assert gpus is not None
        nvlink = gpus.interconnect == "nvlink"
        ids = [d.id for d in devices]
        if nvlink:
            size = min(size, self.topology.largest_nvlink_set([i for i in ids if i not in used]))
        choice = self.topology.choose(ids, used, size, nvlink=nvlink and size > 1)
        if choice is None:
            return None
        relaxed = contract.with_(
            resources=contract.resources.__class__(
                gpus=GPU(
                    count=CountRange(size),
                    models=(model,),
                    memory=gpus.memory,
                    compute_capability=gpus.compute_capability,
                    interconnect=gpus.interconnect,
                    mig=gpus.mig,
                ),
                cpus=contract.resources.cpus,
                memory=contract.resources.memory,
                disk=contract.resources.disk,
            )
        )
        grant = Grant(
            gpus=size,
            gpu_model=model,
            gpu_memory=devices[0].memory,
            gpu_compute_capability=_weakest_capability(devices),
            gpu_interconnect=choice.interconnect,
            gpu_mig=devices[0].mig_profile,
        )
        offer = self._offer(relaxed, grant, devices, self.clock.time())
        # Name what was given up, as every backend's counter-offers do (Offer.summary).
        given_up = []
        if gpus.models and model not in gpus.models:
            given_up.append(f"resources.gpus.models {'/'.join(gpus.models)} -> {model}")
        if size not in gpus.count:
            given_up.append(f"resources.gpus.count {gpus.count} -> {size}")
        if not given_up:
            return offer
        return replace(offer, details={**offer.details, "relaxed": "; ".join(given_up)})

    def _offer(
        self, contract: Contract, grant: Grant, devices: Sequence[GPUDevice], now: float
    ) -> Offer:
        return Offer(
            id=f"local-{os.urandom(6).hex()}",  # as random as uuid4's first 12 digits
            backend=self.name,
            contract=contract,
            grant=grant,
            guarantee="allocated",
            region=self.region,
            jurisdiction=self.jurisdiction,
            provider="local",
            isolation="shared",
            price=_free(contract.terms.currency),
            expires_at=now + OFFER_TTL,
            details={"gpu_candidates": ",".join([d.id for d in devices])},
        )

    # -- committing ----------------------------------------------------------------------

    async def commit(self, offer: Offer, idempotency_key: str) -> Lease:
        """Bind the offer's amounts to devices in the ledger and start the workload, if any."""
        if offer.backend != self.name:
            raise CapacityUnavailable(self.name, f"offer {offer.id} is not a local offer")
        grant, contract = offer.grant, offer.contract
        lease_id = idempotency_key
        now = self.clock.time()
        expires_at = now + self.ttl
        inv = self.inventory
        candidates = [c for c in offer.details.get("gpu_candidates", "").split(",") if c]
        chosen = self._chosen.pop(offer.id, None)
        placed = self._placer(
            contract, grant, candidates, chosen if chosen and chosen.holds_for(offer) else None
        )

        def make_record(
            gpu_ids: tuple[str, ...], cpu_ids: tuple[int, ...], ports: dict[str, int]
        ) -> LeaseRecord:
            details = {"gpus": ",".join(gpu_ids), "cpus": ",".join(map(str, cpu_ids))}
            # The rendezvous port is held like any granted port but kept in the world,
            # not among the workload's named ports (no endpoint, no readiness wait).
            world = _world(contract, gpu_ids, ports[WORLD_PORT]) if WORLD_PORT in ports else None
            ports = _named_ports(ports)
            if ports:
                details["ports"] = ",".join(f"{n}={p}" for n, p in ports.items())
            return LeaseRecord(
                id=lease_id,
                backend=self.name,
                contract=contract,
                grant=self._granted(grant, gpu_ids, cpu_ids),
                guarantee="allocated",
                state=LeaseState.ACTIVE,
                created_at=now,
                expires_at=expires_at,
                region=self.region,
                jurisdiction=self.jurisdiction,
                env=self._env(lease_id, contract, gpu_ids, cpu_ids, ports, world),
                holder_pid=os.getpid(),
                details=details,
                world=world,
            )

        demand = Demand(
            gpu_candidates=tuple(candidates),
            gpus=grant.gpus,
            cpu_candidates=self.cpu_pool,
            cpus=grant.cpus,
            memory=grant.memory.bytes if grant.memory is not None else 0,
            memory_total=inv.memory.bytes,
            disk=grant.disk.bytes if grant.disk is not None else 0,
            disk_total=inv.disk.bytes if inv.disk is not None else None,
            ports=(contract.workload.auto_ports if contract.workload is not None else ())
            + ((WORLD_PORT,) if _grants_world(contract) else ()),
            place=placed,
        )
        start_by = contract.terms.start_by
        # A commit never outlives what its contract allows for starting.
        try:
            return await self._commit(lease_id, contract, grant, demand, make_record, now, start_by)
        except (TimeoutError, LedgerError) as exc:
            if isinstance(exc, LedgerError) and (
                start_by is None or "write lock" not in exc.problem
            ):
                raise
            raise CapacityUnavailable(
                self.name, f"the commit did not finish within start_by ({start_by})"
            ) from None

    def _placer(
        self,
        contract: Contract,
        grant: Grant,
        candidates: Sequence[str],
        chosen: _Chosen | None = None,
    ) -> Callable[[Set[str], Set[int]], tuple[tuple[str, ...], tuple[int, ...]]] | None:
        """What chooses the GPUs and CPUs inside the grant's transaction (``None``: the
        first free CPUs, for a grant without GPUs and without locality). ``chosen``: what
        the quote chose for this offer, taken when the grant finds the same sets held."""
        local = contract.placement.locality == "numa"
        if (not grant.gpus and not local) or self._flat_for(contract):
            return None
        gpus = contract.resources.gpus
        # Only what the contract demands binds the commit; the lease states what it got.
        nvlink = gpus is not None and gpus.interconnect == "nvlink" and grant.gpus > 1
        topology, pool = self.topology, self.cpu_pool
        memory = grant.memory.bytes if grant.memory is not None else 0

        def place(
            used_gpus: Set[str], used_cpus: Set[int]
        ) -> tuple[tuple[str, ...], tuple[int, ...]]:
            if chosen is not None and (
                used_gpus is chosen.used_gpus and used_cpus is chosen.used_cpus
            ):
                return chosen.choice.gpus, chosen.choice.cpus
            choice = topology.choose(
                candidates,
                used_gpus,
                grant.gpus,
                nvlink=nvlink,
                cpus=grant.cpus,
                cpu_pool=pool,
                used_cpus=used_cpus,
                local=local,
                memory=memory,
            )
            if choice is None:
                wanted = "NVLink-linked " if nvlink else ""
                where = " with CPUs on their NUMA nodes" if local else ""
                raise CapacityUnavailable(
                    self.name, f"no {grant.gpus} free {wanted}GPUs{where} any more"
                )
            return choice.gpus, choice.cpus

        return place

    def _flat_for(self, contract: Contract) -> bool:
        """Is topology moot for this contract here (no NVLink or NUMA facts, none asked)?

        Then the first free GPUs and CPUs are what the topology would choose anyway,
        and the ledger takes them without asking it (the 1-GPU loop stays fast).
        """
        gpus = contract.resources.gpus
        return (
            self.topology.flat
            and contract.placement.locality != "numa"
            and (gpus is None or gpus.interconnect != "nvlink")
        )

    def _granted(self, grant: Grant, gpu_ids: Sequence[str], cpu_ids: Sequence[int]) -> Grant:
        """The offer's grant, stating the link and NUMA nodes of the devices bound."""
        if not gpu_ids and (not cpu_ids or not self.inventory.numa):
            return grant
        if self.topology.flat:
            link = "pcie" if len(gpu_ids) > 1 else None
            return replace(grant, gpu_interconnect=link, numa_nodes=())
        key = (tuple(gpu_ids), tuple(cpu_ids))
        found = self._described.get(key)
        if found is None:  # the topology is fixed: a set of devices is described once
            if len(self._described) >= _CHOICES_KEPT:
                self._described.clear()
            found = self._described[key] = self.topology.describe(gpu_ids, cpu_ids)
        return replace(grant, gpu_interconnect=found.interconnect, numa_nodes=found.numa_nodes)

    async def _commit(
        self,
        lease_id: str,
        contract: Contract,
        grant: Grant,
        demand: Demand,
        make_record: Callable[[tuple[str, ...], tuple[int, ...], dict[str, int]], LeaseRecord],
        now: float,
        start_by: Duration | None,
    ) -> Lease:
        # The record made inside the grant, whole (the ledger stores it without secrets):
        # the lease is built from it, not from a second one made afresh.
        made: list[tuple[tuple[object, ...], LeaseRecord]] = []

        def store(
            gpu_ids: tuple[str, ...], cpu_ids: tuple[int, ...], ports: dict[str, int]
        ) -> LeaseRecord:
            record = make_record(gpu_ids, cpu_ids, ports)
            made.append(((gpu_ids, cpu_ids, ports), record))
            return _stored_record(record)

        workload = contract.workload
        launches = workload is not None and bool(workload.command)
        began = time.monotonic()
        # A grant that need not wait (SQLite's lock free) is made at once: nothing could cut
        # it short, so it needs no deadline (a timer costs more than the grant's own Python).
        # Only a wait, or a workload to start, runs under start_by.
        allocation = None if launches else self.ledger.grant_now(lease_id, store, demand, now)
        waits = allocation is None and start_by is not None
        left = start_by.seconds - (time.monotonic() - began) if start_by is not None else 0.0
        with anyio.fail_after(max(0.0, left)) if waits else contextlib.nullcontext():
            if allocation is None:
                allocation = await self.ledger.agrant(
                    lease_id,
                    store,
                    demand,
                    now,
                    # The wait for another writer's lock happens in a thread that a deadline
                    # cannot interrupt: bound the wait itself.
                    wait=left if start_by is not None else None,
                )
            # The stored grant states the topology actually bound; the rest is the offer's.
            if allocation.existing is not None and (
                replace(
                    allocation.existing.grant,
                    gpu_interconnect=grant.gpu_interconnect,
                    numa_nodes=grant.numa_nodes,
                )
                != grant
                or allocation.existing.contract.name != contract.name
            ):
                first = allocation.existing
                raise IdempotencyConflict(
                    self.name,
                    f"key {lease_id} was first committed for {first.grant.describe()}"
                    f" ({first.contract.name!r}), not {grant.describe()} ({contract.name!r});"
                    " use a new key for a new offer",
                )
            bound = (allocation.gpus, allocation.cpus, allocation.ports)
            ports = _named_ports(allocation.ports)
            if allocation.existing is None and made and made[-1][0] == bound:
                # The record made in the grant, whole: its env is this lease's (a copy:
                # a lease's env is its own to add to).
                record = made[-1][1]
                env = dict(record.env)
            else:
                # A retried commit: the stored record holds no secrets, so the env is
                # made again from what was bound.
                record = allocation.existing or make_record(*bound)
                env = self._env(
                    lease_id, contract, allocation.gpus, allocation.cpus, ports, record.world
                )
            lease = Lease(
                id=lease_id,
                contract=contract,
                grant=record.grant,
                backend=self,
                guarantee="allocated",
                expires_at=record.expires_at,
                region=self.region,
                jurisdiction=self.jurisdiction,
                env=env,
                details=dict(record.details),
                world=record.world,
                clock=self.clock,
                created_at=record.created_at,
            )
            lease.on_state_change(self._on_lease_state)
            if workload is not None and not workload.command:
                # Nothing to wait for: the granted ports are the lease's at once.
                lease.endpoints.update(_endpoints(ports))
            if workload is not None and workload.command and lease_id not in self._processes:
                try:
                    await self._launch(lease, allocation.cpus)
                except BaseException:
                    with anyio.CancelScope(shield=True):
                        await self.release(lease)
                    raise
        return lease

    def _on_lease_state(self, lease: Lease, old: LeaseState, new: LeaseState) -> None:
        """A lease that ended otherwise than by release (revoked, expired, failed): stop
        its work now, not whenever its holder gets round to releasing it.

        SIGTERM reaches the whole group, the supervisor included, which escalates to
        SIGKILL after the grace period on its own; release() then reaps it.
        """
        if new.is_final and new != LeaseState.RELEASED:
            process = self._processes.get(lease.id)
            if process is not None and process.returncode is None:
                process.send_signal(signal.SIGTERM)

    @staticmethod
    def _env(
        lease_id: str,
        contract: Contract,
        gpu_ids: tuple[str, ...],
        cpu_ids: tuple[int, ...],
        ports: dict[str, int] | None = None,
        world: World | None = None,
    ) -> dict[str, str]:
        # The contract's own env comes first, so it can tune OMP_NUM_THREADS but never
        # widen the devices the ledger granted, nor move the world's rendezvous.
        env = dict(contract.workload.env) if contract.workload is not None else {}
        if cpu_ids:
            # The world's processes share the granted CPUs: threads enough for each, no more.
            procs = world.procs_per_node if world is not None else 1
            env.setdefault("OMP_NUM_THREADS", str(max(1, len(cpu_ids) // procs)))
            env["AICONTRACT_CPUS"] = ",".join(map(str, cpu_ids))
        if world is not None:
            env.update(world.env())
        env.update(
            {
                "AICONTRACT_LEASE_ID": lease_id,
                # Indices mean the same thing to CUDA and NVML only in PCI bus order.
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                # Empty when no GPU was granted: the workload must not wander onto someone's GPU.
                "CUDA_VISIBLE_DEVICES": ",".join(gpu_ids),
            }
        )
        for name, port in (ports or {}).items():
            env[port_env(name)] = str(port)
        return env

    async def run(
        self, lease: Lease, command: Sequence[str], *, stdin: int | None = subprocess.DEVNULL
    ) -> Supervised:
        """Start ``command`` bound to ``lease``: its env, CPUs, group, cgroup and lock.

        The ledger records it, so a reclaimer stops it before the lease's devices
        go to anyone else; releasing the lease (for any reason) stops it.
        """
        if lease.id in self._processes:
            raise BackendError(
                self.name,
                f"lease {lease.id} already runs a workload (its contract's workload.command);"
                " a lease runs one",
            )
        grace = lease.contract.terms.stop_grace
        grace_s = grace.seconds if grace is not None else DEFAULT_GRACE
        cpus = [int(c) for c in lease.details.get("cpus", "").split(",") if c]
        lock = self.ledger.workload_lock(lease.id)
        # Its lock is in the ledger before it starts: if this holder dies between the
        # start and the full record, a reclaimer still waits for the work to be gone.
        if not await self.ledger.set_workload(
            lease.id,
            WorkloadRef(pgid=0, pidns=pid_namespace(), lock=lock, grace=grace_s),
            self.clock.time(),
        ):
            raise LeaseLost(
                lease.id,
                "it had ended (expired, released or being stopped) before its workload started",
            )
        # Where it reports to its lease's monitor: known now, bound once the lease is held.
        if REPORT_SOCKET_ENV not in lease.env:
            try:
                lease.env[REPORT_SOCKET_ENV] = report_socket_path(lease.id, create=True)
            except OSError as exc:  # not this user's alone: it runs, but cannot report
                log.warning("lease %s: its workload cannot report: %s", lease.id, exc)
        supervised = await spawn(
            command,
            {**os.environ, **lease.env},
            cpus=cpus,
            grace=grace_s,
            lock=lock,
            name=lock_name(lease.id),
            stdin=stdin,
        )
        self._processes[lease.id] = supervised
        lease.details["pid"] = str(supervised.pid)
        if not await self.ledger.set_workload(lease.id, supervised.ref, self.clock.time()):
            # Lost between the grant and now (a reclaimer saw it expire): nothing may run.
            await supervised.stop()
            self._processes.pop(lease.id, None)
            raise LeaseLost(lease.id, "it was no longer in the ledger when its workload started")
        return supervised

    async def _launch(self, lease: Lease, cpu_ids: tuple[int, ...]) -> None:
        workload = lease.contract.workload
        assert workload is not None
        process = await self.run(lease, workload.command)
        lease.set_workload_state(WorkloadState.NOT_READY)
        start_by = lease.contract.terms.start_by
        limit = start_by.seconds if start_by else 60.0
        granted = parse_ports(lease.details.get("ports", ""))
        ports = {**workload.fixed_ports, **granted}
        for port in ports.values():
            await self._wait_for_port(lease, process, port, limit)
        lease.endpoints.update(_endpoints(ports))
        # Ready once every published port accepts connections (at once when it has none).
        lease.set_workload_state(WorkloadState.READY)

    async def _wait_for_port(
        self, lease: Lease, process: Supervised, port: int, limit: float
    ) -> None:
        deadline = time.monotonic() + limit
        while True:
            if process.returncode is not None:
                raise BackendError(
                    self.name,
                    f"workload exited with {process.returncode} "
                    f"before port {port} accepted connections",
                )
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                if time.monotonic() > deadline:
                    raise BackendError(
                        self.name, f"port {port} did not accept connections within {limit:g}s"
                    ) from None
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return

    # -- renewing, releasing, observing --------------------------------------------------

    async def renew(self, lease: Lease) -> float:
        """Push the lease's expiry one TTL ahead (never past the contract's duration).

        The lease is lost when the ledger is no longer the file it was granted in
        (deleted, replaced, truncated) or cannot be read: nobody else can see the
        grant any more, so its work must stop.
        """
        now = self.clock.time()
        expires_at = now + self.ttl
        ends_at = lease.ends_at
        if ends_at is not None:
            expires_at = min(expires_at, ends_at)
        changed = self.ledger.check_identity()
        if changed is not None:
            # Every lease this process holds in that file is lost with it: let go of the
            # file, so the next grant opens the ledger that is there now.
            self.ledger.close()
            raise LeaseLost(lease.id, changed)
        try:
            renewed = await self.ledger.arenew(lease.id, expires_at, now)
        except LedgerError as exc:
            if "write lock" in exc.problem:
                raise TransientBackendError(self.name, str(exc)) from None
            raise LeaseLost(lease.id, str(exc)) from None
        if not renewed:
            raise LeaseLost(lease.id, "it is no longer in the ledger (expired or released)")
        return expires_at

    async def still_held(self, lease: Lease) -> bool:
        """Does the ledger still give ``lease`` to this process (not revoked, not lost)?"""
        if self.ledger.check_identity() is not None:
            return False
        try:
            return await self.ledger.still_held(lease.id)
        except LedgerError:
            return False

    def release_now(self, lease: Lease) -> bool:
        """:meth:`release` when it needs no wait (no workload to stop, the ledger's lock
        free): ``True`` once done, ``False`` when :meth:`release` must run (shielded)."""
        if lease.id in self._processes or type(self).release is not LocalBackend.release:
            return False  # a workload to stop first, or a subclass that releases its own way
        try:
            done, _ = self.ledger.try_now(self.ledger.release_own, lease.id)
        except LedgerError as exc:
            # The ledger is gone or broken: nothing to free in it, and no work to stop.
            log.warning("lease %s: %s", lease.id, exc)
            return True
        return done

    async def release(self, lease: Lease) -> None:
        """Stop the workload (if launched), then free the lease's devices."""
        process = self._processes.get(lease.id)
        if process is not None:
            # Popped only once stopped: a release racing this one stops (waits for) the
            # same process, and never frees the devices while the work still runs.
            await process.stop()
            self._processes.pop(lease.id, None)
        try:
            # Uncontended, the release runs here and now, with nothing to cancel (no await);
            # only a wait for another process's lock needs shielding.
            done, _ = self.ledger.try_now(self.ledger.release_own, lease.id)
            if not done:
                with anyio.CancelScope(shield=True):
                    await self.ledger.arelease(lease.id)
        except LedgerError as exc:
            # The ledger is gone or broken: nothing to free in it, and the work is stopped.
            log.warning("lease %s: %s", lease.id, exc)

    async def abandon(self, offer: Offer, idempotency_key: str) -> None:
        """Free whatever a commit under ``idempotency_key`` bound (the key is the lease id)."""
        process = self._processes.get(idempotency_key)
        if process is not None:
            await process.stop()  # popped once stopped, as in release()
            self._processes.pop(idempotency_key, None)
        await self.ledger.arelease(idempotency_key)

    async def observe(self, lease: Lease) -> Observation:
        """Liveness of the launched workload and of the ledger entry; NVML figures."""
        now = self.clock.time()
        faults: list[Fault] = []
        process = self._processes.get(lease.id)
        workload: str | None = None
        if process is not None:
            workload = (lease.workload_state or WorkloadState.NOT_READY).value
            code = process.returncode
            if code is not None:
                # Exiting is how a batch job completes; only a failure is a fault.
                workload = WorkloadState.COMPLETED.value
                if code != 0:
                    faults.append(
                        Fault(
                            kind="workload-exited",
                            at=now,
                            reason=f"workload exited with status {code}",
                        )
                    )
        if await self.ledger.aget(lease.id) is None and lease.is_active:
            faults.append(
                Fault(
                    kind="capacity-revoked", at=now, reason="the lease was removed from the ledger"
                )
            )
        gpus = [g for g in lease.details.get("gpus", "").split(",") if g]
        samples = tuple(_nvml_samples(gpus, now)) if gpus else ()
        return Observation(samples=samples, faults=tuple(faults), workload=workload)

    async def aclose(self) -> None:
        """Stop launched workloads and close the ledger connection."""
        for lease_id in list(self._processes):
            await self._processes.pop(lease_id).stop()
        if self._ledger is not None:
            self._ledger.close()


def port_env(name: str) -> str:
    """The env var that hands a granted port to the workload: ``AICONTRACT_PORT_<NAME>``."""
    return "AICONTRACT_PORT_" + name.upper().replace("-", "_")


def _endpoints(ports: dict[str, int]) -> dict[str, str]:
    """Endpoints on this host for ``ports`` (``http*`` names as URLs)."""
    return {
        name: f"{'http://' if name.startswith('http') else ''}127.0.0.1:{port}"
        for name, port in ports.items()
    }


def _nvml_samples(gpu_ids: Sequence[str], now: float) -> list[Sample]:
    try:
        import pynvml
    except ImportError:
        return []
    samples: list[Sample] = []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        for gpu in gpu_ids:
            try:
                handle = (
                    pynvml.nvmlDeviceGetHandleByUUID(gpu)
                    if gpu.startswith("MIG-")
                    else pynvml.nvmlDeviceGetHandleByIndex(int(gpu))
                )
                util = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except (pynvml.NVMLError, ValueError):
                continue
            labels = {"gpu": gpu}
            samples.append(
                Sample(sli="gpu_utilization", value=util.gpu / 100, at=now, labels=labels)
            )
            samples.append(
                Sample(
                    sli="gpu_memory_utilization",
                    value=memory.used / max(1, memory.total),
                    at=now,
                    labels=labels,
                )
            )
    finally:
        pynvml.nvmlShutdown()
    return samples
