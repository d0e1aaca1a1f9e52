"""Fixtures and hooks every test folder shares.

* ``anyio_backend``: async tests run on asyncio. A module or test marked
  ``@pytest.mark.anyio_backends("asyncio", "trio")`` runs once on each backend
  instead (the hook below parametrizes the fixture); a folder or module may
  still override the fixture with its own.
* ``clock``: a fresh :class:`VirtualClock`, for code that takes a clock, so no
  test waits on the wall clock for time to pass.
* ``local_env``, ``state_dir``, ``backend``: the local backend on a made-up host
  (the folder's own ``inventory_file`` fixture) with a private ledger.

Helper modules (``fakes``, ``monitor_support``, ``cloud_support``, the k8s
harness) are importable by plain name through ``pythonpath`` in
pyproject.toml's ``[tool.pytest.ini_options]``; no conftest patches ``sys.path``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aicontract import VirtualClock
from aicontract.backends.local import LocalBackend

ANYIO_BACKENDS_MARKER = "anyio_backends"
"""Registered in pyproject.toml's ``markers``."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(ANYIO_BACKENDS_MARKER)
    if marker is not None and "anyio_backend" in metafunc.fixturenames:
        metafunc.parametrize("anyio_backend", list(marker.args))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock()


@pytest.fixture(autouse=True, scope="session")
def _private_state(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes into the machine's own state (ledger, record): a session-wide
    private state dir, which a test may still override with its own."""
    state = tmp_path_factory.mktemp("state-home")
    saved = {k: os.environ.get(k) for k in ("AICONTRACT_STATE_DIR", "XDG_STATE_HOME")}
    os.environ["AICONTRACT_STATE_DIR"] = str(state / "aicontract")
    os.environ["XDG_STATE_HOME"] = str(state)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def local_env(monkeypatch: pytest.MonkeyPatch, inventory_file: Path, state_dir: Path) -> Path:
    """Point everything (library and CLI) at the made-up host (``inventory_file``, which
    the folder's conftest defines) and a private ledger; return the state dir."""
    monkeypatch.setenv("AICONTRACT_INVENTORY", str(inventory_file))
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(state_dir))
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)
    monkeypatch.delenv("AICONTRACT_BACKENDS", raising=False)
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no truncated lease ids
    return state_dir


@pytest.fixture
def backend(local_env: Path) -> Iterator[LocalBackend]:
    local = LocalBackend()
    yield local
    if local._ledger is not None:
        local._ledger.close()
