"""Watching a lease against its contract: objectives, SLIs, policies, probes, telemetry."""

from .monitor import Monitor, process_monitor, watch_by_default

__all__ = ["Monitor", "process_monitor", "watch_by_default"]
