"""Fixtures and hooks every test folder shares.

* ``anyio_backend``: async tests run on asyncio. A module or test marked
  ``@pytest.mark.anyio_backends("asyncio", "trio")`` runs once on each backend
  instead (the hook below parametrizes the fixture); a folder or module may
  still override the fixture with its own.
* ``clock``: a fresh :class:`VirtualClock`, for code that takes a clock, so no
  test waits on the wall clock for time to pass.

Helper modules (``fakes``, ``monitor_support``, ``cloud_support``, the k8s
harness) are importable by plain name through ``pythonpath`` in
pyproject.toml's ``[tool.pytest.ini_options]``; no conftest patches ``sys.path``.
"""

from __future__ import annotations

import pytest

from aicontract import VirtualClock

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
