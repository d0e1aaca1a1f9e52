"""Find backends by name: the ``aicontract.backends`` entry points, and run-time registrations.

The built-in backends register the same way a third party does, with one line
in ``pyproject.toml``::

    [project.entry-points."aicontract.backends"]
    mycloud = "mycloud_aicontract:MyCloudBackend"

Code that builds backends itself (a test, a notebook, an application wiring its
own client) registers a factory at run time instead::

    register_backend("mycloud", lambda **options: MyCloudBackend(region="eu", **options))

A run-time registration wins over an entry point of the same name only when
asked to (``replace=True``), so a typo cannot silently shadow an installed backend.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from ..errors import BackendNotFound, ConfigError
from .base import Backend

__all__ = [
    "GROUP",
    "BackendFactory",
    "available_backends",
    "create_backend",
    "load_backend_class",
    "register_backend",
    "unregister_backend",
]

GROUP = "aicontract.backends"

BackendFactory = Callable[..., Backend]
"""Anything that builds a backend from keyword options: a Backend subclass or a function."""

# The modules a built-in backend needs beyond the core install, and the extra that
# brings them. Anything else missing from aicontract's own backends means a broken
# install, not a missing extra.
_EXTRA_FOR_MODULE = {"boto3": "aws", "botocore": "aws", "lightkube": "kubernetes"}
_OWN_DISTRIBUTION = "aicontract"


_registered: dict[str, BackendFactory] = {}


@lru_cache(maxsize=4)
def _entry_points(search_path: tuple[str, ...]) -> dict[str, EntryPoint]:
    # Keyed on sys.path: a plugin installed (or put on the path) after the first
    # lookup is found without restarting the process, and reading the metadata
    # stays a one-time cost while the path does not change.
    del search_path
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def _installed() -> dict[str, EntryPoint]:
    return _entry_points(tuple(sys.path))


def register_backend(
    name: str,
    factory: BackendFactory,
    *,
    replace: bool = False,
) -> None:
    """Make ``create_backend(name, **options)`` call ``factory(**options)``.

    ``factory`` is a :class:`~aicontract.Backend` subclass or any callable that
    returns a backend. Registering a name that is already taken
    (at run time or by an installed entry point) is a :class:`~aicontract.ConfigError`
    unless ``replace=True``.
    """
    if not name or not name.strip() or name != name.strip() or "," in name:
        raise ConfigError(
            f"backend name {name!r} is not allowed (a non-empty word without commas or "
            "surrounding spaces, as AICONTRACT_BACKENDS lists them)"
        )
    if not callable(factory):
        raise ConfigError(f"backend {name!r}: the factory must be callable, got {factory!r}")
    if not replace and (name in _registered or name in _installed()):
        raise ConfigError(
            f"a backend named {name!r} is already registered; pass replace=True to override it"
        )
    _registered[name] = factory


def unregister_backend(name: str) -> None:
    """Forget a run-time registration (entry points stay); unknown names are ignored."""
    _registered.pop(name, None)


def available_backends() -> list[str]:
    """Names of every backend that :func:`create_backend` can build."""
    return sorted({*_installed(), *_registered})


def _install_hint(ep: EntryPoint, exc: ImportError) -> str:
    """What to run so that ``ep`` imports: the right extra, or the plugin's own package."""
    missing = (exc.name or "").split(".")[0]
    dist = getattr(ep, "dist", None)
    dist_name = dist.metadata["Name"] if dist is not None else None
    if dist_name is None or dist_name.lower() == _OWN_DISTRIBUTION:
        extra = _EXTRA_FOR_MODULE.get(missing)
        if extra is not None:
            return f"pip install 'aicontract[{extra}]'"
        # The backend needs nothing optional: the install itself is damaged.
        return "pip install --force-reinstall aicontract"
    return f"pip install --upgrade '{dist_name}'"


def _load(name: str, ep: EntryPoint) -> object:
    try:
        return ep.load()
    except ImportError as exc:
        missing = f"module {exc.name!r} is missing" if exc.name else str(exc)
        raise ConfigError(
            f"backend {name!r} is installed but cannot be imported ({missing}); "
            f"try: {_install_hint(ep, exc)}"
        ) from exc


def _check_class(name: str, obj: object) -> type[Backend]:
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        raise ConfigError(f"backend {name!r} does not name a Backend subclass (got {obj!r})")
    return obj


def load_backend_class(name: str) -> type[Backend]:
    """The backend class registered under ``name`` (at run time or by entry point)."""
    factory = _registered.get(name)
    if factory is not None:
        return _check_class(name, factory)
    eps = _installed()
    if name not in eps:
        raise BackendNotFound(name, available_backends())
    return _check_class(name, _load(name, eps[name]))


def create_backend(name: str, **options: Any) -> Backend:
    """Build the backend registered under ``name`` with ``options``."""
    factory = _registered.get(name) or load_backend_class(name)
    backend = factory(**options)
    if not isinstance(backend, Backend):
        raise ConfigError(
            f"backend {name!r}: the factory returned {type(backend).__name__}, not a Backend"
        )
    return backend
