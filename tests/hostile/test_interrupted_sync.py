"""Hostile: Ctrl-C (a notebook's interrupt) while the blocking face is acquiring.

The blocking call waits for the portal's loop, where the negotiation goes on. An
interrupt ends the wait in the caller's thread; the lease the loop then committed
went nowhere — nobody held it, nobody released it — and kept its devices (a pod, an
instance, a local workload) until its TTL, or the process's end, whichever came first.
In a notebook the process lives on. An interrupted call must leave nothing leased.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import anyio
import pytest

import aicontract
from aicontract import Contract, Negotiator, Offer
from fakes import FakeBackend

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread(), reason="needs the main thread"
)


def _interrupting(backend: FakeBackend, interrupted: threading.Event) -> None:
    """Commits interrupt the caller (SIGINT to the process: KeyboardInterrupt in the main
    thread, which waits on the portal), then finish anyway, as a commit the backend had
    already sent does (shielded: the caller's cancellation cannot stop it)."""

    async def on_commit(offer: Offer) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        with anyio.CancelScope(shield=True):
            while not interrupted.is_set():
                await anyio.sleep(0.01)

    backend.on_commit = on_commit


def _active(backend: FakeBackend) -> list[str]:
    return [lease.id for lease in backend.leases.values() if lease.is_active]


@pytest.mark.parametrize(
    "face",
    [
        lambda c, n: aicontract.acquire_sync(c, negotiator=n),
        lambda c, n: aicontract.lease(c, negotiator=n).__enter__(),
    ],
    ids=["acquire_sync", "lease"],
)
def test_an_interrupted_blocking_acquire_leaves_nothing_leased(
    face: Callable[[Contract, Negotiator], object],
) -> None:
    backend = FakeBackend()
    interrupted = threading.Event()
    _interrupting(backend, interrupted)
    negotiator = Negotiator([backend], clock=backend.clock)
    try:
        with pytest.raises(KeyboardInterrupt):
            face(Contract(name="interrupted", gpus=1), negotiator)
    finally:
        interrupted.set()
    deadline = time.monotonic() + 30  # bounds for a broken run, not timing claims
    while not backend.by_key and time.monotonic() < deadline:
        time.sleep(0.02)  # the commit the backend had begun finishes after the interrupt
    assert backend.by_key, "the commit never finished"
    deadline = time.monotonic() + 30
    while _active(backend) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _active(backend) == []
