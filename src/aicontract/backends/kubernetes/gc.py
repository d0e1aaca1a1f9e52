"""Garbage collection: leases whose holder stopped renewing, and objects without a lease."""

from __future__ import annotations

import attrs

from .api import resource_path
from .core import (
    CLAIMS,
    JOBS,
    LEASES,
    PODS,
    SERVICES,
)
from .objects import (
    ANNOTATION_ENDS_AT,
    LABEL_LEASE,
    parse_time,
)
from .teardown import TeardownMixin

__all__ = ["GarbageReport", "GcMixin"]


@attrs.frozen
class GarbageReport:
    """What one garbage collection found and removed (or would remove, on a dry run)."""

    expired: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    kept: int = 0


class GcMixin(TeardownMixin):
    """``aicontract gc``: collect expired leases and orphans."""

    # -- garbage collection --------------------------------------------------------------

    async def collect_garbage(
        self, *, namespace: str | None = None, grace: float = 0.0, dry_run: bool = False
    ) -> GarbageReport:
        """Delete leases whose holder stopped renewing (past ``renewTime + ttl + grace``),
        leases past their contract's end, and objects whose Lease object is gone."""
        api = self.api
        now = self.clock.time()
        selector = {"labelSelector": LABEL_LEASE}
        where = namespace
        leases = (await api.get(resource_path(*LEASES, where), selector)).get("items") or []
        expired: list[str] = []
        alive: set[tuple[str, str]] = set()
        kept = 0
        for obj in leases:
            meta, spec = obj["metadata"], obj.get("spec") or {}
            ns, name = meta["namespace"], meta["name"]
            renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime")) or 0
            limit = renewed + float(spec.get("leaseDurationSeconds") or self.ttl) + grace
            ends_at = parse_time((meta.get("annotations") or {}).get(ANNOTATION_ENDS_AT))
            if now > limit or (ends_at is not None and now > ends_at + grace):
                expired.append(f"{ns}/{name}")
                if not dry_run:
                    await self._teardown(ns, name, str(meta["uid"]))
            else:
                alive.add((ns, name))
                kept += 1
        orphans: list[str] = []
        features = await self.features()
        kinds = [PODS, SERVICES, JOBS] + ([CLAIMS] if features.dra else [])
        for kind in kinds:
            items = (await api.get(resource_path(*kind, where), selector)).get("items") or []
            for obj in items:
                meta = obj["metadata"]
                ns, lease_label = meta["namespace"], (meta.get("labels") or {}).get(LABEL_LEASE, "")
                created = parse_time(meta.get("creationTimestamp")) or now
                if (ns, lease_label) in alive or now - created < grace:
                    continue
                if f"{ns}/{lease_label}" in expired:
                    continue
                # A commit may have made its Lease object since the list above: an object
                # whose Lease exists now is no orphan (it is a commit in progress).
                owner = await api.get_or_none(resource_path(*LEASES, ns, lease_label))
                if owner is not None:
                    continue
                orphans.append(f"{kind[1]}/{ns}/{meta['name']}")
                if not dry_run:
                    grace_now = 0 if kind == PODS and meta.get("deletionTimestamp") else None
                    await api.delete(
                        resource_path(*kind, ns, meta["name"]),
                        grace_seconds=grace_now,
                        uid=str(meta["uid"]),
                    )
        return GarbageReport(expired=tuple(expired), orphans=tuple(orphans), kept=kept)
