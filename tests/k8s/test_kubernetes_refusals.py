"""Refusals a user must be able to read: a quota is a quota, not "account" (issue 15 leftovers).

The API server answers 403 for three different things: RBAC (the caller may not),
a ResourceQuota (``exceeded quota``) and a LimitRange (LimitRanger's ``minimum cpu
usage per Container``). Only the first is about credentials. And a 403 that names a
service account is a credentials refusal too, unless the namespace's own service
account is merely not there yet.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import anyio
import httpx
import pytest

from aicontract import (
    GPU,
    AuthenticationError,
    Contract,
    NoOffer,
    QuotaExceeded,
    TransientBackendError,
    VirtualClock,
)
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.api import KubeAPI
from aicontract.negotiate import Negotiator
from aicontract.offer import Quote
from fakes import FakeBackend

PATH = "/api/v1/namespaces/ns/pods"


def refusal(message: str, status: int = 403) -> Exception:
    body = {"kind": "Status", "status": "Failure", "reason": "Forbidden", "message": message}
    response = httpx.Response(status, json=body)
    return KubeAPI(http=httpx.AsyncClient())._error("POST", PATH, response)


# -- unit: how a 403 is read ---------------------------------------------------------------


def test_a_quota_403_is_quota_exceeded_naming_the_quota() -> None:
    error = refusal(
        'pods "aic-x" is forbidden: exceeded quota: gpus, requested: requests.nvidia.com/gpu=2,'
        " used: requests.nvidia.com/gpu=0, limited: requests.nvidia.com/gpu=1"
    )
    assert isinstance(error, QuotaExceeded)
    assert "ResourceQuota" in str(error)
    assert "limited: requests.nvidia.com/gpu=1" in str(error)


@pytest.mark.parametrize(
    "message",
    [
        'pods "aic-x" is forbidden: minimum cpu usage per Container is 2, but request is 1',
        'pods "aic-x" is forbidden: [maximum memory usage per Pod is 1Gi, but limit is 2Gi]',
        'pods "aic-x" is forbidden: cpu max limit to request ratio per Container is 2,'
        " but provided ratio is 4.000000",
    ],
)
def test_a_limit_range_403_is_quota_exceeded_naming_the_limit_range(message: str) -> None:
    error = refusal(message)
    assert isinstance(error, QuotaExceeded)
    assert "LimitRange" in str(error)


def test_an_rbac_403_of_a_service_account_user_is_final_not_transient() -> None:
    """Before: any 403 whose message said "serviceaccount" was retried as transient, so
    an in-cluster caller without rights waited out its whole deadline."""
    error = refusal(
        'pods is forbidden: User "system:serviceaccount:team:runner" cannot create resource'
        ' "pods" in API group "" in the namespace "team"'
    )
    assert isinstance(error, AuthenticationError)


def test_a_namespace_whose_service_account_is_not_there_yet_is_transient() -> None:
    error = refusal(
        'pods "aic-x" is forbidden: error looking up service account team/default:'
        ' serviceaccount "default" not found'
    )
    assert isinstance(error, TransientBackendError)


# -- unit: how the negotiator labels a commit's refusal ------------------------------------


@pytest.mark.anyio
async def test_the_negotiator_labels_a_quota_refusal_quota_not_account() -> None:
    clock = VirtualClock()
    quota = FakeBackend(
        name="quota",
        clock=clock,
        commit_errors=[QuotaExceeded("quota", "exceeded quota: gpus, used 1, limited 1")],
    )
    creds = FakeBackend(
        name="creds", clock=clock, commit_errors=[AuthenticationError("creds", "token refused")]
    )
    with pytest.raises(NoOffer) as caught:
        await Negotiator([quota, creds], clock=clock).acquire(Contract(gpus=1))  # type: ignore[list-item]
    labels = {r.backend: r.requirement for r in caught.value.rejections}
    assert labels == {"quota": "quota", "creds": "account"}


# -- on the control plane ------------------------------------------------------------------


def tenant() -> str:
    return f"r-{uuid.uuid4().hex[:8]}"


@pytest.mark.k8s
@pytest.mark.anyio
async def test_a_quota_403_at_commit_is_a_quota_rejection_with_its_numbers(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """An offer quoted before a ResourceQuota came: the commit's 403 is labelled "quota",
    naming the quota and what is used of what limit, never "account"."""
    c = Contract(name="quota", tenant=tenant(), gpus=GPU(count=2, models=("H100",)))
    ns = backend.namespace_for(c)
    k8s_cluster.create_namespace(ns)
    stale = await backend.quote(c)
    assert stale.offers
    quota = {
        "apiVersion": "v1",
        "kind": "ResourceQuota",
        "metadata": {"name": "gpus", "namespace": ns},
        "spec": {"hard": {"requests.nvidia.com/gpu": "1"}},
    }
    with k8s_cluster.client() as admin:
        r = admin.post(f"/api/v1/namespaces/{ns}/resourcequotas", json=quota)
        assert r.status_code == 201, r.text
        with anyio.fail_after(30):  # the quota controller fills in what is used
            while "used" not in admin.get(
                f"/api/v1/namespaces/{ns}/resourcequotas/gpus"
            ).json().get("status", {}):
                await anyio.sleep(0.1)

    class Stale(KubernetesBackend):
        """Quotes what the cluster looked like before the quota (a quote is a snapshot)."""

        async def quote(self, contract: Contract) -> Quote:
            return stale

    late = Stale(kubeconfig=k8s_cluster.kubeconfig)
    try:
        with pytest.raises(NoOffer) as caught:
            await Negotiator([late]).acquire(c)
    finally:
        await late.aclose()
    rejections = caught.value.rejections
    assert len(rejections) == len(stale.offers)  # one per offer tried (EU and US)
    for rejection in rejections:
        assert rejection.requirement == "quota"
        assert "ResourceQuota" in rejection.available
        assert "used: requests.nvidia.com/gpu=0" in rejection.available
        assert "limited: requests.nvidia.com/gpu=1" in rejection.available


@pytest.mark.k8s
@pytest.mark.anyio
async def test_a_service_account_without_pod_rights_is_refused_at_once(
    k8s_cluster: Any, backend: KubernetesBackend
) -> None:
    """In-cluster callers are service accounts: RBAC's 403 names one. It is final
    (AuthenticationError, now), not a transient error retried until the deadline."""
    c = Contract(name="sa", tenant=tenant(), gpus=GPU(count=1, models=("H100",)))
    ns = backend.namespace_for(c)
    k8s_cluster.create_namespace(ns)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "leases-only", "namespace": ns},
        "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["*"]},
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "leases-only", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "leases-only"},
        "subjects": [{"kind": "ServiceAccount", "name": "runner", "namespace": ns}],
    }
    with k8s_cluster.client() as admin:
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner"}}
        assert admin.post(f"/api/v1/namespaces/{ns}/serviceaccounts", json=sa).status_code == 201
        base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
        assert admin.post(f"{base}/roles", json=role).status_code == 201
        assert admin.post(f"{base}/rolebindings", json=binding).status_code == 201
        token = ""
        with anyio.fail_after(30):  # the token controller writes the account's secret
            while not token:
                for secret in admin.get(f"/api/v1/namespaces/{ns}/secrets").json()["items"]:
                    annotations = secret["metadata"].get("annotations") or {}
                    if annotations.get("kubernetes.io/service-account.name") == "runner":
                        token = base64.b64decode(secret["data"]["token"]).decode()
                if not token:
                    await anyio.sleep(0.1)
    offer = (await backend.quote(c)).offers[0]
    kubeconfig = k8s_cluster.kubeconfig.parent / f"kubeconfig-{ns}"
    kubeconfig.write_text(
        k8s_cluster.kubeconfig.read_text().replace(k8s_cluster.token, token), encoding="utf-8"
    )
    runner = KubernetesBackend(kubeconfig=kubeconfig, create_namespaces=False, schedule_timeout=8)
    try:
        # Before: TransientBackendError, after retrying for all of schedule_timeout.
        with pytest.raises(AuthenticationError) as caught:
            await runner.commit(offer, uuid.uuid4().hex[:16])
    finally:
        await runner.aclose()
    assert "system:serviceaccount" in str(caught.value)
    with k8s_cluster.client() as admin:
        leases = admin.get(f"/apis/coordination.k8s.io/v1/namespaces/{ns}/leases").json()
    assert leases["items"] == []
