"""The Kubernetes backend (``pip install 'aicontract[kubernetes]'``).

See :class:`~aicontract.backends.kubernetes.backend.KubernetesBackend` and
``docs/backends/kubernetes.md``.
"""

from __future__ import annotations

from .backend import GarbageReport, KubernetesBackend

__all__ = ["GarbageReport", "KubernetesBackend"]
