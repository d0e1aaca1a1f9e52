"""Garbage collection: leases whose holder stopped renewing, and objects without a lease.

It races commits and renewals in flight, so it decides on what it read and deletes
only that: a Lease object by its uid *and* resourceVersion (a renewal since the
read makes the delete fail, and the lease is read again and judged afresh); an
orphan only when it is older than a grace period, its Lease object is not there
after the object was listed, and it is still the version that was listed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from .api import resource_path
from .core import (
    CLAIMS,
    JOBS,
    LEASES,
    PODS,
    SERVICES,
    log,
)
from .objects import (
    ANNOTATION_ENDS_AT,
    LABEL_LEASE,
    parse_time,
)
from .teardown import TeardownMixin

__all__ = ["ORPHAN_MIN_AGE", "GarbageReport", "GcMixin"]

# An object labelled for a lease whose Lease object is missing is an orphan only once it
# is this old (or ``grace``, if more): a commit writes its Lease object first, so an
# object of a commit in flight has its Lease within moments, and clocks may be skewed.
ORPHAN_MIN_AGE = 30.0

# How many times one expired Lease is read again when it changed under the delete.
_REREADS = 3


@attrs.frozen
class GarbageReport:
    """What one garbage collection found and removed (or would remove, on a dry run)."""

    expired: tuple[str, ...] = ()
    orphans: tuple[str, ...] = ()
    kept: int = 0


class GcMixin(TeardownMixin):
    """``aicontract gc``: collect expired leases and orphans."""

    # -- garbage collection --------------------------------------------------------------

    def _expired(self, obj: Mapping[str, Any], now: float, grace: float) -> bool:
        """Whether a Lease object's holder stopped renewing, or its contract ended."""
        meta, spec = obj["metadata"], obj.get("spec") or {}
        renewed = parse_time(spec.get("renewTime")) or parse_time(spec.get("acquireTime")) or 0
        limit = renewed + float(spec.get("leaseDurationSeconds") or self.ttl) + grace
        ends_at = parse_time((meta.get("annotations") or {}).get(ANNOTATION_ENDS_AT))
        return now > limit or (ends_at is not None and now > ends_at + grace)

    async def _collect(self, obj: Mapping[str, Any], now: float, grace: float) -> bool:
        """Delete an expired Lease object — that very version — then what it owns.

        False when it was renewed (or deleted, or made anew) since it was read: a
        holder that renews between gc's list and its delete keeps its lease.
        """
        meta = obj["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], str(meta["uid"])
        path = resource_path(*LEASES, ns, name)
        for _ in range(_REREADS):
            version = str(meta.get("resourceVersion") or "") or None
            if await self.api.delete(path, uid=uid, resource_version=version):
                # The Lease object is gone, so what it owns is nobody's: delete it now
                # rather than wait for the cluster's garbage collector.
                await self._teardown(ns, name, uid)
                return True
            fresh = await self.api.get_or_none(path)
            if fresh is None or str(fresh["metadata"].get("uid")) != uid:
                return False  # someone else released it (and perhaps made a new one)
            if not self._expired(fresh, now, grace):
                log.info("kubernetes: gc keeps %s/%s: renewed while gc looked", ns, name)
                return False
            meta = fresh["metadata"]
        return False  # still changing under us: the next run decides

    async def collect_garbage(
        self, *, namespace: str | None = None, grace: float = 0.0, dry_run: bool = False
    ) -> GarbageReport:
        """Delete leases whose holder stopped renewing (past ``renewTime + ttl + grace``),
        leases past their contract's end, and objects whose Lease object is gone.

        Safe against commits and renewals in flight: a Lease renewed after it was
        read is kept (the delete is conditional on its resourceVersion); an object is
        an orphan only when older than ``max(grace, ORPHAN_MIN_AGE)``, without a Lease
        object after it was listed, and unchanged since (resourceVersion again).
        """
        api = self.api
        now = self.clock.time()
        selector = {"labelSelector": LABEL_LEASE}
        where = namespace
        leases = (await api.get(resource_path(*LEASES, where), selector)).get("items") or []
        expired: list[str] = []
        alive: set[tuple[str, str]] = set()
        kept = 0
        for obj in leases:
            meta = obj["metadata"]
            ns, name = meta["namespace"], meta["name"]
            if self._expired(obj, now, grace) and (dry_run or await self._collect(obj, now, grace)):
                expired.append(f"{ns}/{name}")
            else:
                alive.add((ns, name))
                kept += 1
        orphans: list[str] = []
        features = await self.features()
        kinds = [PODS, SERVICES, JOBS] + ([CLAIMS] if features.dra else [])
        min_age = max(grace, ORPHAN_MIN_AGE)
        for kind in kinds:
            items = (await api.get(resource_path(*kind, where), selector)).get("items") or []
            for obj in items:
                meta = obj["metadata"]
                ns, lease_label = meta["namespace"], (meta.get("labels") or {}).get(LABEL_LEASE, "")
                created = parse_time(meta.get("creationTimestamp")) or now
                if (ns, lease_label) in alive or now - created < min_age:
                    continue
                if f"{ns}/{lease_label}" in expired:
                    continue
                # Read after the object was listed: a Lease object there now is no orphan's
                # (the commit that made the object made its Lease object first).
                owner = await api.get_or_none(resource_path(*LEASES, ns, lease_label))
                if owner is not None:
                    continue
                if dry_run:
                    orphans.append(f"{kind[1]}/{ns}/{meta['name']}")
                    continue
                grace_now = 0 if kind == PODS and meta.get("deletionTimestamp") else None
                # That very version: one adopted or rewritten since the list is left for
                # the next run to judge.
                if await api.delete(
                    resource_path(*kind, ns, meta["name"]),
                    grace_seconds=grace_now,
                    uid=str(meta["uid"]),
                    resource_version=str(meta.get("resourceVersion") or "") or None,
                ):
                    orphans.append(f"{kind[1]}/{ns}/{meta['name']}")
        return GarbageReport(expired=tuple(expired), orphans=tuple(orphans), kept=kept)
