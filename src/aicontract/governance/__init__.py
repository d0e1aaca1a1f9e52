"""Governance: who may ask for what, templates, and a record no one can quietly edit.

* :mod:`~aicontract.governance.identity` — who is asking, as the backend sees it;
* :mod:`~aicontract.governance.policy` — quotas and allow-lists per tenant;
* :mod:`~aicontract.governance.templates` — named, versioned, parameterised contracts;
* :mod:`~aicontract.governance.record` — the hash-chained record and its verification;
* :mod:`~aicontract.governance.enforce` — the negotiator's hook that ties them together.
"""

from .identity import Identity, local_identity
from .policy import Policy, Quotas, Refusal, Rules, load_policy, loads_policy
from .record import Record, Verification, verify

__all__ = [
    "Identity",
    "Policy",
    "Quotas",
    "Record",
    "Refusal",
    "Rules",
    "Verification",
    "load_policy",
    "loads_policy",
    "local_identity",
    "verify",
]
