"""What the backends that speak HTTP (Kubernetes, Slurm) share about a call.

One rule: a call that got no answer at all (refused, reset, timed out) is a
transient failure, worth retrying; an answer, whatever its status, is the
caller's to judge, since each API words its errors its own way.
"""

from __future__ import annotations

from typing import Any

import httpx

from ..errors import TransientBackendError

__all__ = ["send"]


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
