"""aicontract: state what your workload needs as a typed contract; get a guaranteed lease.

The public API is what this module exports; everything else is internal.
"""

from . import errors
from ._version import __version__
from .backends import (
    Backend,
    available_backends,
    create_backend,
    register_backend,
    unregister_backend,
)
from .clock import Clock, VirtualClock
from .contract import (
    GPU,
    Contract,
    GuaranteeLevel,
    Isolation,
    Objective,
    Placement,
    Preferences,
    Probe,
    Resources,
    Terms,
    Workload,
)
from .documents import dump, dumps, load, loads
from .errors import *  # noqa: F403  (every error is public: errors.__all__)
from .leases import Lease, LeaseRecord, LeaseState, WorkloadState
from .monitor import Monitor
from .monitor.policies import Notify, Release, Renegotiate, RenegotiationBudget
from .negotiate import Negotiation, Negotiator, acquire, quote
from .observation import Fault, ObjectiveState, Observation, Sample, Violation
from .offer import Grant, Offer, Quote, Rejection
from .reporting import measure, report
from .schema import json_schema, template_json_schema
from .sync import acquire_sync, lease, quote_sync, release_sync, renew_sync
from .units import Bytes, BytesRange, CountRange, Duration, Money, Rate, Ratio
from .world import World

__all__ = [
    *errors.__all__,
    "GPU",
    "Backend",
    "Bytes",
    "BytesRange",
    "Clock",
    "Contract",
    "CountRange",
    "Duration",
    "Fault",
    "Grant",
    "GuaranteeLevel",
    "Isolation",
    "Lease",
    "LeaseRecord",
    "LeaseState",
    "Money",
    "Monitor",
    "Negotiation",
    "Negotiator",
    "Notify",
    "Objective",
    "ObjectiveState",
    "Observation",
    "Offer",
    "Placement",
    "Preferences",
    "Probe",
    "Quote",
    "Rate",
    "Ratio",
    "Rejection",
    "Release",
    "Renegotiate",
    "RenegotiationBudget",
    "Resources",
    "Sample",
    "Terms",
    "Violation",
    "VirtualClock",
    "Workload",
    "WorkloadState",
    "World",
    "__version__",
    "acquire",
    "acquire_sync",
    "available_backends",
    "create_backend",
    "dump",
    "dumps",
    "json_schema",
    "lease",
    "load",
    "loads",
    "measure",
    "quote",
    "quote_sync",
    "register_backend",
    "release_sync",
    "renew_sync",
    "report",
    "template_json_schema",
    "unregister_backend",
]
