"""Proves the local control plane + fake kubelet behave like a cluster."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

pytestmark = pytest.mark.k8s

NS = "default"


def _wait(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _pod(
    name: str, gpus: int, region: str | None = None, owner: dict[str, Any] | None = None
) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "smoke"}},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 30,
            "containers": [
                {
                    "name": "main",
                    "image": "example.invalid/worker:1",
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }
    if region:
        pod["spec"]["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "topology.kubernetes.io/region",
                                    "operator": "In",
                                    "values": [region],
                                }
                            ]
                        }
                    ]
                }
            }
        }
    if owner:
        pod["metadata"]["ownerReferences"] = [owner]
    return pod


def _uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_nodes_ready_with_gpu_labels(k8s_cluster):
    with k8s_cluster.client() as c:
        nodes = {n["metadata"]["name"]: n for n in c.get("/api/v1/nodes").json()["items"]}
    assert set(nodes) >= {s.name for s in k8s_cluster.node_specs}
    for spec in k8s_cluster.node_specs:
        node = nodes[spec.name]
        ready = [x for x in node["status"]["conditions"] if x["type"] == "Ready"]
        assert ready
        assert ready[0]["status"] == "True"
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == str(spec.gpus)
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == spec.gpu_product
        assert labels["topology.kubernetes.io/region"] == spec.region
        assert labels.get("aicontract.io/jurisdiction") == spec.jurisdiction
        assert not [
            t
            for t in node["spec"].get("taints") or []
            if t["key"].startswith("node.kubernetes.io/")
        ]
    with k8s_cluster.client() as c:
        leases = c.get("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases").json()[
            "items"
        ]
    assert {s.name for s in k8s_cluster.node_specs} <= {x["metadata"]["name"] for x in leases}


def test_kubeconfig_embeds_ca_and_token(k8s_cluster):
    text = k8s_cluster.kubeconfig.read_text()
    assert f"server: {k8s_cluster.server}" in text
    assert "certificate-authority-data:" in text
    assert f"token: {k8s_cluster.token}" in text
    assert "insecure-skip-tls-verify" not in text


def test_gpu_pod_scheduled_by_region_and_running(k8s_cluster):
    us_nodes = {s.name for s in k8s_cluster.node_specs if s.region == "us-east-1"}
    name = _uniq("gpu-us")
    with k8s_cluster.client() as c:
        r = c.post(f"/api/v1/namespaces/{NS}/pods", json=_pod(name, gpus=1, region="us-east-1"))
        assert r.status_code == 201, r.text

        def running():
            p = c.get(f"/api/v1/namespaces/{NS}/pods/{name}").json()
            return p if p.get("status", {}).get("phase") == "Running" else None

        pod = _wait(running, 60, f"pod {name} Running")
        assert pod["spec"]["nodeName"] in us_nodes
        assert pod["status"]["podIP"]
        conds = {x["type"]: x["status"] for x in pod["status"]["conditions"]}
        assert conds["Ready"] == "True"
        assert conds["PodScheduled"] == "True"
        assert pod["status"]["containerStatuses"][0]["ready"] is True

        # Deleting it with the default grace period finishes via the fake kubelet.
        assert c.delete(f"/api/v1/namespaces/{NS}/pods/{name}").status_code == 200
        _wait(
            lambda: c.get(f"/api/v1/namespaces/{NS}/pods/{name}").status_code == 404,
            30,
            f"pod {name} gone",
        )


def test_owned_pod_is_garbage_collected(k8s_cluster):
    cm_name, pod_name = _uniq("owner"), _uniq("owned")
    with k8s_cluster.client() as c:
        r = c.post(
            f"/api/v1/namespaces/{NS}/configmaps",
            json={
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": cm_name},
                "data": {"a": "b"},
            },
        )
        assert r.status_code == 201, r.text
        owner = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "name": cm_name,
            "uid": r.json()["metadata"]["uid"],
        }
        r = c.post(
            f"/api/v1/namespaces/{NS}/pods",
            json=_pod(pod_name, gpus=1, region="eu-west-1", owner=owner),
        )
        assert r.status_code == 201, r.text
        _wait(
            lambda: (
                c.get(f"/api/v1/namespaces/{NS}/pods/{pod_name}").json()["status"].get("phase")
                == "Running"
            ),
            60,
            "owned pod Running",
        )
        assert c.delete(f"/api/v1/namespaces/{NS}/configmaps/{cm_name}").status_code == 200
        _wait(
            lambda: c.get(f"/api/v1/namespaces/{NS}/pods/{pod_name}").status_code == 404,
            60,
            "garbage collector to delete the owned pod",
        )


def test_pod_needing_too_many_gpus_stays_pending(k8s_cluster):
    too_many = max(s.gpus for s in k8s_cluster.node_specs) + 1
    name = _uniq("too-big")
    with k8s_cluster.client() as c:
        r = c.post(f"/api/v1/namespaces/{NS}/pods", json=_pod(name, gpus=too_many))
        assert r.status_code == 201, r.text

        def unschedulable():
            p = c.get(f"/api/v1/namespaces/{NS}/pods/{name}").json()
            for cond in p.get("status", {}).get("conditions") or []:
                if cond["type"] == "PodScheduled" and cond["status"] == "False":
                    return p if cond.get("reason") == "Unschedulable" else None
            return None

        pod = _wait(unschedulable, 30, "scheduler to report Unschedulable")
        assert "nvidia.com/gpu" in str(pod["status"]["conditions"])
        time.sleep(2)
        pod = c.get(f"/api/v1/namespaces/{NS}/pods/{name}").json()
        assert pod["status"]["phase"] == "Pending"
        assert not pod["spec"].get("nodeName")
        c.delete(f"/api/v1/namespaces/{NS}/pods/{name}", params={"gracePeriodSeconds": "0"})


def test_job_pod_completes_via_annotation_and_ttl_cleans_up(k8s_cluster):
    name = _uniq("job")
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            # Long enough to observe success first (completionTime has 1s resolution).
            "ttlSecondsAfterFinished": 5,
            "template": {
                "metadata": {"annotations": {"fake-kubelet.aicontract.io/exit-after-seconds": "1"}},
                "spec": _pod("x", gpus=1)["spec"],
            },
        },
    }
    with k8s_cluster.client() as c:
        r = c.post(f"/apis/batch/v1/namespaces/{NS}/jobs", json=job)
        assert r.status_code == 201, r.text

        def succeeded():
            r = c.get(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}")
            assert r.status_code == 200, r.text
            return (r.json().get("status") or {}).get("succeeded") == 1

        _wait(succeeded, 60, "job to succeed")
        # TTL-after-finished controller (feature gate on) removes it.
        _wait(
            lambda: c.get(f"/apis/batch/v1/namespaces/{NS}/jobs/{name}").status_code == 404,
            60,
            "ttl-after-finished to delete the job",
        )


def test_killed_node_goes_not_ready_and_revives(k8s_cluster):
    kubelet = k8s_cluster.kubelet
    victim = k8s_cluster.node_specs[-1].name
    kubelet.kill_node(victim, ready="False")
    try:
        assert kubelet.node_ready_status(victim) == "False"
        # Node lifecycle controller reacts: NoExecute/NoSchedule not-ready taint.
        _wait(
            lambda: any(
                t["key"] == "node.kubernetes.io/not-ready"
                for t in kubelet.get_node(victim)["spec"].get("taints") or []
            ),
            30,
            "not-ready taint",
        )
    finally:
        kubelet.revive_node(victim, timeout=60)
    assert kubelet.node_ready_status(victim) == "True"


def test_silent_node_marked_unknown_by_controller(k8s_cluster):
    """Stop heartbeats only: the REAL node-lifecycle controller must notice
    (lease + status stale) and set Ready=Unknown after its grace period."""
    kubelet = k8s_cluster.kubelet
    victim = k8s_cluster.node_specs[0].name
    kubelet.kill_node(victim, ready=None)
    try:
        grace = 20 + 15
        kubelet.wait_node_ready_status(victim, "Unknown", timeout=grace + 20)
        # The others keep heartbeating and stay Ready.
        for spec in k8s_cluster.node_specs[1:]:
            assert kubelet.node_ready_status(spec.name) == "True"
    finally:
        kubelet.revive_node(victim, timeout=60)


def test_fake_kubelet_loops_had_no_errors(k8s_cluster):
    """Runs last: the fake kubelet's watch/heartbeat loops stayed healthy."""
    assert k8s_cluster.kubelet.errors == []
    assert k8s_cluster.kubelet.pods_started >= 3
    k8s_cluster.cluster.check_alive()
