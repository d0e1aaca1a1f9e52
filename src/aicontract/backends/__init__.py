"""Backends: where capacity comes from, behind one small protocol.

The package exports the protocol and the registry's whole public API.
"""

from . import registry
from .base import Backend
from .registry import *  # noqa: F403  (re-exported: registry.__all__ is what is public)

__all__ = ["Backend", *registry.__all__]
