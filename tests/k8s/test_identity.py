"""Who the Kubernetes backend acts as, on the real control plane, and a policy mapping it.

The test API server is v1.20, which serves no SelfSubjectReview: the service account's
identity comes from the token the server accepted, the static-token admin's from the
kubeconfig (and the identity says so). The SelfSubjectReview path itself is tested on
respx fakes of its documented shape in tests/governance/test_identities.py.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import ADMIN_USER, wait_for_service_account

import aicontract as ac
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.errors import PolicyViolation
from aicontract.governance import Governance, Record, loads_policy
from aicontract.governance.policy import check_contract
from aicontract.negotiate import Negotiator

pytestmark = [pytest.mark.k8s, pytest.mark.anyio]


@pytest.fixture
def service_account(k8s_cluster: Any, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A namespace with service account ``trainer`` (allowed to read the cluster) and a
    kubeconfig that acts as it; yields (namespace, kubeconfig path)."""
    namespace = f"ident-{secrets.token_hex(3)}"
    binding = f"{namespace}-trainer"
    k8s_cluster.create_namespace(namespace)
    with k8s_cluster.client() as c:
        r = c.post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts",
            json={"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer"}},
        )
        assert r.status_code == 201, r.text
        # Let it quote (list nodes, pods): a policy refusal must come from the policy.
        r = c.post(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            json={
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": binding},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "trainer", "namespace": namespace}],
            },
        )
        assert r.status_code == 201, r.text
    wait_for_service_account(k8s_cluster.cluster, namespace, "trainer")
    with k8s_cluster.client() as c:
        account = c.get(f"/api/v1/namespaces/{namespace}/serviceaccounts/trainer").json()
        secret = c.get(
            f"/api/v1/namespaces/{namespace}/secrets/{account['secrets'][0]['name']}"
        ).json()
    token = base64.b64decode(secret["data"]["token"]).decode()
    kubeconfig = k8s_cluster.cluster._write_kubeconfig(tmp_path / "kubeconfig-sa", "trainer", token)
    try:
        yield namespace, kubeconfig
    finally:
        with k8s_cluster.client() as c:
            c.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}")
        k8s_cluster.delete_namespace(namespace)


async def test_the_admin_is_the_kubeconfig_user_and_says_how_it_is_known(
    k8s_cluster: Any,
) -> None:
    backend = KubernetesBackend(kubeconfig=k8s_cluster.kubeconfig)
    try:
        who = await backend.identity()
    finally:
        await backend.aclose()
    assert (who.kind, who.name) == ("user", ADMIN_USER)
    # v1.20 has no SelfSubjectReview and the admin's token is opaque: the identity says so.
    assert "SelfSubjectReview" in who.source or "kubeconfig" in who.source


async def test_a_service_account_is_the_identity_and_a_policy_maps_it_to_its_tenant(
    service_account: tuple[str, Path], tmp_path: Path
) -> None:
    namespace, kubeconfig = service_account
    backend = KubernetesBackend(kubeconfig=kubeconfig, ttl=30)
    try:
        who = await backend.identity()
        assert str(who) == f"serviceaccount:{namespace}/trainer"
        assert f"system:serviceaccounts:{namespace}" in who.groups
        assert who.source.startswith("kubernetes")

        policy = loads_policy(
            f"identities:\n  - {{match: 'serviceaccount:{namespace}/trainer', tenants: [team-a]}}\n"
        )
        allowed, _, _ = check_contract(policy, who, ac.Contract(name="t", gpus=1, tenant="team-a"))
        assert allowed == []
        refused, _, _ = check_contract(policy, who, ac.Contract(name="t", gpus=1, tenant="team-b"))
        assert [r.rule for r in refused] == ["identities"]

        # Through the negotiator: refused before anything is created, naming both.
        record = Record(tmp_path / "record.jsonl")
        negotiator = Negotiator([backend], governance=Governance(policy=policy, record=record))
        with pytest.raises(PolicyViolation) as caught:
            await negotiator.acquire(ac.Contract(name="t", gpus=1, tenant="team-b"))
        text = str(caught.value)
        assert f"serviceaccount:{namespace}/trainer may not act for tenant 'team-b'" in text
        refusals = [e for e in record.entries() if e["kind"] == "refuse"]
        assert refusals
        assert refusals[0]["identity"] == f"serviceaccount:{namespace}/trainer"
    finally:
        await backend.aclose()


@pytest.fixture
def cert_user(k8s_cluster: Any) -> Iterator[str]:
    """A user ``alice-<hex>`` known only by a client certificate, whose group ``ml-<hex>``
    may use the cluster (RBAC on the group, so only the certificate's O grants it)."""
    tag = secrets.token_hex(3)
    group, binding = f"ml-{tag}", f"cert-{tag}"
    with k8s_cluster.client() as c:
        r = c.post(
            "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
            json={
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": binding},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "cluster-admin",
                },
                "subjects": [
                    {"kind": "Group", "name": group, "apiGroup": "rbac.authorization.k8s.io"}
                ],
            },
        )
        assert r.status_code == 201, r.text
    try:
        yield tag
    finally:
        with k8s_cluster.client() as c:
            c.delete(f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{binding}")


@pytest.mark.parametrize("inline", [True, False], ids=["certificate-data", "certificate-file"])
async def test_a_client_certificate_is_its_subject_and_a_policy_maps_its_groups(
    k8s_cluster: Any, cert_user: str, tmp_path: Path, inline: bool
) -> None:
    """Without SelfSubjectReview (v1.20) the API server knows a certificate's user as its
    CN and groups as its O values, whatever the kubeconfig calls the entry: the identity
    must too, or a policy on the group never matches and one on the entry's name does."""
    tag = cert_user
    kubeconfig = k8s_cluster.cluster.client_cert_kubeconfig(
        tmp_path / "kubeconfig-cert",
        f"alice-{tag}",
        (f"ml-{tag}", "research"),
        inline=inline,
        entry="whatever-the-file-calls-it",
    )
    backend = KubernetesBackend(kubeconfig=kubeconfig)
    try:
        who = await backend.identity()
        assert (who.kind, who.name) == ("user", f"alice-{tag}")
        assert who.groups[:2] == (f"ml-{tag}", "research")
        assert "system:authenticated" in who.groups
        assert "certificate" in who.source
        # The server agrees: only the group's RBAC lets it list nodes.
        assert await backend.nodes()

        policy = loads_policy(f"identities:\n  - {{match: 'group:ml-{tag}', tenants: [ml]}}\n")
        allowed, _, _ = check_contract(policy, who, ac.Contract(name="t", gpus=1, tenant="ml"))
        assert allowed == []
        refused, _, _ = check_contract(policy, who, ac.Contract(name="t", gpus=1, tenant="ops"))
        assert [r.rule for r in refused] == ["identities"]
    finally:
        await backend.aclose()
