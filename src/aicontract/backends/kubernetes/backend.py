"""The Kubernetes backend: contracts become pods the cluster's own scheduler binds.

Quote reads Nodes and the pods bound to them; commit writes a
``coordination.k8s.io/v1`` Lease (expiry + heartbeat), a Guaranteed-QoS Pod
(or a Job) owned by it, a Service for published ports, and — where the
cluster serves them — a DRA ResourceClaim and a Kueue queue label; it returns
only once the scheduler has bound the pod (``spec.nodeName``), watched, never
polled, until the contract's ``start_by``. See ``docs/backends/kubernetes.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import attrs
import httpx

from ...clock import Clock, system_clock
from ...units import Bytes
from .api import KubeAPI
from .commit import CommitMixin
from .core import _default_holder
from .discovery import Features
from .fit import FitMixin
from .gc import GarbageReport, GcMixin
from .observe import ObserveMixin

__all__ = ["GarbageReport", "KubernetesBackend"]


@attrs.define(eq=False)
class KubernetesBackend(FitMixin, CommitMixin, ObserveMixin, GcMixin):
    """Leases on a Kubernetes cluster, placed and bound by the cluster's own scheduler.

    Configuration comes from ``kubeconfig`` (and ``context``), else — like
    every Kubernetes tool — the in-cluster service account, ``$KUBECONFIG``
    or ``~/.kube/config``. Each tenant gets the namespace
    ``namespace_prefix + contract.tenant`` unless ``namespace`` fixes one.
    ``ttl`` is how long a lease lives without a heartbeat (the Lease object's
    ``leaseDurationSeconds``); ``aicontract gc`` deletes leases past it.
    ``region_jurisdictions`` maps regions to jurisdictions for nodes without
    an ``aicontract.io/jurisdiction`` label. ``dra`` and ``queue`` (a Kueue
    LocalQueue) are used only when API discovery shows the cluster serves them.
    """

    name = "kubernetes"

    kubeconfig: str | Path | None = None
    context: str | None = None
    namespace: str | None = None
    namespace_prefix: str = "aicontract-"
    create_namespaces: bool = True
    ttl: float = 60.0
    region_jurisdictions: Mapping[str, str] = attrs.field(factory=dict)
    image: str = "registry.k8s.io/pause:3.9"
    default_cpus: int = 1
    default_memory: Bytes = attrs.field(default=Bytes("1GiB"), converter=Bytes)
    schedule_timeout: float = 30.0
    release_timeout: float = 60.0
    grace_seconds: int = 30
    max_restarts: int = 0
    dra: Literal["auto", "never"] = "auto"
    queue: str | None = None
    provider: str = "kubernetes"
    holder: str = attrs.field(factory=_default_holder)
    clock: Clock = system_clock
    http: httpx.AsyncClient | None = attrs.field(default=None, repr=False)
    _api: KubeAPI | None = attrs.field(default=None, init=False, repr=False)
    # Was ``http`` built here from the kubeconfig (rather than given)? Only then is the
    # kubeconfig's client certificate the one the requests carry.
    _from_config: bool = attrs.field(default=False, init=False, repr=False)
    _features: Features | None = attrs.field(default=None, init=False, repr=False)
    _ready_namespaces: set[str] = attrs.field(factory=set, init=False, repr=False)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._api is not None:
            await self._api.aclose()
        elif self.http is not None:
            await self.http.aclose()
        self._api = None
        self.http = None
        self._from_config = False
