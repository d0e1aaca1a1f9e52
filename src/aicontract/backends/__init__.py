"""Backends: where capacity comes from, behind one small protocol."""

from .base import Backend
from .registry import (
    BackendFactory,
    available_backends,
    create_backend,
    load_backend_class,
    register_backend,
    unregister_backend,
)

__all__ = [
    "Backend",
    "BackendFactory",
    "available_backends",
    "create_backend",
    "load_backend_class",
    "register_backend",
    "unregister_backend",
]
