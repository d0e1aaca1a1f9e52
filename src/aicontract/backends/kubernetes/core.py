"""What every part of the Kubernetes backend shares: its settings, REST client and kinds.

:class:`KubeCore` declares the settings :class:`~.backend.KubernetesBackend`
defines (so each part type-checks alone) and the plumbing they all use: the
client built from the config, API discovery, a contract's namespace.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx

from ...clock import Clock
from ...contract import Contract
from ...errors import ConfigError
from ...governance.identity import Identity
from ...units import Bytes
from ..base import Backend
from ..http import retry_until, send
from .api import Conflict, KubeAPI, _load_config, client_from_config, resource_path
from .discovery import Features, discover

__all__ = ["KubeCore"]

log = logging.getLogger("aicontract.kubernetes")

OFFER_TTL = 15.0
LEASES = ("coordination.k8s.io/v1", "leases")
PODS = ("v1", "pods")
SERVICES = ("v1", "services")
JOBS = ("batch/v1", "jobs")
CLAIMS = ("resource.k8s.io/v1", "resourceclaims")
JOB_KINDS = frozenset({"batch", "training"})

Obj = dict[str, Any]
_T = TypeVar("_T")


# SelfSubjectReview is GA in 1.28, beta in 1.27 and alpha (behind a gate) in 1.26.
SELF_REVIEW_VERSIONS = ("v1", "v1beta1", "v1alpha1")
_SA_PREFIX = "system:serviceaccount:"


def identity_of_user(username: str, groups: Any, source: str) -> Identity:
    """An :class:`Identity` from a Kubernetes user name and its groups.

    ``system:serviceaccount:NS:NAME`` becomes ``serviceaccount:NS/NAME``; any
    other name (a certificate's CN, an OIDC user) stays a ``user``.
    """
    names = tuple(str(g) for g in groups or () if g)
    if username.startswith(_SA_PREFIX):
        namespace, _, account = username[len(_SA_PREFIX) :].partition(":")
        return Identity(
            kind="serviceaccount", name=f"{namespace}/{account}", groups=names, source=source
        )
    return Identity(kind="user", name=username, groups=names, source=source)


AUTHENTICATED = "system:authenticated"
"""The group the API server adds to every user it authenticates."""


def certificate_identity(pem: bytes, source: str) -> Identity | None:
    """The user an API server authenticates a client certificate as, or ``None``.

    Kubernetes' x509 authenticator takes the subject's CN as the user name and its O
    values, in order, as the groups (and adds ``system:authenticated``). ``pem`` may
    hold a chain: the first certificate is the client's. ``None`` when ``pem`` holds no
    certificate, or without the ``cryptography`` package to read one.
    """
    try:
        from cryptography import x509
        from cryptography.x509.oid import NameOID
    except ImportError:  # pragma: no cover - part of the kubernetes extra
        log.warning("kubernetes: cannot read the client certificate without 'cryptography'")
        return None
    try:
        cert = x509.load_pem_x509_certificates(pem)[0]
    except (ValueError, IndexError):
        return None
    subject = cert.subject
    names = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if not names or not names[0]:
        return None
    groups = [str(a.value) for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    return identity_of_user(names[0], [*groups, AUTHENTICATED], source)


def token_claims(authorization: str | None) -> dict[str, Any]:
    """The claims of a bearer JWT (unverified: the API server has just accepted it), or {}."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return {}
    parts = authorization[7:].strip().split(".")
    if len(parts) != 3:  # an opaque token (static token file, webhook): no claims
        return {}
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _default_holder() -> str:
    return f"{socket.gethostname()}/{os.getpid()}"


class KubeCore(Backend):
    """Settings and plumbing shared by the backend's parts (see ``KubernetesBackend``)."""

    kubeconfig: str | Path | None
    context: str | None
    namespace: str | None
    namespace_prefix: str
    create_namespaces: bool
    ttl: float
    region_jurisdictions: Mapping[str, str]
    image: str
    default_cpus: int
    default_memory: Bytes
    schedule_timeout: float
    release_timeout: float
    grace_seconds: int
    max_restarts: int
    dra: Literal["auto", "never"]
    queue: str | None
    provider: str
    holder: str
    clock: Clock
    http: httpx.AsyncClient | None
    _api: KubeAPI | None
    _from_config: bool
    _features: Features | None
    _ready_namespaces: set[str]

    # -- plumbing ------------------------------------------------------------------------

    async def _retrying(
        self, deadline: float, call: Callable[..., Awaitable[_T]], *args: Any
    ) -> _T:
        """``call(*args)``, again after a transient API error, until ``deadline``:
        an API server restarting (upgrades, crashes) refuses connections for seconds."""
        return await retry_until(deadline, call, *args, backend="kubernetes", first=0.1, most=2.0)

    @property
    def api(self) -> KubeAPI:
        """The REST client (built from the config on first use)."""
        if self._api is None:
            if self.http is None:
                self.http, default_ns = client_from_config(self.kubeconfig, self.context)
                self._from_config = True
                if self.namespace is None and os.environ.get("AICONTRACT_K8S_NAMESPACE"):
                    self.namespace = os.environ["AICONTRACT_K8S_NAMESPACE"]
                del default_ns
            self._api = KubeAPI(self.http, backend=self.name)
        return self._api

    async def identity(self) -> Identity:
        """The user or service account this backend's client acts as, as the API server says.

        Asks the server itself (``SelfSubjectReview``, authentication.k8s.io v1,
        v1beta1 or v1alpha1). A server without it (before 1.26, or with the gate
        off) still authenticated the probe, so the service-account token it
        accepted names who is asking (``sub: system:serviceaccount:NS:NAME``). A
        client certificate comes first, as in the server's own order: its subject's
        CN is the user and its O values the groups, as the server reads them. Failing
        all that (an opaque bearer token: only TokenReview could say whose, and few
        users may call it) the kubeconfig's user name is used, and ``source`` says it
        was not confirmed by the server.
        """
        api = self.api
        sent: str | None = None
        for version in SELF_REVIEW_VERSIONS:
            path = f"/apis/authentication.k8s.io/{version}/selfsubjectreviews"
            body = {"apiVersion": f"authentication.k8s.io/{version}", "kind": "SelfSubjectReview"}
            response = await send(
                api.http, self.name, "POST", path, json=body, headers={"Accept": "application/json"}
            )
            sent = response.request.headers.get("authorization")
            if response.status_code in (200, 201):
                info = (response.json().get("status") or {}).get("userInfo") or {}
                if info.get("username"):
                    return identity_of_user(
                        str(info["username"]),
                        info.get("groups"),
                        f"{self.name} (SelfSubjectReview {version})",
                    )
                break
            if response.status_code in (404, 405):  # this version is not served: try the next
                continue
            if response.status_code == 403:  # may not review itself: fall back
                break
            raise api._error("POST", path, response)
        # The API server tries a client certificate before a bearer token: so do we.
        pem = self._client_certificate()
        if pem is not None:
            source = f"{self.name} (client certificate subject; no SelfSubjectReview)"
            found = certificate_identity(pem, source)
            if found is not None:
                log.info(
                    "%s: no SelfSubjectReview; identity from the client certificate", self.name
                )
                return found
        claims = token_claims(sent)
        subject = str(claims.get("sub") or "")
        if subject.startswith(_SA_PREFIX):
            namespace = subject[len(_SA_PREFIX) :].partition(":")[0]
            log.info("%s: no SelfSubjectReview; identity from the service-account token", self.name)
            return identity_of_user(
                subject,
                ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
                f"{self.name} (service-account token claims; no SelfSubjectReview)",
            )
        # An opaque token (static token file, webhook, OIDC without a JWT we can read):
        # only TokenReview could say whose it is, and few users may call that. The
        # kubeconfig's name for the user is the best we have, and ``source`` says so.
        user = self._kubeconfig_user()
        log.info("%s: no SelfSubjectReview; identity from the kubeconfig user %r", self.name, user)
        return Identity(
            kind="user",
            name=user,
            source=f"{self.name} (kubeconfig user name, not confirmed by the API server)",
        )

    def _client_certificate(self) -> bytes | None:
        """The PEM of the kubeconfig user's client certificate (inline or a file), if any:
        only when the client was built from that kubeconfig (a client given directly
        presents its own credentials, whatever the environment's kubeconfig holds)."""
        if not self._from_config:
            return None
        try:
            single = _load_config(self.kubeconfig, self.context)
        except ConfigError:
            return None
        user = getattr(single, "user", None)
        data = getattr(user, "client_cert_data", None)
        if data:
            try:
                return base64.b64decode(data)
            except ValueError:
                return None
        name = getattr(user, "client_cert", None)
        if not name:
            return None
        try:
            return Path(single.abs_file(name)).read_bytes()
        except (OSError, ValueError) as exc:
            log.info("%s: cannot read the client certificate %s: %s", self.name, name, exc)
            return None

    def _kubeconfig_user(self) -> str:
        """The user name the kubeconfig context names (``unknown`` without a config)."""
        try:
            single = _load_config(self.kubeconfig, self.context)
        except ConfigError:  # no config at all (a client given directly): nothing to name
            return "unknown"
        context = getattr(single, "context", None)
        return str(getattr(context, "user", None) or "unknown")

    async def features(self) -> Features:
        """What optional APIs the cluster serves (DRA, Kueue), discovered once."""
        if self._features is None:
            self._features = await discover(self.api)
        return self._features

    def namespace_for(self, contract: Contract) -> str:
        """The namespace a contract's objects live in (one per tenant)."""
        if self.namespace:
            return self.namespace
        return f"{self.namespace_prefix}{contract.tenant}"[:63].rstrip("-._")

    async def _ensure_namespace(self, namespace: str) -> None:
        if namespace in self._ready_namespaces or not self.create_namespaces:
            return
        path = resource_path("v1", "namespaces", name=namespace)
        if await self.api.get_or_none(path) is None:
            body = {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {
                    "name": namespace,
                    "labels": {"app.kubernetes.io/managed-by": "aicontract"},
                },
            }
            with contextlib.suppress(Conflict):
                await self.api.create(resource_path("v1", "namespaces"), body)
        self._ready_namespaces.add(namespace)
