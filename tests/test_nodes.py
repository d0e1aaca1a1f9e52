"""``resources.nodes``: the field, the fit rule, refusals by one-host backends, and the
Kubernetes fit reading gangs and topology from node labels (no cluster needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from aicontract import GPU, Contract, ContractError, Grant, Offer, load
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.quote import node_views
from aicontract.backends.local import LocalBackend
from aicontract.contract import MAX_NODES, Resources
from aicontract.offer import check_offer


def gang(nodes: int, **gpu: Any) -> Contract:
    gpu.setdefault("count", 4)
    return Contract(resources=Resources(nodes=nodes, gpus=GPU(**gpu)))


def test_nodes_default_to_one_and_are_bounded() -> None:
    assert Contract().resources.nodes == 1
    assert gang(2).resources.nodes == 2
    for bad in (0, -1, MAX_NODES + 1):
        with pytest.raises(ContractError, match=r"nodes.*outside 1\.\.4096"):
            Resources(nodes=bad)


def test_nodes_load_from_a_document(tmp_path: Path) -> None:
    path = tmp_path / "gang.yaml"
    path.write_text("resources:\n  nodes: 3\n  gpus: {count: 8}\n")
    assert load(path).resources.nodes == 3
    path.write_text("resources:\n  nodes: 99999\n")
    with pytest.raises(ContractError, match=r"resources\.nodes"):
        load(path)


def _offer(contract: Contract, grant: Grant) -> Offer:
    return Offer(
        id="o",
        backend="x",
        contract=contract,
        grant=grant,
        guarantee="allocated",
        region="r",
        jurisdiction=None,
        provider="x",
        isolation="shared",
        price=None,
        expires_at=10.0,
    )


def test_check_offer_wants_exactly_the_nodes_asked_for() -> None:
    contract = gang(2)
    one = _offer(contract, Grant(gpus=4))
    assert [r.requirement for r in check_offer(one, contract, 0.0)] == ["resources.nodes"]
    two = _offer(contract, Grant(gpus=4, nodes=2))
    assert check_offer(two, contract, 0.0) == []
    # A gang grant is never slipped to a contract for one node either.
    single = Contract(gpus=4)
    assert [r.requirement for r in check_offer(two, single, 0.0)] == ["resources.nodes"]
    assert Grant(gpus=4, gpu_model="H100", nodes=2).describe() == "2 nodes x (4 x H100)"
    assert Grant(gpus=4, nodes=2).total_gpus == 8


@pytest.mark.anyio
async def test_the_local_backend_refuses_a_gang(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inventory.yaml").write_text("cpus: 4\nmemory: 4GiB\n")
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(tmp_path / "inventory.yaml"))
    async with LocalBackend(state_dir=tmp_path / "state") as backend:
        quote = await backend.quote(Contract(resources=Resources(nodes=2, cpus=1)))
    assert not quote.offers
    assert [r.requirement for r in quote.rejections] == ["resources.nodes"]
    assert "this host" in quote.rejections[0].available


def _node(name: str, region: str = "eu-west-1", **labels: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "topology.kubernetes.io/region": region,
                "aicontract.io/jurisdiction": "EU",
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": "8",
                **labels,
            },
        },
        "status": {
            "allocatable": {"cpu": "64", "memory": "512Gi", "nvidia.com/gpu": "8", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_node_labels_state_the_interconnect() -> None:
    views = node_views(
        [
            _node("plain"),
            _node("clique", **{"nvidia.com/gpu.clique": "7b968a6d.1"}),
            _node("said", **{"aicontract.io/gpu-interconnect": "PCIe"}),
            # The operator's word wins over the clique; nonsense is ignored.
            _node(
                "both", **{"nvidia.com/gpu.clique": "x.1", "aicontract.io/gpu-interconnect": "pcie"}
            ),
            _node("junk", **{"aicontract.io/gpu-interconnect": "carrier-pigeon"}),
            _node(
                "sliced",
                **{
                    "nvidia.com/gpu.sharing-strategy": "time-slicing",
                    "nvidia.com/gpu.replicas": "4",
                },
            ),
        ],
        [],
    )
    by_name = {v.name: v for v in views}
    assert by_name["plain"].interconnect is None
    assert by_name["clique"].interconnect == "nvlink"
    assert by_name["clique"].clique == "7b968a6d.1"
    assert by_name["said"].interconnect == "pcie"
    assert by_name["both"].interconnect == "pcie"
    assert by_name["junk"].interconnect is None
    assert by_name["sliced"].shared_gpus == "time-slicing, 4 replicas per GPU"
    assert by_name["plain"].shared_gpus is None


def test_kubernetes_fit_offers_nvlink_only_where_labelled_and_not_shared_gpus() -> None:
    backend = KubernetesBackend(kubeconfig="/nonexistent")
    views = node_views(
        [
            _node("plain"),
            _node("clique", **{"nvidia.com/gpu.clique": "c.1"}),
            _node("sliced", **{"nvidia.com/gpu.sharing-strategy": "mps"}),
        ],
        [],
    )
    offers, problems, _ = backend._assess(
        Contract(gpus=GPU(count=2, interconnect="nvlink")), views, {}
    )
    assert [o.details["nodes"] for o in offers] == ["clique"]
    assert offers[0].grant.gpu_interconnect == "nvlink"
    assert [node for node, _, _ in problems["resources.gpus.interconnect"]] == ["plain"]
    assert [node for node, _, _ in problems["resources.gpus"]] == ["sliced"]


def test_kubernetes_gang_fits_on_enough_nodes_of_one_region_else_counters() -> None:
    backend = KubernetesBackend(kubeconfig="/nonexistent")
    views = node_views(
        [_node("eu-1"), _node("eu-2"), _node("eu-3"), _node("us-1", region="us-east-1")], []
    )
    offers, problems, most = backend._assess(gang(3), views, {})
    assert [(o.region, o.grant.nodes, o.grant.gpus) for o in offers] == [("eu-west-1", 3, 4)]
    assert problems["resources.nodes"][0][0] == "us-east-1"
    assert most == 3
    offers, problems, most = backend._assess(gang(4), views, {})
    assert offers == []
    assert "3 of them fit" in problems["resources.nodes"][0][2]
    [counter] = backend._counter(gang(4), views, {}, most)
    assert counter.grant.nodes == 3
    assert counter.contract.resources.nodes == 3
    # A range grants each node the same: what the least of the chosen nodes can give.
    busy = node_views(
        [_node("eu-1"), _node("eu-2"), _node("eu-3")],
        [
            {
                "metadata": {"name": "p", "labels": {}},
                "spec": {
                    "nodeName": "eu-1",
                    "containers": [{"resources": {"requests": {"nvidia.com/gpu": "6"}}}],
                },
                "status": {"phase": "Running"},
            }
        ],
    )
    [offer] = backend._assess(gang(3, count="1..8"), busy, {})[0]
    assert offer.grant.gpus == 2


@pytest.mark.anyio
async def test_a_cloud_refuses_a_per_node_gang() -> None:
    """Clouds spread a contract's total GPUs over instances themselves; the shared fit
    rule refuses ``resources.nodes`` above 1 (their grants are for one node's worth)."""
    import respx
    from cloud_support import API_KEY, instance_type
    from fake_lambda import FakeLambda

    from aicontract.backends.cloud import LambdaBackend

    fake = FakeLambda(API_KEY)
    with respx.mock(assert_all_called=False) as router:
        fake.install(router)
        fake.add_type(
            instance_type("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 8, 2392), ["us-east-1"]
        )
        cloud = LambdaBackend(
            api_key=API_KEY, ssh_key_name="k", base_url=fake.base, requests_per_second=0, environ={}
        )
        quote = await cloud.quote(gang(2, count=8))
        await cloud.aclose()
    assert not quote.offers
    assert [r.requirement for r in quote.rejections] == ["resources.nodes"]


def test_nodes_is_a_contract_shortcut() -> None:
    contract = Contract(gpus=4, nodes=2)
    assert contract.resources.nodes == 2
    assert contract.resources.gpus is not None
    assert contract.resources.gpus.count.min == 4
