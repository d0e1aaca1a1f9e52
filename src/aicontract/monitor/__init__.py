"""Watching a lease against its contract: objectives, SLIs, policies, probes, telemetry."""

from .monitor import Monitor

__all__ = ["Monitor"]
