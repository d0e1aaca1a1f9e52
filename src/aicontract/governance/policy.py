"""Policies: who may ask for what, as a file validated like a contract.

A policy maps identities to the tenants they may act for and gives each
tenant (and a ``default`` for the rest) its rules: quotas (GPUs at once,
GPU-hours and spend per day and month), the jurisdictions, regions and GPU
models it may use, the guarantee levels and durations it may ask for, and the
templates it may start from. :func:`check` judges one offer against them and
returns :class:`Refusal` records naming the rule, the tenant and the numbers.

    identities:
      - {match: "group:ml", tenants: [ml-research]}
    default: {free_form: false, templates: [notebook]}
    tenants:
      ml-research:
        jurisdictions: [EU]
        max_duration: 24h
        quotas: {gpus: 16, gpu_hours_per_day: 200, spend_per_month: 20000 USD}
"""

from __future__ import annotations

import datetime as _dt
import os
import re
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec

from ..contract import (
    GUARANTEE_ORDER,
    Amount,
    Contract,
    GuaranteeLevel,
    _Invalid,
    _Model,
    check_amount,
    convert,
    mutable_parts,
)
from ..documents import Format, format_of, parse, read_document
from ..errors import ContractError
from ..jurisdictions import satisfies
from ..offer import Offer
from ..units import Duration
from .identity import Identity

__all__ = [
    "SYSTEM_POLICY",
    "IdentityRule",
    "Policy",
    "Quotas",
    "Refusal",
    "Rules",
    "Usage",
    "check",
    "find_policy",
    "load_policy",
    "loads_policy",
]

SYSTEM_POLICY = Path("/etc/aicontract")
"""Where a host's policy lives unless ``AICONTRACT_POLICY`` names one (``policy.yaml`` …)."""

_PRINCIPAL = re.compile(r"^(\*|[a-z-]+:.+)$")
_MAX_HOURS = 10**7
_TENANT = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


def amount(text: str) -> tuple[Decimal, str]:
    """``"500 USD"`` → ``(Decimal("500"), "USD")``."""
    number, currency = text.split()[0], text.split()[-1]
    if number == currency:  # "500USD": no space between
        number, currency = text.strip()[:-3], text.strip()[-3:]
    return Decimal(number), currency


class Quotas(_Model, frozen=True):
    """How much a tenant may hold at once and use per UTC day and calendar month."""

    gpus: int | None = None
    gpu_hours_per_day: float | None = None
    gpu_hours_per_month: float | None = None
    spend_per_day: Amount | None = None
    spend_per_month: Amount | None = None

    def __post_init__(self) -> None:
        check_amount("spend_per_day", self.spend_per_day)
        check_amount("spend_per_month", self.spend_per_month)
        if self.gpus is not None and self.gpus < 0:
            raise _Invalid("gpus", f"{self.gpus} is negative", "0 or more GPUs at once")
        for name in ("gpu_hours_per_day", "gpu_hours_per_month"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= _MAX_HOURS:
                raise _Invalid(name, f"{value} is outside 0..{_MAX_HOURS}", "GPU-hours, like 200")

    def any(self) -> bool:
        """True when any quota is set (usage must then be counted)."""
        return any(
            v is not None
            for v in (
                self.gpus,
                self.gpu_hours_per_day,
                self.gpu_hours_per_month,
                self.spend_per_day,
                self.spend_per_month,
            )
        )


class Rules(_Model, frozen=True):
    """What one tenant may ask for. Empty allow-lists allow anything."""

    quotas: Quotas = Quotas()
    jurisdictions: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    gpu_models: tuple[str, ...] = ()
    min_guarantee: GuaranteeLevel | None = None
    max_guarantee: GuaranteeLevel | None = None
    max_duration: Duration | None = None
    templates: tuple[str, ...] = ()
    free_form: bool = True

    def __post_init__(self) -> None:
        low, high = self.min_guarantee, self.max_guarantee
        if low is not None and high is not None and GUARANTEE_ORDER[low] > GUARANTEE_ORDER[high]:
            raise _Invalid(
                "max_guarantee",
                f"{high!r} is weaker than min_guarantee {low!r}",
                "a level at least as strong as min_guarantee",
            )
        for code in self.jurisdictions:
            if not re.match(r"^[A-Z]{2,3}$", code):
                raise _Invalid(
                    "jurisdictions",
                    f"{code!r} is not a jurisdiction code",
                    "two or three capital letters, like EU, US or DE",
                )


class IdentityRule(_Model, frozen=True):
    """Which tenants an identity may act for: ``match`` is ``user:alice``, ``group:ml``, ``*``…."""

    match: str
    tenants: tuple[str, ...]

    def __post_init__(self) -> None:
        if not _PRINCIPAL.match(self.match):
            raise _Invalid(
                "match",
                f"{self.match!r} names no identity",
                "user:NAME, group:NAME, serviceaccount:NS/NAME, account:ID, arn:...,"
                " api-key:FINGERPRINT or *",
            )
        if not self.tenants:
            raise _Invalid("tenants", "names no tenant", "one or more tenant names, or '*'")


class Policy(_Model, frozen=True):
    """A whole policy document: identity mapping, default rules and per-tenant rules.

    A tenant listed under ``tenants`` gets exactly its own rules (they replace
    ``default``, they do not merge with it); every other tenant gets ``default``.
    With no ``identities`` any identity may act for any tenant.
    """

    version: int = 1
    identities: tuple[IdentityRule, ...] = ()
    default: Rules = Rules()
    tenants: dict[str, Rules] = msgspec.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.version != 1:
            raise _Invalid("version", f"version {self.version} is not known", "1")

    def rules_for(self, tenant: str) -> tuple[str, Rules]:
        """The rules that govern ``tenant`` and the policy path they are at."""
        if tenant in self.tenants:
            return f"tenants.{tenant}", self.tenants[tenant]
        return "default", self.default

    def tenants_for(self, identity: Identity) -> tuple[str, ...] | None:
        """The tenants ``identity`` may act for (``None``: any, when no rule maps identities)."""
        if not self.identities:
            return None
        names = {"*", *identity.principals()}
        out: list[str] = []
        for rule in self.identities:
            if rule.match in names:
                out.extend(t for t in rule.tenants if t not in out)
        return tuple(out)

    def counts_usage(self) -> bool:
        """True when some tenant has a quota (usage must be read from the record)."""
        return self.default.quotas.any() or any(r.quotas.any() for r in self.tenants.values())


def loads_policy(text: str | bytes, format: Format = "yaml") -> Policy:
    """Parse and validate a policy document; every problem is one :class:`ContractError`."""
    data = parse(text, format)
    if data is None or data == "":
        data = {}
    if not isinstance(data, dict):
        raise ContractError(
            f"a policy must be a mapping, got {type(data).__name__}",
            value=data if isinstance(data, (int, float, str, bool)) else None,
            allowed="a mapping with identities, default and tenants",
        )
    tenants = data.get("tenants")
    if isinstance(tenants, dict):
        # msgspec locates errors inside a mapping's values only as "[...]"; check each
        # tenant on its own so the error names it ($.tenants.team-a.quotas.gpus).
        for name, section in tenants.items():
            if not isinstance(name, str) or not _TENANT.match(name):
                raise ContractError(
                    f"{name!r} is not a tenant name",
                    path="$.tenants",
                    value=name,
                    allowed="1-63 lowercase letters, digits, '-', '.' or '_'",
                )
            try:
                convert(section, Rules)
            except ContractError as exc:
                raise exc.at(f"$.tenants.{name}") from None
    policy: Policy = convert(data, Policy)
    return policy


def load_policy(path: str | Path) -> Policy:
    """Load a policy file; the format comes from its suffix."""
    raw = read_document(path)
    return loads_policy(raw, format_of(path))


def find_policy() -> Path | None:
    """``AICONTRACT_POLICY`` if set (``off`` for none), else ``/etc/aicontract/policy.*``."""
    named = os.environ.get("AICONTRACT_POLICY")
    if named is not None:
        return None if named in ("", "off") else Path(named)
    for suffix in ("yaml", "yml", "toml", "json"):
        candidate = SYSTEM_POLICY / f"policy.{suffix}"
        if candidate.is_file():
            return candidate
    return None


# -- judging ---------------------------------------------------------------------------


class Refusal(msgspec.Struct, frozen=True, kw_only=True):
    """One rule a request breaks: where the rule is, for which tenant, and the numbers."""

    rule: str
    tenant: str
    message: str
    used: str | None = None
    limit: str | None = None

    def __str__(self) -> str:
        numbers = f" (used {self.used} / limit {self.limit})" if self.limit is not None else ""
        return f"{self.rule} [tenant {self.tenant}]: {self.message}{numbers}"


class Usage(msgspec.Struct, kw_only=True):
    """What a tenant holds and has used, as the record tells it (see :class:`UsageIndex`)."""

    gpus: int = 0
    gpu_hours_day: float = 0.0
    gpu_hours_month: float = 0.0
    spend_day: dict[str, Decimal] = msgspec.field(default_factory=dict)
    spend_month: dict[str, Decimal] = msgspec.field(default_factory=dict)


def windows(now: float) -> tuple[float, float]:
    """The start of the current UTC day and calendar month, as epoch seconds."""
    moment = _dt.datetime.fromtimestamp(now, _dt.timezone.utc)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return day.timestamp(), day.replace(day=1).timestamp()


def _fmt(value: float) -> str:
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def template_of(contract: Contract) -> str | None:
    """``name@version`` of the template a contract came from, if it says so."""
    name = contract.labels.get(TEMPLATE_LABEL)
    if name is None:
        return None
    version = contract.labels.get(VERSION_LABEL)
    return f"{name}@{version}" if version else name


TEMPLATE_LABEL = "aicontract.io/template"
VERSION_LABEL = "aicontract.io/template-version"


_CATALOG: tuple[Any, Any] | None = None


def _catalog() -> Any:
    """The template catalog, read again only when a catalog file or folder changed.

    A platform team that tightens or retires a template binds the next commit of every
    running process, as a changed policy file does; unchanged, a check costs a stat of
    each catalog file instead of reading and validating them all.
    """
    global _CATALOG
    from .templates import catalog, catalog_fingerprint

    key = catalog_fingerprint()
    kept = _CATALOG
    if kept is None or kept[0] != key:
        kept = _CATALOG = (key, catalog())
    return kept[1]


def _forget_catalog() -> None:
    """Read the catalog afresh at the next check (tests that swap catalogs)."""
    global _CATALOG
    _CATALOG = None


def _template_problem(contract: Contract, ref: str) -> str | None:
    """Why a contract that names a template does not hold the template's locked fields."""
    from .templates import find_template, locked_mismatches

    try:
        template = find_template(ref, _catalog())
    except ContractError as exc:
        return f"it names template {ref!r}, which cannot be found: {exc.message}"
    changed = locked_mismatches(template, contract)
    if changed:
        return f"it names template {ref} but changes its locked {', '.join(changed)}"
    return None


_VERDICTS: dict[tuple[int, int, int], tuple[Any, ...]] = {}
_VERDICTS_KEPT = 256


def check_contract(
    policy: Policy, identity: Identity, contract: Contract
) -> tuple[list[Refusal], str, Rules]:
    """The rules ``contract`` breaks whatever is offered: tenant, templates, duration.

    Judged once per policy, identity, contract and template catalog, all immutable (a
    loop re-acquires one contract): the verdict is kept beside the very objects it was
    made from, and a new policy, identity, contract or catalog is judged afresh.
    """
    catalog = _catalog() if template_of(contract) is not None else None
    key = (id(policy), id(identity), id(contract))
    # What a frozen struct can still have changed in place: its dicts' contents.
    parts = (mutable_parts(contract), tuple((k, id(v)) for k, v in policy.tenants.items()))
    kept = _VERDICTS.get(key)
    if (
        kept is not None
        and kept[0] is policy
        and kept[1] is identity
        and kept[2] is contract
        and kept[3] is catalog
        and kept[4] == parts
    ):
        return list(kept[5]), kept[6], kept[7]
    out, where, rules = _check_contract(policy, identity, contract)
    if len(_VERDICTS) >= _VERDICTS_KEPT:
        _VERDICTS.clear()
    _VERDICTS[key] = (policy, identity, contract, catalog, parts, tuple(out), where, rules)
    return out, where, rules


def _check_contract(
    policy: Policy, identity: Identity, contract: Contract
) -> tuple[list[Refusal], str, Rules]:
    tenant = contract.tenant
    where, rules = policy.rules_for(tenant)
    out: list[Refusal] = []
    allowed = policy.tenants_for(identity)
    if allowed is not None and tenant not in allowed and "*" not in allowed:
        out.append(
            Refusal(
                rule="identities",
                tenant=tenant,
                message=f"{identity} may not act for tenant {tenant!r}; it may act for "
                + (", ".join(repr(t) for t in allowed) or "no tenant"),
            )
        )
    template = template_of(contract)
    if template is None and not rules.free_form:
        out.append(
            Refusal(
                rule=f"{where}.free_form",
                tenant=tenant,
                message="free-form contracts are not allowed; start from a template"
                + (f" ({', '.join(rules.templates)})" if rules.templates else ""),
            )
        )
    if template is not None and rules.templates:
        name = template.partition("@")[0]
        if template not in rules.templates and name not in rules.templates:
            out.append(
                Refusal(
                    rule=f"{where}.templates",
                    tenant=tenant,
                    message=f"template {template!r} is not allowed; allowed: "
                    + ", ".join(rules.templates),
                )
            )
    if template is not None:
        problem = _template_problem(contract, template)
        if problem is not None:
            out.append(Refusal(rule="templates.locked", tenant=tenant, message=problem))
    duration = contract.terms.duration
    if rules.max_duration is not None:
        if duration is None:
            out.append(
                Refusal(
                    rule=f"{where}.max_duration",
                    tenant=tenant,
                    message="the contract sets no terms.duration",
                    limit=str(rules.max_duration),
                    used="unbounded",
                )
            )
        elif duration > rules.max_duration:
            out.append(
                Refusal(
                    rule=f"{where}.max_duration",
                    tenant=tenant,
                    message=f"terms.duration {duration} is longer than allowed",
                    used=str(duration),
                    limit=str(rules.max_duration),
                )
            )
    return out, where, rules


def check(
    policy: Policy,
    identity: Identity,
    offer: Offer,
    usage: Usage | None = None,
) -> list[Refusal]:
    """Every rule committing ``offer`` for ``identity`` would break (empty: allowed)."""
    contract = offer.contract
    out, where, rules = check_contract(policy, identity, contract)
    tenant = contract.tenant

    def refuse(rule: str, message: str, used: str | None = None, limit: str | None = None) -> None:
        out.append(
            Refusal(rule=f"{where}.{rule}", tenant=tenant, message=message, used=used, limit=limit)
        )

    if rules.jurisdictions and not satisfies(offer.jurisdiction, rules.jurisdictions):
        refuse(
            "jurisdictions",
            f"{offer.jurisdiction or 'an unknown jurisdiction'} is not allowed; allowed: "
            + ", ".join(rules.jurisdictions),
        )
    if rules.regions and offer.region not in rules.regions:
        refuse(
            "regions", f"region {offer.region} is not allowed; allowed: " + ", ".join(rules.regions)
        )
    grant = offer.grant
    if rules.gpu_models and grant.gpus and grant.gpu_model not in rules.gpu_models:
        refuse(
            "gpu_models",
            f"{grant.gpu_model or 'an unnamed GPU'} is not allowed; allowed: "
            + ", ".join(rules.gpu_models),
        )
    level = GUARANTEE_ORDER[offer.guarantee]
    if rules.min_guarantee is not None and level < GUARANTEE_ORDER[rules.min_guarantee]:
        refuse(
            "min_guarantee",
            f"a {offer.guarantee} offer is weaker than {rules.min_guarantee}",
        )
    if rules.max_guarantee is not None and level > GUARANTEE_ORDER[rules.max_guarantee]:
        refuse(
            "max_guarantee",
            f"a {offer.guarantee} offer is stronger than {rules.max_guarantee}",
        )
    quotas = rules.quotas
    if quotas.any():
        _check_quotas(quotas, offer, usage or Usage(), refuse)
    return out


TERM_LEFT = "term_left"
"""``Offer.details`` key a renegotiation sets: the seconds its replacement will serve."""


def term_seconds(offer: Offer) -> float | None:
    """How long committing ``offer`` holds it: the contract's ``terms.duration``, or, for a
    renegotiation's replacement, what is left of its chain's term (``details["term_left"]``):
    a replacement continues the contract's run, it does not start it again."""
    left = offer.details.get(TERM_LEFT)
    if left is not None:
        try:
            return max(0.0, float(left))
        except ValueError:
            pass
    duration = offer.contract.terms.duration
    return duration.seconds if duration is not None else None


def _check_quotas(quotas: Quotas, offer: Offer, usage: Usage, refuse: Any) -> None:
    # A gang holds its per-node GPUs on every node: quotas count them all.
    gpus = offer.grant.total_gpus
    term = term_seconds(offer)
    if quotas.gpus is not None and usage.gpus + gpus > quotas.gpus:
        refuse(
            "quotas.gpus",
            f"{gpus} more GPUs would exceed the GPUs held at once",
            used=f"{usage.gpus} + {gpus}",
            limit=str(quotas.gpus),
        )
    hours = term / 3600 if term is not None else None
    for rule, limit, used in (
        ("gpu_hours_per_day", quotas.gpu_hours_per_day, usage.gpu_hours_day),
        ("gpu_hours_per_month", quotas.gpu_hours_per_month, usage.gpu_hours_month),
    ):
        if limit is None or not gpus:
            continue
        if hours is None:
            refuse(
                f"quotas.{rule}",
                "a GPU-hours quota needs terms.duration to count against",
                used=_fmt(used),
                limit=_fmt(limit),
            )
        elif used + gpus * hours > limit:
            refuse(
                f"quotas.{rule}",
                f"{gpus} GPUs x {_fmt(hours)}h = {_fmt(gpus * hours)} GPU-hours more"
                " would exceed the quota",
                used=f"{_fmt(used)} + {_fmt(gpus * hours)}",
                limit=_fmt(limit),
            )
    price = offer.price
    for rule, limit_text, spent in (
        ("spend_per_day", quotas.spend_per_day, usage.spend_day),
        ("spend_per_month", quotas.spend_per_month, usage.spend_month),
    ):
        if limit_text is None:
            continue
        limit_amount, currency = amount(limit_text)
        used_amount = spent.get(currency, Decimal(0))
        if price is None or (price.currency != currency and price.amount):
            refuse(
                f"quotas.{rule}",
                f"the offer is priced {price or 'unpriced'}; the quota counts {currency}",
                used=f"{used_amount} {currency}",
                limit=limit_text.strip(),
            )
            continue
        if hours is None:
            if price.amount:
                refuse(
                    f"quotas.{rule}",
                    "a spend quota needs terms.duration to price the lease",
                    used=f"{used_amount} {currency}",
                    limit=limit_text.strip(),
                )
            continue
        cost = price.amount * Decimal(str(hours))
        if used_amount + cost > limit_amount:
            refuse(
                f"quotas.{rule}",
                f"{price} x {_fmt(hours)}h = {cost:.2f} {currency} more would exceed the quota",
                used=f"{used_amount:.2f} + {cost:.2f} {currency}",
                limit=limit_text.strip(),
            )


def refusals_text(refusals: Sequence[Refusal]) -> str:
    """One line per refusal."""
    return "; ".join(map(str, refusals))
