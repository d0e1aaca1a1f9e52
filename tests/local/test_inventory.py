"""What the host has: the override file (strict, clear errors), the real host, NVML."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aicontract import Bytes, ConfigError
from aicontract.backends.local.inventory import _nominal, host_inventory, load_inventory, nvml_gpus


def test_override_file_is_read(inventory_file: Path, local_env: Path) -> None:
    inv = host_inventory()
    assert inv.source == f"file:{inventory_file}"
    assert (inv.cpus, inv.memory, inv.disk) == (8, Bytes("64GiB"), Bytes("1TiB"))
    assert inv.cpu_list == tuple(range(8))
    assert [g.id for g in inv.gpus][:5] == ["0", "1", "2", "3", "4"]  # ids from the order
    assert inv.gpus[5].id.startswith("MIG-")  # an explicit id is kept
    assert inv.gpus[5].mig_profile == "1g.10gb"
    assert inv.gpus[0].memory == Bytes("80GiB")


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_override_in_json_and_toml(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"inv{suffix}"
    if suffix == ".json":
        path.write_text(
            json.dumps({"cpus": 2, "memory": "4GiB", "gpus": [{"model": "L4", "memory": "24GiB"}]})
        )
    else:
        path.write_text('cpus = 2\nmemory = "4GiB"\n[[gpus]]\nmodel = "L4"\nmemory = "24GiB"\n')
    inv = load_inventory(path)
    assert (inv.cpus, inv.gpus[0].model, inv.gpus[0].id) == (2, "L4", "0")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("cpus: 0\nmemory: 1GiB\n", "0 is outside 1..65536"),
        ("cpus: 2\nmemory: lots\n", "memory"),
        ("cpus: 2\n", "memory"),
        ("cpus: 2\nmemory: 1GiB\ngpu: []\n", "gpu"),
        ("cpus: 2\nmemory: 1GiB\ngpus: [{model: H100}]\n", "memory"),
        ("cpus: 2\nmemory: 1GiB\ncpu_ids: [0]\n", "cpu_ids"),
        ("- just\n- a list\n", "must be a mapping"),
        ("cpus: [unclosed\n", "inventory"),
        # hostile inventories: each was once accepted, then broke a quote or the ledger
        ("cpus: 100000000\nmemory: 1GiB\n", "outside 1..65536"),
        ("cpus: 2\nmemory: 1GiB\ncpu_ids: [1, 1]\n", "listed twice"),
        ("cpus: 2\nmemory: 1GiB\ncpu_ids: [-1, 0]\n", "cpu_ids"),
        (
            "cpus: 2\nmemory: 1GiB\ngpus: [{id: '0', model: L4, memory: 1GiB},"
            " {id: '0', model: L4, memory: 1GiB}]\n",
            "listed twice",
        ),
        ("cpus: 2\nmemory: 1GiB\ngpus: [{id: '0,1', model: L4, memory: 1GiB}]\n", "device id"),
        ("cpus: 2\nmemory: 1GiB\ngpus: [{id: '-1', model: L4, memory: 1GiB}]\n", "device id"),
        ("cpus: '٣'\nmemory: 1GiB\n", "cpus"),
        ("cpus: 2\nmemory: \uff18\uff10GiB\n", "memory"),  # fullwidth 80
    ],
)
def test_bad_override_is_a_config_error(tmp_path: Path, text: str, says: str) -> None:
    path = tmp_path / "inv.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(says)) as info:
        load_inventory(path)
    assert str(path) in str(info.value)


def test_missing_override_file_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(tmp_path / "nope.yaml"))
    with pytest.raises(ConfigError, match="cannot read inventory"):
        host_inventory()


def test_real_host_has_a_cpu_and_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AICONTRACT_INVENTORY", raising=False)
    inv = host_inventory(tmp_path)
    assert inv.cpus >= 1
    assert len(inv.cpu_list) == inv.cpus
    assert inv.memory.bytes > 0
    assert inv.disk is not None  # the state dir exists, so its free space is known
    assert inv.source in ("host", "host+nvml")


@pytest.mark.parametrize(
    ("reported", "nominal"),
    [
        (int(79.6 * 2**30), "80GiB"),
        (int(23.6 * 2**30), "24GiB"),
        (10 * 2**30, "10GiB"),
        (2**20, "1GiB"),
    ],
)
def test_gpu_memory_is_rounded_to_the_nominal_size(reported: int, nominal: str) -> None:
    """Drivers keep some memory back; a contract's ``>=80GiB`` means an 80GB card."""
    assert _nominal(reported) == Bytes(nominal)


@pytest.mark.gpu
def test_nvml_reports_this_hosts_gpus() -> None:
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver answers: {exc}")
    gpus = nvml_gpus()
    if not gpus:
        pytest.skip("NVML answers but reports no GPU")
    for gpu in gpus:
        assert gpu.model
        assert gpu.memory.bytes % 2**30 == 0
        assert re.fullmatch(r"\d+\.\d", gpu.compute_capability or "")
        assert gpu.id.isdigit() or gpu.id.startswith("MIG-")
        assert gpu.uuid
