"""Governance in the request path: the negotiator's one hook before every commit.

:class:`Governance` holds the policy (if any) and the record (if kept). The
negotiator hands it each commit (:meth:`Governance.commit`): it asks the
offer's backend who is asking, judges the offer against the policy with usage
read from the record (so quotas hold across processes), records the decision,
runs the commit, records the grant and follows the lease to its end (renewals,
release, expiry, revocation). A refusal raises
:class:`~aicontract.PolicyViolation` before the backend is touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import attrs
import msgspec

from ..clock import Clock, system_clock
from ..contract import Contract, encode_quantity, mutable_parts
from ..errors import AIContractError, ConfigError, ContractError, LeaseLost, PolicyViolation
from ..leases import Lease, LeaseState
from ..offer import Grant, Offer, Rejection
from .identity import Identity, local_identity
from .policy import (
    Policy,
    Refusal,
    Usage,
    amount,
    check,
    find_policy,
    load_policy,
    template_of,
    term_seconds,
    windows,
)
from .record import Record

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..monitor.objectives import Violation

__all__ = [
    "Governance",
    "UsageIndex",
    "contract_digest",
    "default_governance",
    "record_path",
]

log = logging.getLogger("aicontract.governance")

_PENDING_TTL = 120.0
"""An admitted commit that never reports back (its process died) stops counting after this,
or after its ``start_by`` and this, whichever is later: a commit may wait that long."""


def admission_hold(contract: Contract) -> float:
    """How long an admission for ``contract`` counts against its tenant without a grant."""
    start_by = contract.terms.start_by
    return _PENDING_TTL + (start_by.seconds if start_by is not None else 0.0)


def contract_digest(contract: Contract) -> str:
    """SHA-256 of the contract's canonical JSON: names it in the record without its content."""
    data = msgspec.to_builtins(contract, enc_hook=encode_quantity)
    return hashlib.sha256(msgspec.json.encode(data, order="sorted")).hexdigest()


_last_digest: tuple[Contract | None, tuple[Any, ...], str] = (None, (), "")


def _contract_fields(contract: Contract) -> dict[str, Any]:
    # Name, tenant, template and digest only: env values and labels may hold secrets.
    global _last_digest
    parts = mutable_parts(contract)
    if _last_digest[0] is not contract or _last_digest[1] != parts:
        # A loop re-acquires one contract: hash it once (again if its dicts were changed).
        _last_digest = (contract, parts, contract_digest(contract))
    return {
        "contract": contract.name,
        "digest": _last_digest[2],
        "tenant": contract.tenant,
        "template": template_of(contract),
    }


_SUMMARIES: dict[tuple[Any, ...], str] = {}
_DESCRIPTIONS: dict[Grant, str] = {}
_K = TypeVar("_K")
_CACHED = 256  # entries kept per cache: a loop re-offers the same few grants


def _once(cache: dict[_K, str], key: _K, make: Callable[[], str]) -> str:
    """``make()``, made once per distinct ``key`` (the cache is emptied when full)."""
    text = cache.get(key)
    if text is None:
        if len(cache) >= _CACHED:
            cache.clear()
        text = cache[key] = make()
    return text


def _summary(offer: Offer) -> str:
    """``offer.summary()``, made once per distinct summary (offers are new each round,
    what they say mostly is not); it reads only the fields in the key."""
    price = offer.price
    key: tuple[Any, ...] = (
        offer.backend,
        offer.grant,
        offer.region,
        offer.jurisdiction,
        offer.guarantee,
        None if price is None else str(price),
        offer.details.get("relaxed"),
    )
    return _once(_SUMMARIES, key, offer.summary)


def _describe(grant: Grant) -> str:
    """``grant.describe()``, made once per distinct grant."""
    return _once(_DESCRIPTIONS, grant, grant.describe)


@attrs.define
class _Held:
    tenant: str
    gpus: int
    start: float
    planned_end: float | None
    expires_at: float
    price: Decimal
    currency: str
    digest: str = ""
    end: float | None = None

    def spend(self, until: float) -> Decimal:
        """Price x time held up to ``until`` (the whole-run budget's charge)."""
        stop = min(until, self.end if self.end is not None else until, max(self.expires_at, 0))
        return self.price * Decimal(str(round(max(0.0, stop - self.start) / 3600, 6)))


@attrs.define
class _Sums:
    """One tenant's use, within one pair of windows (UTC day, calendar month)."""

    hours_day: float = 0.0
    hours_month: float = 0.0
    spend_day: dict[str, Decimal] = attrs.field(factory=dict)
    spend_month: dict[str, Decimal] = attrs.field(factory=dict)

    def add(self, held: _Held, stop: float, day: float, month: float) -> None:
        for since, spend, is_day in ((day, self.spend_day, True), (month, self.spend_month, False)):
            hours = max(0.0, stop - max(held.start, since)) / 3600
            if is_day:
                self.hours_day += held.gpus * hours
            else:
                self.hours_month += held.gpus * hours
            if held.price:
                cost = held.price * Decimal(str(round(hours, 6)))
                spend[held.currency] = spend.get(held.currency, Decimal(0)) + cost


@attrs.define
class UsageIndex:
    """Per-tenant usage, built from the record and kept current by reading only what is new.

    Leases that ended are folded into per-tenant sums for the current windows as they
    end, so a check costs what is active now, not everything granted this month.
    """

    record: Record
    _offset: int = 0
    _active: dict[str, _Held] = attrs.field(factory=dict)
    _ended: dict[str, list[_Held]] = attrs.field(factory=dict)
    _sums: dict[str, _Sums] = attrs.field(factory=dict)
    _windows: tuple[float, float] | None = None
    _pending: dict[str, tuple[str, int, float]] = attrs.field(factory=dict)
    """ticket -> (tenant, GPUs, until when it counts) of each admitted commit in flight."""
    _spent: dict[tuple[str, str], Decimal] = attrs.field(factory=dict)
    """(contract digest, currency) -> spend of its leases that ended."""
    _refreshed: bool = False
    _lock: threading.RLock = attrs.field(factory=threading.RLock, repr=False)
    """Threads of this process that negotiate at once share the index: one at a time."""

    def refresh(self) -> None:
        """Read the entries appended since the last call (by any process)."""
        with self._lock:
            self._refreshed = True
            for entry, offset in self.record.scan(self._offset):
                self.apply(entry)
                self._offset = offset

    def wrote(self, kind: str, at: float, fields: dict[str, Any], start: int, end: int) -> None:
        """Take an entry this process just appended at bytes ``start..end`` of the record.

        When the index had read everything before it, the entry is folded in as it is,
        and the next :meth:`refresh` does not read it back (parse it again); otherwise
        (another process appended in between) it is left for :meth:`refresh` to read in
        its place, after what came before it. An index never refreshed (no quota or
        budget asked for usage yet) takes nothing: it is built when first needed.
        """
        with self._lock:
            if self._refreshed and self._offset == start:
                self.apply({"at": at, "kind": kind, **fields})  # as refresh() would decode it
                self._offset = end

    def apply(self, entry: dict[str, Any]) -> None:
        """Fold one record entry into the usage."""
        kind = entry.get("kind")
        if kind == "admit":
            until = entry.get("until") or entry["at"] + _PENDING_TTL  # older records: no until
            self._pending[entry["ticket"]] = (entry["tenant"], entry["gpus"], until)
        elif kind == "grant":
            self._pending.pop(entry.get("ticket") or "", None)
            price, _, currency = (entry.get("price") or "0 USD/h").partition(" ")
            duration = entry.get("duration")
            self._active[entry["lease"]] = _Held(
                tenant=entry["tenant"],
                gpus=entry["gpus"],
                start=entry["at"],
                planned_end=entry["at"] + duration if duration else None,
                expires_at=entry["expires_at"],
                price=Decimal(price),
                currency=currency.partition("/")[0],
                digest=entry.get("digest") or "",
            )
        elif kind == "commit-failed":
            self._pending.pop(entry.get("ticket") or "", None)
        elif kind == "renew":
            held = self._active.get(entry["lease"])
            if held is not None:
                held.expires_at = entry["expires_at"]
        elif kind == "end":
            held = self._active.pop(entry["lease"], None)
            if held is not None:
                held.end = entry["at"]
                self._ended.setdefault(held.tenant, []).append(held)
                if self._windows is not None:
                    day, month = self._windows
                    self._sums.setdefault(held.tenant, _Sums()).add(held, held.end, day, month)
                if held.price and held.digest:
                    key = (held.digest, held.currency)
                    self._spent[key] = self._spent.get(key, Decimal(0)) + held.spend(held.end)

    def budget_spent(self, digest: str, currency: str, now: float) -> Decimal:
        """What every lease of one contract (by digest) has cost so far, in ``currency``."""
        with self._lock:
            total = self._spent.get((digest, currency), Decimal(0))
            for held in self._active.values():
                if held.digest == digest and held.currency == currency:
                    total += held.spend(now)
            return total

    def budget(self, contract: Contract, now: float) -> tuple[Decimal, Decimal, str] | None:
        """(spent, budget, currency) of ``contract``'s whole-run budget, ``None`` without one."""
        budget = contract.terms.budget
        if budget is None:
            return None
        limit, currency = amount(budget)
        digest = _contract_fields(contract)["digest"]
        return self.budget_spent(digest, currency, now), limit, currency

    def _roll(self, now: float) -> tuple[float, float]:
        """Sums for the windows ``now`` is in, rebuilt (and pruned) when a window turned."""
        last = self._windows
        if last is not None and last[0] <= now < last[0] + 86400:
            return last  # the same UTC day (epoch days are 86,400 s), so the same month too
        current = windows(now)
        if current != self._windows:
            day, month = current
            self._windows, self._sums = current, {}
            for tenant, ended in self._ended.items():
                kept = [h for h in ended if h.end is not None and h.end >= month]
                self._ended[tenant] = kept
                sums = self._sums[tenant] = _Sums()
                for held in kept:
                    sums.add(held, held.end or held.start, day, month)
        return current

    def usage(self, tenant: str, now: float) -> Usage:
        """What ``tenant`` holds now and has used (or is committed to use) this day and month."""
        with self._lock:
            return self._usage(tenant, now)

    def _usage(self, tenant: str, now: float) -> Usage:
        day, month = self._roll(now)
        sums = self._sums.get(tenant, _Sums())
        live = _Sums(
            hours_day=sums.hours_day,
            hours_month=sums.hours_month,
            spend_day=dict(sums.spend_day),
            spend_month=dict(sums.spend_month),
        )
        out = Usage()
        for ticket, (who, gpus, until) in list(self._pending.items()):
            if until < now:
                del self._pending[ticket]
            elif who == tenant:
                out.gpus += gpus
        for lease_id, held in list(self._active.items()):
            stop = self._stop(held, now)
            if held.expires_at < now and stop < month:
                del self._active[lease_id]  # a vanished holder's lease, from before this month
                continue
            if held.tenant != tenant:
                continue
            if held.expires_at > now:
                out.gpus += held.gpus
            live.add(held, stop, day, month)
        out.gpu_hours_day, out.gpu_hours_month = live.hours_day, live.hours_month
        out.spend_day, out.spend_month = live.spend_day, live.spend_month
        return out

    @staticmethod
    def _stop(held: _Held, now: float) -> float:
        """Until when an active lease counts: its planned end (or now), within its expiry."""
        stop = held.planned_end if held.planned_end is not None else now
        if held.expires_at < now:  # its holder vanished: it counted until it expired
            stop = min(stop, held.expires_at)
        return max(stop, held.start)


def _state_dir() -> Path:
    from ..backends.local.backend import default_state_dir

    return default_state_dir()


def record_path() -> Path:
    """The record in use: ``AICONTRACT_RECORD``, else ``record.jsonl`` in the state dir."""
    where = os.environ.get("AICONTRACT_RECORD")
    if where and where not in ("off", "0", "false"):
        return Path(where)
    return Record.in_dir(_state_dir()).path


def default_governance() -> Governance | None:
    """Governance from the environment: ``AICONTRACT_POLICY`` (or the system policy) and the
    record in the state dir (``AICONTRACT_RECORD`` names another file; ``off`` keeps none)."""
    path = find_policy()
    try:
        policy = load_policy(path) if path is not None else None
    except ContractError as exc:  # the policy's fault, not the contract's: say which file
        error = ConfigError(f"policy {path}: {exc} (fix it, or set AICONTRACT_POLICY)")
        error.file = str(path)
        raise error from None
    where = os.environ.get("AICONTRACT_RECORD")
    record = None if where in ("off", "0", "false") else Record.shared(record_path())
    if policy is None and record is None:
        return None
    return Governance(policy=policy, record=record)


@attrs.define
class Governance:
    """A policy to enforce and a record to keep, for one negotiator (either may be ``None``)."""

    policy: Policy | None = None
    record: Record | None = None
    clock: Clock = system_clock
    _index: UsageIndex | None = attrs.field(default=None, init=False, repr=False)
    _identities: dict[int, tuple[Backend, Identity]] = attrs.field(
        factory=dict, init=False, repr=False
    )
    _crossed: dict[str, set[int]] = attrs.field(factory=dict, init=False, repr=False)
    _round: tuple[Contract, tuple[Offer, ...], tuple[Rejection, ...]] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _last_base: tuple[Contract, Identity, str, tuple[Any, ...], dict[str, Any]] | None = (
        attrs.field(default=None, init=False, repr=False)
    )

    def __attrs_post_init__(self) -> None:
        if self.policy is not None and self.policy.counts_usage() and self.record is None:
            raise ConfigError(
                "the policy sets quotas but no record is kept to count usage;"
                " unset AICONTRACT_RECORD=off or give Governance(record=...)"
            )
        if self.record is not None:
            self._index = UsageIndex(self.record)

    def _counts(self, contract: Contract) -> bool:
        """True when committing ``contract`` needs usage from the record (quotas, a budget)."""
        if self._index is None:
            return False
        return contract.terms.budget is not None or (
            self.policy is not None and self.policy.counts_usage()
        )

    async def identity(self, backend: Backend) -> Identity:
        """Who ``backend`` acts as, when the policy maps identities to tenants.

        Asked once per backend object (two Kubernetes backends with different
        credentials share a name, not an identity); a backend that cannot say refuses
        the commit. Without identity rules nothing depends on it, and no backend is
        asked (no STS or API-server call per negotiator): the record names the OS
        user of the negotiating process, as it always has.
        """
        if self.policy is None or not self.policy.identities:
            return local_identity()
        known = self._identities.get(id(backend))
        if known is None or known[0] is not backend:
            known = self._identities[id(backend)] = (backend, await backend.identity())
        return known[1]

    def _base(self, contract: Contract, identity: Identity, backend: str) -> dict[str, Any]:
        """The fields every entry of one commit starts with (a fresh dict: callers add to it).

        Made once per contract, identity and backend in a row (a loop re-acquires one
        contract), and again when the contract's dicts were changed in place.
        """
        last = self._last_base
        parts = mutable_parts(contract)
        if (
            last is None
            or last[0] is not contract
            or last[1] is not identity
            or last[2] != backend
            or last[3] != parts
        ):
            fields = {**_contract_fields(contract), "identity": str(identity), "backend": backend}
            self._last_base = last = (contract, identity, backend, parts, fields)
        return dict(last[4])

    def quoted(
        self, contract: Contract, offers: tuple[Offer, ...], rejections: tuple[Rejection, ...]
    ) -> None:
        """Remember a round of quotes, to record with the commit or refusal that follows."""
        self._round = (contract, offers, rejections)

    def _round_fields(self, offer: Offer) -> dict[str, Any]:
        """The round's offers and rejections, and ``offer``'s own summary (made once)."""
        if self._round is None or self._round[0] is not offer.contract:
            return {"offer": _summary(offer)}
        _, offers, rejections = self._round
        summaries, mine = [], None
        for other in offers:
            summaries.append(_summary(other))
            if other is offer:
                mine = summaries[-1]
        return {
            "offers": summaries,
            "rejections": [str(r) for r in rejections],
            "offer": mine if mine is not None else _summary(offer),
        }

    def _append(self, kind: str, fields: dict[str, Any], *, locked: bool = False) -> None:
        if self.record is not None:
            at = self.clock.time()
            start, end = self.record.write(kind, at, fields, locked=locked)
            if self._index is not None:  # the usage counts it without reading it back
                self._index.wrote(kind, at, fields, start, end)

    def no_offer(self, contract: Contract, error: AIContractError) -> None:
        """Record a negotiation that ended without a lease, and why."""
        rejections = [str(r) for r in getattr(error, "rejections", ())]
        fields = {**_contract_fields(contract), "reason": str(error).splitlines()[0]}
        fields["rejections"] = rejections
        self._append("no-offer", fields)

    async def commit(
        self, offer: Offer, backend: Backend, inner: Callable[[], Awaitable[Lease]]
    ) -> Lease:
        """Judge ``offer``, record the decision, run ``inner`` (the commit) and record the grant."""
        contract = offer.contract
        identity = await self.identity(backend)
        base = self._base(contract, identity, offer.backend)
        if contract.alternatives:
            # Which choice is judged, refused or granted: the policy sees each on its own
            # (an offer for a barred choice is refused; the negotiator tries the next).
            base["alternative"] = Contract.choice_name(offer.grant.alternative)
        ticket: str | None = None
        if self._counts(contract):
            ticket = os.urandom(8).hex()  # as random as uuid4().hex[:16]
            self._admit(offer, identity, base, ticket)
        elif self.policy is not None:
            refusals = check(self.policy, identity, offer)
            if refusals:
                self._refuse(offer, base, refusals)
        admitted_at = self.clock.time()
        try:
            lease = await inner()
            if ticket is not None and self.clock.time() > admitted_at + admission_hold(contract):
                # Its admission stopped counting while the backend took its time: others
                # may have been let in meanwhile, so judge it again before it counts.
                await self._readmit(offer, identity, base, ticket, lease)
        except BaseException as exc:
            if self.record is not None and (ticket is not None or isinstance(exc, AIContractError)):
                self._append(
                    "commit-failed",
                    {
                        **base,
                        "ticket": ticket,
                        "offer": offer.summary(),
                        "reason": f"{type(exc).__name__}: {exc}"[:500],
                    },
                )
            raise
        try:
            self._granted(offer, lease, base, ticket)
        except BaseException:
            # The record is the proof of a grant: one it cannot take is an error, and the
            # lease committed meanwhile goes back rather than stay held by nobody.
            with anyio.CancelScope(shield=True):
                await lease.release()
            raise
        return lease

    def _refuse(
        self, offer: Offer, base: dict[str, Any], refusals: list[Refusal], *, locked: bool = False
    ) -> None:
        self._append(
            "refuse",
            {
                **base,
                **self._round_fields(offer),
                "jurisdiction": offer.jurisdiction,
                "refusals": [str(r) for r in refusals],
            },
            locked=locked,
        )
        raise PolicyViolation(refusals, offer.contract.name)

    def _admit(self, offer: Offer, identity: Identity, base: dict[str, Any], ticket: str) -> None:
        # Check and admit under the record's lock, so two processes cannot both take
        # the last of a quota; the admission counts as held until its grant or failure.
        assert self.record is not None
        assert self._index is not None
        record, index = self.record, self._index
        with record.locked():
            index.refresh()
            now = self.clock.time()
            refusals: list[Refusal] = []
            if self.policy is not None:
                usage = index.usage(offer.contract.tenant, now)
                refusals.extend(check(self.policy, identity, offer, usage))
            refusals.extend(self._budget_refusals(offer, base["digest"], now))
            if refusals:
                self._refuse(offer, base, refusals, locked=True)
            fields = {
                **base,
                "ticket": ticket,
                "gpus": offer.grant.total_gpus,
                "duration": term_seconds(offer),
                "price": str(offer.price) if offer.price is not None else None,
                "until": now + admission_hold(offer.contract),
            }
            start, end = record.write("admit", now, fields, locked=True)
            index.wrote("admit", now, fields, start, end)

    async def _readmit(
        self, offer: Offer, identity: Identity, base: dict[str, Any], ticket: str, lease: Lease
    ) -> None:
        """Admit a commit again that outlived its admission; release its lease if refused
        (or if the admission could not be made at all: a record that cannot be written)."""
        try:
            self._admit(offer, identity, base, ticket)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await lease.release()
            raise

    def _budget_refusals(self, offer: Offer, digest: str, now: float) -> list[Refusal]:
        """Refuse an offer that cannot run the contract's duration within what is left."""
        terms = offer.contract.terms
        if terms.budget is None or self._index is None:
            return []
        limit, currency = amount(terms.budget)
        spent = self._index.budget_spent(digest, currency, now)
        price = offer.price

        def refuse(message: str, used: str) -> list[Refusal]:
            return [
                Refusal(
                    rule="terms.budget",
                    tenant=offer.contract.tenant,
                    message=message,
                    used=used,
                    limit=terms.budget.strip() if terms.budget else None,
                )
            ]

        if price is None or (price.currency != currency and price.amount):
            return refuse(
                f"the offer is priced {price or 'unpriced'}; the budget is in {currency}",
                f"{spent:.2f} {currency}",
            )
        term = term_seconds(offer)  # a replacement: only what is left of the run
        hours = term / 3600 if term is not None else None
        if hours is None:
            if spent >= limit and price.amount:
                return refuse("the budget is spent", f"{spent:.2f} {currency}")
            return []
        cost = price.amount * Decimal(str(hours))
        if spent + cost > limit:
            left = max(Decimal(0), limit - spent)
            return refuse(
                f"{price} x {hours:g}h = {cost:.2f} {currency}, but only {left:.2f} {currency}"
                " of the budget is left",
                f"{spent:.2f} + {cost:.2f} {currency}",
            )
        return []

    def budget(self, lease: Lease) -> tuple[Decimal, Decimal, str] | None:
        """(spent, budget, currency) of the contract behind ``lease``, or ``None`` without one."""
        if lease.contract.terms.budget is None or self._index is None:
            return None
        self._index.refresh()
        return self._index.budget(lease.contract, self.clock.time())

    def _watch_budget(self, lease: Lease, crossed: set[int]) -> None:
        """At each renewal: note 50/80/100% of the budget; at 100% release if the terms say so."""
        status = self.budget(lease)
        if status is None:
            return
        spent, limit, currency = status
        share = int(spent * 100 / limit) if limit else 100
        for threshold in (50, 80, 100):
            if share >= threshold and threshold not in crossed:
                crossed.add(threshold)
                log.warning(
                    "lease %s: %d%% of the budget spent (%.2f of %s %s)",
                    lease.id,
                    threshold,
                    spent,
                    limit,
                    currency,
                )
                self._append(
                    "budget",
                    {
                        "lease": lease.id,
                        "tenant": lease.contract.tenant,
                        "spent": f"{spent:.2f} {currency}",
                        "budget": f"{limit} {currency}",
                        "threshold": threshold,
                    },
                )
        if share >= 100 and lease.contract.terms.on_budget == "release":
            reason = f"budget spent: {spent:.2f} of {limit} {currency}"
            lease.revoke(reason)
            # Raised out of renew(): the heartbeat treats it as a lost lease and releases it.
            raise LeaseLost(lease.id, reason)

    def _granted(
        self, offer: Offer, lease: Lease, base: dict[str, Any], ticket: str | None
    ) -> None:
        if self.record is None:
            return
        self._append(
            "grant",
            {
                **base,
                **self._round_fields(offer),
                "ticket": ticket,
                "lease": lease.id,
                "gpus": lease.grant.total_gpus,
                "grant": _describe(lease.grant),
                "guarantee": lease.guarantee,
                "region": lease.region,
                "jurisdiction": lease.jurisdiction,
                "price": str(offer.price) if offer.price is not None else None,
                "duration": term_seconds(offer),
                "expires_at": lease.expires_at,
            },
        )
        record = self.record
        tenant = offer.contract.tenant
        crossed = self._crossed.setdefault(base["digest"], set())  # one budget per contract

        def follow(lease: Lease, old: LeaseState, new: LeaseState) -> None:
            try:
                if old == LeaseState.RENEWING and new == LeaseState.ACTIVE:
                    self._append(
                        "renew",
                        {"lease": lease.id, "tenant": tenant, "expires_at": lease.expires_at},
                    )
                    self._watch_budget(lease, crossed)
                elif new.is_final:
                    self._append(
                        "end",
                        {
                            "lease": lease.id,
                            "tenant": tenant,
                            "state": new,  # encoded as its value, without the enum lookup
                            "reason": lease.reason,
                            "replaced_by": lease.replaced_by.id if lease.replaced_by else None,
                        },
                    )
            except LeaseLost:
                raise  # the budget ran out: renew() must fail so the heartbeat releases
            except AIContractError:  # a record that cannot be written must not break the lease
                log.exception("cannot record lease %s in %s", lease.id, record.path)

        lease.on_state_change(follow)

        # The listeners below name the lease by its id, never hold it: a lease that held a
        # listener holding it would be a reference cycle, left for the garbage collector
        # (a collection every few cycles of a loop) instead of freed when released.
        lease_id = lease.id

        def violated(violation: Violation) -> None:
            if violation.lease_id != lease_id:  # a successor's: its own listener records it
                return
            self._append(
                "violation",
                {
                    "lease": lease_id,
                    "tenant": tenant,
                    "severity": violation.severity,
                    "reason": violation.describe(),
                },
            )

        def replaced(old: Lease, new: Lease) -> None:
            if old.id == lease_id:
                self._append(
                    "renegotiation", {"lease": old.id, "tenant": tenant, "replaced_by": new.id}
                )

        lease.on_violation(violated)
        lease.on_replaced(replaced)
