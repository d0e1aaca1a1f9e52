"""Find backends by name through the ``aicontract.backends`` entry-point group.

The built-in backends register the same way a third party does, with one line
in ``pyproject.toml``::

    [project.entry-points."aicontract.backends"]
    mycloud = "mycloud_aicontract:MyCloudBackend"
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..errors import BackendNotFound, ConfigError
from .base import Backend

__all__ = ["available_backends", "create_backend", "load_backend_class"]

GROUP = "aicontract.backends"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available_backends() -> list[str]:
    """Names of every registered backend."""
    return sorted(_entry_points())


def load_backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name``."""
    eps = _entry_points()
    if name not in eps:
        raise BackendNotFound(name, sorted(eps))
    try:
        cls = eps[name].load()
    except ImportError as exc:
        raise ConfigError(
            f"backend {name!r} is registered but cannot be imported ({exc}); "
            f"is its extra installed? try: pip install 'aicontract[{name}]'"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"entry point {name!r} does not name a Backend subclass")
    return cls


def create_backend(name: str, **options: Any) -> Backend:
    """Instantiate the backend registered under ``name`` with ``options``."""
    return load_backend_class(name)(**options)
