"""aicontract: state what your workload needs as a typed contract; get a guaranteed lease.

The public API is what this module exports; everything else is internal.
"""

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
from .errors import (
    AIContractError,
    AuthenticationError,
    BackendError,
    BackendNotFound,
    CapacityUnavailable,
    ConfigError,
    ContractError,
    IdempotencyConflict,
    LeaseError,
    LeaseLost,
    LeaseNotFound,
    LeaseStateError,
    LedgerError,
    NegotiationError,
    NoOffer,
    PolicyViolation,
    QuotaExceeded,
    TransientBackendError,
)
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
    "GPU",
    "AIContractError",
    "AuthenticationError",
    "Backend",
    "BackendError",
    "BackendNotFound",
    "Bytes",
    "BytesRange",
    "CapacityUnavailable",
    "Clock",
    "ConfigError",
    "Contract",
    "ContractError",
    "CountRange",
    "Duration",
    "Fault",
    "Grant",
    "GuaranteeLevel",
    "IdempotencyConflict",
    "Isolation",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "LeaseNotFound",
    "LeaseRecord",
    "LeaseState",
    "LeaseStateError",
    "LedgerError",
    "Money",
    "Monitor",
    "Negotiation",
    "NegotiationError",
    "Negotiator",
    "NoOffer",
    "Notify",
    "Objective",
    "ObjectiveState",
    "Observation",
    "Offer",
    "Placement",
    "PolicyViolation",
    "Preferences",
    "Probe",
    "QuotaExceeded",
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
    "TransientBackendError",
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
