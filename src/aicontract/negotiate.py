"""Negotiation: ask every backend, keep what the contract allows, commit the best.

The negotiator is where the guarantees are enforced — not the backends. An
offer outside the contract's placement (guarantee 2), with a granted value
outside a requirement's range (guarantee 3) or weaker than the contract's
minimum guarantee level (guarantee 6) is dropped here, whatever a backend
claimed, and the drop is reported as a :class:`~aicontract.offer.Rejection`.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.abc
import attrs
import msgspec
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from .backends.base import Backend
from .backends.registry import available_backends, create_backend
from .clock import Clock, system_clock
from .contract import GUARANTEE_ORDER, Contract
from .errors import (
    AIContractError,
    AuthenticationError,
    BackendError,
    BackendNotFound,
    CapacityUnavailable,
    ConfigError,
    ContractError,
    NoOffer,
    PolicyViolation,
    QuotaExceeded,
    TransientBackendError,
)
from .governance.enforce import Governance, default_governance
from .leases import Lease, LeaseState
from .monitor.objectives import target_value
from .monitor.record import PerformanceRecord, performance_record, placement_of
from .observation import format_value
from .offer import Offer, Quote, Rejection, check_offer

__all__ = [
    "Negotiation",
    "Negotiator",
    "acquire",
    "check_offer",
    "close_backends",
    "default_backends",
    "quote",
]

log = logging.getLogger("aicontract.negotiate")


def rank_key(offer: Offer, contract: Contract) -> tuple[Any, ...]:
    """Sort key for acceptable offers: the contract's preferences, then model order."""
    key: list[Any] = []
    terms = contract.terms
    ranks = contract.preferences.rank
    alternative = offer.grant.alternative
    choice = -1 if alternative is None else alternative  # resources, then alternatives in order
    if contract.alternatives and "alternative" not in ranks:
        key.append(choice)  # unless the preferences place it, an earlier choice wins outright
    for name in ranks:
        if name == "alternative":
            key.append(choice)
        elif name == "guarantee":
            key.append(-GUARANTEE_ORDER[offer.guarantee])
        elif name == "cost":
            # Amounts in different currencies do not compare: offers priced in the
            # contract's currency come first, by amount, then other currencies, then
            # offers with no price (unknown is not free).
            currency = terms.currency
            price = offer.price
            if price is None:
                key.append((2, 0))
            else:
                key.append((int(price.currency != currency), price.amount))
        elif name == "start_time":
            key.append(offer.start_in)
        elif name == "locality":
            regions = contract.preferences.regions
            key.append(regions.index(offer.region) if offer.region in regions else len(regions))
    gpus = (contract.resources if alternative is None else contract.resources_for(alternative)).gpus
    if gpus is not None and gpus.models and offer.grant.gpu_model in gpus.models:
        key.append(gpus.models.index(offer.grant.gpu_model))
    key.append(-offer.grant.gpus)
    return tuple(key)


@attrs.frozen
class Negotiation:
    """The outcome of one round of quotes: ranked acceptable offers and the rest."""

    offers: tuple[Offer, ...]
    rejections: tuple[Rejection, ...]
    counter_offers: tuple[Offer, ...]


def default_backends(names: Sequence[str] = ()) -> list[Backend]:
    """Build the backends named in ``names``; when empty, those ``AICONTRACT_BACKENDS``
    lists (comma-separated), else ``local``.

    The one place backends are made from the environment (the API and the CLI both
    come here). The caller owns what it gets: close it (``aclose`` or ``async with``).
    """
    if not names:
        names = os.environ.get("AICONTRACT_BACKENDS", "local").split(",")
    wanted = [n.strip() for n in names if n.strip()]
    if not wanted:
        raise ConfigError(
            "no backend named: AICONTRACT_BACKENDS (or --backend) must list at least one "
            f"(registered: {', '.join(available_backends())})"
        )
    known = available_backends()
    unknown = [n for n in wanted if n not in known]
    if unknown:  # before building any, so a typo leaves nothing half-made behind
        raise BackendNotFound(unknown[0], known)
    return [create_backend(n) for n in wanted]


async def close_backends(backends: Sequence[Backend], *, keep: Backend | None = None) -> None:
    """Close every backend but ``keep``, shielded from cancellation; a failure is logged."""
    with anyio.CancelScope(shield=True):
        for backend in backends:
            if backend is keep:
                continue
            try:
                await backend.aclose()
            except Exception:
                log.exception("backend %s failed to close", backend.name)


@attrs.define
class Negotiator:
    """Fans out quotes, filters and ranks offers, commits the best, fails over.

    ``quote_timeout`` bounds each backend's answer; ``commit_attempts`` bounds
    retries of transient commit failures (jittered exponential backoff); the
    contract's ``terms.start_by`` bounds how long :meth:`acquire` waits for
    capacity, re-quoting with backoff.

    ``hedge`` (seconds, default off) stops waiting for slow backends once that
    long has passed *and* at least one acceptable offer is in hand: a quote
    then takes about ``hedge`` instead of as long as the slowest backend, at
    the price of never seeing what the slow ones would have offered (they are
    listed as rejections: "not waited for"). A contract's ``preferences.hedge``
    wins over this one; ``hedge`` is the default for contracts that do not say.

    With a ``record`` (a :class:`~aicontract.monitor.record.PerformanceRecord`;
    :func:`acquire` uses the process's), offers carry the value their placement
    is predicted to deliver on each objective (``offer.details["predicted.<sli>"]``);
    an offer predicted to break an objective is dropped (a rejection with the
    evidence); the rest rank by predicted margin, a placement that violated an
    objective within the record's horizon last.
    """

    backends: Sequence[Backend] = attrs.field(factory=default_backends)
    clock: Clock = system_clock
    quote_timeout: float = 10.0
    commit_attempts: int = 4
    retry_wait_max: float = 2.0
    requote_wait_max: float = 5.0
    hedge: float | None = None
    record: PerformanceRecord | None = None
    governance: Governance | None = attrs.field(factory=default_governance)
    """Policy enforced before every commit, and the record kept (``None``: neither)."""

    async def quote(self, contract: Contract, *, start_within: float | None = None) -> Negotiation:
        """One round: every backend's offers, filtered by the contract and ranked.

        A contract with ``alternatives`` is quoted once per choice, all at once:
        each offer carries the whole contract and says in ``grant.alternative``
        which choice it serves; rejections name the choice they were found for.
        """
        if contract.alternatives:
            accepted, rejections, counter = await self._gather_choices(contract, start_within)
        else:
            accepted, rejections, counter = await self._gather(contract, start_within)
        now = self.clock.time()
        if self.record is not None and contract.objectives:
            result = self._rank_by_record(self.record, accepted, rejections, counter, contract, now)
        else:
            if len(accepted) > 1:  # sort() would key even a lone offer
                accepted.sort(key=lambda o: rank_key(o, contract))
            result = Negotiation(tuple(accepted), tuple(rejections), tuple(counter))
        if self.governance is not None:
            self.governance.quoted(contract, result.offers, result.rejections)
        return result

    async def _gather_choices(
        self, contract: Contract, start_within: float | None
    ) -> tuple[list[Offer], list[Rejection], list[Offer]]:
        """:meth:`_gather` for each of the contract's choices at once, merged.

        Backends (and the checks) see one choice at a time, as a contract narrowed
        to it; the offers come back carrying the whole contract and their choice.
        """
        choices: list[int | None] = [None, *range(len(contract.alternatives))]
        found: dict[int | None, tuple[list[Offer], list[Rejection], list[Offer]]] = {}

        async def gather(alternative: int | None) -> None:
            found[alternative] = await self._gather(contract.narrow(alternative), start_within)

        async with anyio.create_task_group() as tg:
            for alternative in choices:
                tg.start_soon(gather, alternative, name=f"aicontract-quote-choice-{alternative}")
        accepted: list[Offer] = []
        counter: list[Offer] = []
        per_choice: list[tuple[int | None, list[Rejection]]] = []
        for alternative in choices:
            offers, rejections, counters = found[alternative]
            for offer in offers:
                grant = msgspec.structs.replace(offer.grant, alternative=alternative)
                accepted.append(msgspec.structs.replace(offer, contract=contract, grant=grant))
            for offer in counters:
                counter.append(_counter_for_choice(offer, contract, alternative))
            per_choice.append((alternative, rejections))
        return accepted, _label_rejections(per_choice), counter

    async def _gather(
        self, contract: Contract, start_within: float | None
    ) -> tuple[list[Offer], list[Rejection], list[Offer]]:
        """Ask every backend; the offers that satisfy ``contract``, why the rest fell, and
        the counter-offers (unranked)."""
        quotes: list[Quote] = []
        rejections: list[Rejection] = []
        # The contract's own hedge wins: its author knows whether a fast answer is worth
        # more than the best one. The negotiator's is the default for contracts silent on it.
        wanted = contract.preferences.hedge
        hedge_after = wanted.seconds if wanted is not None else self.hedge

        async def ask(backend: Backend) -> None:
            # A backend that can answer without waiting (the local one, uncontended) is
            # asked so first: nothing could cut that answer short, so it needs no timer.
            try:
                answer = backend.quote_now(contract)
            except Exception as exc:
                rejections.append(_quote_failed(backend, exc))
                return
            if answer is not None:
                quotes.append(answer)
                return
            with anyio.move_on_after(self.quote_timeout) as scope:
                try:
                    quotes.append(await backend.quote(contract))
                except Exception as exc:
                    rejections.append(_quote_failed(backend, exc))
            if scope.cancelled_caught:
                within = f"an answer within {self.quote_timeout:g}s"
                rejections.append(Rejection.of(backend.name, "quote", within, "no answer"))

        if len(self.backends) == 1:  # nothing to overlap; skip the task group's cost
            await ask(self.backends[0])
        else:
            answered: set[str] = set()
            hedging = anyio.CancelScope()

            async def ask_and_count(backend: Backend) -> None:
                await ask(backend)  # a backend cut off by the hedge never gets past this
                answered.add(backend.name)
                if len(answered) == len(self.backends):
                    hedging.cancel()  # everyone answered: nothing left to hedge

            async def hedge(after: float, tg: anyio.abc.TaskGroup) -> None:
                with hedging:
                    await self.clock.sleep(after)
                    while not self._any_acceptable(quotes, contract, start_within):
                        await self.clock.sleep(min(0.01, after))
                    tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                for backend in self.backends:
                    tg.start_soon(ask_and_count, backend, name=f"aicontract-quote-{backend.name}")
                if hedge_after is not None:
                    tg.start_soon(hedge, hedge_after, tg, name="aicontract-quote-hedge")
            for backend in self.backends:
                if backend.name not in answered:
                    within = f"an answer within the hedge ({hedge_after:g}s)"
                    waited = "not waited for: other offers were in hand"
                    rejections.append(Rejection.of(backend.name, "quote", within, waited))

        now = self.clock.time()
        accepted: list[Offer] = []
        counter: list[Offer] = []
        for quote in quotes:
            rejections.extend(quote.rejections)
            counter.extend(quote.counter_offers)
            for offer in quote.offers:
                problems = check_offer(offer, contract, now, start_within=start_within)
                if problems:
                    log.debug("dropping offer %s: %s", offer.id, "; ".join(map(str, problems)))
                    rejections.extend(problems)
                else:
                    accepted.append(offer)
        return accepted, rejections, counter

    @staticmethod
    def _rank_by_record(
        record: PerformanceRecord,
        accepted: list[Offer],
        rejections: list[Rejection],
        counter: list[Offer],
        contract: Contract,
        now: float,
    ) -> Negotiation:
        """Predict each offer's objectives from the record: drop predicted breaches, rank."""
        keyed: list[tuple[tuple[Any, ...], Offer]] = []
        for offer in accepted:
            placement = placement_of(offer.backend, offer.region, offer.grant, contract)
            predicted: dict[str, str] = {}
            margin = 0.0
            breach: Rejection | None = None
            for objective in contract.objectives:
                value = record.predict(placement, objective, now)
                if value is None:
                    continue  # no evidence: no prediction, no penalty
                target = target_value(objective)
                shown = format_value(objective, value)
                predicted[f"predicted.{objective.sli}"] = shown
                lower_is_better = objective.op in ("<=", "<")
                gap = (target - value) if lower_is_better else (value - target)
                if gap < 0 or (gap == 0 and objective.op in ("<", ">")):
                    evidence = record.evidence(placement, objective.sli)
                    count = evidence.count if evidence is not None else 0
                    breach = Rejection(
                        backend=offer.backend,
                        requirement=f"objectives.{objective.sli}",
                        wanted=f"{objective.op} {objective.target}",
                        available=f"predicted {shown} at {placement} ({count} measurements)",
                    )
                    break
                margin += gap / target if target else gap
            if breach is not None:
                log.debug("dropping offer %s: %s", offer.id, breach)
                rejections.append(breach)
                continue
            if predicted:
                offer = msgspec.structs.replace(offer, details={**offer.details, **predicted})
            marked = record.recently_violated(placement, contract, now)
            keyed.append(((marked, *rank_key(offer, contract), -margin), offer))
        keyed.sort(key=lambda pair: pair[0])
        offers = tuple(offer for _, offer in keyed)
        return Negotiation(offers, tuple(rejections), tuple(counter))

    def _any_acceptable(
        self, quotes: list[Quote], contract: Contract, start_within: float | None
    ) -> bool:
        now = self.clock.time()
        return any(
            not check_offer(offer, contract, now, start_within=start_within)
            for quote in quotes
            for offer in quote.offers
        )

    async def commit(self, offer: Offer, idempotency_key: str | None = None) -> Lease:
        """Commit one offer, retrying transient failures with the same idempotency key.

        An offer for a contract with alternatives goes to its backend narrowed to the
        choice it serves; the lease holds the whole contract (``lease.contract``) and
        names the choice (``lease.grant.alternative``).
        """
        # Guarantee 3 holds for offers committed directly (a counter-offer a caller
        # accepted) as much as for negotiated ones: the offer must satisfy its contract.
        self._check_before_commit(offer, checked=False)
        return await self._commit_checked(offer, idempotency_key)

    def _check_before_commit(self, offer: Offer, *, checked: bool) -> None:
        """Raise :class:`~aicontract.NoOffer` when ``offer`` breaks its contract now.

        ``checked``: the offer passed :func:`check_offer` in this negotiation's own round,
        which judged everything but time by the same rules (a start within what was left,
        stricter than the contract's whole ``start_by``): only its expiry can have changed.
        """
        now = self.clock.time()
        if checked and offer.expires_at > now:
            return
        problems = check_offer(offer, offer.contract, now)
        if problems:
            raise NoOffer(offer.contract.name, problems, reason="the offer breaks its contract")

    async def _commit_checked(self, offer: Offer, idempotency_key: str | None = None) -> Lease:
        """:meth:`commit`, once the offer is known to satisfy its contract."""
        backend = self._backend(offer.backend)
        key = idempotency_key or os.urandom(10).hex()  # as random as uuid4().hex[:20]
        if self.governance is not None:  # policy before any commit, then the record
            return await self.governance.commit(
                offer, backend, lambda: self._commit_choice(offer, key)
            )
        return await self._commit_choice(offer, key)

    async def _commit_choice(self, offer: Offer, key: str) -> Lease:
        """:meth:`_commit`, the backend seeing only the choice the offer serves."""
        whole = offer.contract
        if not whole.alternatives:
            return await self._commit(offer, key)
        alternative = offer.grant.alternative
        narrowed = msgspec.structs.replace(offer, contract=whole.narrow(alternative))
        lease = await self._commit(narrowed, key)
        # The backend keeps the choice it was asked for; the holder's lease keeps the
        # whole contract, so that a renegotiation quotes every choice again.
        lease.contract = whole
        if lease.grant.alternative != alternative:
            lease.grant = msgspec.structs.replace(lease.grant, alternative=alternative)
        return lease

    async def _commit(self, offer: Offer, key: str) -> Lease:
        backend = self._backend(offer.backend)
        try:  # the common case pays nothing for the retry machinery
            return await backend.commit(offer, key)
        except TransientBackendError as exc:
            if self.commit_attempts <= 1:
                raise
            log.info("commit of %s failed transiently (%s); retrying", offer.id, exc)
            await self.clock.sleep(random.uniform(0, 0.05))
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.commit_attempts - 1),
            wait=wait_random_exponential(multiplier=0.05, max=self.retry_wait_max),
            retry=retry_if_exception_type(TransientBackendError),
            sleep=self.clock.sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    lease = await backend.commit(offer, key)
        except TransientBackendError:
            # The outcome is unknown: the last attempt may have worked and only its reply
            # been lost. Undo it before anyone moves on to another offer (guarantee 5).
            with anyio.CancelScope(shield=True):
                try:
                    await backend.abandon(offer, key)
                except Exception:
                    log.exception("backend %s could not abandon commit %s", backend.name, key)
            raise
        return lease

    async def acquire(self, contract: Contract) -> Lease:
        """Negotiate and commit: the best acceptable offer becomes an active lease.

        Waits for capacity up to ``terms.start_by`` (no wait when unset),
        re-quoting with jittered backoff; raises :class:`~aicontract.NoOffer`
        listing, per backend, what was missing.
        """
        start_by = contract.terms.start_by
        deadline = self.clock.monotonic() + (start_by.seconds if start_by else 0.0)
        # requote_wait_max bounds every wait, the first one too.
        backoff = min(0.05, self.requote_wait_max)
        while True:
            # Time spent waiting comes off what a late-starting offer may take.
            left = deadline - self.clock.monotonic() if start_by else None
            round_ = await self.quote(contract, start_within=left)
            failures: list[Rejection] = []
            refused: PolicyViolation | None = None
            for offer in round_.offers:
                try:
                    self._check_before_commit(offer, checked=True)
                    lease = await self._commit_checked(offer)
                except PolicyViolation as exc:  # another offer may be allowed; counts for nothing
                    refused = refused or exc
                    continue
                except (CapacityUnavailable, TransientBackendError) as exc:
                    failures.append(self._failure(offer, "capacity at commit", exc))
                    continue
                except QuotaExceeded as exc:  # a quota's refusal, not the credentials'
                    failures.append(self._failure(offer, "quota", exc))
                    continue
                except AuthenticationError as exc:
                    failures.append(self._failure(offer, "account", exc))
                    continue
                log.info("contract %s: leased %s", contract.name, lease)
                return lease
            if refused is not None:
                raise refused
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                error = NoOffer(
                    contract.name,
                    _dedupe([*round_.rejections, *failures]),
                    round_.counter_offers,
                    reason="start_by deadline passed" if start_by else None,
                )
                if self.governance is not None:
                    try:
                        self.governance.no_offer(contract, error)
                    except AIContractError as unrecorded:
                        # The refusal is the answer; a record that cannot take it is noted
                        # beside it, never in its place.
                        raise error from unrecorded
                raise error
            wait = min(remaining, random.uniform(backoff / 2, backoff))
            log.debug("contract %s: no capacity yet; re-quoting in %.2fs", contract.name, wait)
            await self.clock.sleep(wait)
            backoff = min(self.requote_wait_max, backoff * 2)

    def _backend(self, name: str) -> Backend:
        for backend in self.backends:
            if backend.name == name:
                return backend
        raise CapacityUnavailable(name, "the offer's backend is not part of this negotiation")

    @staticmethod
    def _failure(offer: Offer, what: str, exc: BackendError) -> Rejection:
        return Rejection(
            backend=offer.backend, requirement=what, wanted=offer.summary(), available=str(exc)
        )

    async def aclose(self) -> None:
        """Close every backend."""
        for backend in self.backends:
            await backend.aclose()


def _counter_for_choice(offer: Offer, contract: Contract, alternative: int | None) -> Offer:
    """A backend's counter-offer for one choice, carrying the whole contract around it.

    Committing it then leases the relaxed choice with the other choices intact, so a
    renegotiation still quotes them all.
    """
    grant = msgspec.structs.replace(offer.grant, alternative=alternative)
    try:
        whole = contract.widen(offer.contract, alternative)
    except ContractError:  # relaxed beyond what a contract with alternatives allows
        return offer
    return msgspec.structs.replace(offer, contract=whole, grant=grant)


def _label_rejections(
    per_choice: Sequence[tuple[int | None, Sequence[Rejection]]],
) -> list[Rejection]:
    """Each choice's rejections, named in the whole contract.

    A requirement on resources names its choice by path (``alternatives[1].gpus.count``).
    Any other (placement, terms, the quote itself) is listed once; unless every choice
    met it, the choices that did follow it: ``terms.max_price (for alternatives[0])``.
    """
    found: dict[Rejection, list[str] | None] = {}
    for alternative, rejections in per_choice:
        for rejection in rejections:
            requirement = rejection.requirement
            if requirement == "resources" or requirement.startswith("resources."):
                path = Contract.requirement_path(requirement, alternative)
                found.setdefault(msgspec.structs.replace(rejection, requirement=path), None)
                continue
            names = found.setdefault(rejection, [])
            name = Contract.choice_name(alternative)
            if names is not None and name not in names:
                names.append(name)
    out = []
    for rejection, names in found.items():
        if names is not None and len(names) < len(per_choice):
            requirement = f"{rejection.requirement} (for {', '.join(names)})"
            rejection = msgspec.structs.replace(rejection, requirement=requirement)
        out.append(rejection)
    return out


def _quote_failed(backend: Backend, exc: Exception) -> Rejection:
    """Why a backend's quote fell through: its error (an unexpected one by type only)."""
    if not isinstance(exc, AIContractError):
        # A broken backend (a plugin's bug) must not sink the others' offers.
        log.error("backend %s failed to quote", backend.name, exc_info=exc)
    return Rejection(
        backend=backend.name,
        requirement="quote",
        wanted="an answer",
        # An unexpected error's text may hold anything (a URL with a token): the
        # rejection names its type; the log has the rest.
        available=str(exc)
        if isinstance(exc, AIContractError)
        else f"{type(exc).__name__} (details in the log)",
    )


def _dedupe(rejections: Sequence[Rejection]) -> list[Rejection]:
    seen: set[Rejection] = set()
    out = []
    for r in rejections:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


async def acquire(
    contract: Contract,
    *,
    backends: Sequence[Backend] | None = None,
    negotiator: Negotiator | None = None,
) -> Lease:
    """Negotiate ``contract`` and return an active :class:`~aicontract.leases.Lease`.

    Uses ``negotiator`` if given, else one over ``backends`` (default: the
    ``AICONTRACT_BACKENDS`` list, else ``local``). Use the lease as
    ``async with`` to keep it renewed (and watched) while you work and
    released after — with every lease that replaced it.

    A contract with objectives (or a violation policy other than ``notify``)
    is watched by the process's monitor from here on: ``lease.report()``
    reaches it, and its policy applies while the lease is held.

    The backends this call builds from the environment are its to close: at once
    when no lease comes of it, else when the lease is released — or, when a
    renegotiation replaced it, when the last lease of the chain is (a renegotiation
    may need them). Backends you pass (or a ``negotiator``'s) stay yours.
    """
    owned: list[Backend] = []
    if negotiator is None:
        if backends is None:
            backends = owned = default_backends()
        # Ours: it learns from what the monitors saw (a negotiator you pass keeps its own).
        negotiator = Negotiator(backends, record=performance_record())
    try:
        lease = await negotiator.acquire(contract)
    except BaseException:
        await close_backends(owned)
        raise
    if owned:
        _close_with_chain(lease, owned)
    from .monitor.monitor import watch_by_default  # the monitor sits above negotiation

    watch_by_default(lease, negotiator)
    return lease


def _close_with_chain(lease: Lease, backends: Sequence[Backend]) -> None:
    """Close ``backends`` once ``lease``, and every lease that replaced it, is released."""

    async def on_released() -> None:
        successor = lease.current
        if successor is not lease and not successor.state.is_final:
            _close_with_chain(successor, backends)  # the chain lives on: wait for its end
        elif lease.state != LeaseState.RELEASED and lease.watched and not lease.released_by_holder:
            # Broken (revoked, expired), not let go: its monitor may still replace it with
            # these very backends. Close when the holder lets go of the chain.
            lease.on_released(on_released)
        else:
            await close_backends(backends)

    lease.on_released(on_released)


async def quote(contract: Contract, *, backends: Sequence[Backend] | None = None) -> Negotiation:
    """One round of quotes for ``contract``: ranked acceptable offers, and why the rest failed.

    Backends built from the environment (``backends`` not given) are closed before it returns.
    """
    if backends is not None:
        return await Negotiator(backends).quote(contract)
    owned = default_backends()
    try:
        return await Negotiator(owned).quote(contract)
    finally:
        await close_backends(owned)
