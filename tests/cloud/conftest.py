"""Fixtures for the cloud backends: a hand-written Lambda Cloud fake (respx) and a
real ``moto_server`` on loopback for EC2."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import respx
from cloud_support import API_KEY
from fake_lambda import FakeLambda


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _moto_command() -> list[str] | None:
    exe = Path(sys.executable).with_name("moto_server")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("moto_server")
    return [found] if found else None


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """A real moto server on 127.0.0.1 with instance-type validation on; stopped by PID."""
    command = _moto_command()
    if command is None:
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    env = dict(os.environ, MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION="true")
    proc = subprocess.Popen(
        [*command, "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode}")
            try:
                httpx.get(f"{url}/moto-api/", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    pytest.fail("moto_server did not start within 30s")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def moto_reset(moto_endpoint: str) -> str:
    """The moto endpoint, with its state wiped first."""
    httpx.post(f"{moto_endpoint}/moto-api/reset", timeout=5.0)
    return moto_endpoint


@pytest.fixture
def fake() -> Iterator[FakeLambda]:
    """The Lambda Cloud fake, answering every request to its base URL (respx)."""
    f = FakeLambda(API_KEY)
    with respx.mock(assert_all_called=False) as router:
        f.install(router)
        yield f
