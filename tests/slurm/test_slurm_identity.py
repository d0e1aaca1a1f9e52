"""The Slurm backend's identity: the user slurmrestd authenticates, never the caller's OS user.

With a JWT, jobs run as the user the token was minted for; a policy must judge that
user, not whoever runs the script. Over a unix socket (``rest_auth/local``), the
socket's peer is the caller. No daemon is needed: identity is known from the
configuration slurmrestd will check.
"""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from aicontract import Contract
from aicontract.backends.slurm import SlurmBackend
from aicontract.governance import loads_policy
from aicontract.governance.identity import local_identity
from aicontract.governance.policy import check_contract

pytestmark = pytest.mark.anyio

URL = "http://127.0.0.1:9"  # never contacted: identity needs no request


def _someone_else() -> str:
    """A user with an account on this host who is not the one running the tests."""
    me = os.geteuid()
    for entry in pwd.getpwall():
        if entry.pw_uid != me:
            return entry.pw_name
    pytest.skip("this host has one user account only")


async def test_a_jwt_user_is_the_identity_with_its_own_groups() -> None:
    user = _someone_else()
    backend = SlurmBackend(url=URL, user=user, token="a.jwt.token")
    who = await backend.identity()
    assert (who.kind, who.name) == ("user", user)
    assert "JWT" in who.source
    assert "slurm" in who.source
    primary = grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    assert who.groups[0] == primary  # that user's groups, not the caller's
    assert who.name != local_identity().name
    await backend.aclose()


async def test_a_jwt_user_without_an_account_here_has_no_groups() -> None:
    backend = SlurmBackend(url=URL, user="no-such-user-on-this-host", token="t")
    who = await backend.identity()
    assert (who.name, who.groups) == ("no-such-user-on-this-host", ())
    await backend.aclose()


async def test_over_a_unix_socket_the_peer_is_the_caller(tmp_path: Path) -> None:
    backend = SlurmBackend(url=f"unix://{tmp_path / 'slurmrestd.socket'}")
    who = await backend.identity()
    mine = local_identity()
    assert (who.name, who.groups) == (mine.name, mine.groups)
    assert "rest_auth/local" in who.source
    await backend.aclose()


async def test_a_policy_judges_the_token_user_not_the_caller() -> None:
    user = _someone_else()
    policy = loads_policy(
        f"identities:\n  - {{match: 'user:{local_identity().name}', tenants: [ml]}}\n"
        f"  - {{match: 'user:{user}', tenants: [web]}}\n"
    )
    backend = SlurmBackend(url=URL, user=user, token="t")
    who = await backend.identity()
    refused, _, _ = check_contract(policy, who, Contract(name="t", cpus=1, tenant="ml"))
    assert len(refused) == 1
    assert f"user:{user} may not act for tenant 'ml'" in refused[0].message
    allowed, _, _ = check_contract(policy, who, Contract(name="t", cpus=1, tenant="web"))
    assert allowed == []
    await backend.aclose()
