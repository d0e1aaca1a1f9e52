"""A small async Kubernetes REST client on the ``httpx.AsyncClient`` lightkube configures.

Configuration — kubeconfig (``KUBECONFIG``, ``~/.kube/config``, a context), the
in-cluster service account with its rotating token, client certificates, exec
credential plugins — comes from `lightkube <https://lightkube.readthedocs.io>`_,
which builds the authenticated ``httpx.AsyncClient``. The calls themselves are
plain JSON on that client: every object this backend writes is a dict (core
kinds and the DRA/Kueue kinds alike), watches are read line by line with
anyio-friendly httpx streams (so asyncio and trio both work), and tests can
mock the very same client with respx.

Every write (``POST``/``PUT``/``PATCH``/``DELETE``) is counted in
:attr:`KubeAPI.writes`, which the benchmark reports per lease.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import httpx

from ...errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    QuotaExceeded,
    TransientBackendError,
)
from ..http import send

__all__ = ["ApiError", "Conflict", "KubeAPI", "NotFound", "resource_path"]

log = logging.getLogger("aicontract.kubernetes")

Obj = dict[str, Any]

MERGE_PATCH = "application/merge-patch+json"

# What the LimitRanger admission plugin says when a LimitRange refuses a pod:
# "minimum cpu usage per Container is 2, but request is 1",
# "maximum memory usage per Pod is 1Gi, but limit is 2Gi",
# "cpu max limit to request ratio per Container is 2, but provided ratio is 4.000000".
_LIMIT_RANGE = re.compile(r"(minimum|maximum) \S+ usage per (Container|Pod)|limit to request ratio")
# The ServiceAccount admission plugin, before the namespace's service account (or, on
# 1.24+, its token) exists: a moment later it does.
_NO_SERVICE_ACCOUNT_YET = re.compile(
    r"error looking up service account|serviceaccount \"[^\"]*\" not found"
    r"|no API token found for service account",
    re.IGNORECASE,
)


class ApiError(BackendError):
    """The API server refused a request; ``status`` is the HTTP status, ``reason`` its reason."""

    def __init__(self, backend: str, status: int, reason: str, message: str) -> None:
        self.status = status
        self.reason = reason
        super().__init__(backend, f"HTTP {status} {reason}: {message}")


class NotFound(ApiError):
    """404: the object (or the kind) is not there."""


class Conflict(ApiError):
    """409: the object already exists, or a write lost a race on its resourceVersion."""


def resource_path(
    api_version: str, plural: str, namespace: str | None = None, name: str | None = None
) -> str:
    """The REST path of a kind (``v1``/``pods``) or one object of it."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    if namespace is not None:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return base + (f"/{name}" if name else "")


def _load_config(kubeconfig: str | Path | None, context: str | None) -> Any:
    try:
        from lightkube.config.kubeconfig import KubeConfig
        from lightkube.core.exceptions import ConfigError as LightkubeConfigError
    except ImportError as exc:  # pragma: no cover - the extra is missing
        raise ConfigError(
            "the kubernetes backend needs lightkube; pip install 'aicontract[kubernetes]'"
        ) from exc
    try:
        if kubeconfig is not None:
            config = KubeConfig.from_file(str(kubeconfig))
        else:
            config = KubeConfig.from_env()
        return config.get(context_name=context)
    except (LightkubeConfigError, OSError, KeyError, ValueError) as exc:
        where = str(kubeconfig) if kubeconfig else "the environment (in-cluster or KUBECONFIG)"
        raise ConfigError(f"cannot load a Kubernetes config from {where}: {exc}") from exc


def client_from_config(
    kubeconfig: str | Path | None = None,
    context: str | None = None,
    *,
    timeout: float = 30.0,
) -> tuple[httpx.AsyncClient, str | None]:
    """An authenticated ``httpx.AsyncClient`` and the context's default namespace.

    ``kubeconfig`` None means what every Kubernetes tool does: the in-cluster
    service account if there is one, else ``$KUBECONFIG``, else ``~/.kube/config``.
    """
    from lightkube.config import client_adapter

    single = _load_config(kubeconfig, context)
    params = client_adapter.ConnectionParams(timeout=httpx.Timeout(timeout))
    client = client_adapter.AsyncClient(single, params)
    return client, getattr(single, "namespace", None)


@attrs.define(eq=False)
class KubeAPI:
    """JSON verbs on one API server, with errors turned into ``aicontract`` errors."""

    http: httpx.AsyncClient
    backend: str = "kubernetes"
    writes: int = 0
    field_manager: str = "aicontract"

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Obj | None = None,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        """Send one request and return the decoded JSON body (raises on an error status)."""
        if method != "GET":
            self.writes += 1
        query = dict(params or {})
        if method in ("POST", "PATCH", "PUT"):
            query.setdefault("fieldManager", self.field_manager)
        headers = {"Accept": "application/json"}
        content: bytes | None = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        response = await send(
            self.http, self.backend, method, path, params=query, content=content, headers=headers
        )
        if response.status_code >= 400:
            raise self._error(method, path, response)
        if not response.content:
            return {}
        data: Obj = response.json()
        return data

    def _error(self, method: str, path: str, response: httpx.Response) -> BackendError:
        status = response.status_code
        try:
            detail = response.json()
        except ValueError:
            detail = {}
        reason = str(detail.get("reason") or response.reason_phrase or "")
        message = str(detail.get("message") or response.text[:300])
        text = f"{method} {path}: {message}"
        if status == 404:
            return NotFound(self.backend, status, reason, text)
        if status == 409:
            return Conflict(self.backend, status, reason, text)
        if status == 401:
            return AuthenticationError(self.backend, f"HTTP 401 (credentials refused): {text}")
        if status == 403 and "exceeded quota" in message:
            # A ResourceQuota refused it: the message names what was requested, used
            # and limited. Not a credentials problem.
            return QuotaExceeded(self.backend, f"HTTP 403 (ResourceQuota): {text}")
        if status == 403 and _LIMIT_RANGE.search(message):
            # The LimitRanger admission plugin: a LimitRange's min, max or ratio refused
            # the pod's requests. A namespace limit, not a credentials problem.
            return QuotaExceeded(self.backend, f"HTTP 403 (LimitRange): {text}")
        if status == 403 and _NO_SERVICE_ACCOUNT_YET.search(message):
            # A fresh namespace's default service account (or its token) appears a moment
            # later. Only that: an RBAC refusal of a service-account user ("User
            # \"system:serviceaccount:...\" cannot create ...") is final.
            return TransientBackendError(self.backend, f"HTTP 403: {text}")
        if status == 403:
            return AuthenticationError(self.backend, f"HTTP 403 (not allowed): {text}")
        if status == 429 or status >= 500:
            return TransientBackendError(self.backend, f"HTTP {status}: {text}")
        return ApiError(self.backend, status, reason, text)

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Obj:
        """GET one object or list."""
        return await self.request("GET", path, params=params)

    async def get_or_none(self, path: str) -> Obj | None:
        """GET one object, ``None`` when it is not there."""
        try:
            return await self.get(path)
        except NotFound:
            return None

    async def create(self, path: str, body: Obj) -> Obj:
        """POST ``body`` to a collection."""
        return await self.request("POST", path, body=body)

    async def merge_patch(self, path: str, patch: Obj) -> Obj:
        """PATCH with a JSON merge patch."""
        return await self.request("PATCH", path, body=patch, content_type=MERGE_PATCH)

    async def delete(
        self,
        path: str,
        *,
        propagation: str = "Background",
        grace_seconds: int | None = None,
        params: Mapping[str, str] | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> bool:
        """DELETE one object (or a collection with a ``labelSelector``); False when already gone.

        With ``uid`` only that very object is deleted: one of the same name made
        since (another incarnation, someone else's) is left alone, and counts as gone.
        With ``resource_version`` too, only that very version of it: an object written
        since (a Lease renewed, a pod adopted) is left alone, and False says so — the
        caller reads it again to tell which.
        """
        options: Obj = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "propagationPolicy": propagation,
        }
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        preconditions = {"uid": uid, "resourceVersion": resource_version}
        preconditions = {k: v for k, v in preconditions.items() if v is not None}
        if preconditions:
            options["preconditions"] = preconditions
        try:
            await self.request("DELETE", path, body=options, params=params)
        except NotFound:
            return False
        except Conflict:
            if not preconditions:
                raise
            return False  # a precondition failed: that object (or version) is gone
        return True

    async def watch(
        self, path: str, params: Mapping[str, str], *, timeout_seconds: int = 30
    ) -> AsyncIterator[tuple[str, Obj]]:
        """Yield ``(type, object)`` watch events on ``path`` until the server ends the watch.

        ``params`` should carry the ``resourceVersion`` a list returned, so no
        event between the list and the watch is missed. An expired version
        (410 Gone) raises :class:`Conflict`-like :class:`ApiError` with status 410;
        callers re-list and watch again.
        """
        query = {
            **params,
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        timeout = httpx.Timeout(10.0, read=timeout_seconds + 10.0)
        try:
            async with self.http.stream(
                "GET", path, params=query, timeout=timeout, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise self._error("WATCH", path, response)
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    kind, obj = event.get("type", ""), event.get("object") or {}
                    if kind == "ERROR":
                        code = int(obj.get("code") or 500)
                        raise ApiError(
                            self.backend, code, str(obj.get("reason", "")), str(obj.get("message"))
                        )
                    yield kind, obj
        except httpx.TransportError as exc:
            raise TransientBackendError(self.backend, f"watch {path}: {exc}") from exc

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.http.aclose()
