"""What the backends that speak HTTP (Kubernetes, Slurm) share about a call.

One rule: a call that got no answer at all (refused, reset, timed out) is a
transient failure, worth retrying; an answer, whatever its status, is the
caller's to judge, since each API words its errors its own way. And one way to
retry it: until a deadline, with the waits doubling.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from ..errors import TransientBackendError

__all__ = ["retry_until", "send"]

log = logging.getLogger("aicontract.backends")
_T = TypeVar("_T")


async def send(
    client: httpx.AsyncClient, backend: str, method: str, path: str, **options: Any
) -> httpx.Response:
    """Send one request through ``client``; with no answer, raise :class:`TransientBackendError`.

    ``options`` go to :meth:`httpx.AsyncClient.request` (``params``, ``content``,
    ``json``, ``headers``, ...); ``backend`` names the backend in the error.
    """
    try:
        return await client.request(method, path, **options)
    except httpx.TransportError as exc:
        raise TransientBackendError(
            backend, f"{method} {path}: {type(exc).__name__}: {exc}"
        ) from exc


async def retry_until(
    deadline: float,
    call: Callable[..., Awaitable[_T]],
    *args: Any,
    backend: str,
    first: float,
    most: float,
) -> _T:
    """``call(*args)``, again after a :class:`TransientBackendError`, until ``deadline``.

    ``deadline`` is on anyio's clock. The waits start at ``first`` seconds and double
    up to ``most``; a wait that would end past the deadline is not begun, the last
    error is raised instead. A server restarting (an upgrade, a failover) refuses
    answers for seconds, and a commit allowed to wait for capacity may wait that out.
    """

    def too_late(state: RetryCallState) -> bool:
        return anyio.current_time() + state.upcoming_sleep >= deadline

    def note(state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        log.info("%s: %s; retrying in %.1fs", backend, failure, state.upcoming_sleep)

    retrying = AsyncRetrying(
        stop=too_late,
        wait=wait_exponential(multiplier=first, min=first, max=most),
        retry=retry_if_exception_type(TransientBackendError),
        before_sleep=note,
        sleep=anyio.sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call(*args)
    raise AssertionError("unreachable: tenacity re-raises the last error")
