"""Who the Kubernetes backend acts as, on respx fakes of SelfSubjectReview's documented shape.

POST /apis/authentication.k8s.io/{v1,v1beta1,v1alpha1}/selfsubjectreviews answers with
``status.userInfo`` (username, uid, groups). Servers without it (before 1.26) answer 404,
and the backend falls back to the token it sent; the real v1.20 control plane is
exercised in tests/k8s/test_identity.py.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
import respx

from aicontract import (
    AuthenticationError,
    Contract,
    Negotiator,
    NoOffer,
    PolicyViolation,
    TransientBackendError,
)
from aicontract.backends.kubernetes import KubernetesBackend
from aicontract.backends.kubernetes.core import identity_of_user, token_claims
from aicontract.governance import Governance, Identity, Record, loads_policy, local_identity
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

SERVER = "https://k8s.test"
REVIEW = SERVER + "/apis/authentication.k8s.io/{}/selfsubjectreviews"


def _jwt(claims: dict[str, object]) -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


def _backend(token: str = "opaque-token") -> KubernetesBackend:
    http = httpx.AsyncClient(base_url=SERVER, headers={"Authorization": f"Bearer {token}"})
    return KubernetesBackend(http=http)


def _review(version: str, username: str, groups: list[str]) -> httpx.Response:
    return httpx.Response(
        201,
        json={
            "apiVersion": f"authentication.k8s.io/{version}",
            "kind": "SelfSubjectReview",
            "metadata": {"creationTimestamp": None},
            "status": {"userInfo": {"username": username, "uid": "u-1", "groups": groups}},
        },
    )


async def test_self_subject_review_v1_names_the_service_account() -> None:
    with respx.mock(assert_all_called=True) as router:
        route = router.post(REVIEW.format("v1")).mock(
            return_value=_review(
                "v1",
                "system:serviceaccount:ml:trainer",
                ["system:serviceaccounts", "system:serviceaccounts:ml", "system:authenticated"],
            )
        )
        backend = _backend()
        who = await backend.identity()
        await backend.aclose()
    body = json.loads(route.calls[0].request.content)
    assert body == {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    assert str(who) == "serviceaccount:ml/trainer"
    assert "group:system:serviceaccounts:ml" in who.principals()
    assert who.source == "kubernetes (SelfSubjectReview v1)"


async def test_an_older_server_is_asked_in_beta_then_alpha() -> None:
    with respx.mock(assert_all_called=True) as router:
        router.post(REVIEW.format("v1")).mock(return_value=httpx.Response(404, json={}))
        router.post(REVIEW.format("v1beta1")).mock(return_value=httpx.Response(404, json={}))
        router.post(REVIEW.format("v1alpha1")).mock(
            return_value=_review("v1alpha1", "alice@example.com", ["oidc:ml"])
        )
        backend = _backend()
        who = await backend.identity()
        await backend.aclose()
    assert who == Identity(
        kind="user",
        name="alice@example.com",
        groups=("oidc:ml",),
        source="kubernetes (SelfSubjectReview v1alpha1)",
    )


async def test_without_the_review_the_accepted_service_account_token_names_it() -> None:
    token = _jwt({"iss": "kubernetes/serviceaccount", "sub": "system:serviceaccount:ml:trainer"})
    with respx.mock(assert_all_called=False) as router:
        router.post(url__regex=r".*/selfsubjectreviews").mock(
            return_value=httpx.Response(404, json={})
        )
        backend = _backend(token)
        who = await backend.identity()
        await backend.aclose()
    assert str(who) == "serviceaccount:ml/trainer"
    # The groups SelfSubjectReview would name (line 68): a policy matches either way.
    assert who.groups == (
        "system:serviceaccounts",
        "system:serviceaccounts:ml",
        "system:authenticated",
    )
    assert "token claims" in who.source
    assert "no SelfSubjectReview" in who.source


async def test_an_opaque_token_falls_back_to_the_kubeconfig_user_and_says_so() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.post(url__regex=r".*/selfsubjectreviews").mock(
            return_value=httpx.Response(404, json={})
        )
        backend = _backend()
        who = await backend.identity()
        await backend.aclose()
    assert who.kind == "user"
    assert "not confirmed by the API server" in who.source


async def test_refused_credentials_are_an_authentication_error() -> None:
    with respx.mock(assert_all_called=False) as router:
        router.post(url__regex=r".*/selfsubjectreviews").mock(
            return_value=httpx.Response(401, json={"message": "Unauthorized"})
        )
        backend = _backend()
        with pytest.raises(AuthenticationError, match="401"):
            await backend.identity()
        await backend.aclose()


def test_token_claims_read_only_bearer_jwts() -> None:
    assert token_claims(None) == {}
    assert token_claims("Bearer opaque") == {}
    assert token_claims("Basic dXNlcjpwYXNz") == {}
    assert token_claims("Bearer a.!!!.c") == {}
    assert token_claims(f"Bearer {_jwt({'sub': 'x'})}") == {"sub": "x"}


def test_a_policy_maps_a_namespace_of_service_accounts_by_its_group() -> None:
    who = identity_of_user(
        "system:serviceaccount:ml:trainer",
        ["system:serviceaccounts:ml"],
        "kubernetes",
    )
    policy = loads_policy(
        "identities:\n"
        "  - {match: 'group:system:serviceaccounts:ml', tenants: [ml-research]}\n"
        "  - {match: 'serviceaccount:ml/trainer', tenants: [team-a]}\n"
    )
    assert policy.tenants_for(who) == ("ml-research", "team-a")


@pytest.mark.anyio
async def test_two_backends_of_one_name_each_answer_for_their_own_credentials(
    tmp_path: Path,
) -> None:
    """One governance asks each backend object, not each backend name (two clusters)."""
    from aicontract import Contract, Negotiator
    from aicontract.governance import Governance, Record
    from fakes import FakeBackend

    class Cluster(FakeBackend):
        who: Identity

        async def identity(self) -> Identity:
            return self.who

    allowed, other = Cluster(ttl=3600), Cluster(ttl=3600)
    allowed.who = Identity(kind="serviceaccount", name="ml/trainer", source="kubernetes")
    other.who = Identity(kind="serviceaccount", name="web/frontend", source="kubernetes")
    assert allowed.name == other.name
    policy = loads_policy("identities:\n  - {match: 'serviceaccount:ml/trainer', tenants: [ml]}\n")
    governance = Governance(policy=policy, record=Record(tmp_path / "record.jsonl"))
    contract = Contract(name="x", tenant="ml", gpus=1)
    first = Negotiator([allowed], clock=allowed.clock, governance=governance)
    lease = await first.acquire(contract)
    await lease.release()
    second = Negotiator([other], clock=other.clock, governance=governance)
    with pytest.raises(PolicyViolation, match="serviceaccount:web/frontend may not act"):
        await second.acquire(contract)


class _Mute(FakeBackend):
    """A backend that cannot say who is asking (an unreachable STS, say)."""

    async def identity(self) -> Identity:
        raise TransientBackendError(self.name, "sts: EndpointConnectionError")


@pytest.mark.anyio
async def test_without_identity_rules_no_backend_is_asked(tmp_path: Path) -> None:
    record = Record(tmp_path / "record.jsonl")
    mute = _Mute(ttl=3600)
    negotiator = Negotiator([mute], clock=mute.clock, governance=Governance(record=record))
    lease = await negotiator.acquire(Contract(name="x", gpus=1))
    await lease.release()
    (grant,) = [e for e in record.entries() if e["kind"] == "grant"]
    assert grant["identity"] == str(local_identity())


@pytest.mark.anyio
async def test_with_identity_rules_a_mute_backend_commits_nothing(tmp_path: Path) -> None:
    policy = loads_policy("identities:\n  - {match: '*', tenants: [default]}\n")
    mute = _Mute(ttl=3600)
    governance = Governance(policy=policy, record=Record(tmp_path / "record.jsonl"))
    negotiator = Negotiator([mute], clock=mute.clock, governance=governance)
    with pytest.raises(NoOffer, match="EndpointConnectionError"):
        await negotiator.acquire(Contract(name="x", gpus=1))
    assert mute.commits == []


@pytest.mark.anyio
async def test_the_record_follows_a_change_of_os_user_or_groups(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local identity (and each entry's fields made from it) is cached per answer of the
    OS, never for good: a process that changes its user or groups is recorded as it is now."""
    import os

    record = Record(tmp_path / "record.jsonl")
    backend = FakeBackend()
    negotiator = Negotiator([backend], clock=backend.clock, governance=Governance(record=record))
    contract = Contract(name="x", gpus=1)

    async def cycle() -> None:
        lease = await negotiator.acquire(contract)
        await lease.release()

    before = local_identity()
    await cycle()
    monkeypatch.setattr(os, "getuid", lambda: 54321)  # setuid(): no passwd entry, so a number
    await cycle()
    monkeypatch.setattr(os, "getgroups", lambda: [4242])  # setgroups()
    assert "4242" in local_identity().groups
    monkeypatch.undo()
    await cycle()
    grants = [e["identity"] for e in record.entries() if e["kind"] == "grant"]
    assert grants == [str(before), "user:54321", str(before)]
    assert local_identity() == before
