"""What a backend observes about a lease: SLI samples and provider faults."""

from __future__ import annotations

import msgspec

__all__ = ["Fault", "Observation", "Sample"]


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One timestamped measurement of an SLI (``gpu_utilization``, ``latency``...).

    ``value`` is in base units: seconds for latencies, events per second for
    rates, a fraction of one for ratios, bytes for memory.
    """

    sli: str
    value: float
    at: float
    source: str = "backend"
    labels: dict[str, str] = msgspec.field(default_factory=dict)


class Fault(msgspec.Struct, frozen=True, kw_only=True):
    """A provider fault that breaks the lease at once (not SLO burn).

    ``kind`` is one of ``holder-lost``, ``workload-exited``, ``node-lost``,
    ``device-error``, ``capacity-revoked``, ``preempted``.
    """

    kind: str
    reason: str
    at: float


class Observation(msgspec.Struct, frozen=True, kw_only=True):
    """What one ``observe`` call saw.

    ``workload`` is the state of what runs on the lease (``not-ready``, ``ready``,
    ``completed``) when the backend can see it, else ``None``.
    """

    samples: tuple[Sample, ...] = ()
    faults: tuple[Fault, ...] = ()
    workload: str | None = None
