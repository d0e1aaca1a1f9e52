"""aicontract: state what your workload needs as a typed contract; get a guaranteed lease.

The public API is what this module exports; everything else is internal.
"""

from ._version import __version__
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
    LeaseError,
    LeaseLost,
    LeaseNotFound,
    LeaseStateError,
    NegotiationError,
    NoOffer,
    QuotaExceeded,
    TransientBackendError,
)
from .schema import json_schema
from .units import Bytes, BytesRange, CountRange, Duration, Money, Rate, Ratio

__all__ = [
    "GPU",
    "AIContractError",
    "AuthenticationError",
    "BackendError",
    "BackendNotFound",
    "Bytes",
    "BytesRange",
    "CapacityUnavailable",
    "ConfigError",
    "Contract",
    "ContractError",
    "CountRange",
    "Duration",
    "GuaranteeLevel",
    "Isolation",
    "LeaseError",
    "LeaseLost",
    "LeaseNotFound",
    "LeaseStateError",
    "Money",
    "NegotiationError",
    "NoOffer",
    "Objective",
    "Placement",
    "Preferences",
    "Probe",
    "QuotaExceeded",
    "Rate",
    "Ratio",
    "Resources",
    "Terms",
    "TransientBackendError",
    "Workload",
    "__version__",
    "dump",
    "dumps",
    "json_schema",
    "load",
    "loads",
]
