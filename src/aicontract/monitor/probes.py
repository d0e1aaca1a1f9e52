"""Endpoint probes: latency and availability of a lease's published endpoints, over httpx.

A contract names its probe in ``workload.probe`` (a health path, or a tiny
OpenAI-compatible completion as a ``POST`` with a JSON body). Each probe yields
an ``availability`` sample (1 when the endpoint answered below status 400, else
0) and, when it answered, a ``latency`` sample.

Probe *times* (when to probe, the timestamps) come from the monitor's clock;
a probe's *duration* is measured with a real stopwatch, because network I/O
takes real time even when a test runs the clock virtually.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import anyio
import attrs
import httpx

from ..contract import Probe
from ..leases import Lease
from ..observation import Sample

__all__ = ["EndpointProbe", "probe_targets"]

log = logging.getLogger("aicontract.monitor")

_PROBED_SLIS = ("latency", "availability", "error_rate")


@attrs.define(eq=False)
class EndpointProbe:
    """Probes one endpoint URL with one :class:`~aicontract.contract.Probe`."""

    name: str
    url: str
    probe: Probe
    client: httpx.AsyncClient
    stopwatch: Callable[[], float] = time.perf_counter

    @property
    def interval(self) -> float:
        """Seconds between probes."""
        return self.probe.interval.seconds

    async def once(self, at: float) -> list[Sample]:
        """Probe once; ``at`` stamps the samples."""
        probe = self.probe
        headers = {}
        if probe.body is not None and probe.body.lstrip().startswith(("{", "[")):
            headers["content-type"] = "application/json"
        labels = {"endpoint": self.name}
        started = self.stopwatch()
        response: httpx.Response | None = None
        try:
            # httpx's timeout bounds each connect/read/write, so an endpoint that trickles
            # its answer a byte at a time never trips it: the probe's timeout is the whole.
            with anyio.move_on_after(probe.timeout.seconds):
                response = await self.client.request(
                    probe.method,
                    self.url.rstrip("/") + probe.path,
                    content=probe.body,
                    headers=headers,
                    timeout=probe.timeout.seconds,
                )
        except Exception as exc:
            # Whatever stops the request is the endpoint being unavailable to its clients:
            # an HTTP error, but also an address httpx cannot parse (InvalidURL) or a
            # connect that fails in the socket layer (a port out of range arrives as an
            # ExceptionGroup from anyio's connect). A probe never takes the monitor down.
            log.debug(
                "probe %s %s failed: %s: %s", self.name, self.url[:80], type(exc).__name__, exc
            )
            response = None
        if response is None:
            return [Sample(sli="availability", value=0.0, at=at, source="probe", labels=labels)]
        elapsed = self.stopwatch() - started
        ok = 1.0 if response.status_code < 400 else 0.0
        return [
            Sample(sli="latency", value=elapsed, at=at, source="probe", labels=labels),
            Sample(sli="availability", value=ok, at=at, source="probe", labels=labels),
        ]


def _url(address: str) -> str | None:
    if address.startswith(("http://", "https://")):
        return address
    if "://" in address:
        return None  # grpc://, ssh://...: not HTTP
    return f"http://{address}"


def probe_targets(lease: Lease) -> list[tuple[str, str, Probe]]:
    """``(endpoint name, URL, probe)`` for each endpoint of ``lease`` worth probing.

    With ``workload.probe``: its endpoint, or every endpoint. Without one: the
    ``http(s)://`` endpoints, with the default probe (``GET /`` every 10 s),
    when an objective reads probe SLIs (latency, availability, error rate).
    """
    workload = lease.contract.workload
    probe = workload.probe if workload is not None else None
    out: list[tuple[str, str, Probe]] = []
    if probe is not None:
        for name, address in lease.endpoints.items():
            if probe.endpoint is not None and name != probe.endpoint:
                continue
            url = _url(address)
            if url is not None:
                out.append((name, url, probe))
        return out
    wanted = any(o.sli.startswith(_PROBED_SLIS) for o in lease.contract.objectives)
    if not wanted:
        return out
    default = Probe()
    for name, address in lease.endpoints.items():
        if address.startswith(("http://", "https://")):
            out.append((name, address, default))
    return out
