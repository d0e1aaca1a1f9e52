"""What this host has: CPUs, memory, disk, NVIDIA GPUs (through NVML, MIG included)
and their topology: NUMA nodes, the link between each pair of GPUs, RDMA NICs.

``AICONTRACT_INVENTORY=path.yaml`` replaces what the host reports — for hosts
without NVML, and for tests — in this shape (everything below ``gpus`` is
optional; see ``docs/topology.md``)::

    cpus: 16
    memory: 64GiB
    numa:
      - {id: 0, cpus: "0-7", memory: 32GiB}
      - {id: 1, cpus: "8-15", memory: 32GiB}
    gpus:
      - {model: H100, memory: 80GiB, numa: 0, nvlink_domain: a}
      - {model: H100, memory: 80GiB, compute_capability: "9.0", numa: 1, nvlink_domain: a}
    links:
      - {gpus: ["0", "1"], link: nvlink, nvlinks: 18, nvlink_generation: 4}
    nics:
      - {name: mlx5_0, numa: 0, link_layer: InfiniBand}
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from ...contract import decode_quantity, encode_quantity
from ...documents import parse, read_limited
from ...errors import ConfigError, ContractError
from ...units import Bytes
from .topology import (
    LINK_KINDS,
    MAX_NUMA_NODES,
    GPULink,
    NumaNode,
    RDMANic,
    Topology,
    parse_cpulist,
)

__all__ = [
    "GPUDevice",
    "Inventory",
    "host_inventory",
    "load_inventory",
    "nvml_gpus",
    "nvml_topology",
    "outer_visible",
    "read_host",
    "read_nvml",
    "sysfs_numa",
    "sysfs_rdma",
]

log = logging.getLogger("aicontract.inventory")

# Plausible bounds: a host with more is a typo (or an attack on the quote's time).
MAX_CPUS = 65536
MAX_GPUS = 4096
# What CUDA_VISIBLE_DEVICES takes for one device: an index or a (MIG-)GPU UUID.
_GPU_ID = re.compile(r"^(?:[0-9]{1,4}|(?:MIG-|GPU-)?[A-Za-z0-9][A-Za-z0-9/_.-]{0,127})$")


class GPUDevice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One schedulable GPU, or one MIG instance of a GPU.

    ``id`` is what ``CUDA_VISIBLE_DEVICES`` takes for it: the GPU's index (with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which leases set), or a MIG instance's UUID;
    under an outer ``CUDA_VISIBLE_DEVICES``, the GPU's UUID (indices may be re-numbered).
    """

    model: str
    memory: Bytes
    id: str = ""
    uuid: str | None = None
    compute_capability: str | None = None
    mig_profile: str | None = None
    interconnect: str | None = None
    """Older shorthand: GPUs that all say ``nvlink`` here form one NVLink domain."""
    numa: int | None = None
    """The NUMA node the GPU hangs off (``None``: unknown)."""
    nvlink_domain: str | None = None
    """GPUs with the same domain name are all NVLink-linked to each other (an NVSwitch)."""
    pci_bus_id: str | None = None
    cpu_affinity: tuple[int, ...] = ()
    """The CPUs nearest the GPU, as NVML reports them."""


class Inventory(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a host offers: CPU ids it may use, memory, disk and GPUs."""

    cpus: int
    memory: Bytes
    gpus: tuple[GPUDevice, ...] = ()
    disk: Bytes | None = None
    cpu_ids: tuple[int, ...] = ()
    source: str = "host"
    numa: tuple[NumaNode, ...] = ()
    links: tuple[GPULink, ...] = ()
    nics: tuple[RDMANic, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.cpus <= MAX_CPUS:
            raise ValueError(f"@cpus: {self.cpus} is outside 1..{MAX_CPUS}")
        if self.cpu_ids and len(self.cpu_ids) != self.cpus:
            raise ValueError("@cpu_ids: must list exactly `cpus` ids")
        if any(not 0 <= c < 4 * MAX_CPUS for c in self.cpu_ids):
            raise ValueError(f"@cpu_ids: ids must be in 0..{4 * MAX_CPUS - 1}")
        if len(set(self.cpu_ids)) != len(self.cpu_ids):
            raise ValueError("@cpu_ids: an id is listed twice")
        if len(self.gpus) > MAX_GPUS:
            raise ValueError(f"@gpus: {len(self.gpus)} GPUs is more than {MAX_GPUS}")
        seen: set[str] = set()
        for index, gpu in enumerate(self.gpus):
            if not _GPU_ID.match(gpu.id) or "," in gpu.id:
                raise ValueError(
                    f"@gpus[{index}].id: {gpu.id[:80]!r} is not a device id"
                    " (an index 0..9999 or a GPU/MIG UUID)"
                )
            if gpu.id in seen:
                raise ValueError(f"@gpus[{index}].id: {gpu.id[:80]!r} is listed twice")
            seen.add(gpu.id)
        self._check_topology()

    def _check_topology(self) -> None:
        """Topology facts must name what the inventory lists, once each."""
        pool = set(self.cpu_list)
        if len(self.numa) > MAX_NUMA_NODES:
            raise ValueError(f"@numa: {len(self.numa)} nodes is more than {MAX_NUMA_NODES}")
        owner: dict[int, int] = {}
        nodes: set[int] = set()
        for index, node in enumerate(self.numa):
            if not 0 <= node.id < MAX_NUMA_NODES:
                raise ValueError(f"@numa[{index}].id: {node.id} is outside 0..{MAX_NUMA_NODES - 1}")
            if node.id in nodes:
                raise ValueError(f"@numa[{index}].id: node {node.id} is listed twice")
            nodes.add(node.id)
            for cpu in node.cpus:
                if cpu not in pool:
                    raise ValueError(
                        f"@numa[{index}].cpus: CPU {cpu} is not one of the inventory's CPUs"
                        " (cpu_ids, else 0..cpus-1)"
                    )
                if cpu in owner:
                    raise ValueError(
                        f"@numa[{index}].cpus: CPU {cpu} is also on node {owner[cpu]};"
                        " a CPU is on one node"
                    )
                owner[cpu] = node.id
        allowed = ", ".join(str(n) for n in sorted(nodes)) or "none: the inventory lists no numa"
        for index, gpu in enumerate(self.gpus):
            if gpu.numa is not None and gpu.numa not in nodes:
                raise ValueError(
                    f"@gpus[{index}].numa: {gpu.numa} is not a listed NUMA node;"
                    f" expected one of numa[].id ({allowed})"
                )
            if any(not 0 <= c < 4 * MAX_CPUS for c in gpu.cpu_affinity):
                raise ValueError(
                    f"@gpus[{index}].cpu_affinity: ids must be in 0..{4 * MAX_CPUS - 1}"
                )
        ids = {gpu.id: gpu for gpu in self.gpus}
        pairs: set[frozenset[str]] = set()
        for index, link in enumerate(self.links):
            a, b = link.gpus
            for end in (a, b):
                if end not in ids:
                    raise ValueError(
                        f"@links[{index}].gpus: {end[:80]!r} is not the id of a listed GPU"
                    )
            if a == b:
                raise ValueError(f"@links[{index}].gpus: a GPU is not linked to itself")
            pair = frozenset((a, b))
            if pair in pairs:
                raise ValueError(f"@links[{index}].gpus: the pair {a}-{b} is listed twice")
            pairs.add(pair)
            if not 0 <= link.nvlinks <= 64:
                raise ValueError(f"@links[{index}].nvlinks: {link.nvlinks} is outside 0..64")
            if link.nvlink_generation is not None and not 1 <= link.nvlink_generation <= 9:
                raise ValueError(
                    f"@links[{index}].nvlink_generation: {link.nvlink_generation} is outside 1..9"
                )
            if link.link != "nvlink" and (link.nvlinks or link.nvlink_generation):
                raise ValueError(
                    f"@links[{index}].nvlinks: a {link.link} link has no NVLinks;"
                    " expected link: nvlink, or no nvlinks"
                )
            domain = ids[a].nvlink_domain
            if link.link != "nvlink" and domain is not None and domain == ids[b].nvlink_domain:
                raise ValueError(
                    f"@links[{index}].link: {link.link} contradicts nvlink_domain {domain!r}"
                    f" shared by GPUs {a} and {b}; expected nvlink, or separate domains"
                )
        for index, nic in enumerate(self.nics):
            if nic.numa is not None and nic.numa not in nodes:
                raise ValueError(
                    f"@nics[{index}].numa: {nic.numa} is not a listed NUMA node;"
                    f" expected one of numa[].id ({allowed})"
                )

    def topology(self) -> Topology:
        """The GPU/NUMA topology, precomputed for choosing GPU sets (build it once)."""
        whole = [g for g in self.gpus if g.mig_profile is None]
        # The older per-GPU shorthand: every GPU that says nvlink shares one domain.
        legacy = "\x00nvlink" if any(g.interconnect == "nvlink" for g in whole) else None
        return Topology.build(
            [g.id for g in self.gpus],
            numa_of=[g.numa for g in self.gpus],
            domains=[
                g.nvlink_domain
                if g.nvlink_domain is not None
                else (legacy if g.interconnect == "nvlink" and g.mig_profile is None else None)
                for g in self.gpus
            ],
            nodes=self.numa,
            links=self.links,
        )

    @property
    def cpu_list(self) -> tuple[int, ...]:
        """The CPU ids leases are pinned to (``0..cpus-1`` when the host gave none)."""
        return self.cpu_ids or tuple(range(self.cpus))

    def describe(self) -> dict[str, Any]:
        """The inventory as plain builtins (for JSON output)."""
        data: dict[str, Any] = msgspec.to_builtins(self, enc_hook=encode_quantity)
        return data


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read an inventory override file (YAML, TOML or JSON by suffix; YAML otherwise)."""
    file = Path(path)
    suffix = file.suffix.lower()
    fmt = {".json": "json", ".toml": "toml"}.get(suffix, "yaml")
    try:
        data = parse(read_limited(file), fmt)  # type: ignore[arg-type]
    except OSError as exc:
        raise ConfigError(f"cannot read inventory {str(file)!r}: {exc.strerror}") from None
    except ContractError as exc:
        raise ConfigError(f"inventory {str(file)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"inventory {str(file)!r} must be a mapping like {{cpus: 16, ...}}")
    gpus = data.get("gpus") or []
    if isinstance(gpus, list):
        data["gpus"] = [
            {"id": str(i), **g} if isinstance(g, dict) and "id" not in g else g
            for i, g in enumerate(gpus)
        ]
    data.setdefault("source", f"file:{file}")
    _cpu_lists(data, file)
    try:
        result: Inventory = msgspec.convert(data, Inventory, dec_hook=decode_quantity)
    except (msgspec.ValidationError, ContractError) as exc:
        text = str(exc)[:300]
        if text.startswith("Invalid enum value") and text.endswith(".link`"):
            text += f"; expected one of {', '.join(LINK_KINDS)}"
        raise ConfigError(f"inventory {str(file)!r}: {text}") from None
    return result


def _cpu_lists(data: dict[str, Any], file: Path) -> None:
    """Accept the kernel's list form (``"0-31,64-95"``) wherever a file lists CPU ids."""
    places: list[tuple[str, dict[str, Any], str]] = []
    for key, field in (("numa", "cpus"), ("gpus", "cpu_affinity")):
        items = data.get(key)
        if isinstance(items, list):
            places += [
                (f"{key}[{i}].{field}", item, field)
                for i, item in enumerate(items)
                if isinstance(item, dict) and isinstance(item.get(field), str)
            ]
    for where, item, field in places:
        try:
            item[field] = list(parse_cpulist(item[field]))
        except ValueError as exc:
            raise ConfigError(f"inventory {str(file)!r}: @{where}: {exc}") from None
    links = data.get("links")
    if isinstance(links, list):
        for link in links:
            # GPU ids are text; a file may write the indices as numbers.
            if isinstance(link, dict) and isinstance(link.get("gpus"), list):
                link["gpus"] = [
                    str(g) if isinstance(g, int) and not isinstance(g, bool) else g
                    for g in link["gpus"]
                ]


def _memory_bytes() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _cpu_ids() -> tuple[int, ...]:
    if hasattr(os, "sched_getaffinity"):
        return tuple(sorted(os.sched_getaffinity(0)))
    return tuple(range(os.cpu_count() or 1))


def nvml_gpus() -> tuple[GPUDevice, ...]:
    """The GPUs NVML reports (MIG instances instead of their parent when MIG is on).

    Returns ``()`` when ``nvidia-ml-py`` is not installed or no driver answers.
    """
    return nvml_topology()[0]


def nvml_topology() -> tuple[tuple[GPUDevice, ...], tuple[GPULink, ...]]:
    """The GPUs NVML reports, with NUMA node and CPU affinity, and the link of each pair.

    Returns ``((), ())`` when ``nvidia-ml-py`` is not installed or no driver answers.
    """
    try:
        import pynvml
    except ImportError:
        return (), ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML unavailable: %s", exc)
        return (), ()
    try:
        return read_nvml(pynvml, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def read_nvml(
    nvml: Any,
    *,
    sysfs: Path = Path("/sys"),
    cpu_count: int | None = None,
    visible: str | None = None,
) -> tuple[tuple[GPUDevice, ...], tuple[GPULink, ...]]:
    """What an initialised NVML module (``pynvml``, or a stand-in) says: GPUs and links.

    A fact NVML cannot give (an old driver, a call it does not support) is left
    unknown rather than failing the inventory. ``visible``: the outer
    ``CUDA_VISIBLE_DEVICES`` this process runs under (``None``: unset); only the
    GPUs it names are returned, whole GPUs then named by UUID (see ``_visible``).
    """
    devices: list[GPUDevice] = []
    parents: list[tuple[int, str]] = []
    whole: list[tuple[str, Any, str | None]] = []  # (id, handle, PCI bus id)
    words = max(1, ((cpu_count or os.cpu_count() or 1) + 63) // 64)
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(nvml.nvmlDeviceGetName(handle))
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability = f"{major}.{minor}"
        bus = _nvml_bus_id(nvml, handle)
        numa = _nvml_numa(nvml, handle, bus, sysfs)
        affinity = _nvml_affinity(nvml, handle, words)
        try:
            mig_on = nvml.nvmlDeviceGetMigMode(handle)[0] == nvml.NVML_DEVICE_MIG_ENABLE
        except nvml.NVMLError:
            mig_on = False
        if mig_on:
            for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
                try:
                    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                except nvml.NVMLError:
                    continue
                memory = _nominal(nvml.nvmlDeviceGetMemoryInfo(mig).total)
                mig_uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                gib = memory.bytes // 2**30
                slices = _mig_slices(nvml, mig)
                parents.append((index, uuid))
                devices.append(
                    GPUDevice(
                        model=name,
                        memory=memory,
                        id=mig_uuid,
                        uuid=mig_uuid,
                        compute_capability=capability,
                        mig_profile=f"{slices}g.{gib}gb",
                        numa=numa,
                        pci_bus_id=bus,
                        cpu_affinity=affinity,
                    )
                )
            continue
        memory = _nominal(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        parents.append((index, uuid))
        devices.append(
            GPUDevice(
                model=name,
                memory=memory,
                id=str(index),
                uuid=uuid,
                compute_capability=capability,
                numa=numa,
                pci_bus_id=bus,
                cpu_affinity=affinity,
            )
        )
        whole.append((str(index), handle, bus))
    return _visible(devices, parents, _nvml_links(nvml, whole), visible)


def _bus(text: str) -> str:
    """A PCI address as sysfs writes it: NVML's ``00000000:18:00.0`` is ``0000:18:00.0``."""
    domain, _, rest = text.strip().lower().rpartition(":")
    head, _, bus = domain.rpartition(":")
    return f"{head[-4:].rjust(4, '0')}:{bus}:{rest}" if head else text.strip().lower()


def _nvml_bus_id(nvml: Any, handle: Any) -> str | None:
    try:
        return _bus(_text(nvml.nvmlDeviceGetPciInfo(handle).busId))
    except (nvml.NVMLError, AttributeError):
        return None


def _nvml_numa(nvml: Any, handle: Any, bus: str | None, sysfs: Path) -> int | None:
    """The GPU's NUMA node: NVML's answer (newer drivers), else the PCI device's in sysfs."""
    try:
        node = int(nvml.nvmlDeviceGetNumaNodeId(handle))
    except (nvml.NVMLError, AttributeError):
        node = -1
    if node < 0 and bus is not None:
        try:
            node = int((sysfs / "bus/pci/devices" / bus / "numa_node").read_text().strip())
        except (OSError, ValueError):
            node = -1
    return node if node >= 0 else None


def _nvml_affinity(nvml: Any, handle: Any, words: int) -> tuple[int, ...]:
    """The CPUs NVML deems nearest the GPU (a bit mask in 64-bit words)."""
    try:
        mask = nvml.nvmlDeviceGetCpuAffinity(handle, words)
    except (nvml.NVMLError, AttributeError):
        return ()
    return tuple(
        word_index * 64 + bit
        for word_index, word in enumerate(mask)
        for bit in range(64)
        if int(word) >> bit & 1
    )


# NVML's NVLink version enum (nvmlNvlinkVersion_t) to the NVLink generation.
_NVLINK_GENERATION = {1: 1, 2: 2, 3: 2, 4: 3, 5: 3, 6: 4, 7: 5, 8: 6}
# nvmlDeviceGetTopologyCommonAncestor's levels, in nvidia-smi's words.
_PCIE_PATH = {0: "pix", 10: "pix", 20: "pxb", 30: "phb", 40: "node", 50: "sys"}


def _nvml_nvlinks(nvml: Any, handle: Any) -> tuple[list[str | None], int | None]:
    """The remote PCI bus id of each active NVLink of a GPU, and its NVLink generation."""
    remotes: list[str | None] = []
    generation: int | None = None
    for link in range(int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))):
        try:
            if nvml.nvmlDeviceGetNvLinkState(handle, link) != nvml.NVML_FEATURE_ENABLED:
                continue
        except nvml.NVMLError:
            continue  # not supported, or no such link on this GPU
        try:
            remotes.append(_bus(_text(nvml.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId)))
        except (nvml.NVMLError, AttributeError):
            remotes.append(None)
        if generation is None:
            with contextlib.suppress(nvml.NVMLError):
                generation = _NVLINK_GENERATION.get(
                    int(nvml.nvmlDeviceGetNvLinkVersion(handle, link))
                )
    return remotes, generation


def _nvml_links(nvml: Any, whole: list[tuple[str, Any, str | None]]) -> list[GPULink]:
    """The link between each pair of whole GPUs.

    NVLink between a pair is what ``nvmlDeviceGetP2PStatus(..., NVLINK)`` says
    (right through an NVSwitch too); its width is the number of active links
    that end at the peer, or, through a switch, all the GPU's active links.
    Otherwise the PCIe path is ``nvmlDeviceGetTopologyCommonAncestor``'s level.
    """
    if len(whole) < 2:
        return []
    nvlinks = [_nvml_nvlinks(nvml, handle) for _, handle, _ in whole]
    links: list[GPULink] = []
    for x, (a, ha, _) in enumerate(whole):
        for y in range(x + 1, len(whole)):
            b, hb, bus_b = whole[y]
            try:
                status = nvml.nvmlDeviceGetP2PStatus(ha, hb, nvml.NVML_P2P_CAPS_INDEX_NVLINK)
                linked = status == nvml.NVML_P2P_STATUS_OK
            except (nvml.NVMLError, AttributeError):
                linked = False
            if linked:
                remotes, generation = nvlinks[x]
                direct = sum(1 for r in remotes if r is not None and r == bus_b)
                links.append(
                    GPULink(
                        gpus=(a, b),
                        link="nvlink",
                        nvlinks=direct or len(remotes),
                        nvlink_generation=generation,
                    )
                )
                continue
            try:
                level = int(nvml.nvmlDeviceGetTopologyCommonAncestor(ha, hb))
            except (nvml.NVMLError, AttributeError):
                continue  # unknown: the choice treats it as the farthest path
            links.append(GPULink(gpus=(a, b), link=_PCIE_PATH.get(level, "sys")))  # type: ignore[arg-type]
    return links


def sysfs_numa(pool: Sequence[int], sysfs: Path = Path("/sys")) -> tuple[NumaNode, ...]:
    """This host's NUMA nodes (``/sys/devices/system/node``): CPUs in ``pool``, memory."""
    wanted = set(pool)
    nodes: list[NumaNode] = []
    root = sysfs / "devices/system/node"
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return ()
    for entry in entries:
        if not re.fullmatch(r"node\d{1,4}", entry.name):
            continue
        try:
            cpus = parse_cpulist((entry / "cpulist").read_text().strip() or "")
        except (OSError, ValueError):
            cpus = ()
        memory: Bytes | None = None
        try:
            for line in (entry / "meminfo").read_text().splitlines():
                if "MemTotal:" in line:
                    memory = Bytes(int(line.split()[-2]) * 1024)
                    break
        except (OSError, ValueError, IndexError):
            memory = None
        nodes.append(
            NumaNode(
                id=int(entry.name[4:]),
                cpus=tuple(c for c in cpus if c in wanted),
                memory=memory,
            )
        )
    return tuple(nodes)


def sysfs_rdma(sysfs: Path = Path("/sys")) -> tuple[RDMANic, ...]:
    """RDMA devices (``/sys/class/infiniband``), their NUMA node and link layer."""
    root = sysfs / "class/infiniband"
    try:
        entries = sorted(root.iterdir(), key=lambda p: p.name)
    except OSError:
        return ()
    nics = []
    for entry in entries:
        try:
            node = int((entry / "device/numa_node").read_text().strip())
        except (OSError, ValueError):
            node = -1
        layer: str | None = None
        with contextlib.suppress(OSError):
            layer = (entry / "ports/1/link_layer").read_text().strip() or None
        nics.append(
            RDMANic(name=entry.name[:64], numa=node if node >= 0 else None, link_layer=layer)
        )
    return tuple(nics)


def _nominal(total: int) -> Bytes:
    """Device memory rounded to the nearest GiB.

    Drivers reserve a little: an H100 80GB reports 79.6GiB, which would fail
    ``memory: ">=80GiB"``. Contracts speak of the nominal size, so do we.
    """
    return Bytes(max(1, round(total / 2**30)) * 2**30)


def _mig_slices(nvml: Any, mig: Any) -> int:
    try:
        attributes = nvml.nvmlDeviceGetAttributes(mig)
        return int(attributes.gpuInstanceSliceCount)
    except (nvml.NVMLError, AttributeError):
        return 1


def host_inventory(state_dir: str | os.PathLike[str] | None = None) -> Inventory:
    """This host's inventory, or the ``AICONTRACT_INVENTORY`` override when set."""
    override = os.environ.get("AICONTRACT_INVENTORY")
    if override:
        return load_inventory(override)
    return read_host(state_dir)


def read_host(
    state_dir: str | os.PathLike[str] | None = None,
    *,
    sysfs: Path = Path("/sys"),
    nvml: Any = None,
) -> Inventory:
    """This host as sysfs and NVML (``nvml``: an initialised module; default pynvml) see it."""
    cpu_ids = _cpu_ids()
    disk = None
    if state_dir is not None and Path(state_dir).exists():
        disk = Bytes(shutil.disk_usage(state_dir).free)
    if nvml is None:
        gpus, links = nvml_topology()
    else:
        gpus, links = read_nvml(
            nvml,
            sysfs=sysfs,
            cpu_count=max(cpu_ids, default=0) + 1,
            visible=os.environ.get("CUDA_VISIBLE_DEVICES"),
        )
    nodes = sysfs_numa(cpu_ids, sysfs)
    known = {n.id for n in nodes}
    gpus = tuple(_placed(g, nodes) if g.numa not in known else g for g in gpus)
    nics = tuple(
        n if n.numa is None or n.numa in known else msgspec.structs.replace(n, numa=None)
        for n in sysfs_rdma(sysfs)
    )
    return Inventory(
        cpus=len(cpu_ids),
        memory=Bytes(_memory_bytes()),
        gpus=gpus,
        disk=disk,
        cpu_ids=cpu_ids,
        source="host+nvml" if (nvml is not None or _has_nvml()) else "host",
        numa=nodes,
        links=links,
        nics=nics,
    )


def outer_visible(value: str | None) -> tuple[str, ...] | None:
    """The devices an outer ``CUDA_VISIBLE_DEVICES`` leaves this process, as CUDA reads it.

    ``None``: no restriction (unset, or Slurm's ``NoDevFiles``). Otherwise the
    entries up to the first one that cannot name a device: CUDA itself stops
    there, so ``"0,2,-1,1"`` leaves ``0`` and ``2``, and ``""`` leaves none.
    """
    if value is None or value.strip() == "NoDevFiles":
        return None
    entries: list[str] = []
    for raw in value.split(","):
        entry = raw.strip()
        if not entry or not _GPU_ID.match(entry):
            break
        entries.append(entry)
    return tuple(entries)


def _visible(
    devices: Sequence[GPUDevice],
    parents: Sequence[tuple[int, str]],
    links: Sequence[GPULink],
    value: str | None,
) -> tuple[tuple[GPUDevice, ...], tuple[GPULink, ...]]:
    """The GPUs (and their links) an outer ``CUDA_VISIBLE_DEVICES`` gave this process.

    ``parents``: per device, the NVML index and UUID of its whole GPU (a MIG slice
    is visible when its own UUID or its GPU is named). An entry is an NVML index
    (PCI bus order), a GPU or MIG UUID, or a UUID's unique prefix, as CUDA takes
    them. When anything is restricted, whole GPUs are named by UUID in the result:
    the outer layer may have re-numbered indices (CUDA inside a Slurm job counts only
    the job's GPUs from 0), and only a UUID selects the same physical GPU in the
    child whatever numbering it sees.
    """
    wanted = outer_visible(value)
    if wanted is None:
        return tuple(devices), tuple(links)
    chosen: set[int] = set()
    for entry in wanted:
        if entry.isdigit():
            hits = {i for i, (index, _) in enumerate(parents) if index == int(entry)}
        else:
            hits = {
                i
                for i, (gpu, (_, parent)) in enumerate(zip(devices, parents, strict=True))
                if (gpu.uuid or "").startswith(entry) or parent.startswith(entry)
            }
        if len({parents[i][1] for i in hits}) > 1 and not any(
            devices[i].uuid == entry or parents[i][1] == entry for i in hits
        ):
            log.warning("CUDA_VISIBLE_DEVICES entry %r fits more than one GPU", entry[:80])
            break  # CUDA refuses an ambiguous prefix
        if not hits:
            log.warning(
                "CUDA_VISIBLE_DEVICES entry %r names no GPU NVML reports;"
                " it and the entries after it are ignored, as CUDA ignores them",
                entry[:80],
            )
            break
        chosen |= hits
    rename = {
        devices[i].id: devices[i].uuid
        for i in chosen
        if devices[i].mig_profile is None and _GPU_ID.match(devices[i].uuid or "")
    }
    kept = tuple(
        msgspec.structs.replace(devices[i], id=rename.get(devices[i].id, devices[i].id))
        for i in sorted(chosen)
    )
    ids = {gpu.id for gpu in kept}
    moved = tuple(
        msgspec.structs.replace(
            link,
            gpus=(rename.get(link.gpus[0], link.gpus[0]), rename.get(link.gpus[1], link.gpus[1])),
        )
        for link in links
    )
    return kept, tuple(link for link in moved if set(link.gpus) <= ids)


def _placed(gpu: GPUDevice, nodes: Sequence[NumaNode]) -> GPUDevice:
    """A GPU whose NUMA node is unknown (or not this host's): the node holding most of
    its CPU affinity, else unknown."""
    best, overlap = None, 0
    near = set(gpu.cpu_affinity)
    for node in nodes:
        count = sum(1 for c in node.cpus if c in near)
        if count > overlap:
            best, overlap = node.id, count
    return msgspec.structs.replace(gpu, numa=best)


def _has_nvml() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True
