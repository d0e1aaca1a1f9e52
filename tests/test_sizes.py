"""Sizes are written with their unit, and printed for people."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicontract import Bytes, ContractError, Grant, loads
from aicontract.backends.local import LocalBackend
from aicontract.backends.local.inventory import Inventory


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("resources: {memory: 512}", "$.resources.memory"),
        ("resources: {memory: '512'}", "$.resources.memory"),
        ("resources: {memory: 512..1024}", "$.resources.memory"),
        ("resources: {memory: '>=512'}", "$.resources.memory"),
        ("resources: {disk: 1.5}", "$.resources.disk"),
        ("resources: {gpus: {count: 1, memory: 80}}", "$.resources.gpus.memory"),
    ],
)
def test_a_size_without_a_unit_is_refused_like_a_duration(text: str, path: str) -> None:
    with pytest.raises(ContractError) as info:
        loads(f"name: c\n{text}\n")
    assert info.value.path == path
    assert "a size needs a unit" in info.value.message
    assert "GiB" in str(info.value)


def test_sizes_with_units_still_load() -> None:
    contract = loads("name: c\nresources: {memory: 512MiB..1GiB, disk: 10GB}\n")
    assert contract.resources.memory is not None
    assert contract.resources.memory.min == Bytes("512MiB")


def test_code_may_still_count_bytes() -> None:
    assert Bytes(512).bytes == 512


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (24683652 * 1024, "23.5GiB"),
        (80 * 2**30, "80GiB"),
        (1536, "1.5KiB"),
        (512, "512B"),
        (3 * 2**40 + 2**39, "3.5TiB"),
    ],
)
def test_sizes_for_humans(value: int, shown: str) -> None:
    assert Bytes(value).human() == shown


def test_grant_describes_for_humans() -> None:
    grant = Grant(cpus=1, memory=Bytes(24683652 * 1024), gpus=1, gpu_memory=Bytes("80GiB"))
    assert grant.describe() == "1 x GPU (80GiB), 1 CPU, 23.5GiB memory"
    assert "2 CPUs" in Grant(cpus=2).describe()


@pytest.mark.anyio
async def test_local_declines_name_sizes_for_humans(tmp_path: Path) -> None:
    # docs/cli/index.md: tables read "23.5GiB", not "24683652KiB" — declines included.
    inventory = Inventory(cpus=2, memory=Bytes(24683652 * 1024), disk=Bytes("1536MiB"))
    backend = LocalBackend(state_dir=tmp_path, inventory=inventory)
    try:
        quote = await backend.quote(loads("name: c\nresources: {memory: 32GiB, disk: 2GiB}\n"))
    finally:
        await backend.aclose()
    available = {r.requirement: r.available for r in quote.rejections}
    assert available["resources.memory"] == "23.5GiB free of 23.5GiB"
    assert available["resources.disk"] == "1.5GiB free"
