"""Making a lease's objects: create, or adopt only what is this lease's own; undo.

A retried commit meets its own objects (a lost reply made them): those are
adopted only when live and owned by this Lease object. What a failed commit
created is deleted by uid, never anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anyio
import attrs

from ...errors import (
    BackendError,
    TransientBackendError,
)
from .api import Conflict
from .core import (
    KubeCore,
    Obj,
    log,
)
from .objects import (
    LABEL_LEASE,
)

__all__ = ["AdoptMixin"]


class AdoptMixin(KubeCore):
    """Create-or-adopt and undo."""

    async def _create_or_adopt(
        self, collection: str, body: Obj, deadline: float, mine: Callable[[Obj], bool]
    ) -> _Owned:
        """Create ``body``; when its name is taken, adopt the object only if it is ours.

        Ours means live (no ``deletionTimestamp``) and ``mine(obj)`` (owned by this
        lease's Lease object, or for the Lease itself: this key and offer). One being
        deleted is waited out; a live one left by an earlier incarnation of this lease
        (its owner is gone) is deleted, by uid, and made anew. Transient errors, a lost
        reply included, are retried until ``deadline``: the retry finds what the lost
        request made and adopts it.
        """
        name = body["metadata"]["name"]
        path = f"{collection}/{name}"
        wait = 0.1
        while True:
            try:
                try:
                    return _Owned(await self.api.create(collection, body), path, created=True)
                except Conflict:
                    existing = await self.api.get_or_none(path)
                if existing is not None:
                    meta = existing["metadata"]
                    if not meta.get("deletionTimestamp"):
                        if mine(existing):
                            return _Owned(existing, path, created=False)
                        if (meta.get("labels") or {}).get(LABEL_LEASE) != name:
                            raise BackendError(
                                self.name, f"{path} exists and is no aicontract lease's object"
                            )
                        await self.api.delete(path, uid=str(meta["uid"]))
                    why = f"{path} is still being deleted (left by an earlier attempt)"
                else:
                    continue  # gone between the POST and the GET: create it now
            except TransientBackendError as exc:
                why = str(exc)
            if anyio.current_time() + wait >= deadline:
                raise TransientBackendError(self.name, f"could not create {path}: {why}")
            await anyio.sleep(wait)
            wait = min(1.0, wait * 2)

    async def _undo(self, made: Sequence[tuple[str, str]], cause: BaseException) -> None:
        """Delete, newest first and by uid, what a failed commit created; never raise.

        Retried for a while (the API server may be restarting); what is left then is
        for ``abandon`` or ``aicontract gc``. Deleting the Lease object alone would
        do (the cluster deletes what it owns) but takes the garbage collector's time.
        """
        left = list(reversed(made))
        with anyio.move_on_after(min(10.0, self.release_timeout)):
            wait = 0.1
            while left:
                path, uid = left[0]
                try:
                    await self.api.delete(path, uid=uid)
                    left.pop(0)
                    continue
                except TransientBackendError as exc:
                    log.info("kubernetes: undoing %s: %s; retrying", path, exc)
                except BackendError as exc:
                    log.warning("kubernetes: could not delete %s after %r: %s", path, cause, exc)
                    left.pop(0)
                    continue
                await anyio.sleep(wait)
                wait = min(1.0, wait * 2)
        for path, _ in left:
            log.warning(
                "kubernetes: %s outlived a failed commit (%r); gc will take it", path, cause
            )


@attrs.frozen
class _Owned:
    """An object a commit made (``created``) or adopted (a retry finding its own)."""

    obj: Obj
    path: str
    created: bool

    @property
    def uid(self) -> str:
        """The object's uid."""
        return str(self.obj["metadata"]["uid"])

    @property
    def name(self) -> str:
        """The object's name."""
        return str(self.obj["metadata"]["name"])

    @property
    def namespace(self) -> str:
        """The object's namespace."""
        return str(self.obj["metadata"]["namespace"])
