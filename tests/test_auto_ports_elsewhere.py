"""Only the local backend grants ports: elsewhere an ``auto`` port is refused at quote time."""

from __future__ import annotations

import pytest

from aicontract import Contract
from aicontract.backends.base import fixed_ports_only
from aicontract.backends.kubernetes import KubernetesBackend


def test_auto_ports_are_refused_by_backends_that_cannot_grant_them() -> None:
    contract = Contract(gpus=1, workload={"ports": {"http": "auto", "metrics": 9100}})
    refused = fixed_ports_only("kubernetes", contract)
    assert refused is not None
    assert not refused.offers
    (rejection,) = refused.rejections
    assert rejection.requirement == "workload.ports"
    assert rejection.wanted == "http: auto"
    assert fixed_ports_only("kubernetes", Contract(gpus=1, workload={"ports": {"h": 80}})) is None


@pytest.mark.anyio
async def test_kubernetes_refuses_auto_ports_before_asking_the_cluster() -> None:
    backend = KubernetesBackend(kubeconfig="/nonexistent")
    quote = await backend.quote(Contract(gpus=1, workload={"ports": {"http": "auto"}}))
    assert [r.requirement for r in quote.rejections] == ["workload.ports"]
