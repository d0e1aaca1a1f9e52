"""Governance: who may ask for what, templates, and a record no one can quietly edit.

* :mod:`~aicontract.governance.identity` — who is asking, as the backend sees it;
* :mod:`~aicontract.governance.policy` — quotas and allow-lists per tenant;
* :mod:`~aicontract.governance.templates` — named, versioned, parameterised contracts;
* :mod:`~aicontract.governance.record` — the hash-chained record and its verification;
* :mod:`~aicontract.governance.enforce` — the negotiator's hook that ties them together.
"""

from .enforce import Governance, default_governance, record_path
from .identity import Identity, local_identity
from .policy import Policy, Quotas, Refusal, Rules, load_policy, loads_policy
from .record import Record, Verification, verify
from .templates import Parameter, Template, catalog, find_template, load_template, render

__all__ = [
    "Governance",
    "Identity",
    "Parameter",
    "Policy",
    "Quotas",
    "Record",
    "Refusal",
    "Rules",
    "Template",
    "Verification",
    "catalog",
    "default_governance",
    "find_template",
    "load_policy",
    "load_template",
    "loads_policy",
    "local_identity",
    "record_path",
    "render",
    "verify",
]
