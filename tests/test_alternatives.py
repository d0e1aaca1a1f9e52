"""Ordered fallbacks in one contract (``alternatives``): validation, negotiation, ranking.

The backend here is a :class:`fakes.FakeBackend` that has a fixed stock (GPUs per
model, CPUs) and a price per GPU model, and answers each contract it is asked for
from that stock, as a real backend would: so which choice wins is decided by the
negotiator, not by what the test told the backend to offer. The local backend,
governance and the CLI are in ``test_alternatives_local.py``.
"""

from __future__ import annotations

from typing import Any

import attrs
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicontract import (
    GPU,
    Contract,
    ContractError,
    Grant,
    Money,
    Negotiator,
    NoOffer,
    Quote,
    Rejection,
    Resources,
    VirtualClock,
    dumps,
    json_schema,
    loads,
)
from aicontract.contract import GUARANTEE_ORDER
from aicontract.negotiate import rank_key
from aicontract.offer import check_offer
from fakes import FakeBackend, drive, make_offer

pytestmark = [pytest.mark.anyio, pytest.mark.anyio_backends("asyncio", "trio")]

H100 = Resources(gpus=GPU(count=1, models=["H100"]))
TWO_A100 = Resources(gpus=GPU(count=2, models=["A100"]))
EIGHT_CPUS = Resources(cpus=8)
FALLBACK = Contract(name="fallback", resources=H100, alternatives=[TWO_A100, EIGHT_CPUS])
PRICES = {"H100": Money.per_hour("4"), "A100": Money.per_hour("3"), None: Money.per_hour("0.5")}


@attrs.define(eq=False, kw_only=True)
class Stock(FakeBackend):
    """A fake backend with ``gpus`` free per model and ``cpus`` free, priced by model."""

    gpus: dict[str, int] = attrs.field(factory=dict)
    cpus: int = 0
    prices: dict[str | None, Money] = attrs.field(factory=lambda: dict(PRICES))
    asked: list[Contract] = attrs.field(factory=list)

    async def quote(self, contract: Contract) -> Quote:
        self.asked.append(contract)
        res, now = contract.resources, self.clock.time()
        reasons: list[Rejection] = []

        def lack(requirement: str, wanted: object, available: object) -> None:
            reasons.append(
                Rejection(
                    backend=self.name,
                    requirement=requirement,
                    wanted=str(wanted),
                    available=str(available),
                )
            )

        model = None
        if res.gpus is not None:
            fits = [m for m in res.gpus.models if self.gpus.get(m, 0) >= (res.gpus.count.min or 1)]
            if not fits:
                lack("resources.gpus.count", res.gpus.count, f"{self.gpus or 'no GPUs'}")
            else:
                model = fits[0]
        if res.cpus is not None and (res.cpus.min or 0) > self.cpus:
            lack("resources.cpus", res.cpus, f"{self.cpus} free")
        if reasons:
            return Quote(rejections=tuple(reasons))
        return Quote(
            offers=(
                make_offer(self.name, contract, now, gpu_model=model, price=self.prices[model]),
            )
        )

    async def commit(self, offer: Any, idempotency_key: str) -> Any:
        # What a backend is given to commit is the choice it quoted, never the whole list.
        assert not offer.contract.alternatives
        return await super().commit(offer, idempotency_key)


def _negotiator(clock: VirtualClock, *backends: FakeBackend) -> Negotiator:
    return Negotiator(list(backends), clock=clock, governance=None)


# -- validation: every choice is checked like resources, errors name the path ------------


@pytest.mark.parametrize(
    ("document", "path", "text"),
    [
        (
            "resources: {cpus: 4}\nalternatives: [{cpus: 2}, {gpus: {count: 0}}]",
            "$.alternatives[1].gpus.count",
            "allows zero GPUs",
        ),
        (
            "resources: {cpus: 4}\nalternatives: [{cpus: 2}, {cpsu: 2}]",
            "$.alternatives[1]",
            "did you mean 'cpus'",
        ),
        (
            "resources: {cpus: 4}\nalternatives: [{memory: 512}]",
            "$.alternatives[0].memory",
            "a size needs a unit",
        ),
        (
            "resources: {cpus: 4}\nalternatives: [{cpus: 8..2}]",
            "$.alternatives[0].cpus",
            "inverted range",
        ),
        (
            "resources: {cpus: 4}\nalternatives: [{cpus: 0}]",
            "$.alternatives[0].cpus",
            "allows zero CPUs",
        ),
        (
            "resources: {cpus: 4}\nalternatives: [{gpus: {models: [H100, H100]}}]",
            "$.alternatives[0].gpus.models",
            "lists a model twice",
        ),
        (
            "resources: {cpus: 4}\nalternatives: {cpus: 2}",
            "$.alternatives",
            "expected `array`",
        ),
        ("alternatives: [{cpus: 2}]", "$.alternatives", "resources, which asks for nothing"),
        (
            "resources: {cpus: 4}\nalternatives: [" + ", ".join(["{cpus: 2}"] * 9) + "]",
            "$.alternatives",
            "too many",
        ),
    ],
)
def test_a_bad_alternative_is_refused_with_its_path(document: str, path: str, text: str) -> None:
    with pytest.raises(ContractError) as caught:
        loads(document, "yaml")
    assert caught.value.path == path
    assert text in str(caught.value)


def test_code_is_checked_like_files() -> None:
    with pytest.raises(ContractError) as caught:
        Contract(cpus=4, alternatives=[{"cpus": 2}, {"gpus": {"count": "0"}}])
    assert caught.value.path == "$.alternatives[1].gpus.count"
    with pytest.raises(ContractError) as caught:
        Contract(alternatives=[EIGHT_CPUS])
    assert caught.value.path == "$.alternatives"


@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
def test_alternatives_round_trip_in_every_format(fmt: str) -> None:
    text = dumps(FALLBACK, fmt)  # type: ignore[arg-type]
    assert loads(text, fmt) == FALLBACK  # type: ignore[arg-type]
    assert dumps(loads(text, fmt), fmt) == text  # type: ignore[arg-type]


def test_schema_describes_alternatives() -> None:
    schema = json_schema()
    field = schema["$defs"]["Contract"]["properties"]["alternatives"]
    assert field["items"] == {"$ref": "#/$defs/Resources"}
    assert field["maxItems"] == 8
    rank = schema["$defs"]["Preferences"]["properties"]["rank"]["items"]["enum"]
    assert "alternative" in rank


def test_narrow_and_widen_are_inverse() -> None:
    for alternative in (None, 0, 1):
        narrowed = FALLBACK.narrow(alternative)
        assert narrowed.alternatives == ()
        assert narrowed.resources == FALLBACK.resources_for(alternative)
        assert FALLBACK.widen(narrowed, alternative) == FALLBACK
    with pytest.raises(ContractError) as caught:
        FALLBACK.narrow(2)
    assert caught.value.path == "$.alternatives"
    assert Contract(gpus=1).narrow(None) == Contract(gpus=1)
    assert FALLBACK.choices == (H100, TWO_A100, EIGHT_CPUS)


# -- negotiation ---------------------------------------------------------------------------


async def test_the_first_choice_wins_when_it_is_available(clock: VirtualClock) -> None:
    stock = Stock(clock=clock, gpus={"H100": 1, "A100": 4}, cpus=64)
    negotiator = _negotiator(clock, stock)
    round_ = await negotiator.quote(FALLBACK)
    # Every choice was quoted (narrowed: the backend never saw the list) and is offered,
    # the first choice ranked first although it is the dearest.
    assert {c.resources for c in stock.asked} == set(FALLBACK.choices)
    assert [o.grant.alternative for o in round_.offers] == [None, 0, 1]
    assert all(o.contract is FALLBACK for o in round_.offers)
    lease = await negotiator.acquire(FALLBACK)
    assert (lease.grant.gpu_model, lease.grant.alternative) == ("H100", None)
    assert lease.contract == FALLBACK


async def test_a_later_choice_is_granted_when_the_earlier_are_missing(
    clock: VirtualClock,
) -> None:
    stock = Stock(clock=clock, gpus={"H100": 0, "A100": 1}, cpus=8)  # one A100: two wanted
    lease = await _negotiator(clock, stock).acquire(FALLBACK)
    assert lease.grant.alternative == 1
    assert (lease.grant.gpus, lease.grant.cpus) == (0, 8)
    # The lease holds the whole contract (a renegotiation quotes every choice again);
    # the backend was asked to commit the choice alone.
    assert lease.contract == FALLBACK
    assert stock.leases[lease.id] is lease
    assert "(alternatives[1])" in lease.grant.describe()


async def test_rank_alternative_after_cost_lets_a_cheaper_later_choice_win(
    clock: VirtualClock,
) -> None:
    stock = Stock(clock=clock, gpus={"H100": 1, "A100": 2}, cpus=8)
    by_order = await _negotiator(clock, stock).acquire(FALLBACK)
    assert by_order.grant.alternative is None  # default: the first choice, at 4 USD/h
    cheap_first = FALLBACK.with_(preferences={"rank": ["cost", "alternative"]})
    cheapest = await _negotiator(clock, stock).acquire(cheap_first)
    assert (cheapest.grant.alternative, cheapest.grant.cpus) == (1, 8)  # 0.5 USD/h
    # And alternative named first ranks the same as leaving it out.
    explicit = FALLBACK.with_(preferences={"rank": ["alternative", "cost"]})
    offers = (await _negotiator(clock, stock).quote(explicit)).offers
    assert [o.grant.alternative for o in offers] == [None, 0, 1]


async def test_rejections_name_the_choice_they_belong_to(clock: VirtualClock) -> None:
    stock = Stock(clock=clock, gpus={"A100": 1}, cpus=4)
    with pytest.raises(NoOffer) as caught:
        await _negotiator(clock, stock).acquire(FALLBACK)
    found = {r.requirement for r in caught.value.rejections}
    assert found == {"resources.gpus.count", "alternatives[0].gpus.count", "alternatives[1].cpus"}
    assert "alternatives[1].cpus wants 8; has 4 free" in str(caught.value)


async def test_a_rejection_outside_resources_says_which_choices_it_held_for(
    clock: VirtualClock,
) -> None:
    """A price cap breaks the GPU choices only: those are named. A rejection every choice
    met (a backend that does not answer) is listed once, plainly."""
    stock = Stock(clock=clock, gpus={"H100": 1, "A100": 2}, cpus=2)
    capped = FALLBACK.with_(max_price="1 USD/h")
    with pytest.raises(NoOffer) as caught:
        await _negotiator(clock, stock).acquire(capped)
    found = {r.requirement for r in caught.value.rejections}
    assert found == {
        "terms.max_price (for resources)",  # 4 USD/h
        "terms.max_price (for alternatives[0])",  # 3 USD/h
        "alternatives[1].cpus",
    }
    stock.cpus = 8
    lease = await _negotiator(clock, stock).acquire(capped)
    assert lease.grant.alternative == 1
    hung = FakeBackend(name="slow", clock=clock, quote_hangs=True)
    negotiator = Negotiator([hung], clock=clock, governance=None, quote_timeout=0.01)
    round_ = await negotiator.quote(FALLBACK)
    assert [r.requirement for r in round_.rejections] == ["quote"]  # one, for all choices


RELAXED = Resources(gpus=GPU(count=1, models=["A100"]))


@attrs.define(eq=False, kw_only=True)
class OneA100(FakeBackend):
    """Has one A100 only: a counter-offer (1 A100) for the two-A100 choice, else nothing."""

    async def quote(self, contract: Contract) -> Quote:
        if contract.resources == TWO_A100:
            narrowed = contract.with_(resources=RELAXED)
            counter = make_offer(self.name, narrowed, self.clock.time(), gpu_model="A100")
            return Quote(counter_offers=(counter,))
        lacking = Rejection(backend=self.name, requirement="resources", wanted="-", available="-")
        return Quote(rejections=(lacking,))


async def test_counter_offers_carry_the_whole_contract_around_their_choice(
    clock: VirtualClock,
) -> None:
    negotiator = _negotiator(clock, OneA100(clock=clock))
    with pytest.raises(NoOffer) as caught:
        await negotiator.acquire(FALLBACK)
    [counter] = caught.value.counter_offers
    assert counter.grant.alternative == 0
    assert counter.contract.alternatives == (RELAXED, EIGHT_CPUS)
    assert counter.contract.resources == H100
    assert "(alternatives[0])" in counter.summary()
    lease = await negotiator.commit(counter)
    assert (lease.grant.alternative, lease.contract) == (0, counter.contract)


async def test_check_offer_judges_an_offer_by_its_choice(clock: VirtualClock) -> None:
    offer = make_offer("fake", FALLBACK.narrow(1), clock.time())
    for_cpus = msgspec.structs.replace(
        offer, contract=FALLBACK, grant=msgspec.structs.replace(offer.grant, alternative=1)
    )
    assert check_offer(for_cpus, FALLBACK, clock.time()) == []
    short = msgspec.structs.replace(for_cpus, grant=Grant(cpus=4, alternative=1))
    [problem] = check_offer(short, FALLBACK, clock.time())
    assert problem.requirement == "alternatives[1].cpus"
    # Judged as the first choice, the same grant lacks the H100.
    as_first = msgspec.structs.replace(for_cpus, grant=Grant(cpus=8))
    assert "resources.gpus.count" in {p.requirement for p in check_offer(as_first, FALLBACK, 0)}
    # A choice the contract does not have, or an alternative of a contract without any.
    for contract, index in ((FALLBACK, 2), (Contract(cpus=8), 0)):
        liar = msgspec.structs.replace(for_cpus, grant=Grant(cpus=8, alternative=index))
        assert [p.requirement for p in check_offer(liar, contract, 0)] == ["alternatives"]


async def test_a_backend_claiming_an_alternative_is_not_believed(clock: VirtualClock) -> None:
    """The negotiator says which choice an offer serves, whatever a backend put in it."""
    liar = FakeBackend(clock=clock, offers=[{"cpus": 8, "alternative": 1}])
    round_ = await _negotiator(clock, liar).quote(FALLBACK)
    assert round_.offers == ()
    assert {r.requirement for r in round_.rejections} == {"alternatives"}


async def test_record_ranking_keeps_the_choice_order(clock: VirtualClock) -> None:
    from aicontract.monitor.record import PerformanceRecord

    stock = Stock(clock=clock, gpus={"H100": 1, "A100": 2}, cpus=8)
    watched = FALLBACK.with_(objectives=[{"sli": "latency_p99", "op": "<=", "target": "1s"}])
    negotiator = Negotiator([stock], clock=clock, governance=None, record=PerformanceRecord())
    round_ = await negotiator.quote(watched)
    assert [o.grant.alternative for o in round_.offers] == [None, 0, 1]


async def test_acquire_waits_for_any_choice_until_start_by(clock: VirtualClock) -> None:
    stock = Stock(clock=clock, gpus={}, cpus=0)
    waiting = FALLBACK.with_(start_by="60s")

    async def capacity_arrives() -> Any:
        await clock.sleep(10)
        stock.cpus = 8

    async def run() -> Any:
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(capacity_arrives)
            return await _negotiator(clock, stock).acquire(waiting)

    lease = await drive(clock, run)
    assert lease.grant.alternative == 1


# -- hypothesis: with the default ranking, the earliest satisfiable choice is granted -----

MODELS = ("H100", "A100", "L4")
choice_st = st.one_of(
    st.builds(
        lambda count, model: Resources(gpus=GPU(count=count, models=[model])),
        st.integers(1, 3),
        st.sampled_from(MODELS),
    ),
    st.builds(lambda cpus: Resources(cpus=cpus), st.integers(1, 16)),
)


def _satisfiable(choice: Resources, gpus: dict[str, int], cpus: int) -> bool:
    if choice.gpus is not None:
        return any(gpus.get(m, 0) >= (choice.gpus.count.min or 1) for m in choice.gpus.models)
    return choice.cpus is None or (choice.cpus.min or 0) <= cpus


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    choices=st.lists(choice_st, min_size=1, max_size=5),
    gpus=st.dictionaries(st.sampled_from(MODELS), st.integers(0, 3)),
    cpus=st.integers(0, 16),
    prices=st.lists(st.sampled_from(["0.5", "1", "3", "4"]), min_size=3, max_size=3),
)
def test_the_earliest_satisfiable_choice_is_granted(
    choices: list[Resources], gpus: dict[str, int], cpus: int, prices: list[str]
) -> None:
    import anyio

    # Prices vary per model at random: the default ranking must not let cost win.
    priced = {**PRICES, **{m: Money.per_hour(p) for m, p in zip(MODELS, prices, strict=True)}}
    contract = Contract(resources=choices[0], alternatives=choices[1:])
    expected = next(
        (i for i, c in enumerate(contract.choices) if _satisfiable(c, gpus, cpus)), None
    )

    async def run() -> None:
        clock = VirtualClock()
        stock = Stock(clock=clock, gpus=gpus, cpus=cpus, prices=priced)
        try:
            lease = await _negotiator(clock, stock).acquire(contract)
        except NoOffer:
            assert expected is None
            return
        assert expected is not None
        granted = -1 if lease.grant.alternative is None else lease.grant.alternative
        assert granted + 1 == expected
        assert contract.resources_for(lease.grant.alternative) == contract.choices[expected]

    anyio.run(run)


def test_rank_key_puts_the_choice_first_unless_placed(clock: VirtualClock) -> None:
    offer = make_offer("fake", FALLBACK.narrow(1), 0.0)
    cpu = msgspec.structs.replace(offer, contract=FALLBACK, grant=Grant(cpus=8, alternative=1))
    assert rank_key(cpu, FALLBACK)[0] == 1
    placed = FALLBACK.with_(preferences={"rank": ["cost", "alternative"]})
    assert rank_key(cpu, placed)[1] == 1
    # A contract without alternatives ranks as before: the guarantee first.
    assert rank_key(offer, Contract(cpus=8))[0] == -GUARANTEE_ORDER["allocated"]


async def test_choices_across_backends(clock: VirtualClock) -> None:
    """Each choice asks every backend: the first choice from one, a fallback from another."""
    cpus_only = Stock(name="cpus-only", clock=clock, cpus=64)
    gpu_box = Stock(name="gpu-box", clock=clock, gpus={"A100": 2})
    round_ = await _negotiator(clock, cpus_only, gpu_box).quote(FALLBACK)
    assert [(o.backend, o.grant.alternative) for o in round_.offers] == [
        ("gpu-box", 0),
        ("cpus-only", 1),
    ]
    missing = {(r.backend, r.requirement) for r in round_.rejections}
    assert ("gpu-box", "alternatives[1].cpus") in missing
    assert ("cpus-only", "resources.gpus.count") in missing
    gpu_box.gpus["H100"] = 1
    lease = await _negotiator(clock, cpus_only, gpu_box).acquire(FALLBACK)
    assert (lease.backend.name, lease.grant.alternative) == ("gpu-box", None)
