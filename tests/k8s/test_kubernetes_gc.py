"""``aicontract gc``: leases whose holder stopped renewing go, with all they own."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from click.testing import CliRunner

from aicontract import GPU, Contract, Negotiator, VirtualClock, Workload
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.objects import LABEL_LEASE
from aicontract.cli import main

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]


@pytest.fixture
async def backend(k8s_cluster: Any) -> AsyncIterator[KubernetesBackend]:
    kb = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=30)
    try:
        yield kb
    finally:
        await kb.aclose()


def objects(k8s_cluster: Any, namespace: str, lease_id: str) -> dict[str, int]:
    params = {"labelSelector": f"{LABEL_LEASE}={lease_id}"}
    counts = {}
    with k8s_cluster.client() as c:
        for kind, path in {
            "pods": f"/api/v1/namespaces/{namespace}/pods",
            "services": f"/api/v1/namespaces/{namespace}/services",
            "leases": f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases",
        }.items():
            counts[kind] = len(c.get(path, params=params).json()["items"])
    return counts


async def wait_empty(k8s_cluster: Any, namespace: str, lease_id: str) -> None:
    with anyio.fail_after(60):
        while any(objects(k8s_cluster, namespace, lease_id).values()):
            await anyio.sleep(0.2)


async def test_gc_collects_a_crashed_holder_and_orphans_but_keeps_live_leases(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    tenant = f"gc-{uuid.uuid4().hex[:6]}"
    c = Contract(
        name="gc",
        tenant=tenant,
        gpus=GPU(count=1),
        workload=Workload(kind="inference", image="x.invalid/srv:1", ports={"http": 80}),
    )
    negotiator = Negotiator([backend])
    live = await negotiator.acquire(c)
    crashed = await negotiator.acquire(c)  # its holder never renews again
    ns = live.details["namespace"]
    # An orphan: a labelled pod whose Lease object does not exist.
    ghost = f"aic-ghost-{uuid.uuid4().hex[:6]}"
    with k8s_cluster.client() as client:
        r = client.post(
            f"/api/v1/namespaces/{ns}/pods",
            json={
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": ghost, "labels": {LABEL_LEASE: ghost}},
                "spec": {"containers": [{"name": "main", "image": "x.invalid/y:1"}]},
            },
        )
        assert r.status_code == 201, r.text
    # Forty seconds on: `live`'s holder renewed five seconds ago, `crashed`'s never did.
    later = time.time() + 40
    renewer = KubernetesBackend(
        kubeconfig=k8s_cluster.kubeconfig, ttl=30, clock=VirtualClock(now=later - 5)
    )
    collector = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, clock=VirtualClock(now=later))
    try:
        live.backend = renewer
        await live.renew()
        dry = await collector.collect_garbage(namespace=ns, dry_run=True)
        assert dry.expired == (f"{ns}/{crashed.id}",)
        assert dry.orphans == (f"pods/{ns}/{ghost}",)
        assert objects(k8s_cluster, ns, crashed.id) == {"pods": 1, "services": 1, "leases": 1}
        report = await collector.collect_garbage(namespace=ns)
        assert report.expired == dry.expired
        assert report.orphans == dry.orphans
        assert report.kept == 1
        await wait_empty(k8s_cluster, ns, crashed.id)
        await wait_empty(k8s_cluster, ns, ghost)
        assert objects(k8s_cluster, ns, live.id) == {"pods": 1, "services": 1, "leases": 1}
    finally:
        live.backend = backend
        await live.release()
        await renewer.aclose()
        await collector.aclose()
    # The crashed holder's lease is gone: releasing it late is harmless.
    await crashed.release()
    assert objects(k8s_cluster, ns, live.id) == {"pods": 0, "services": 0, "leases": 0}


def test_gc_command_reports_json(k8s_cluster: Any) -> None:
    result = CliRunner().invoke(
        main,
        ["gc", "--kubeconfig", str(k8s_cluster.kubeconfig), "--dry-run", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["dry_run"] is True
    assert set(data) == {"expired", "orphans", "kept", "dry_run"}


def test_gc_command_bad_config_is_one_clear_error(tmp_path: Any) -> None:
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(main, ["gc", "--kubeconfig", str(missing)])
    assert result.exit_code == 2
    assert "cannot load a Kubernetes config" in result.output
