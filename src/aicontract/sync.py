"""The blocking face of the async core: one implementation, two faces.

Calls run on one event loop in a background thread (an anyio blocking
portal), started on first use. That is why the sync face works in a Jupyter
kernel, whose own loop is already running in the calling thread, and why
leases acquired here keep renewing while your code runs.
"""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal, start_blocking_portal

from .backends.base import Backend
from .contract import Contract
from .leases import Lease
from .negotiate import Negotiation, Negotiator
from .negotiate import acquire as _acquire
from .negotiate import quote as _quote

__all__ = ["acquire_sync", "lease", "portal", "quote_sync", "release_sync", "renew_sync"]

T = TypeVar("T")

_lock = threading.Lock()
_portal: BlockingPortal | None = None
_stack = ExitStack()


def portal() -> BlockingPortal:
    """The process-wide portal to the background event loop (started on first use)."""
    global _portal
    with _lock:
        if _portal is None:
            _portal = _stack.enter_context(start_blocking_portal())
            atexit.register(_shutdown)
        return _portal


# Leases acquired through this face, so the ones still held at exit are released
# rather than left to their TTL (a pod or a cloud instance would keep running).
_held_leases: weakref.WeakSet[Lease] = weakref.WeakSet()


def _shutdown() -> None:
    global _portal
    with _lock:
        running, _portal = _portal, None
        if running is not None:

            async def release_all() -> None:
                with anyio.move_on_after(30):
                    for held in list(_held_leases):
                        # The whole chain: a handle replaced by renegotiation is no
                        # longer active, but its replacement is, and must not leak.
                        if not held.released_by_holder:
                            await held.release()

            try:
                running.call(release_all)
                # Heartbeats run until cancelled: stop them, or the loop never ends.
                running.call(running.stop, True)
            except RuntimeError:  # the loop is already gone
                pass
        _stack.close()


def _call(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    return portal().call(func, *args)


def acquire_sync(
    contract: Contract,
    *,
    backends: Sequence[Backend] | None = None,
    negotiator: Negotiator | None = None,
    keep_alive: bool = True,
) -> Lease:
    """Blocking :func:`aicontract.acquire`. The lease renews itself — and its monitor
    watches it, when its contract has objectives — in the background (unless
    ``keep_alive=False``) until you call :func:`release_sync` or it ends."""

    async def run() -> Lease:
        return await _acquire(contract, backends=backends, negotiator=negotiator)

    acquired = _call(run)
    _held_leases.add(acquired)
    if keep_alive:
        # Wait until it is held (its report socket bound), so lease.env is complete.
        portal().start_task(acquired.hold, name=f"aicontract-hold-{acquired.id}")
    return acquired


def release_sync(held: Lease) -> None:
    """Blocking :meth:`Lease.release`: the lease and every lease that replaced it."""
    _call(held.release)


def renew_sync(held: Lease) -> None:
    """Blocking :meth:`Lease.renew`."""
    _call(held.renew)


def quote_sync(contract: Contract, *, backends: Sequence[Backend] | None = None) -> Negotiation:
    """Blocking :func:`aicontract.quote`."""

    async def run() -> Negotiation:
        return await _quote(contract, backends=backends)

    return _call(run)


@contextmanager
def _held(
    contract: Contract, backends: Sequence[Backend] | None, negotiator: Negotiator | None
) -> Iterator[Lease]:
    async def run() -> Lease:
        return await _acquire(contract, backends=backends, negotiator=negotiator)

    acquired = _call(run)
    _held_leases.add(acquired)
    with portal().wrap_async_context_manager(acquired) as held:
        yield held


def lease(
    contract: Contract,
    *,
    backends: Sequence[Backend] | None = None,
    negotiator: Negotiator | None = None,
) -> AbstractContextManager[Lease]:
    """``with aicontract.lease(contract) as l:`` — acquire, keep renewed and watched, release.

    Leaving the block releases the lease and every lease that replaced it.
    """
    return _held(contract, backends, negotiator)
