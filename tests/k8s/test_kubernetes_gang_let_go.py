"""A gang letting its pods go waits for them on a watch, bounded by the commit's deadline.

When a gang cannot be placed whole, its commit deletes the gang's pods and waits until
they are gone before making them anew under the same names. Pods usually vanish at
once (deleted with no grace), but a finalizer (a controller's, an admission webhook's)
keeps a pod until it is lifted. The wait must follow the API server's word (a watch:
a list, then events), not ask every few milliseconds, and must end at the deadline.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.commit import _Making
from aicontract.backends.kubernetes.objects import LABEL_LEASE, ObjectMeta, gang_pod_name
from aicontract.errors import CapacityUnavailable

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]

HOLD = "aicontract.test/hold"
MERGE = {"Content-Type": "application/merge-patch+json"}


@pytest.fixture
def namespace(k8s_cluster: Any) -> Iterator[str]:
    ns = f"letgo-{secrets.token_hex(3)}"
    k8s_cluster.create_namespace(ns)
    try:
        yield ns
    finally:
        lift_all(k8s_cluster, ns)
        k8s_cluster.delete_namespace(ns)


def held_pods(k8s_cluster: Any, ns: str, name: str, count: int) -> dict[str, str]:
    """``count`` gang pods of ``name`` that a finalizer holds and no node takes; their
    uids by the commit's kind names (``pod-0``...)."""
    uids = {}
    with k8s_cluster.client() as admin:
        for rank in range(count):
            body = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": gang_pod_name(name, rank),
                    "labels": {LABEL_LEASE: name},
                    "finalizers": [HOLD],
                },
                "spec": {
                    "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.9"}],
                    "nodeSelector": {"aicontract.test/nowhere": "true"},
                },
            }
            r = admin.post(f"/api/v1/namespaces/{ns}/pods", json=body)
            assert r.status_code == 201, r.text
            uids[f"pod-{rank}"] = r.json()["metadata"]["uid"]
    return uids


def lift_all(k8s_cluster: Any, ns: str) -> None:
    with k8s_cluster.client() as admin:
        for pod in admin.get(f"/api/v1/namespaces/{ns}/pods").json().get("items") or []:
            admin.patch(
                f"/api/v1/namespaces/{ns}/pods/{pod['metadata']['name']}",
                json={"metadata": {"finalizers": None}},
                headers=MERGE,
            )


def making(ns: str, name: str, uids: dict[str, str], seconds: float) -> _Making:
    meta = ObjectMeta(name, ns, {LABEL_LEASE: name}, {})
    return _Making(meta, dict(uids), [], anyio.current_time() + seconds, False)


def count_reads(backend: KubernetesBackend) -> list[str]:
    """Every GET the backend sends from now on (its URL), watches included."""
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        if request.method == "GET":
            seen.append(str(request.url))

    backend.api.http.event_hooks["request"].append(hook)
    return seen


async def test_letting_go_waits_on_a_watch_until_the_pods_are_gone(
    k8s_cluster: Any, backend: KubernetesBackend, namespace: str
) -> None:
    name = f"aic-letgo-{secrets.token_hex(3)}"
    work = making(namespace, name, held_pods(k8s_cluster, namespace, name, 2), 60)
    reads = count_reads(backend)
    done = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def let_go() -> None:
            await backend._let_gang_go(work, 2)
            done.set()

        tg.start_soon(let_go)
        await anyio.sleep(2.0)  # the pods are terminating, held by the finalizer
        assert not done.is_set()
        lift_all(k8s_cluster, namespace)
        with anyio.fail_after(30):
            await done.wait()
    with k8s_cluster.client() as admin:
        assert admin.get(f"/api/v1/namespaces/{namespace}/pods").json()["items"] == []
    # A list and a watch (one more of each were the watch cut short), not a GET every
    # few milliseconds for the two seconds the finalizer held the pods.
    assert len(reads) <= 6, reads


async def test_letting_go_gives_up_at_the_deadline(
    k8s_cluster: Any, backend: KubernetesBackend, namespace: str
) -> None:
    name = f"aic-letgo-{secrets.token_hex(3)}"
    work = making(namespace, name, held_pods(k8s_cluster, namespace, name, 2), 3)
    with (
        anyio.fail_after(30),
        pytest.raises(CapacityUnavailable, match="still there after they were deleted"),
    ):
        await backend._let_gang_go(work, 2)
