"""A backend given its own HTTP client takes no identity from a kubeconfig it never used.

The client certificate an identity is read from must be the one the requests carried:
with ``http=`` given, the environment's kubeconfig (``$KUBECONFIG``) is somebody
else's configuration, and its certificate's subject is not who is asking. No cluster:
the API server is an httpx mock that serves no SelfSubjectReview.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import httpx
import pytest
from cryptography.x509.oid import NameOID
from test_certificate_identity import pem

from aicontract.backends.kubernetes import KubernetesBackend

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _jwt(claims: dict[str, str]) -> str:
    def part(data: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


async def test_a_given_client_is_not_named_by_the_environments_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone else's kubeconfig in the environment, with a client certificate.
    cert = base64.b64encode(pem((NameOID.COMMON_NAME, "mallory"))).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://elsewhere.test"}}],
        "users": [{"name": "m", "user": {"client-certificate-data": cert}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "m"}}],
        "current-context": "x",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(json.dumps(config))
    monkeypatch.setenv("KUBECONFIG", str(path))
    token = _jwt({"sub": "system:serviceaccount:ml:trainer"})
    client = httpx.AsyncClient(
        base_url="https://k8s.test",
        headers={"Authorization": f"Bearer {token}"},
        transport=httpx.MockTransport(lambda request: httpx.Response(404, json={})),
    )
    backend = KubernetesBackend(http=client)
    try:
        who = await backend.identity()
    finally:
        await backend.aclose()
    assert str(who) == "serviceaccount:ml/trainer"
