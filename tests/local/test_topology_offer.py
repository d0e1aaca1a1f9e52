"""The fit rule for topology lives in check_offer: interconnect as a minimum, locality."""

from __future__ import annotations

import pytest

from aicontract import GPU, Contract, ContractError
from aicontract.offer import check_offer, interconnect_meets
from fakes import make_offer


@pytest.mark.parametrize(
    ("wanted", "gpus", "granted", "meets"),
    [
        ("nvlink", 8, "nvlink", True),
        ("nvlink", 8, "pcie", False),
        ("nvlink", 8, None, False),  # unknown is not NVLink
        ("pcie", 8, "nvlink", True),  # NVLink is at least PCIe
        ("pcie", 8, "pcie", True),
        ("pcie", 2, None, False),
        ("any", 8, None, True),
        ("any", 8, "pcie", True),
        ("nvlink", 1, None, True),  # one GPU has no pair to link
        ("pcie", 1, None, True),
        ("infiniband", 8, "infiniband", True),  # a fabric, off the ladder
        ("infiniband", 8, "nvlink", False),
        ("infiniband", 1, None, False),
        ("nvlink", 8, "infiniband", False),
    ],
)
def test_interconnect_is_a_minimum(
    wanted: str, gpus: int, granted: str | None, meets: bool
) -> None:
    assert interconnect_meets(wanted, gpus, granted) is meets
    contract = Contract(gpus=GPU(count=gpus, interconnect=wanted))
    offer = make_offer("x", contract, 0.0, gpus=gpus, gpu_interconnect=granted)
    problems = check_offer(offer, contract, 0.0)
    assert [p.requirement for p in problems] == ([] if meets else ["resources.gpus.interconnect"])
    if not meets:
        assert problems[0].wanted == f"{wanted} between the GPUs"
        assert problems[0].available == (granted or "unknown")


@pytest.mark.parametrize(
    ("grant", "refused"),
    [
        ({"gpus": 2, "cpus": 8, "numa_nodes": (0,)}, False),
        ({"gpus": 2, "cpus": 8, "numa_nodes": (0, 1)}, False),
        ({"gpus": 2, "cpus": 8}, True),  # no NUMA placement stated
        ({"gpus": 0, "cpus": 4}, True),
        ({"gpus": 0, "cpus": 4, "numa_nodes": (1,)}, False),
    ],
)
def test_locality_needs_a_stated_numa_placement(grant: dict[str, object], refused: bool) -> None:
    gpus = grant["gpus"]
    contract = Contract(
        gpus=GPU(count=gpus) if gpus else None,
        cpus=grant["cpus"],
        placement={"locality": "numa"},
    )
    offer = make_offer("x", contract, 0.0, **grant)
    problems = [p.requirement for p in check_offer(offer, contract, 0.0)]
    assert problems == (["placement.locality"] if refused else [])
    # Without locality asked, the same grants all pass.
    loose = contract.with_(placement={})
    assert check_offer(make_offer("x", loose, 0.0, **grant), loose, 0.0) == []


def test_bad_topology_words_in_a_contract_are_refused_clearly() -> None:
    with pytest.raises(ContractError) as info:
        Contract(placement={"locality": "socket"})
    assert info.value.path == "$.placement.locality"
    assert "any | numa" in str(info.value)
    with pytest.raises(ContractError) as info:
        Contract(gpus=GPU(count=2, interconnect="nvswitch"))
    assert "any | pcie | nvlink | infiniband" in str(info.value)
