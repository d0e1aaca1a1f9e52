"""Backends: where capacity comes from, behind one small protocol."""

from .base import Backend
from .registry import available_backends, create_backend, load_backend_class

__all__ = ["Backend", "available_backends", "create_backend", "load_backend_class"]
