"""A host's GPU and NUMA topology, and the choice of GPU sets that respects it.

The facts (:class:`NumaNode`, :class:`GPULink`, :class:`RDMANic`) are what an
inventory states, read from the host (sysfs and NVML) or from an
``AICONTRACT_INVENTORY`` file. :class:`Topology` is built from them once per
inventory: NVLink domains (islands) and each GPU's NUMA node are precomputed,
so choosing a set of GPUs costs one pass over the host's GPUs, never a search
over subsets (a bounded one only inside an NVLink domain whose GPUs are not all
linked to each other, such as a hybrid cube-mesh).

Links use the words of ``nvidia-smi topo -m``: ``nvlink``; and for PCIe, from
nearest to farthest, ``pix`` (one PCIe switch), ``pxb`` (several switches),
``phb`` (the same host bridge: one root complex), ``node`` (across host bridges
within one NUMA node) and ``sys`` (across sockets). A contract speaks coarser
words (``resources.gpus.interconnect``: ``nvlink`` or ``pcie``): every PCIe
path is ``pcie``.

How a set is chosen (see :meth:`Topology.choose`):

- a request that needs NVLink (``interconnect: nvlink``, two GPUs or more) gets
  GPUs of one NVLink domain, every pair linked, from the domain with the
  *fewest* free GPUs that still fits it (best fit: a partly used domain before
  a whole one, a small one before a big one);
- any other request gets the GPUs that matter least to NVLink requests: GPUs
  in no NVLink domain first, then those of the most used domains, preferring
  GPUs that share a NUMA node — so small grants never break up a free domain
  while a partly used one has room;
- CPUs come from the GPUs' NUMA nodes first (only from there with
  ``placement.locality: numa``).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from typing import Literal

import attrs
import msgspec

from ...units import Bytes

__all__ = [
    "LINK_KINDS",
    "Choice",
    "GPULink",
    "LinkKind",
    "NumaNode",
    "RDMANic",
    "Topology",
    "parse_cpulist",
]

LinkKind = Literal["nvlink", "pix", "pxb", "phb", "node", "sys"]
"""A link between two GPUs, in the words of ``nvidia-smi topo -m`` (nearest first)."""

LINK_KINDS: tuple[str, ...] = ("nvlink", "pix", "pxb", "phb", "node", "sys")
# Lower is nearer; 0 would be the GPU itself.
_RANK = {kind: rank for rank, kind in enumerate(LINK_KINDS, start=1)}
_NVLINK = _RANK["nvlink"]
_SYS = _RANK["sys"]
# How many nodes a clique search inside one incomplete NVLink domain may visit.
_SEARCH_BUDGET = 20_000
MAX_NUMA_NODES = 1024
_CPULIST = re.compile(r"^\s*\d{1,6}(\s*-\s*\d{1,6})?(\s*,\s*\d{1,6}(\s*-\s*\d{1,6})?)*\s*$")


class NumaNode(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One NUMA node: its id, the CPU ids on it, and its memory (when known)."""

    id: int
    cpus: tuple[int, ...] = ()
    memory: Bytes | None = None


class GPULink(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How two GPUs (by inventory id) are connected.

    ``nvlinks`` is the number of NVLink links between them (``NV18`` in
    ``nvidia-smi topo -m``; through an NVSwitch, the GPU's active links), and
    ``nvlink_generation`` the NVLink generation (4 for H100), when known.
    """

    gpus: tuple[str, str]
    link: LinkKind
    nvlinks: int = 0
    nvlink_generation: int | None = None


class RDMANic(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An RDMA network device (``/sys/class/infiniband``) and its NUMA node."""

    name: str
    numa: int | None = None
    link_layer: str | None = None
    """``InfiniBand`` or ``Ethernet`` (RoCE), as the device's port reports it."""


def parse_cpulist(text: str) -> tuple[int, ...]:
    """CPU ids from the kernel's list form (``0-3,8,10-11``), sorted, each once.

    Raises :class:`ValueError` naming the text when it is not such a list.
    """
    if not _CPULIST.match(text):
        raise ValueError(f"{text[:80]!r} is not a CPU list; expected ids and ranges like 0-31,64")
    out: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high) if high else int(low)
        if last < first or last - first > 65536:
            raise ValueError(f"{part.strip()!r} is not a range of CPU ids; expected low-high")
        out.update(range(first, last + 1))
    return tuple(sorted(out))


@attrs.frozen
class Choice:
    """A chosen grant: GPU ids, CPU ids, and what they are.

    ``interconnect`` is the contract's word for the weakest link between the
    GPUs (``nvlink`` or ``pcie``; ``None`` for fewer than two), ``path`` the
    weakest link in ``nvidia-smi`` words, and ``numa_nodes`` the NUMA nodes
    the GPUs and CPUs all lie on — empty when they do not (or it is unknown).
    """

    gpus: tuple[str, ...]
    cpus: tuple[int, ...]
    interconnect: str | None
    path: str | None
    numa_nodes: tuple[int, ...]


@attrs.define(eq=False)
class Topology:
    """What a host's GPUs and NUMA nodes are, precomputed for fast choices."""

    ids: tuple[str, ...]
    numa_of: tuple[int | None, ...]
    node_cpus: dict[int, tuple[int, ...]]
    node_memory: dict[int, int | None]
    explicit: dict[tuple[int, int], int]
    domain_of: tuple[int | None, ...]
    island_of: tuple[int, ...] = attrs.field(init=False)
    islands: tuple[tuple[int, ...], ...] = attrs.field(init=False)
    complete: tuple[bool, ...] = attrs.field(init=False)
    sizes: tuple[int, ...] = attrs.field(init=False)
    flat: bool = attrs.field(init=False)
    index: dict[str, int] = attrs.field(init=False)
    cpu_node: dict[int, int] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.index = {gpu: i for i, gpu in enumerate(self.ids)}
        self.cpu_node = {c: node for node, cpus in self.node_cpus.items() for c in cpus}
        # NVLink domains: the connected parts of the NVLink graph (union-find).
        parent = list(range(len(self.ids)))

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        first_in_domain: dict[int, int] = {}
        for i, domain in enumerate(self.domain_of):
            if domain is not None:
                j = first_in_domain.setdefault(domain, i)
                parent[root(i)] = root(j)
        for (i, j), rank in self.explicit.items():
            if rank == _NVLINK:
                parent[root(i)] = root(j)
        groups: dict[int, list[int]] = {}
        for i in range(len(self.ids)):
            groups.setdefault(root(i), []).append(i)
        islands = sorted((tuple(g) for g in groups.values()), key=lambda g: g[0])
        island_of = [0] * len(self.ids)
        for number, members in enumerate(islands):
            for i in members:
                island_of[i] = number
        self.islands = tuple(islands)
        self.sizes = tuple(len(m) for m in islands)
        # No NVLink and no NUMA facts: every choice is the first free GPUs and CPUs.
        self.flat = not self.node_cpus and all(size == 1 for size in self.sizes)
        self.island_of = tuple(island_of)
        self.complete = tuple(
            all(self.rank(a, b) == _NVLINK for x, a in enumerate(m) for b in m[x + 1 :])
            for m in islands
        )

    @classmethod
    def build(
        cls,
        ids: Sequence[str],
        *,
        numa_of: Sequence[int | None],
        domains: Sequence[str | None],
        nodes: Iterable[NumaNode],
        links: Iterable[GPULink],
    ) -> Topology:
        """A topology from an inventory's facts (ids already validated)."""
        node_list = list(nodes)
        index = {gpu: i for i, gpu in enumerate(ids)}
        explicit: dict[tuple[int, int], int] = {}
        for link in links:
            a, b = sorted((index[link.gpus[0]], index[link.gpus[1]]))
            explicit[(a, b)] = _RANK[link.link]
        names: dict[str, int] = {}
        domain_of = tuple(None if d is None else names.setdefault(d, len(names)) for d in domains)
        numa = list(numa_of)
        if len(node_list) == 1:
            # One NUMA node: every GPU is on it, whatever the device said (-1 often).
            numa = [node_list[0].id] * len(ids)
        return cls(
            ids=tuple(ids),
            numa_of=tuple(numa),
            node_cpus={n.id: n.cpus for n in node_list},
            node_memory={
                n.id: (n.memory.bytes if n.memory is not None else None) for n in node_list
            },
            explicit=explicit,
            domain_of=domain_of,
        )

    # -- facts ---------------------------------------------------------------------------

    def rank(self, a: int, b: int) -> int:
        """How near GPUs ``a`` and ``b`` (indices) are: 1 for NVLink .. 6 across sockets."""
        if a == b:
            return 0
        key = (a, b) if a < b else (b, a)
        found = self.explicit.get(key)
        if found is not None:
            return found
        domain = self.domain_of[a]
        if domain is not None and domain == self.domain_of[b]:
            return _NVLINK
        na, nb = self.numa_of[a], self.numa_of[b]
        if na is not None and na == nb:
            return _RANK["node"]
        return _SYS

    def link(self, a: str, b: str) -> str:
        """The link between two GPUs by id, in ``nvidia-smi`` words."""
        rank = self.rank(self.index[a], self.index[b])
        return LINK_KINDS[rank - 1] if rank else "self"

    def worst(self, members: Sequence[int]) -> int:
        """The weakest link among ``members`` (0 for fewer than two)."""
        worst = 0
        for x, a in enumerate(members):
            for b in members[x + 1 :]:
                rank = self.rank(a, b)
                if rank > worst:
                    worst = rank
                    if worst == _SYS:
                        return worst
        return worst

    def nodes_of(self, members: Sequence[int]) -> tuple[int, ...] | None:
        """The NUMA nodes of GPUs ``members``; ``None`` when one's is unknown."""
        nodes: set[int] = set()
        for i in members:
            node = self.numa_of[i]
            if node is None:
                return None
            nodes.add(node)
        return tuple(sorted(nodes))

    def largest_nvlink_set(self, free: Sequence[str]) -> int:
        """The most GPUs among ``free`` that are all linked to each other by NVLink."""
        best = 1 if free else 0
        by_island = self._by_island([self.index[g] for g in free])
        for island, members in by_island.items():
            if len(members) <= best:
                continue
            if self.complete[island]:
                best = len(members)
                continue
            for size in range(len(members), best, -1):
                if next(self._cliques(members, size), None) is not None:
                    best = size
                    break
        return best

    def describe(self, gpus: Sequence[str], cpus: Sequence[int]) -> Choice:
        """What a set of GPU and CPU ids is: their weakest link, their common NUMA nodes."""
        members = [self.index[g] for g in gpus if g in self.index]
        nodes = self.nodes_of(members) if members else None
        if not members and cpus:
            found = {self.cpu_node.get(c) for c in cpus}
            only = next(iter(found)) if len(found) == 1 else None
            nodes = (only,) if only is not None else None
        local = nodes is not None and all(self.cpu_node.get(c) in nodes for c in cpus)
        worst = self.worst(members)
        return Choice(
            gpus=tuple(gpus),
            cpus=tuple(cpus),
            interconnect=None if worst == 0 else ("nvlink" if worst == _NVLINK else "pcie"),
            path=None if worst == 0 else LINK_KINDS[worst - 1],
            numa_nodes=nodes if nodes is not None and local else (),
        )

    # -- choosing ------------------------------------------------------------------------

    def choose(
        self,
        candidates: Sequence[str],
        used: Set[str],
        count: int,
        *,
        nvlink: bool = False,
        cpus: int = 0,
        cpu_pool: Sequence[int] = (),
        used_cpus: Set[int] = frozenset(),
        local: bool = False,
        memory: int = 0,
    ) -> Choice | None:
        """The best set of ``count`` GPUs among free ``candidates``, with CPUs; else ``None``.

        ``nvlink`` demands every pair be NVLink-linked; ``local`` demands the
        CPUs (and ``memory``, against the nodes' size) be on the GPUs' NUMA
        nodes — on one node when ``count`` is 0. ``cpu_pool`` is the order CPUs
        are handed out in otherwise.
        """
        free_cpus = [c for c in cpu_pool if c not in used_cpus] if cpus or local else []
        if count == 0:
            return self._cpus_only(free_cpus, cpus, local, memory)
        cand = [self.index[g] for g in candidates if g not in used]
        if len(cand) < count:
            return None
        island_free = list(self.sizes)
        for gpu in used:
            i = self.index.get(gpu)
            if i is not None:
                island_free[self.island_of[i]] -= 1
        if count == 1:
            # The common case, in one pass: the first candidate of the best island.
            best, best_key = cand[0], (3, 0, 0)
            seen: set[int] = set()
            for i in cand:
                island = self.island_of[i]
                if island in seen:
                    continue
                seen.add(island)
                size, free = self.sizes[island], island_free[island]
                rank = (0 if size == 1 else (1 if free < size else 2), free, size)
                if rank < best_key:
                    best, best_key = i, rank
            choice = self._with_cpus([best], free_cpus, cpus, local, memory)
            if choice is not None or len(cand) == 1:
                return choice
        position = {i: p for p, i in enumerate(cand)}

        def key(i: int) -> tuple[int, int, int, int]:
            # GPUs in no NVLink domain first, then partly used domains (fewest free
            # first), then whole free domains (smallest first): small grants never
            # break a free domain while a used one has room.
            island = self.island_of[i]
            size, free = self.sizes[island], island_free[island]
            tier = 0 if size == 1 else (1 if free < size else 2)
            return (tier, free, size, position[i])

        node_free: dict[int, int] | None = None
        if local and count > 1:
            node_free = {}
            for c in free_cpus:
                node = self.cpu_node.get(c)
                if node is not None:
                    node_free[node] = node_free.get(node, 0) + 1
        for members in self._options(cand, count, nvlink, island_free, key, node_free):
            choice = self._with_cpus(members, free_cpus, cpus, local, memory)
            if choice is not None:
                return choice
        return None

    def _options(
        self,
        cand: list[int],
        count: int,
        nvlink: bool,
        island_free: list[int],
        key: Callable[[int], tuple[int, int, int, int]],
        node_free: dict[int, int] | None,
    ) -> Iterator[list[int]]:
        """GPU sets to try, best first (lazily: the first usually fits)."""
        if count == 1:
            best = min(cand, key=key)
            yield [best]
            for i in sorted(cand, key=key):
                if i != best:
                    yield [i]
            return
        by_island = self._by_island(cand)
        fitting = [
            isl
            for isl, members in by_island.items()
            if len(members) >= count and len(self.islands[isl]) > 1
        ]
        # Best fit: a partly used domain before a whole one, then the fewest free.
        fitting.sort(
            key=lambda isl: (
                island_free[isl] == len(self.islands[isl]),
                island_free[isl],
                len(self.islands[isl]),
                isl,
            )
        )
        if nvlink:
            for island in fitting:
                yield from self._in_island(island, by_island[island], count, node_free)
            return
        ordered = sorted(cand, key=key)
        taken = [i for i in ordered if key(i)[0] < 2][:count]
        rest = count - len(taken)
        if rest:
            # What is left comes from whole domains: the smallest one that holds it
            # all, else the biggest ones first (breaking as few as possible).
            whole = self._by_island(i for i in ordered if key(i)[0] == 2)
            holds = [isl for isl, m in whole.items() if len(m) >= rest]
            if holds:
                best = min(holds, key=lambda isl: (len(whole[isl]), isl))
                taken += whole[best][:rest]
            else:
                for isl in sorted(whole, key=lambda isl: (-len(whole[isl]), isl)):
                    taken += whole[isl][: count - len(taken)]
        yield taken
        # Alternatives, for when the first set's NUMA nodes lack free CPUs.
        by_node: dict[int | None, list[int]] = {}
        for i in ordered:
            by_node.setdefault(self.numa_of[i], []).append(i)
        for node in sorted(
            (n for n, m in by_node.items() if n is not None and len(m) >= count),
            key=lambda n: (len(by_node[n]), n),
        ):
            yield by_node[node][:count]
        if node_free is not None:
            yield self._round_robin(ordered, node_free)[:count]

    def _by_island(self, members: Iterable[int]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in members:
            out.setdefault(self.island_of[i], []).append(i)
        return out

    def _in_island(
        self, island: int, members: list[int], count: int, node_free: dict[int, int] | None
    ) -> Iterator[list[int]]:
        """Sets of ``count`` NVLink-linked GPUs from one domain's free ``members``.

        ``node_free`` (free CPUs per NUMA node) is given when the CPUs must be local:
        then sets spread over the nodes with the most free CPUs are tried too.
        """
        if not self.complete[island]:
            ordered = self._round_robin(members, node_free) if node_free is not None else members
            yield from self._cliques(ordered, count)
            return
        by_node: dict[int | None, list[int]] = {}
        for i in members:
            by_node.setdefault(self.numa_of[i], []).append(i)
        # Within the domain: the NUMA node that fits best first, then spread.
        fits = sorted(
            (n for n, m in by_node.items() if len(m) >= count),
            key=lambda n: (len(by_node[n]), -1 if n is None else n),
        )
        for node in fits:
            yield by_node[node][:count]
        spread = [i for _, m in sorted(by_node.items(), key=lambda kv: -len(kv[1])) for i in m]
        yield spread[:count]
        if node_free is not None:
            yield self._round_robin(members, node_free)[:count]

    def _round_robin(self, members: list[int], node_free: dict[int, int]) -> list[int]:
        """``members`` one per NUMA node in turn, nodes with the most free CPUs first.

        Its first ``k`` have the most local CPUs any ``k`` of ``members`` can have:
        locality only grows with each node a set reaches.
        """
        by_node: dict[int | None, list[int]] = {}
        for i in members:
            by_node.setdefault(self.numa_of[i], []).append(i)
        order = sorted(
            by_node, key=lambda n: (-node_free.get(n, 0) if n is not None else 1, n or 0)
        )
        out: list[int] = []
        for layer in itertools.zip_longest(*(by_node[n] for n in order)):
            out += [i for i in layer if i is not None]
        return out

    def _cliques(self, members: list[int], count: int) -> Iterator[list[int]]:
        """Sets of ``count`` of ``members`` all NVLink-linked to each other, in order
        (a bounded search: a domain whose GPUs are not all linked is small)."""
        budget = [_SEARCH_BUDGET]

        def extend(chosen: list[int], rest: list[int]) -> Iterator[list[int]]:
            if len(chosen) == count:
                yield chosen
                return
            for x, i in enumerate(rest):
                if len(chosen) + len(rest) - x < count or budget[0] <= 0:
                    return
                budget[0] -= 1
                if all(self.rank(i, c) == _NVLINK for c in chosen):
                    yield from extend([*chosen, i], rest[x + 1 :])

        return extend([], members)

    def _with_cpus(
        self, members: list[int], free_cpus: list[int], cpus: int, local: bool, memory: int
    ) -> Choice | None:
        nodes = self.nodes_of(members)
        near: list[int] = []
        if nodes is not None and free_cpus:
            wanted = set(nodes)
            near = [c for c in free_cpus if self.cpu_node.get(c) in wanted]
        if local:
            if nodes is None or len(near) < cpus or not self._memory_fits(nodes, memory):
                return None
            chosen = tuple(near[:cpus])
        elif cpus:
            if len(free_cpus) < cpus:
                return None
            taken = set(near[:cpus])
            chosen = (
                tuple(near[:cpus])
                + tuple(c for c in free_cpus if c not in taken)[: cpus - len(taken)]
            )
        else:
            chosen = ()
        is_local = nodes is not None and all(self.cpu_node.get(c) in nodes for c in chosen)
        worst = self.worst(members)
        return Choice(
            gpus=tuple(self.ids[i] for i in members),
            cpus=chosen,
            interconnect=None if worst == 0 else ("nvlink" if worst == _NVLINK else "pcie"),
            path=None if worst == 0 else LINK_KINDS[worst - 1],
            numa_nodes=nodes if nodes is not None and is_local else (),
        )

    def _memory_fits(self, nodes: Sequence[int], memory: int) -> bool:
        if not memory:
            return True
        sizes = [self.node_memory.get(n) for n in nodes]
        if any(s is None for s in sizes):
            return True  # not stated: the host-wide check is all there is
        return sum(s for s in sizes if s is not None) >= memory

    def _cpus_only(
        self, free_cpus: list[int], cpus: int, local: bool, memory: int
    ) -> Choice | None:
        if not local:
            if len(free_cpus) < cpus:
                return None
            chosen = tuple(free_cpus[:cpus])
            nodes = {self.cpu_node.get(c) for c in chosen}
            one = next(iter(nodes)) if len(nodes) == 1 else None
            return Choice(
                gpus=(),
                cpus=chosen,
                interconnect=None,
                path=None,
                numa_nodes=(one,) if one is not None and chosen else (),
            )
        by_node: dict[int, list[int]] = {}
        for c in free_cpus:
            node = self.cpu_node.get(c)
            if node is not None:
                by_node.setdefault(node, []).append(c)
        # Best fit: the node with the fewest free CPUs that still holds the request.
        for node in sorted(by_node, key=lambda n: (len(by_node[n]), n)):
            if len(by_node[node]) >= cpus and self._memory_fits((node,), memory):
                return Choice(
                    gpus=(),
                    cpus=tuple(by_node[node][:cpus]),
                    interconnect=None,
                    path=None,
                    numa_nodes=(node,),
                )
        return None
