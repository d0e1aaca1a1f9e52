"""Cloud identities: the AWS account from STS (a real moto server), the Lambda API key.

A policy maps each to a tenant; a contract for another tenant is refused before any
instance is launched, naming the identity.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from cloud_support import API_KEY
from test_aws import moto_backend

from aicontract import GPU, Contract, Negotiator, PolicyViolation
from aicontract.backends.cloud import LambdaBackend
from aicontract.governance import Governance, Record, loads_policy
from aicontract.governance.policy import check_contract

pytestmark = pytest.mark.anyio

MOTO_ACCOUNT = "123456789012"  # the account moto answers GetCallerIdentity with


async def test_aws_identity_is_the_account_sts_names_and_a_policy_maps_it(
    moto_reset: str, tmp_path: Path
) -> None:
    backend = moto_backend(
        moto_reset, profile=None, environ={"AICONTRACT_AWS_STS_ENDPOINT_URL": moto_reset}
    )
    who = await backend.identity()
    assert str(who) == f"account:{MOTO_ACCOUNT}"
    assert any(a.startswith("arn:aws:") and MOTO_ACCOUNT in a for a in who.aliases)
    assert "GetCallerIdentity" in who.source

    policy = loads_policy(f"identities:\n  - {{match: 'account:{MOTO_ACCOUNT}', tenants: [ml]}}\n")
    allowed, _, _ = check_contract(policy, who, Contract(name="t", gpus=1, tenant="ml"))
    assert allowed == []
    negotiator = Negotiator(
        [backend], governance=Governance(policy=policy, record=Record(tmp_path / "r.jsonl"))
    )
    with pytest.raises(PolicyViolation) as caught:
        await negotiator.acquire(Contract(name="t", gpus=GPU(models=["A10G"]), tenant="web"))
    assert f"account:{MOTO_ACCOUNT} may not act for tenant 'web'" in str(caught.value)
    running = await backend._call("us-east-1", "describe_instances")
    assert not [i for r in running["Reservations"] for i in r["Instances"]], "nothing launched"


async def test_aws_identity_matches_by_arn_too(moto_reset: str) -> None:
    backend = moto_backend(moto_reset, environ={"AICONTRACT_AWS_STS_ENDPOINT_URL": moto_reset})
    who = await backend.identity()
    arn = next(a for a in who.aliases if a.startswith("arn:"))
    policy = loads_policy(f"identities:\n  - {{match: '{arn}', tenants: [ml]}}\n")
    assert policy.tenants_for(who) == ("ml",)


def _fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


async def test_lambda_identity_is_the_key_fingerprint_never_the_key(tmp_path: Path) -> None:
    backend = LambdaBackend(api_key=API_KEY, environ={})
    who = await backend.identity()
    assert (who.kind, who.name) == ("api-key", _fingerprint(API_KEY))
    assert API_KEY not in repr(who)
    assert who.aliases == ()


async def test_lambda_account_name_from_the_environment_or_the_credentials_file(
    tmp_path: Path,
) -> None:
    named = LambdaBackend(api_key=API_KEY, environ={"AICONTRACT_LAMBDA_ACCOUNT": "ml-team"})
    assert (await named.identity()).aliases == ("account:ml-team",)
    file = tmp_path / "credentials.toml"
    file.write_text('[lambda]\napi_key = "k-from-file-123"\naccount = "research"\n')
    env: dict[str, Any] = {"AICONTRACT_CREDENTIALS_FILE": str(file)}
    from_file = LambdaBackend(environ=env)
    who = await from_file.identity()
    assert who.name == _fingerprint("k-from-file-123")
    assert who.aliases == ("account:research",)
    policy = loads_policy("identities:\n  - {match: 'account:research', tenants: [ml]}\n")
    assert policy.tenants_for(who) == ("ml",)
