"""The shared cloud pieces: jurisdictions, credentials, the rate limiter."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import anyio
import pytest

from aicontract import Placement, VirtualClock
from aicontract.backends.cloud.base import RateLimiter, lease_tag
from aicontract.backends.cloud.credentials import Secret, load_secret, redact
from aicontract.backends.cloud.regions import (
    AWS_REGIONS,
    LAMBDA_REGIONS,
    jurisdiction_for,
    region_country,
)


@pytest.mark.parametrize(
    ("region", "table", "description", "country"),
    [
        ("eu-central-1", AWS_REGIONS, "Europe (Frankfurt)", "DE"),
        ("eu-central-2", AWS_REGIONS, "Europe (Zurich)", "CH"),
        ("eu-west-2", AWS_REGIONS, "Europe (London)", "GB"),
        ("europe-central-1", LAMBDA_REGIONS, "Germany", "DE"),
        ("europe-central-1", LAMBDA_REGIONS, "Virginia, USA", None),  # descriptions disagree
        ("us-east-1", LAMBDA_REGIONS, "Austin, Texas", "US"),
        ("mars-north-1", AWS_REGIONS, "Europe (Frankfurt)", None),  # not in the table
        ("test-east-1", LAMBDA_REGIONS, None, None),
    ],
)
def test_region_country(
    region: str, table: dict[str, str], description: str | None, country: str | None
) -> None:
    assert region_country(region, table, description) == country


def test_eu_prefix_is_not_eu_membership() -> None:
    placement = Placement(jurisdictions=["EU"])
    for region in ("eu-central-2", "eu-west-2"):
        code = jurisdiction_for(AWS_REGIONS[region], placement.jurisdictions)
        assert not placement.allows(region=region, jurisdiction=code, provider="aws")
    assert jurisdiction_for("DE", ["DE"]) == "DE"
    assert jurisdiction_for("DE", ["EU"]) == "EU"
    assert jurisdiction_for(None, ["EU"]) is None


def test_credentials_from_env_then_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text('[lambda]\napi_key = "from-the-file-1234"\n')
    env = {"AICONTRACT_CREDENTIALS_FILE": str(path)}
    from_file = load_secret("lambda", "api_key", env_vars=["LAMBDA_API_KEY"], environ=env)
    assert from_file is not None
    assert from_file.reveal() == "from-the-file-1234"
    env["LAMBDA_API_KEY"] = "from-the-env-5678"
    from_env = load_secret("lambda", "api_key", env_vars=["LAMBDA_API_KEY"], environ=env)
    assert from_env is not None
    assert from_env.reveal() == "from-the-env-5678"
    assert "from-the" not in repr(from_env) + str(from_env)
    assert redact("key=from-the-env-5678") == "key=***"


def test_redacting_filter_masks_sdk_debug_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    load_secret("x", "k", env_vars=["K"], environ={"K": "sekrit-value-42"})
    logging.getLogger("botocore.endpoint").debug(
        "headers: %s", {"Authorization": "sekrit-value-42"}
    )
    assert all("sekrit-value-42" not in r.getMessage() for r in caplog.records)
    assert any("***" in r.getMessage() for r in caplog.records)


def test_secret_never_pickles() -> None:
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("abc"))


def test_lease_tag_is_stable_short_and_safe() -> None:
    assert lease_tag("abc123") == lease_tag("abc123") == "aicontract-abc123"
    long = lease_tag("X" * 200)
    assert len(long) <= 56
    assert long == lease_tag("X" * 200)
    assert long != lease_tag("Y" * 200)


@pytest.mark.anyio
async def test_rate_limiter_spaces_calls_in_virtual_time() -> None:
    clock = VirtualClock()
    limiter = RateLimiter(rate=1.0, clock=clock)
    times: list[float] = []

    async def call() -> None:
        await limiter.acquire()
        times.append(clock.now)

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(call)
        for _ in range(30):
            await clock.advance(0.25)
    assert len(times) == 3
    assert [b - a for a, b in itertools.pairwise(times)] == [1.0, 1.0]
