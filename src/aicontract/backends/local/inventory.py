"""What this host has: CPUs, memory, disk and NVIDIA GPUs (through NVML, MIG included).

``AICONTRACT_INVENTORY=path.yaml`` replaces what the host reports — for hosts
without NVML, and for tests — in this shape::

    cpus: 16
    memory: 64GiB
    gpus:
      - {model: H100, memory: 80GiB}
      - {model: H100, memory: 80GiB, compute_capability: "9.0"}
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import msgspec

from ...contract import decode_quantity, encode_quantity
from ...documents import parse, read_limited
from ...errors import ConfigError, ContractError
from ...units import Bytes

__all__ = ["GPUDevice", "Inventory", "host_inventory", "load_inventory"]

log = logging.getLogger("aicontract.inventory")

# Plausible bounds: a host with more is a typo (or an attack on the quote's time).
MAX_CPUS = 65536
MAX_GPUS = 4096
# What CUDA_VISIBLE_DEVICES takes for one device: an index or a (MIG-)GPU UUID.
_GPU_ID = re.compile(r"^(?:[0-9]{1,4}|(?:MIG-|GPU-)?[A-Za-z0-9][A-Za-z0-9/_.-]{0,127})$")


class GPUDevice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One schedulable GPU, or one MIG instance of a GPU.

    ``id`` is what ``CUDA_VISIBLE_DEVICES`` takes for it: the GPU's index (with
    ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, which leases set), or a MIG instance's UUID.
    """

    model: str
    memory: Bytes
    id: str = ""
    uuid: str | None = None
    compute_capability: str | None = None
    mig_profile: str | None = None
    interconnect: str | None = None


class Inventory(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What a host offers: CPU ids it may use, memory, disk and GPUs."""

    cpus: int
    memory: Bytes
    gpus: tuple[GPUDevice, ...] = ()
    disk: Bytes | None = None
    cpu_ids: tuple[int, ...] = ()
    source: str = "host"

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
    try:
        result: Inventory = msgspec.convert(data, Inventory, dec_hook=decode_quantity)
    except (msgspec.ValidationError, ContractError) as exc:
        raise ConfigError(f"inventory {str(file)!r}: {str(exc)[:300]}") from None
    return result


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
    try:
        import pynvml
    except ImportError:
        return ()
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("NVML unavailable: %s", exc)
        return ()
    try:
        return tuple(_nvml_devices(pynvml))
    finally:
        pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _nvml_devices(nvml: Any) -> list[GPUDevice]:
    devices: list[GPUDevice] = []
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(nvml.nvmlDeviceGetName(handle))
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability = f"{major}.{minor}"
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
                devices.append(
                    GPUDevice(
                        model=name,
                        memory=memory,
                        id=mig_uuid,
                        uuid=mig_uuid,
                        compute_capability=capability,
                        mig_profile=f"{slices}g.{gib}gb",
                    )
                )
            continue
        memory = _nominal(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        devices.append(
            GPUDevice(
                model=name,
                memory=memory,
                id=str(index),
                uuid=uuid,
                compute_capability=capability,
            )
        )
    return devices


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
    cpu_ids = _cpu_ids()
    disk = None
    if state_dir is not None and Path(state_dir).exists():
        disk = Bytes(shutil.disk_usage(state_dir).free)
    return Inventory(
        cpus=len(cpu_ids),
        memory=Bytes(_memory_bytes()),
        gpus=nvml_gpus(),
        disk=disk,
        cpu_ids=cpu_ids,
        source="host+nvml" if _has_nvml() else "host",
    )


def _has_nvml() -> bool:
    try:
        import pynvml  # noqa: F401
    except ImportError:
        return False
    return True
