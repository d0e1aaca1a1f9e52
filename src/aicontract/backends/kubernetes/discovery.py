"""Which optional APIs a cluster serves, from API discovery (``GET /apis``).

DRA (``resource.k8s.io/v1``) and Kueue (``kueue.x-k8s.io``) are used only when
discovery lists them; on a cluster without them (such as Kubernetes 1.20) the
backend falls back to extended resources (``nvidia.com/gpu``) and plain Jobs.
"""

from __future__ import annotations

import attrs

from .api import KubeAPI

__all__ = ["Features", "discover"]

KUEUE_GROUP = "kueue.x-k8s.io"
DRA_GROUP = "resource.k8s.io"


@attrs.frozen
class Features:
    """What the cluster serves: ``dra`` (resource.k8s.io/v1), ``kueue`` (and its version)."""

    dra: bool = False
    kueue: bool = False
    kueue_version: str = f"{KUEUE_GROUP}/v1beta1"


async def discover(api: KubeAPI) -> Features:
    """Read ``/apis`` once and say which optional APIs are served."""
    groups = (await api.get("/apis")).get("groups") or []
    versions: dict[str, list[str]] = {}
    preferred: dict[str, str] = {}
    for group in groups:
        name = str(group.get("name", ""))
        versions[name] = [str(v.get("groupVersion", "")) for v in group.get("versions") or []]
        preferred[name] = str((group.get("preferredVersion") or {}).get("groupVersion", ""))
    dra = f"{DRA_GROUP}/v1" in versions.get(DRA_GROUP, [])
    kueue_versions = versions.get(KUEUE_GROUP, [])
    kueue_version = preferred.get(KUEUE_GROUP) or (kueue_versions[0] if kueue_versions else "")
    return Features(
        dra=dra,
        kueue=bool(kueue_versions),
        kueue_version=kueue_version or f"{KUEUE_GROUP}/v1beta1",
    )
