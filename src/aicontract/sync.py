"""The blocking face of the async core: one implementation, two faces.

Calls run on one event loop in a background thread (an anyio blocking
portal), started on first use. That is why the sync face works in a Jupyter
kernel, whose own loop is already running in the calling thread, and why
leases acquired here keep renewing while your code runs.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

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
_thread: threading.Thread | None = None


def portal() -> BlockingPortal:
    """The process-wide portal to the background event loop (started on first use)."""
    global _portal
    with _lock:
        if _portal is None:
            _portal = _start_portal()
            atexit.register(_shutdown)
        return _portal


def _start_portal() -> BlockingPortal:
    """Run an event loop in a daemon thread and return a portal into it.

    Not anyio's ``start_blocking_portal``: that is a generator, which a forked child
    copies suspended and whose cleanup (when the child drops it) waits for a loop
    thread the child does not have. A daemon thread, because non-daemon threads are
    joined before ``atexit`` runs :func:`_shutdown`, the one thing that stops it.
    """
    global _thread
    started: list[BlockingPortal] = []
    failed: list[BaseException] = []
    ready = threading.Event()

    async def serve() -> None:
        async with BlockingPortal() as running:
            started.append(running)
            ready.set()
            await running.sleep_until_stopped()

    def loop() -> None:
        try:
            anyio.run(serve)
        except BaseException as exc:  # handed to the caller below
            failed.append(exc)
        finally:
            ready.set()

    _thread = threading.Thread(target=loop, name="aicontract-portal", daemon=True)
    _thread.start()
    ready.wait()
    if not started:
        raise failed[0] if failed else RuntimeError("the aicontract event loop did not start")
    return started[0]


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
            if _thread is not None:
                _thread.join()


def _forget_after_fork() -> None:
    """In a forked child the portal's thread, its loop and the parent's leases did not
    come along: the child starts a portal of its own on first use (calls to the copied
    one waited for ever), and never releases the parent's leases at its exit."""
    global _lock, _portal, _thread, _held_leases
    _lock = threading.Lock()
    _portal = _thread = None
    _held_leases = weakref.WeakSet()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


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

    acquired = _acquire_for_caller(contract, backends, negotiator)
    if keep_alive:
        # Wait until it is held (its report socket bound), so lease.env is complete.
        portal().start_task(acquired.hold, name=f"aicontract-hold-{acquired.id}")
    return acquired


def _acquire_for_caller(
    contract: Contract, backends: Sequence[Backend] | None, negotiator: Negotiator | None
) -> Lease:
    """Acquire on the portal's loop for this blocking caller.

    A caller interrupted while it waits (Ctrl-C; a notebook's interrupt) gets nothing,
    so nothing may stay leased: the negotiation is cancelled, and a lease it commits
    all the same (a commit already sent finishes) is released, not left to its TTL.
    """
    guard = threading.Lock()
    got: list[Lease] = []
    caller_gone = False

    async def run() -> None:
        acquired = await _acquire(contract, backends=backends, negotiator=negotiator)
        with guard:
            if not caller_gone:
                got.append(acquired)
                _held_leases.add(acquired)
                return
        await acquired.release()  # shielded: it runs even in the cancelled task

    future: Future[None] | None = None
    try:
        # Inside the try: the interrupt may come while the task is being started.
        future = portal().start_task_soon(run)
        future.result()
    except BaseException:
        with guard:
            caller_gone = True
            orphans = list(got)
        if future is not None:
            future.cancel()
        for orphan in orphans:  # handed over just as the caller was interrupted
            portal().start_task_soon(orphan.release)
        raise
    return got[0]


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
    acquired = _acquire_for_caller(contract, backends, negotiator)
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
