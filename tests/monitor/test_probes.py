"""Endpoint probes against a real HTTP server on 127.0.0.1 whose latency the test controls.

The probe schedule and every assertion are in virtual time; only the server's
delay (and so each probe's measured latency) is real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anyio
import pytest
from monitor_support import service_contract, states

from aicontract import (
    Monitor,
    Negotiator,
    Objective,
    Probe,
    Sample,
    Violation,
    VirtualClock,
    Workload,
)
from aicontract.monitor.telemetry import Telemetry
from fakes import FakeBackend

pytestmark = pytest.mark.anyio

FAST, SLOW = 0.002, 1.5  # seconds; the objective is 1 s, far above a fast answer under load


async def settle() -> None:
    """Let newly started tasks run up to their first sleep on the virtual clock."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


class _Server(ThreadingHTTPServer):
    delay = FAST
    status = 200
    paths: list[str]


@pytest.fixture
def server() -> Iterator[_Server]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            srv = self.server
            assert isinstance(srv, _Server)
            srv.paths.append(self.path)
            time.sleep(srv.delay)
            self.send_response(srv.status)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    srv = _Server(("127.0.0.1", 0), Handler)
    srv.paths = []
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


class _Backend(FakeBackend):
    """The fake backend, publishing the test server as the lease's endpoint."""

    url = ""

    async def commit(self, offer, idempotency_key):  # type: ignore[no-untyped-def]
        lease = await super().commit(offer, idempotency_key)
        lease.endpoints = {"http": self.url}
        return lease


async def test_latency_violation_fires_within_the_window_and_clears(
    server: _Server, clock: VirtualClock
) -> None:
    backend = _Backend(clock=clock, capacity=2, ttl=3600.0)
    backend.url = f"http://127.0.0.1:{server.server_address[1]}"
    objective = Objective(sli="latency_p90", op="<=", target="1s", window="1m")
    contract = service_contract(objective).with_(
        workload=Workload(ports={"http": 8000}, probe=Probe(path="/healthz", interval="5s"))
    )
    got: list[Violation] = []
    probed = anyio.Event()

    def arrived(sample: Sample) -> None:
        if sample.sli == "availability":
            probed.set()

    async def probe_once() -> None:
        nonlocal probed
        probed = anyio.Event()
        await clock.advance(5)
        with anyio.fail_after(30):  # a safety net, not a timing assertion
            await probed.wait()

    monitor = Monitor(
        Negotiator(backends=[backend], clock=clock),
        publish=False,
        observe_interval=None,
        telemetry=Telemetry(),
    )
    async with monitor:
        lease = await monitor.acquire(contract)
        lease.on_violation(got.append)
        monitor.watches[lease.id].listeners.append(arrived)
        await settle()
        for _ in range(24):  # two minutes of fast answers
            await probe_once()
        assert states(lease) == {"latency_p90<=1s/1m": "met"}
        assert not got
        assert server.paths[-1] == "/healthz"

        server.delay = SLOW
        raised_at = clock.time()
        await probe_once()
        assert not got  # one slow probe is not a breach
        while not got and clock.time() < raised_at + 60:
            await probe_once()
        assert got, "no violation within the objective's window"
        assert raised_at < got[0].at <= raised_at + 60
        assert got[0].observed is not None
        assert got[0].observed >= 1.0
        assert states(lease) == {"latency_p90<=1s/1m": "violated"}

        server.delay = FAST
        lowered_at = clock.time()
        while states(lease)["latency_p90<=1s/1m"] != "met" and clock.time() < lowered_at + 60:
            await probe_once()
        assert states(lease) == {"latency_p90<=1s/1m": "met"}
        assert len(got) == 1


async def test_failed_probes_break_availability(server: _Server, clock: VirtualClock) -> None:
    backend = _Backend(clock=clock, capacity=2, ttl=3600.0)
    backend.url = f"http://127.0.0.1:{server.server_address[1]}"
    objective = Objective(sli="availability", op=">=", target="99%", window="10m")
    got: list[Violation] = []
    probed = anyio.Event()

    def arrived(sample: Sample) -> None:
        probed.set()

    monitor = Monitor(
        Negotiator(backends=[backend], clock=clock),
        publish=False,
        observe_interval=None,
        probe_interval=2.0,
        telemetry=Telemetry(),
    )
    async with monitor:
        lease = await monitor.acquire(service_contract(objective))  # http endpoint, no probe named
        lease.on_violation(got.append)
        monitor.watches[lease.id].listeners.append(arrived)
        await settle()
        server.status = 503
        for _ in range(10):
            probed = anyio.Event()
            await clock.advance(2)
            with anyio.fail_after(30):
                await probed.wait()
            if got:
                break
        assert got
        assert got[0].objective == objective
        assert server.paths
        assert server.paths[0] == "/"


@pytest.fixture
def trickling() -> Iterator[str]:
    """An endpoint that answers 200 but sends its 30-byte body a byte every 50 ms: each
    read is quick, the whole answer takes 1.5 s (a stuck upstream, a slow-loris)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-length", "30")
            self.end_headers()
            try:
                for _ in range(30):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass  # the probe gave up and closed: what it should do

        def log_message(self, *args: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


async def test_a_probe_slower_than_its_timeout_is_a_failure(trickling: str) -> None:
    """The probe's timeout bounds the whole answer, not each read: an endpoint that
    takes 1.5 s to answer a probe with a 300 ms timeout is not available."""
    import httpx

    from aicontract.monitor.probes import EndpointProbe

    async with httpx.AsyncClient() as client:
        prober = EndpointProbe("http", trickling, Probe(timeout="300ms"), client)
        samples = await prober.once(0.0)
    assert [(s.sli, s.value) for s in samples] == [("availability", 0.0)]


@pytest.mark.parametrize("address", ["http://[::1", "http://host\x00name", "127.0.0.1:99999"])
async def test_an_endpoint_that_is_no_url_is_an_unavailable_probe_not_a_crash(
    clock: VirtualClock, address: str
) -> None:
    """A backend published an address httpx cannot even parse (an unbracketed IPv6, a
    stray byte, a port out of range): the probe fails, the monitor and the holder go on."""
    backend = _Backend(clock=clock, capacity=2, ttl=3600.0)
    backend.url = address
    objective = Objective(sli="availability", op=">=", target="99%", window="1m")
    contract = service_contract(objective).with_(
        workload=Workload(ports={"http": 8000}, probe=Probe(interval="5s"))
    )
    seen: list[Sample] = []
    monitor = Monitor(
        Negotiator(backends=[backend], clock=clock),
        publish=False,
        observe_interval=None,
        telemetry=Telemetry(),
    )
    async with monitor:
        lease = await monitor.acquire(contract)
        monitor.watches[lease.id].listeners.append(seen.append)
        await settle()
        for _ in range(3):
            await clock.advance(5)
            await settle()
        assert lease.is_active
        assert [s.value for s in seen if s.sli == "availability"][:1] == [0.0]
        await lease.release()
