"""Choosing GPU sets by topology: what is asked is given, and NVLink domains stay whole.

The random hosts are written as inventory files and read back, so the properties
hold for what a file can state. The oracles below read the *file's* facts (domain
names, listed links, NUMA ids) and never the :class:`Topology` they check.

Properties, for every random host and every random sequence of grants and releases:

1. a granted set has the count asked, of free candidate GPUs and free pool CPUs;
2. ``nvlink``: every pair of granted GPUs is NVLink-linked;
3. locality: every granted CPU is on a granted GPU's NUMA node (on one node without GPUs);
4. nothing is refused that could be granted: a refusal means no set of free GPUs
   (and CPUs) meets the request (brute force);
5. no fragmentation: after a grant (without locality), the number of NVLink
   domains (of two GPUs or more) left wholly free is the most that any acceptable
   set could have left. In particular a whole free domain is never broken into
   by a small grant while a partly used one (or a GPU in no domain) has room, and
   an 8-GPU NVLink request fits whenever 8 GPUs of one domain are free (4).
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicontract import GPU, Contract
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.inventory import Inventory, load_inventory
from aicontract.backends.local.topology import Choice

# -- random hosts ------------------------------------------------------------------------


@st.composite
def hosts(draw: st.DrawFn) -> dict[str, Any]:
    """A host as an inventory document: NUMA nodes, GPUs in NVLink domains, some links."""
    nodes = draw(st.integers(1, 3))
    per_node = draw(st.integers(1, 4))
    gpus = draw(st.integers(1, 9))
    numa = [draw(st.integers(0, nodes - 1)) for _ in range(gpus)]
    # Domains: consecutive runs of GPUs; a run of one is a GPU in no domain.
    domains: list[str | None] = []
    run = 0
    while len(domains) < gpus:
        size = draw(st.integers(1, 4))
        name = f"d{run}" if size > 1 else None
        domains += [name] * min(size, gpus - len(domains))
        run += 1
    documents = []
    for i in range(gpus):
        gpu: dict[str, Any] = {"model": "H100", "memory": "80GiB", "numa": numa[i]}
        if domains[i] is not None:
            gpu["nvlink_domain"] = domains[i]
        documents.append(gpu)
    links = []
    # Some direct NVLink bridges between GPUs of different domains (incomplete domains),
    # and PCIe paths stated for others.
    for a, b in itertools.combinations(range(gpus), 2):
        if domains[a] is not None and domains[a] == domains[b]:
            continue
        kind = draw(st.sampled_from(["", "", "", "nvlink", "pix", "phb"]))
        if kind:
            links.append({"gpus": [a, b], "link": kind})
    return {
        "cpus": nodes * per_node,
        "memory": "64GiB",
        "numa": [
            {"id": n, "cpus": list(range(n * per_node, (n + 1) * per_node)), "memory": "16GiB"}
            for n in range(nodes)
        ],
        "gpus": documents,
        "links": links,
    }


def _load(tmp_path: Path, document: dict[str, Any]) -> Inventory:
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(document))
    return load_inventory(path)


# -- oracles, from the document alone ----------------------------------------------------


class Oracle:
    def __init__(self, document: dict[str, Any]) -> None:
        gpus = document["gpus"]
        self.n = len(gpus)
        self.numa = [g["numa"] for g in gpus]
        self.node_cpus = {n["id"]: set(n["cpus"]) for n in document["numa"]}
        self.nvlinked = set()
        for a, b in itertools.combinations(range(self.n), 2):
            da, db = gpus[a].get("nvlink_domain"), gpus[b].get("nvlink_domain")
            if da is not None and da == db:
                self.nvlinked.add((a, b))
        for link in document["links"]:
            if link["link"] == "nvlink":
                self.nvlinked.add(tuple(sorted(link["gpus"])))
        # Domains: connected parts of the NVLink graph.
        parent = list(range(self.n))

        def find(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i

        for a, b in self.nvlinked:
            parent[find(a)] = find(b)
        self.domains = [
            {i for i in range(self.n) if find(i) == r} for r in {find(i) for i in range(self.n)}
        ]

    def all_nvlinked(self, members: tuple[int, ...]) -> bool:
        return all(tuple(sorted(p)) in self.nvlinked for p in itertools.combinations(members, 2))

    def whole_free(self, used: set[int]) -> int:
        return sum(1 for d in self.domains if len(d) > 1 and not d & used)

    def local_cpus(self, members: tuple[int, ...], free_cpus: set[int]) -> set[int]:
        return {c for i in members for c in self.node_cpus[self.numa[i]] & free_cpus}

    def acceptable(
        self, used: set[int], free_cpus: set[int], count: int, nvlink: bool, cpus: int, local: bool
    ) -> list[tuple[int, ...]]:
        free = [i for i in range(self.n) if i not in used]
        out = []
        for members in itertools.combinations(free, count):
            if nvlink and count > 1 and not self.all_nvlinked(members):
                continue
            pool = self.local_cpus(members, free_cpus) if local else free_cpus
            if len(pool) < cpus:
                continue
            out.append(members)
        return out


# -- properties --------------------------------------------------------------------------

requests = st.tuples(
    st.integers(1, 4),  # GPUs
    st.booleans(),  # nvlink
    st.integers(0, 3),  # CPUs
    st.booleans(),  # numa locality
)
steps = st.lists(st.one_of(requests, st.integers(0, 7)), min_size=1, max_size=14)


@given(document=hosts(), taken=st.sets(st.integers(0, 8), max_size=4), sequence=steps)
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_granted_sets_meet_the_request_and_keep_domains_whole(
    tmp_path: Path, document: dict[str, Any], taken: set[int], sequence: list[Any]
) -> None:
    """``taken``: GPUs held from the start (by leases that were granted otherwise)."""
    inventory = _load(tmp_path, document)
    topology = inventory.topology()
    oracle = Oracle(document)
    ids = [g.id for g in inventory.gpus]
    pool = inventory.cpu_list
    held: list[Choice] = []
    used: set[str] = {ids[i] for i in taken if i < len(ids)}
    used_cpus: set[int] = set()
    for step in sequence:
        if isinstance(step, int):  # release the step-th holding, if any
            if held:
                gone = held.pop(step % len(held))
                used -= set(gone.gpus)
                used_cpus -= set(gone.cpus)
            continue
        count, nvlink, cpus, local = step
        choice = topology.choose(
            ids,
            used,
            count,
            nvlink=nvlink,
            cpus=cpus,
            cpu_pool=pool,
            used_cpus=used_cpus,
            local=local,
        )
        used_idx = {ids.index(g) for g in used}
        free_cpus = set(pool) - used_cpus
        acceptable = oracle.acceptable(used_idx, free_cpus, count, nvlink, cpus, local)
        if choice is None:
            assert not acceptable, f"refused, yet {acceptable[0]} meets {step}"  # 4
            continue
        members = tuple(ids.index(g) for g in choice.gpus)
        # 1
        assert len(set(members)) == count
        assert not set(choice.gpus) & used
        assert len(set(choice.cpus)) == cpus
        assert not set(choice.cpus) & used_cpus
        assert set(choice.cpus) <= set(pool)
        # 2
        if nvlink and count > 1:
            assert oracle.all_nvlinked(members)
        if count > 1:
            assert (choice.interconnect == "nvlink") == oracle.all_nvlinked(members)
        # 3
        if local:
            assert set(choice.cpus) <= oracle.local_cpus(members, free_cpus)
            assert choice.numa_nodes == tuple(sorted({oracle.numa[i] for i in members}))
        # 5
        if not local:
            best = max(oracle.whole_free(used_idx | set(m)) for m in acceptable)
            assert oracle.whole_free(used_idx | set(members)) == best, (
                f"{step} took {members}; some acceptable set leaves {best} whole domains"
            )
        held.append(choice)
        used |= set(choice.gpus)
        used_cpus |= set(choice.cpus)


@given(document=hosts(), cpus=st.integers(1, 4))
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_cpu_only_locality_is_one_node(tmp_path: Path, document: dict[str, Any], cpus: int) -> None:
    inventory = _load(tmp_path, document)
    oracle = Oracle(document)
    choice = inventory.topology().choose(
        [], set(), 0, cpus=cpus, cpu_pool=inventory.cpu_list, local=True
    )
    fits = [n for n, members in oracle.node_cpus.items() if len(members) >= cpus]
    if not fits:
        assert choice is None
        return
    assert choice is not None
    (node,) = choice.numa_nodes
    assert set(choice.cpus) <= oracle.node_cpus[node]


# -- a first-free chooser fragments; this one does not -----------------------------------


def test_small_grants_do_not_break_a_domain_that_a_loose_gpu_can_serve(tmp_path: Path) -> None:
    """GPUs 0-3 are one NVLink domain, 4 and 5 are PCIe cards. Two 1-GPU grants take the
    PCIe cards (a first-free choice would take 0 and 1), so 4 NVLink GPUs still fit."""
    document = {
        "cpus": 8,
        "memory": "64GiB",
        "gpus": [{"model": "H100", "memory": "80GiB", "nvlink_domain": "a"}] * 4
        + [{"model": "H100", "memory": "80GiB"}] * 2,
    }
    topology = _load(tmp_path, document).topology()
    ids = [str(i) for i in range(6)]
    used: set[str] = set()
    for _ in range(2):
        choice = topology.choose(ids, used, 1)
        assert choice is not None
        used |= set(choice.gpus)
    assert used == {"4", "5"}
    four = topology.choose(ids, used, 4, nvlink=True)
    assert four is not None
    assert four.interconnect == "nvlink"


def test_many_small_grants_and_releases_leave_an_eight_gpu_domain(tmp_path: Path) -> None:
    """Two 8-GPU domains. Whatever order 1- and 2-GPU grants are released in, while they
    hold 8 GPUs or fewer they sit in one domain, so an 8-GPU NVLink request always fits."""
    document = {
        "cpus": 8,
        "memory": "64GiB",
        "gpus": [{"model": "H100", "memory": "80GiB", "nvlink_domain": "a"}] * 8
        + [{"model": "H100", "memory": "80GiB", "nvlink_domain": "b"}] * 8,
    }
    topology = _load(tmp_path, document).topology()
    ids = [str(i) for i in range(16)]
    rng = random.Random(14)
    held: list[tuple[str, ...]] = []
    for _ in range(400):
        holding = sum(len(h) for h in held)
        if held and (holding >= 7 or rng.random() < 0.4):
            held.pop(rng.randrange(len(held)))
        else:
            size = rng.choice([1, 1, 2])
            if holding + size > 8:
                continue
            used = {g for h in held for g in h}
            choice = topology.choose(ids, used, size, nvlink=size > 1)
            assert choice is not None
            held.append(choice.gpus)
        used = {g for h in held for g in h}
        eight = topology.choose(ids, used, 8, nvlink=True)
        assert eight is not None, f"holding {sorted(used, key=int)}: no free 8-GPU domain"


# -- through the backend: the grant states what it gave ---------------------------------

HGX_2S = {
    "cpus": 32,
    "memory": "1TiB",
    "numa": [
        {"id": 0, "cpus": "0-15", "memory": "512GiB"},
        {"id": 1, "cpus": "16-31", "memory": "512GiB"},
    ],
    "gpus": [
        {"model": "H100", "memory": "80GiB", "numa": 0 if i < 4 else 1, "nvlink_domain": "hgx"}
        for i in range(8)
    ],
}
"""An 8-GPU HGX H100 with two sockets: GPUs 0-3 on node 0, 4-7 on node 1."""

ISLANDS = {
    "cpus": 16,
    "memory": "256GiB",
    "numa": [{"id": 0, "cpus": "0-7"}, {"id": 1, "cpus": "8-15"}],
    "gpus": [
        {"model": "A100", "memory": "80GiB", "numa": i // 4, "nvlink_domain": f"island{i // 4}"}
        for i in range(8)
    ],
}
"""Two NVLink islands of 4 A100s, one per socket."""

PCIE = {
    "cpus": 8,
    "memory": "64GiB",
    "gpus": [{"model": "L40S", "memory": "48GiB"}] * 4,
    "links": [
        {"gpus": [0, 1], "link": "pix"},
        {"gpus": [2, 3], "link": "pix"},
        {"gpus": [0, 2], "link": "phb"},
        {"gpus": [1, 3], "link": "phb"},
    ],
}


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    def make(document: dict[str, Any]) -> LocalBackend:
        path = tmp_path / "inventory.json"
        path.write_text(json.dumps(document))
        monkeypatch.setenv("AICONTRACT_INVENTORY", str(path))
        return LocalBackend(state_dir=tmp_path / "state")

    return make


@pytest.mark.anyio
async def test_two_socket_box_pins_numa_local_cpus(host: Any) -> None:
    backend = host(HGX_2S)
    try:
        contract = Contract(gpus=1, cpus=8, placement={"locality": "numa"})
        leases = []
        for _ in range(3):
            quote = await backend.quote(contract)
            leases.append(await backend.commit(quote.offers[0], f"k{len(leases)}"))
        for lease in leases:
            gpu = int(lease.env["CUDA_VISIBLE_DEVICES"])
            cpus = {int(c) for c in lease.env["AICONTRACT_CPUS"].split(",")}
            node = 0 if gpu < 4 else 1
            assert cpus <= set(range(node * 16, node * 16 + 16)), (gpu, cpus)
            assert lease.grant.numa_nodes == (node,)
        # Two 8-CPU grants filled node 0; the third GPU came from node 1, with its CPUs.
        assert {lease.grant.numa_nodes for lease in leases} == {(0,), (1,)}
        for lease in leases:
            await lease.release()
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_locality_is_refused_when_the_gpus_nodes_lack_cpus(host: Any) -> None:
    backend = host(HGX_2S)
    try:
        node0 = await backend.commit((await backend.quote(Contract(gpus=4))).offers[0], "a")
        assert node0.env["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
        local = Contract(gpus=1, cpus=12, placement={"locality": "numa"})
        node1 = await backend.commit((await backend.quote(local)).offers[0], "b")
        assert node1.grant.numa_nodes == (1,)
        # 20 CPUs are free, but only 4 on node 1, where the free GPUs are.
        refused = await backend.quote(Contract(gpus=1, cpus=8, placement={"locality": "numa"}))
        assert not refused.offers
        assert [r.requirement for r in refused.rejections] == ["placement.locality"]
        loose = await backend.commit((await backend.quote(Contract(gpus=1, cpus=8))).offers[0], "c")
        cpus = [int(c) for c in loose.env["AICONTRACT_CPUS"].split(",")]
        assert cpus[:4] == [28, 29, 30, 31]  # the GPU's node first, then the rest
        assert loose.grant.numa_nodes == ()  # and the grant does not claim locality
        for lease in (node0, node1, loose):
            await lease.release()
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_without_locality_cpus_still_come_from_the_gpus_node_first(host: Any) -> None:
    backend = host(HGX_2S)
    try:
        taken = await backend.commit(
            (await backend.quote(Contract(gpus=4, cpus=2))).offers[0], "first"
        )
        lease = await backend.commit(
            (await backend.quote(Contract(gpus=1, cpus=4))).offers[0], "second"
        )
        gpu = int(lease.env["CUDA_VISIBLE_DEVICES"])
        cpus = [int(c) for c in lease.env["AICONTRACT_CPUS"].split(",")]
        assert gpu >= 4
        assert all(c >= 16 for c in cpus)
        await lease.release()
        await taken.release()
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_nvlink_grant_best_fits_into_the_used_island(host: Any) -> None:
    backend = host(ISLANDS)
    try:
        one = await backend.commit((await backend.quote(Contract(gpus=1))).offers[0], "one")
        three = await backend.commit(
            (await backend.quote(Contract(gpus=GPU(count=3, interconnect="nvlink")))).offers[0],
            "three",
        )
        island = {int(one.env["CUDA_VISIBLE_DEVICES"]) // 4}
        assert {int(g) // 4 for g in three.env["CUDA_VISIBLE_DEVICES"].split(",")} == island
        assert three.grant.gpu_interconnect == "nvlink"
        # So the other island is whole, for the 4-GPU request.
        four = await backend.commit(
            (await backend.quote(Contract(gpus=GPU(count=4, interconnect="nvlink")))).offers[0],
            "four",
        )
        assert four.grant.gpu_interconnect == "nvlink"
        assert four.grant.numa_nodes == (1 - island.pop(),)
        for lease in (one, three, four):
            await lease.release()
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_nvlink_across_islands_is_refused_and_pcie_is_granted(host: Any) -> None:
    backend = host(ISLANDS)
    try:
        refused = await backend.quote(Contract(gpus=GPU(count=6, interconnect="nvlink")))
        assert not refused.offers
        (why,) = refused.rejections
        assert why.requirement == "resources.gpus.interconnect"
        assert "at most 4 free GPUs linked by NVLink" in why.available
        # The counter-offer is the most that one domain holds, still over NVLink.
        (counter,) = refused.counter_offers
        assert (counter.grant.gpus, counter.grant.gpu_interconnect) == (4, "nvlink")
        assert counter.contract.resources.gpus is not None
        assert counter.contract.resources.gpus.count.min == 4
        taken = await backend.commit(counter, "counter")
        assert len(taken.details["gpus"].split(",")) == 4
        assert taken.grant.gpu_interconnect == "nvlink"
        await taken.release()
        # A range takes the most one domain holds.
        ranged = await backend.quote(Contract(gpus=GPU(count="2..8", interconnect="nvlink")))
        assert ranged.offers[0].grant.gpus == 4
        pcie = await backend.quote(Contract(gpus=GPU(count=6, interconnect="pcie")))
        assert pcie.offers[0].grant.gpu_interconnect == "pcie"
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_pcie_box_states_pcie_and_refuses_nvlink(host: Any) -> None:
    backend = host(PCIE)
    try:
        refused = await backend.quote(Contract(gpus=GPU(count=2, interconnect="nvlink")))
        assert [r.requirement for r in refused.rejections] == ["resources.gpus.interconnect"]
        # One GPU needs no link: nvlink is met trivially.
        assert (await backend.quote(Contract(gpus=GPU(count=1, interconnect="nvlink")))).offers
        lease = await backend.commit(
            (await backend.quote(Contract(gpus=GPU(count=2, interconnect="pcie")))).offers[0],
            "pair",
        )
        assert lease.grant.gpu_interconnect == "pcie"
        assert lease.grant.numa_nodes == ()  # the file states no NUMA nodes
        await lease.release()
        # Locality cannot be met where the inventory states no NUMA nodes.
        refused = await backend.quote(Contract(gpus=1, placement={"locality": "numa"}))
        assert "no NUMA nodes (the inventory lists none)" in refused.rejections[0].available
    finally:
        await backend.aclose()


@pytest.mark.anyio
async def test_the_lease_states_what_it_bound_and_a_retry_is_the_same_lease(host: Any) -> None:
    backend = host(ISLANDS)
    try:
        offer = (await backend.quote(Contract(gpus=2))).offers[0]
        assert offer.grant.gpu_interconnect == "nvlink"  # two GPUs of a free island, now
        nvlink3 = Contract(gpus=GPU(count=3, interconnect="nvlink"))
        others = [
            await backend.commit((await backend.quote(nvlink3)).offers[0], f"other{i}")
            for i in range(2)
        ]
        # One GPU is left in each island: the pair bound now spans both.
        lease = await backend.commit(offer, "pair")
        assert lease.details["gpus"] == "3,7"
        assert lease.grant.gpu_interconnect == "pcie"
        assert lease.grant.numa_nodes == (0, 1)
        assert (await backend.commit(offer, "pair")).details["gpus"] == "3,7"  # a retry
        (record,) = [r for r in backend.leases() if r.id == "pair"]
        assert record.grant == lease.grant
        for held in (*others, lease):
            await held.release()
    finally:
        await backend.aclose()
