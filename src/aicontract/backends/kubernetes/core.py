"""What every part of the Kubernetes backend shares: its settings, REST client and kinds.

:class:`KubeCore` declares the settings :class:`~.backend.KubernetesBackend`
defines (so each part type-checks alone) and the plumbing they all use: the
client built from the config, API discovery, a contract's namespace.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import anyio
import httpx

from ...clock import Clock
from ...contract import Contract
from ...errors import TransientBackendError
from ...units import Bytes
from ..base import Backend
from .api import Conflict, KubeAPI, client_from_config, resource_path
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
    _features: Features | None
    _ready_namespaces: set[str]

    # -- plumbing ------------------------------------------------------------------------

    async def _retrying(
        self, deadline: float, call: Callable[..., Awaitable[_T]], *args: Any
    ) -> _T:
        """``call(*args)``, again after a transient API error, until ``deadline``.

        An API server restarting (upgrades, crashes) refuses connections for
        seconds; a commit allowed to wait a minute for capacity may wait that out.
        """
        wait = 0.1
        while True:
            try:
                return await call(*args)
            except TransientBackendError as exc:
                if anyio.current_time() + wait >= deadline:
                    raise
                log.info("kubernetes: %s; retrying in %.1fs", exc, wait)
                await anyio.sleep(wait)
                wait = min(2.0, wait * 2)

    @property
    def api(self) -> KubeAPI:
        """The REST client (built from the config on first use)."""
        if self._api is None:
            if self.http is None:
                self.http, default_ns = client_from_config(self.kubeconfig, self.context)
                if self.namespace is None and os.environ.get("AICONTRACT_K8S_NAMESPACE"):
                    self.namespace = os.environ["AICONTRACT_K8S_NAMESPACE"]
                del default_ns
            self._api = KubeAPI(self.http, backend=self.name)
        return self._api

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
