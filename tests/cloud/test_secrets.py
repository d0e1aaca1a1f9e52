"""No secret in any log: every backend's lifecycle at DEBUG, third-party loggers included."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import respx
from cloud_support import API_KEY, instance_type
from fake_lambda import FakeLambda
from test_aws import FAST, PRICES, _image

from aicontract import Contract
from aicontract.backends.cloud import LambdaBackend
from aicontract.backends.cloud.aws import AWSBackend
from aicontract.backends.cloud.credentials import redact
from aicontract.negotiate import Negotiator

PROFILE_KEY_ID = "AKIAPROFILEKEY987654"
PROFILE_SECRET = "profileSecretAccessKey/abcdefghij0123456789"
PROFILE_TOKEN = "FwoGZXIvYXdzEProfileSessionToken0123456789abcdefXYZ"


def _every_text(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Each record as a handler would write it, and its raw fields."""
    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return [formatter.format(r) for r in caplog.records] + [str(r.args) for r in caplog.records]


@pytest.mark.anyio
async def test_aws_profile_credentials_never_reach_a_log(
    moto_reset: str,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Credentials boto3 finds itself (a profile, with a session token) were never
    registered with the library; botocore's own DEBUG logs printed them."""
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[work]\n"
        f"aws_access_key_id = {PROFILE_KEY_ID}\n"
        f"aws_secret_access_key = {PROFILE_SECRET}\n"
        f"aws_session_token = {PROFILE_TOKEN}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.DEBUG)
    backend = AWSBackend(
        **FAST,
        regions=["us-east-1"],
        endpoint_url=moto_reset,
        profile="work",
        prices=PRICES,
        images={"us-east-1": _image(moto_reset, "us-east-1")},
        capacity_blocks=False,
    )
    async with backend:
        lease = await Negotiator(backends=[backend]).acquire(Contract(gpus=1))
        await lease.release()
    texts = _every_text(caplog)
    assert any(r.name.startswith("botocore") for r in caplog.records), "botocore logged"
    assert any("Signature=" in t or "Credential=" in t for t in texts), "requests were logged"
    for text in texts:
        for secret in (PROFILE_KEY_ID, PROFILE_SECRET, PROFILE_TOKEN):
            assert secret not in text


@pytest.mark.anyio
async def test_lambda_key_never_reaches_a_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    fake = FakeLambda(API_KEY)
    fake.add_type(instance_type("gpu_1x_a10", "A10 (24 GB PCIe)", 1, 75), ["us-east-1"])
    with respx.mock(assert_all_called=False) as router:
        fake.install(router)
        options: dict[str, Any] = {**FAST, "api_key": API_KEY, "ssh_key_name": "k"}
        async with LambdaBackend(**options, base_url=fake.base) as backend:
            lease = await Negotiator(backends=[backend]).acquire(Contract(gpus=1))
            # What a library that logs requests in full would print.
            logging.getLogger("httpx").debug("request headers: %s", {"Authorization": API_KEY})
            await lease.release()
    texts = _every_text(caplog)
    assert any(r.name.startswith("httpx") for r in caplog.records)
    assert all(API_KEY not in t for t in texts)


def test_any_child_of_a_third_party_logger_is_scrubbed(caplog: pytest.LogCaptureFixture) -> None:
    """A logger nobody listed (a new botocore module, urllib3's children) is covered too."""
    caplog.set_level(logging.DEBUG)
    header = (
        "AWS4-HMAC-SHA256 Credential=AKIAUNREGISTERED1234/20260101/us-east-1/ec2/aws4_request,"
        " SignedHeaders=host;x-amz-date, Signature=" + "ab" * 32
    )
    logging.getLogger("botocore.some.new.module").debug("headers %s", {"Authorization": header})
    logging.getLogger("urllib3.util.retry").debug("x-amz-security-token: %s", "tok3nV4lue/+=")
    logging.getLogger("httpcore.http2").debug("authorization: Bearer %s", "sk_live_abcdef123")
    texts = _every_text(caplog)
    for leaked in ("AKIAUNREGISTERED1234", "ab" * 32, "tok3nV4lue", "sk_live_abcdef123"):
        assert all(leaked not in t for t in texts), leaked


def test_redact_masks_signed_request_shapes() -> None:
    text = "Credential=AKIAUNREGISTERED1234/20260101/us-east-1/ec2/aws4_request"
    assert "AKIAUNREGISTERED1234" not in redact(text)
    assert "us-east-1/ec2/aws4_request" in redact(text)  # only the secret part goes
