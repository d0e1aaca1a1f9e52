"""One jurisdiction hierarchy for every backend: a country satisfies the unions it is in."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicontract import Contract, Grant, Negotiator, NoOffer, Offer, Placement
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.objects import _node_affinity
from aicontract.backends.kubernetes.quote import node_views
from aicontract.backends.local import LocalBackend
from aicontract.jurisdictions import jurisdictions_of, satisfies
from aicontract.offer import check_offer

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize(
    ("place", "allowed", "expected"),
    [
        ("DE", ["EU"], True),
        ("DE", ["EEA"], True),
        ("DE", ["DE"], True),
        ("NO", ["EEA"], True),
        ("NO", ["EU"], False),
        ("CH", ["EU"], False),
        ("CH", ["EEA"], False),
        ("CH", ["CH"], True),
        ("EU", ["EU"], True),
        ("EU", ["EEA"], True),
        ("EU", ["DE"], False),  # "somewhere in the EU" may not be Germany
        ("EEA", ["EU"], False),
        (None, ["EU"], False),
        ("US", ["EU", "US"], True),
    ],
)
def test_satisfies(place: str | None, allowed: list[str], expected: bool) -> None:
    assert satisfies(place, allowed) is expected


def test_jurisdictions_of_a_country_and_a_union() -> None:
    assert jurisdictions_of("FR") == {"FR", "EU", "EEA"}
    assert jurisdictions_of("EU") == {"EU", "EEA"}
    assert jurisdictions_of(None) == frozenset()


def test_placement_names_what_it_refuses() -> None:
    place = Placement(jurisdictions=("EU",))
    assert place.allows(region="fra", jurisdiction="DE", provider="x")
    assert place.misfits(region="zrh", jurisdiction="CH", provider="x") == [
        ("placement.jurisdictions", "EU", "CH")
    ]


async def test_local_host_in_germany_serves_an_eu_contract(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "inventory.yaml").write_text("cpus: 2\nmemory: 4GiB\n")
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AICONTRACT_JURISDICTION", "DE")
    eu = Contract(cpus=1, jurisdictions=["EU"])
    async with LocalBackend() as backend:
        lease = await Negotiator([backend]).acquire(eu)
        assert lease.jurisdiction == "DE"
        await lease.release()
    monkeypatch.setenv("AICONTRACT_JURISDICTION", "CH")
    async with LocalBackend() as backend:
        with pytest.raises(NoOffer, match=r"placement\.jurisdictions wants EU; has CH"):
            await Negotiator([backend]).acquire(eu)


def _node(jurisdiction: str) -> dict[str, object]:
    return {
        "metadata": {
            "name": "gpu-de-1",
            "labels": {
                "topology.kubernetes.io/region": "eu-central-1",
                "aicontract.io/jurisdiction": jurisdiction,
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"cpu": "32", "memory": "256Gi", "nvidia.com/gpu": "4"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_kubernetes_node_in_germany_fits_an_eu_contract() -> None:
    backend = KubernetesBackend(kubeconfig="/nonexistent")
    eu = Contract(gpus=1, jurisdictions=["EU"])
    (view,) = node_views([_node("DE")], [])
    fit = backend._fit(view, eu)
    assert isinstance(fit, tuple), fit
    (swiss,) = node_views([_node("CH")], [])
    misfit = backend._fit(swiss, eu)
    assert not isinstance(misfit, tuple)


def test_kubernetes_pod_affinity_pins_the_offers_jurisdiction() -> None:
    eu = Contract(gpus=1, jurisdictions=["EU"])
    offer = Offer(
        backend="kubernetes",
        provider="kubernetes",
        region="eu-central-1",
        jurisdiction="DE",
        grant=Grant(gpus=1, gpu_model="H100"),
        contract=eu,
        id="o-1",
        guarantee="allocated",
        isolation="shared",
        price=None,
        expires_at=1e12,
        details={"jurisdiction_source": "label"},
    )
    assert check_offer(offer, eu, now=0.0) == []
    terms = _node_affinity(offer)["requiredDuringSchedulingIgnoredDuringExecution"]
    exprs = [e for t in terms["nodeSelectorTerms"] for e in t["matchExpressions"]]
    assert {"key": "aicontract.io/jurisdiction", "operator": "In", "values": ["DE"]} in exprs


def test_cloud_region_in_germany_serves_eu_and_eea() -> None:
    from aicontract.backends.cloud.regions import AWS_REGIONS, jurisdiction_for

    country = AWS_REGIONS["eu-central-1"]
    for wanted in (["EU"], ["EEA"], ["DE"]):
        stated = jurisdiction_for(country, wanted)
        assert satisfies(stated, wanted)
    assert not satisfies(jurisdiction_for(AWS_REGIONS["eu-central-2"], ["EU"]), ["EU"])
