"""Topology facts in the inventory: from a file, from sysfs, from NVML (stand-in and real)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from aicontract import GPU, Bytes, ConfigError, Contract, Negotiator, VirtualClock
from aicontract.backends.local import LocalBackend
from aicontract.backends.local import backend as backend_module
from aicontract.backends.local import inventory as inventory_module
from aicontract.backends.local.inventory import (
    load_inventory,
    nvml_topology,
    outer_visible,
    read_host,
    read_nvml,
    sysfs_numa,
    sysfs_rdma,
)
from aicontract.backends.local.topology import parse_cpulist

HGX = """\
cpus: 32
memory: 1TiB
numa:
  - {id: 0, cpus: "0-15", memory: 512GiB}
  - {id: 1, cpus: "16-31", memory: 512GiB}
gpus:
  - {model: H100, memory: 80GiB, numa: 0, nvlink_domain: hgx}
  - {model: H100, memory: 80GiB, numa: 0, nvlink_domain: hgx}
  - {model: H100, memory: 80GiB, numa: 0, nvlink_domain: hgx}
  - {model: H100, memory: 80GiB, numa: 0, nvlink_domain: hgx}
  - {model: H100, memory: 80GiB, numa: 1, nvlink_domain: hgx}
  - {model: H100, memory: 80GiB, numa: 1, nvlink_domain: hgx}
  - {model: H100, memory: 80GiB, numa: 1, nvlink_domain: hgx}
  - {model: H100, memory: 80GiB, numa: 1, nvlink_domain: hgx}
links:
  - {gpus: [0, 1], link: nvlink, nvlinks: 18, nvlink_generation: 4}
nics:
  - {name: mlx5_0, numa: 0, link_layer: InfiniBand}
  - {name: mlx5_1, numa: 1, link_layer: InfiniBand}
"""
"""An 8-GPU HGX H100 box with two sockets: GPUs 0-3 on node 0, 4-7 on node 1, one NVSwitch."""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text)
    return path


def test_a_file_states_numa_links_and_nics(tmp_path: Path) -> None:
    inv = load_inventory(_write(tmp_path, HGX))
    assert [(n.id, n.cpus[0], n.cpus[-1], n.memory) for n in inv.numa] == [
        (0, 0, 15, Bytes("512GiB")),
        (1, 16, 31, Bytes("512GiB")),
    ]
    assert [g.numa for g in inv.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert inv.links[0].gpus == ("0", "1")  # numbers in the file are GPU ids
    assert inv.nics[1].numa == 1
    topology = inv.topology()
    assert len(topology.islands) == 1
    assert topology.complete == (True,)
    assert topology.link("0", "7") == "nvlink"
    assert inv.describe()["numa"][0]["memory"] == "512GiB"


def test_without_domains_links_follow_numa(tmp_path: Path) -> None:
    text = HGX.replace(", nvlink_domain: hgx", "").replace(
        "  - {gpus: [0, 1], link: nvlink, nvlinks: 18, nvlink_generation: 4}\n",
        "  - {gpus: [0, 1], link: pix}\n",
    )
    topology = load_inventory(_write(tmp_path, text)).topology()
    assert topology.link("0", "1") == "pix"
    assert topology.link("0", "2") == "node"  # same NUMA node, nothing said
    assert topology.link("0", "4") == "sys"  # across sockets
    assert all(len(island) == 1 for island in topology.islands)


def test_the_older_per_gpu_shorthand_makes_one_domain(tmp_path: Path) -> None:
    text = (
        "cpus: 4\nmemory: 8GiB\ngpus:\n"
        "  - {model: A100, memory: 80GiB, interconnect: nvlink}\n"
        "  - {model: A100, memory: 80GiB, interconnect: nvlink}\n"
        "  - {model: A100, memory: 80GiB}\n"
    )
    topology = load_inventory(_write(tmp_path, text)).topology()
    assert topology.link("0", "1") == "nvlink"
    assert topology.link("0", "2") == "sys"


GOOD_GPU = "{model: L4, memory: 24GiB}"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "numa: [{id: 0, cpus: '0-3'}, {id: 0, cpus: '4-7'}]\n",
            "@numa[1].id: node 0 is listed twice",
        ),
        ("numa: [{id: -1, cpus: '0'}]\n", "@numa[0].id: -1 is outside 0..1023"),
        ("numa: [{id: 0, cpus: '0-3'}, {id: 1, cpus: '3-7'}]\n", "CPU 3 is also on node 0"),
        (
            "numa: [{id: 0, cpus: '0-8'}]\n",
            "@numa[0].cpus: CPU 8 is not one of the inventory's CPUs",
        ),
        ("numa: [{id: 0, cpus: 'zero'}]\n", "@numa[0].cpus: 'zero' is not a CPU list"),
        ("numa: [{id: 0, cpus: '5-2'}]\n", "not a range of CPU ids"),
        ("numa: [{id: 0, cpus: '0-7', memory: 64}]\n", "a size needs a unit"),
        ("numa: [{id: 0, cpu: '0-7'}]\n", "cpu"),
        (
            "gpus: [{model: L4, memory: 24GiB, numa: 2}]\n",
            "@gpus[0].numa: 2 is not a listed NUMA node",
        ),
        (
            f"gpus: [{GOOD_GPU}]\nlinks: [{{gpus: [0, 9], link: pix}}]\n",
            "'9' is not the id of a listed GPU",
        ),
        (f"gpus: [{GOOD_GPU}]\nlinks: [{{gpus: [0, 0], link: pix}}]\n", "not linked to itself"),
        (
            f"gpus: [{GOOD_GPU}, {GOOD_GPU}]\n"
            "links: [{gpus: [0, 1], link: pix}, {gpus: [1, 0], link: sys}]\n",
            "the pair 1-0 is listed twice",
        ),
        (
            f"gpus: [{GOOD_GPU}, {GOOD_GPU}]\nlinks: [{{gpus: [0, 1], link: ethernet}}]\n",
            "expected one of nvlink, pix",
        ),
        (
            f"gpus: [{GOOD_GPU}, {GOOD_GPU}]\nlinks: [{{gpus: [0, 1], link: pix, nvlinks: 4}}]\n",
            "a pix link has no NVLinks",
        ),
        (
            f"gpus: [{GOOD_GPU}, {GOOD_GPU}]\n"
            "links: [{gpus: [0, 1], link: nvlink, nvlinks: 99}]\n",
            "99 is outside 0..64",
        ),
        (
            "gpus: [{model: L4, memory: 24GiB, nvlink_domain: a},"
            " {model: L4, memory: 24GiB, nvlink_domain: a}]\nlinks: [{gpus: [0, 1], link: sys}]\n",
            "sys contradicts nvlink_domain 'a'",
        ),
        ("nics: [{name: mlx5_0, numa: 3}]\n", "@nics[0].numa: 3 is not a listed NUMA node"),
    ],
)
def test_bad_topology_is_a_clear_config_error(tmp_path: Path, text: str, says: str) -> None:
    path = _write(tmp_path, "cpus: 8\nmemory: 16GiB\n" + text)
    with pytest.raises(ConfigError, match=re.escape(says)) as info:
        load_inventory(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "cpus"),
    [("0-3", (0, 1, 2, 3)), ("0,2, 4-5", (0, 2, 4, 5)), ("7", (7,)), ("3,1-2,1", (1, 2, 3))],
)
def test_cpu_lists(text: str, cpus: tuple[int, ...]) -> None:
    assert parse_cpulist(text) == cpus


# -- sysfs ------------------------------------------------------------------------------


def _fake_sysfs(root: Path) -> Path:
    """Two nodes of 4 CPUs, one InfiniBand NIC on node 1, a GPU's PCI device on node 1."""
    for node, cpus, kib in ((0, "0-3", 1048576), (1, "4-7", 2097152)):
        d = root / f"devices/system/node/node{node}"
        d.mkdir(parents=True)
        (d / "cpulist").write_text(cpus + "\n")
        (d / "meminfo").write_text(
            f"Node {node} MemTotal:       {kib} kB\nNode {node} MemFree: 1 kB\n"
        )
    (root / "devices/system/node/possible").write_text("0-1\n")  # not a node: ignored
    nic = root / "class/infiniband/mlx5_0"
    (nic / "device").mkdir(parents=True)
    (nic / "device/numa_node").write_text("1\n")
    (nic / "ports/1").mkdir(parents=True)
    (nic / "ports/1/link_layer").write_text("InfiniBand\n")
    pci = root / "bus/pci/devices/0000:58:00.0"
    pci.mkdir(parents=True)
    (pci / "numa_node").write_text("1\n")
    return root


def test_sysfs_numa_and_rdma(tmp_path: Path) -> None:
    sysfs = _fake_sysfs(tmp_path / "sys")
    nodes = sysfs_numa(range(8), sysfs)
    assert [(n.id, n.cpus, n.memory) for n in nodes] == [
        (0, (0, 1, 2, 3), Bytes("1GiB")),
        (1, (4, 5, 6, 7), Bytes("2GiB")),
    ]
    # Only the CPUs this process may use are the inventory's.
    assert sysfs_numa([1, 5], sysfs)[1].cpus == (5,)
    assert [(n.name, n.numa, n.link_layer) for n in sysfs_rdma(sysfs)] == [
        ("mlx5_0", 1, "InfiniBand")
    ]
    assert sysfs_numa(range(8), tmp_path / "nothing") == ()
    assert sysfs_rdma(tmp_path / "nothing") == ()


def test_this_hosts_numa_nodes_hold_its_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AICONTRACT_INVENTORY", raising=False)
    inv = read_host()
    assert inv.numa, "Linux always lists node0 in /sys/devices/system/node"
    on_nodes = {c for n in inv.numa for c in n.cpus}
    assert on_nodes == set(inv.cpu_list)


# -- NVML, through a stand-in module ----------------------------------------------------


class FakeNVMLError(Exception):
    pass


def fake_nvml(
    *,
    gpus: int,
    numa: list[int],
    nvswitch: bool,
    ancestors: dict[tuple[int, int], int] | None = None,
    numa_call: bool = True,
) -> Any:
    """A stand-in for ``pynvml`` with the real functions' names and return shapes.

    ``nvswitch``: every GPU has 18 active NVLink 4 links to an NVSwitch and P2P over
    NVLink to every other GPU (an HGX H100); otherwise NVLink calls are unsupported
    and the PCIe path of each pair is ``ancestors[(a, b)]`` (NVML topology levels).
    """
    handles = [SimpleNamespace(index=i) for i in range(gpus)]
    bus = [f"00000000:{0x18 + 0x20 * i:02X}:00.0".encode() for i in range(gpus)]

    def unsupported(*_: Any) -> Any:
        raise FakeNVMLError("Not Supported")

    def nvlink_state(handle: Any, link: int) -> int:
        if not nvswitch:
            raise FakeNVMLError("Not Supported")
        if link >= 18:
            raise FakeNVMLError("Invalid Argument")
        return 1

    def p2p(a: Any, b: Any, index: int) -> int:
        assert index == 2  # NVML_P2P_CAPS_INDEX_NVLINK
        return 0 if nvswitch else 4  # NVML_P2P_STATUS_OK, else "not supported"

    def affinity(handle: Any, words: int) -> list[int]:
        node = numa[handle.index]
        return [0xF << (4 * node)] + [0] * (words - 1)  # CPUs 4n..4n+3

    module = SimpleNamespace(
        NVMLError=FakeNVMLError,
        NVML_DEVICE_MIG_ENABLE=1,
        NVML_FEATURE_ENABLED=1,
        NVML_NVLINK_MAX_LINKS=36,
        NVML_P2P_CAPS_INDEX_NVLINK=2,
        NVML_P2P_STATUS_OK=0,
        nvmlDeviceGetCount=lambda: gpus,
        nvmlDeviceGetHandleByIndex=lambda i: handles[i],
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUUID=lambda h: f"GPU-{h.index:08d}",
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
        nvmlDeviceGetMigMode=unsupported,
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=int(79.6 * 2**30)),
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=bus[h.index]),
        nvmlDeviceGetCpuAffinity=affinity,
        nvmlDeviceGetNvLinkState=nvlink_state,
        nvmlDeviceGetNvLinkRemotePciInfo=lambda h, link: SimpleNamespace(busId=b"00000000:C5:00.0"),
        nvmlDeviceGetNvLinkVersion=lambda h, link: 6,  # NVML_NVLINK_VERSION_4_0
        nvmlDeviceGetP2PStatus=p2p,
        nvmlDeviceGetTopologyCommonAncestor=lambda a, b: (ancestors or {})[(a.index, b.index)],
    )
    if numa_call:
        module.nvmlDeviceGetNumaNodeId = lambda h: numa[h.index]
    return module


def test_nvml_hgx_box_is_one_nvlink_domain_on_two_nodes(tmp_path: Path) -> None:
    nvml = fake_nvml(gpus=8, numa=[0, 0, 0, 0, 1, 1, 1, 1], nvswitch=True)
    gpus, links = read_nvml(nvml, sysfs=tmp_path, cpu_count=8)
    assert [g.numa for g in gpus] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert gpus[5].cpu_affinity == (4, 5, 6, 7)
    assert gpus[0].pci_bus_id == "0000:18:00.0"
    assert gpus[0].memory == Bytes("80GiB")
    assert len(links) == 28
    assert {(link.link, link.nvlinks, link.nvlink_generation) for link in links} == {
        ("nvlink", 18, 4)
    }


def test_nvml_pcie_box_reports_each_pairs_path(tmp_path: Path) -> None:
    # GPUs 0,1 behind one switch; 2,3 behind another on the same root complex; 0-3
    # and the rest on another socket.
    levels = {(0, 1): 10, (0, 2): 30, (0, 3): 50, (1, 2): 30, (1, 3): 50, (2, 3): 50}
    sysfs = _fake_sysfs(tmp_path / "sys")
    # An older driver: no nvmlDeviceGetNumaNodeId, so the PCI device's numa_node in sysfs
    # says (only GPU 2's, at 0000:58:00.0, is in the fake sysfs; the others stay unknown).
    nvml = fake_nvml(gpus=4, numa=[0, 0, 0, 1], nvswitch=False, ancestors=levels, numa_call=False)
    gpus, links = read_nvml(nvml, sysfs=sysfs, cpu_count=8)
    by_pair = {link.gpus: link.link for link in links}
    assert by_pair == {
        ("0", "1"): "pix",
        ("0", "2"): "phb",
        ("0", "3"): "sys",
        ("1", "2"): "phb",
        ("1", "3"): "sys",
        ("2", "3"): "sys",
    }
    assert [g.numa for g in gpus] == [None, None, 1, None]


def test_read_host_places_gpus_and_links_from_nvml(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sysfs = _fake_sysfs(tmp_path / "sys")
    monkeypatch.setattr(inventory_module, "_cpu_ids", lambda: tuple(range(8)))
    # NVML knows no NUMA node (old driver, no sysfs match): the CPU affinity places them.
    nvml = fake_nvml(gpus=2, numa=[1, 0], nvswitch=True, numa_call=False)
    inv = read_host(tmp_path, sysfs=sysfs, nvml=nvml)
    assert inv.source == "host+nvml"
    assert [g.numa for g in inv.gpus] == [1, 0]
    assert [n.id for n in inv.numa] == [0, 1]
    assert inv.nics[0].numa == 1
    assert inv.topology().link("0", "1") == "nvlink"


# -- NVML, the real one ------------------------------------------------------------------


@pytest.mark.gpu
def test_real_nvml_topology() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver answers: {exc}")
    gpus, links = nvml_topology()
    if not gpus:
        pytest.skip("NVML answers but reports no GPU")
    nodes = {n.id for n in sysfs_numa(range(65536))}
    whole = [g for g in gpus if g.mig_profile is None]
    for gpu in gpus:
        assert gpu.numa is None or gpu.numa in nodes
        assert gpu.pci_bus_id is None or re.fullmatch(
            r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.\d", gpu.pci_bus_id
        )
    assert len(links) <= len(whole) * (len(whole) - 1) // 2
    for link in links:
        assert link.link in ("nvlink", "pix", "pxb", "phb", "node", "sys")
        assert link.link == "nvlink" or link.nvlinks == 0
    print("NVML topology:", [(g.id, g.model, g.numa, g.pci_bus_id) for g in gpus], links)


# -- GPUs under an outer scheduler ---------------------------------------------------------
# A process that already runs with CUDA_VISIBLE_DEVICES (a Slurm job with gres, a
# container, another tool's lease) offers only the GPUs it was given, and its grants name
# them by UUID, which selects the same physical GPU in the child whatever index numbering
# the outer layer applied.


def uuid(i: int) -> str:
    return f"GPU-{i:08d}"


def visible(monkeypatch: pytest.MonkeyPatch, value: str | None, nvml: Any, tmp_path: Path):  # type: ignore[no-untyped-def]
    if value is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    monkeypatch.setattr(inventory_module, "_cpu_ids", lambda: tuple(range(8)))
    return read_host(tmp_path, sysfs=tmp_path, nvml=nvml)


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        (None, ["0", "1", "2", "3"]),
        ("NoDevFiles", ["0", "1", "2", "3"]),
        ("", []),
        ("1,3", [uuid(1), uuid(3)]),
        ("3,1", [uuid(1), uuid(3)]),
        (" 2 ", [uuid(2)]),
        (uuid(2), [uuid(2)]),
        ("GPU-00000003", [uuid(3)]),
        ("0,2,-1,1", [uuid(0), uuid(2)]),  # CUDA stops at the first entry naming nothing
        ("7", []),
        ("GPU-0000000", []),  # a prefix that fits four GPUs: ambiguous, as CUDA says
    ],
)
def test_only_the_outer_visible_gpus_are_offered(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str | None, ids: list[str]
) -> None:
    nvml = fake_nvml(gpus=4, numa=[0, 0, 1, 1], nvswitch=True, numa_call=False)
    inv = visible(monkeypatch, value, nvml, tmp_path)
    assert [g.id for g in inv.gpus] == ids
    # The links follow the renaming and name only the offered GPUs.
    assert {end for link in inv.links for end in link.gpus} == set(ids if len(ids) > 1 else [])
    inv.topology()  # and the whole stays a consistent inventory


def test_outer_visible_parses_like_cuda() -> None:
    assert outer_visible(None) is None
    assert outer_visible("NoDevFiles") is None
    assert outer_visible("") == ()
    assert outer_visible("0,1,,2") == ("0", "1")
    assert outer_visible("MIG-abc, 1") == ("MIG-abc", "1")


def mig_nvml() -> Any:
    """GPU 0 whole; GPU 1 in MIG mode with two 3g.40gb slices."""
    nvml = fake_nvml(gpus=2, numa=[0, 0], nvswitch=False, ancestors={(0, 1): 50})
    slices = [SimpleNamespace(index=1, mig=s) for s in range(2)]

    def mig_mode(handle: Any) -> tuple[int, int]:
        return (1, 1) if handle.index == 1 else (0, 0)

    def mig_handle(handle: Any, slot: int) -> Any:
        if handle.index != 1:
            raise FakeNVMLError("Not Supported")
        return slices[slot]

    def device_uuid(handle: Any) -> str:
        if hasattr(handle, "mig"):
            return f"MIG-{handle.mig:08d}-0000-0000-0000-000000000001"
        return uuid(handle.index)

    def memory(handle: Any) -> Any:
        return SimpleNamespace(total=(40 if hasattr(handle, "mig") else 80) * 2**30)

    nvml.nvmlDeviceGetMigMode = mig_mode
    nvml.nvmlDeviceGetMaxMigDeviceCount = lambda h: 2
    nvml.nvmlDeviceGetMigDeviceHandleByIndex = mig_handle
    nvml.nvmlDeviceGetUUID = device_uuid
    nvml.nvmlDeviceGetMemoryInfo = memory
    nvml.nvmlDeviceGetAttributes = lambda h: SimpleNamespace(gpuInstanceSliceCount=3)
    return nvml


@pytest.mark.parametrize(
    ("value", "ids"),
    [
        ("MIG-00000001-0000-0000-0000-000000000001", ["MIG-00000001-0000-0000-0000-000000000001"]),
        (
            "1",
            [
                "MIG-00000000-0000-0000-0000-000000000001",
                "MIG-00000001-0000-0000-0000-000000000001",
            ],
        ),
        (
            uuid(1),
            [
                "MIG-00000000-0000-0000-0000-000000000001",
                "MIG-00000001-0000-0000-0000-000000000001",
            ],
        ),
        ("0", [uuid(0)]),
    ],
)
def test_mig_slices_follow_their_gpu_or_their_own_uuid(
    tmp_path: Path, value: str, ids: list[str]
) -> None:
    gpus, links = read_nvml(mig_nvml(), sysfs=tmp_path, cpu_count=8, visible=value)
    assert [g.id for g in gpus] == ids
    assert links == ()


@pytest.mark.anyio
async def test_grant_names_the_outer_visible_gpu_by_uuid(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: Path
) -> None:
    # Inside a job given physical GPUs 2 and 3 of four; contracts ask for one GPU, twice.
    nvml = fake_nvml(gpus=4, numa=[0, 0, 1, 1], nvswitch=True, numa_call=False)
    monkeypatch.delenv("AICONTRACT_INVENTORY", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    monkeypatch.setattr(inventory_module, "_cpu_ids", lambda: tuple(range(8)))
    monkeypatch.setattr(
        backend_module, "host_inventory", lambda state: read_host(state, sysfs=tmp_path, nvml=nvml)
    )
    backend = LocalBackend(state_dir=state_dir, clock=VirtualClock(now=time.time()))
    contract = Contract(name="job", gpus=GPU(count=1), cpus=1, memory="1GiB")
    async with backend:
        negotiator = Negotiator([backend])
        first = await negotiator.acquire(contract)
        second = await negotiator.acquire(contract)
        try:
            granted = {first.env["CUDA_VISIBLE_DEVICES"], second.env["CUDA_VISIBLE_DEVICES"]}
            assert granted == {uuid(2), uuid(3)}
            quote = await backend.quote(contract)
            assert not quote.offers, "only the two outer-visible GPUs may ever be granted"
        finally:
            await first.release()
            await second.release()


@pytest.mark.anyio
async def test_a_container_and_the_host_never_share_a_gpu_they_number_differently(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state_dir: Path
) -> None:
    # One ledger for the host and a container given physical GPU 3: NVML in the
    # container counts that GPU as index 0. Held by index, the host's GPU 0 and the
    # container's GPU 0 would be one row while being two GPUs, and GPU 3 two rows.
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(inventory_module, "_cpu_ids", lambda: tuple(range(8)))
    host_nvml = fake_nvml(gpus=4, numa=[0, 0, 1, 1], nvswitch=True, numa_call=False)
    boxed_nvml = fake_nvml(gpus=1, numa=[0], nvswitch=False, numa_call=False)
    boxed_nvml.nvmlDeviceGetUUID = lambda h: uuid(3)
    host_inv = read_host(tmp_path, sysfs=tmp_path, nvml=host_nvml)
    boxed_inv = read_host(tmp_path, sysfs=tmp_path, nvml=boxed_nvml)
    assert [g.id for g in boxed_inv.gpus] == ["0"]
    clock = VirtualClock(now=time.time())
    host = LocalBackend(state_dir=state_dir, clock=clock, inventory=host_inv)
    boxed = LocalBackend(state_dir=state_dir, clock=clock, inventory=boxed_inv)
    one = Contract(name="one", gpus=GPU(count=1), cpus=1, memory="1GiB")
    async with host, boxed:
        boxed_lease = await Negotiator([boxed]).acquire(one)
        try:
            assert boxed_lease.env["CUDA_VISIBLE_DEVICES"] == "0"  # its own numbering
            four = Contract(name="four", gpus=GPU(count=4), cpus=1, memory="1GiB")
            assert not (await host.quote(four)).offers, "physical GPU 3 is the container's"
            three = Contract(name="three", gpus=GPU(count=3), cpus=1, memory="1GiB")
            host_lease = await Negotiator([host]).acquire(three)
            try:
                assert host_lease.env["CUDA_VISIBLE_DEVICES"] == "0,1,2"
            finally:
                await host_lease.release()
        finally:
            await boxed_lease.release()
        # And the other way round: the host holding GPU 3 leaves the container nothing.
        host_lease = await Negotiator([host]).acquire(four)
        try:
            assert not (await boxed.quote(one)).offers
        finally:
            await host_lease.release()
