"""The Slurm backend: leases are batch jobs holding an allocation, through slurmrestd.

See :class:`~aicontract.backends.slurm.backend.SlurmBackend` and ``docs/backends/slurm.md``.
It needs nothing beyond aicontract's own dependencies (httpx).
"""

from __future__ import annotations

from .backend import SlurmBackend, job_name, node_env

__all__ = ["SlurmBackend", "job_name", "node_env"]
