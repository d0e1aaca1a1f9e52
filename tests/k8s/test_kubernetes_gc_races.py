"""``aicontract gc`` and ``abandon`` racing commits and renewals in flight, made deterministic.

Each race is forced at the exact moment it matters: a transport between the
collector and the API server runs the other party's step (a renewal, a commit)
right before the collector's own request goes out, or right after its read.
"""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from aicontract import GPU, Contract, VirtualClock
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.objects import LABEL_LEASE, lease_name
from aicontract.negotiate import Negotiator

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]


class Meddling(httpx.AsyncBaseTransport):
    """Runs ``step`` once, when the first request ``when(request, response)`` picks is
    seen: before it is sent (``response`` None) or after its reply came back."""

    def __init__(
        self,
        inner: httpx.AsyncBaseTransport,
        when: Callable[[httpx.Request, httpx.Response | None], bool],
        step: Callable[[], Awaitable[None]],
    ) -> None:
        self.inner, self.when, self.step = inner, when, step
        self.done = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.done and self.when(request, None):
            self.done = True
            await self.step()
        response = await self.inner.handle_async_request(request)
        if not self.done and self.when(request, response):
            self.done = True
            await self.step()
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def meddling_client(k8s_cluster: Any, transport: Meddling) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=k8s_cluster.server,
        headers={"Authorization": f"Bearer {k8s_cluster.token}"},
        transport=transport,
        timeout=httpx.Timeout(30.0),
    )


def inner(k8s_cluster: Any) -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport(
        verify=ssl.create_default_context(cafile=str(k8s_cluster.ca_path))
    )


def contract() -> Contract:
    return Contract(
        name="gc-race", tenant=f"gr-{uuid.uuid4().hex[:8]}", gpus=GPU(count=1, models=("H100",))
    )


def listing(k8s_cluster: Any, ns: str, plural: str, lease_id: str) -> list[dict[str, Any]]:
    path = {
        "pods": f"/api/v1/namespaces/{ns}/pods",
        "leases": f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases",
    }[plural]
    with k8s_cluster.client() as c:
        r = c.get(path, params={"labelSelector": f"{LABEL_LEASE}={lease_id}"})
        assert r.status_code == 200, r.text
        return list(r.json()["items"])


async def test_a_lease_renewed_between_gc_list_and_delete_is_kept(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Before: gc judged the lease on its list, then deleted its pod and Lease object
    although the holder had renewed it in between; the holder's next renew was LeaseLost."""
    lease = await Negotiator([backend]).acquire(contract())
    ns = lease.details["namespace"]
    later = time.time() + 40  # the lease (TTL 30, renewed now) looks expired to gc then
    renewer = KubernetesBackend(
        kubeconfig=k8s_cluster.kubeconfig, ttl=30, clock=VirtualClock(now=later - 2)
    )

    async def renew() -> None:  # the holder's heartbeat, just before gc's first delete
        lease.backend = renewer
        try:
            await lease.renew()
        finally:
            lease.backend = backend

    transport = Meddling(
        inner(k8s_cluster), lambda req, resp: req.method == "DELETE" and resp is None, renew
    )
    collector = KubernetesBackend(
        http=meddling_client(k8s_cluster, transport), clock=VirtualClock(now=later)
    )
    try:
        report = await collector.collect_garbage(namespace=ns)
        assert transport.done  # the race happened: gc meant to delete
        assert report.expired == ()
        assert report.kept == 1
        [pod] = listing(k8s_cluster, ns, "pods", lease.id)
        assert pod["metadata"]["uid"] == lease.details["pod_uid"]
        assert not pod["metadata"].get("deletionTimestamp")
        assert len(listing(k8s_cluster, ns, "leases", lease.id)) == 1
        await lease.renew()  # the holder still holds it
    finally:
        await collector.aclose()
        await renewer.aclose()
        await lease.release()


async def test_an_expired_lease_still_goes_when_nothing_renews_it(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """The conditional delete still collects: a stale lease, read and deleted as read."""
    lease = await Negotiator([backend]).acquire(contract())
    ns = lease.details["namespace"]
    collector = KubernetesBackend(
        kubeconfig=k8s_cluster.kubeconfig, clock=VirtualClock(now=time.time() + 40)
    )
    try:
        report = await collector.collect_garbage(namespace=ns)
        assert report.expired == (f"{ns}/{lease.id}",)
        assert listing(k8s_cluster, ns, "leases", lease.id) == []
    finally:
        await collector.aclose()
        await lease.release()


async def test_a_labelled_object_younger_than_the_grace_period_is_no_orphan(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """Before: with the default ``--grace 0s`` an object made a moment ago whose Lease
    object was not (yet) there was deleted as an orphan."""
    c = contract()
    ns = backend.namespace_for(c)
    k8s_cluster.create_namespace(ns)
    young = f"aic-young-{uuid.uuid4().hex[:6]}"
    with k8s_cluster.client() as client:
        r = client.post(
            f"/api/v1/namespaces/{ns}/pods",
            json={
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": young, "labels": {LABEL_LEASE: young}},
                "spec": {"containers": [{"name": "main", "image": "x.invalid/y:1"}]},
            },
        )
        assert r.status_code == 201, r.text
    now = time.time()
    soon = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, clock=VirtualClock(now=now + 5))
    late = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, clock=VirtualClock(now=now + 60))
    try:
        assert (await soon.collect_garbage(namespace=ns)).orphans == ()
        assert len(listing(k8s_cluster, ns, "pods", young)) == 1
        assert (await late.collect_garbage(namespace=ns)).orphans == (f"pods/{ns}/{young}",)
    finally:
        await soon.aclose()
        await late.aclose()


async def test_abandon_never_deletes_a_commit_that_made_its_lease_after_abandon_looked(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """``abandon`` of a key whose Lease object is missing deletes that key's leftovers.
    Another process commits the same key right after abandon found no Lease object:
    before, abandon then listed that process's new pod and deleted it."""
    c = contract()
    offer = (await backend.quote(c)).offers[0]
    key = uuid.uuid4().hex[:16]
    name = lease_name(key)
    ns = offer.details["namespace"]
    other = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig, ttl=30, holder="host-b/2")
    held: list[Any] = []

    async def commit() -> None:
        held.append(await other.commit(offer, key))

    def after_lease_404(request: httpx.Request, response: httpx.Response | None) -> bool:
        return (
            response is not None
            and request.method == "GET"
            and request.url.path.endswith(f"/leases/{name}")
            and response.status_code == 404
        )

    transport = Meddling(inner(k8s_cluster), after_lease_404, commit)
    quitter = KubernetesBackend(http=meddling_client(k8s_cluster, transport), ttl=30)
    try:
        await quitter.abandon(offer, key)
        assert transport.done
        assert held
        [pod] = listing(k8s_cluster, ns, "pods", name)
        assert pod["metadata"]["uid"] == held[0].details["pod_uid"]
        assert not pod["metadata"].get("deletionTimestamp")
        await held[0].renew()
    finally:
        await quitter.aclose()
        for lease in held:
            await lease.release()
        await other.aclose()
