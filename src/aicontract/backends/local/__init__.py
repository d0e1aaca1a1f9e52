"""The local backend: this host's inventory, one ledger for the host, leases on it."""

from .backend import LocalBackend

__all__ = ["LocalBackend"]
