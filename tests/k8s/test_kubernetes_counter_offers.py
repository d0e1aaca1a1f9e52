"""Counter-offers on a real control plane: another model, fewer GPUs, nothing else relaxed.

The session cluster has H100 nodes (two EU, one US); a test that needs an A100
node adds one and removes it again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fake_kubelet import NodeSpec

from aicontract import GPU, Contract, NoOffer
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.negotiate import Negotiator
from aicontract.offer import check_offer

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]

H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"


def contract(**kw: Any) -> Contract:
    kw.setdefault("tenant", f"co-{uuid.uuid4().hex[:8]}")
    return Contract(name="counter", **kw)


@pytest.fixture
def a100_node(k8s_cluster: Any) -> Iterator[str]:
    """One 4 x A100 node in eu-north-1 (EU), for the length of a test."""
    name = f"gpu-a100-{uuid.uuid4().hex[:4]}"
    spec = NodeSpec(
        name=name, region="eu-north-1", jurisdiction="EU", gpu_product=A100, gpu_memory_mib=81920
    )
    k8s_cluster.kubelet.add_node(spec)
    try:
        yield name
    finally:
        k8s_cluster.kubelet.remove_node(name)


async def test_a_model_the_cluster_lacks_gets_a_counter_offer_of_one_it_has(
    backend: KubernetesBackend,
) -> None:
    """Before: nothing (a counter-offer only ever relaxed the GPU count)."""
    c = contract(gpus=GPU(count=2, models=("A100",)), jurisdictions=("EU",))
    quote = await backend.quote(c)
    assert not quote.offers
    assert {r.requirement for r in quote.rejections} == {
        "resources.gpus.models",  # the EU nodes
        "placement.jurisdictions",  # the US node
    }
    assert quote.counter_offers
    for counter in quote.counter_offers:
        # The model is what it relaxed, and it says so; the EU-only placement held.
        assert (counter.grant.gpu_model, counter.grant.gpus) == (H100, 2)
        assert counter.jurisdiction == "EU"
        assert counter.details["relaxed"] == f"resources.gpus.models A100 -> {H100}"
        assert "relaxed: resources.gpus.models A100" in counter.summary()
        assert not check_offer(counter, counter.contract, counter.expires_at - 1)
    with pytest.raises(NoOffer) as caught:
        await Negotiator([backend]).acquire(c)
    assert f"A100 -> {H100}" in str(caught.value)
    # Accepting it in code leases the model it named, where the contract allowed.
    lease = await Negotiator([backend]).commit(caught.value.counter_offers[0])
    try:
        assert (lease.grant.gpu_model, lease.grant.gpus, lease.jurisdiction) == (H100, 2, "EU")
        assert lease.contract.placement.jurisdictions == ("EU",)
    finally:
        await lease.release()


@pytest.mark.parametrize(
    "other",
    [
        {"jurisdictions": ("CH",)},  # no node there: placement is never relaxed
        {"cpus": 1000},  # no node has that many CPUs
        {"memory": "4TiB"},
    ],
)
async def test_a_counter_offer_never_relaxes_another_requirement(
    backend: KubernetesBackend, other: dict[str, Any]
) -> None:
    quote = await backend.quote(contract(gpus=GPU(count=1, models=("A100",)), **other))
    assert not quote.offers
    assert quote.counter_offers == ()


async def test_a_counter_offer_keeps_the_gpu_requirements_it_does_not_relax(
    backend: KubernetesBackend,
) -> None:
    """GPU memory and compute capability are hard: an H100 (80 GB) is no counter-offer
    for an A100 with 40 GB, nor for a contract that needs compute capability 10.0."""
    for gpus in (
        GPU(count=1, models=("A100",), memory="40GiB"),
        GPU(count=1, models=("A100",), compute_capability="10.0"),
    ):
        quote = await backend.quote(contract(gpus=gpus))
        assert not quote.offers
        assert quote.counter_offers == (), quote.counter_offers


async def test_fewer_of_the_model_asked_come_before_another_model(
    backend: KubernetesBackend, a100_node: str
) -> None:
    quote = await backend.quote(contract(gpus=GPU(count=5, models=("A100",))))
    assert not quote.offers
    got = [(o.grant.gpu_model, o.grant.gpus, o.details["relaxed"]) for o in quote.counter_offers]
    assert got[0] == ("A100", 4, "resources.gpus.count 5 -> 4")
    assert set(got[1:]) == {
        (H100, 4, f"resources.gpus.models A100 -> {H100}; resources.gpus.count 5 -> 4")
    }
    assert {o.region for o in quote.counter_offers[1:]} == {"eu-west-1", "us-east-1"}


async def test_another_model_when_the_one_asked_has_nothing_free(
    backend: KubernetesBackend, a100_node: str
) -> None:
    c = contract(gpus=GPU(count=2, models=("A100",)), jurisdictions=("EU",))
    negotiator = Negotiator([backend])
    full = await negotiator.acquire(c.with_(gpus=GPU(count=4, models=("A100",))))
    try:
        assert full.details["node"] == a100_node
        quote = await backend.quote(c)
        assert not quote.offers
        assert "resources.gpus.count" in {r.requirement for r in quote.rejections}
        assert {(o.grant.gpu_model, o.grant.gpus, o.region) for o in quote.counter_offers} == {
            (H100, 2, "eu-west-1")
        }
    finally:
        await full.release()
