"""The negotiator: guarantees 2, 3 and 6 enforced whatever backends claim; ranking;
fail-over; idempotent retries; per-backend timeouts; waiting for capacity; NoOffer.

Backends here are :class:`fakes.FakeBackend`: they offer exactly what a test
says, including offers that lie, because the negotiator must never trust a
backend to have checked the contract.
"""

from __future__ import annotations

import pytest

from aicontract import (
    GPU,
    AuthenticationError,
    Bytes,
    CapacityUnavailable,
    Contract,
    Money,
    Negotiator,
    NoOffer,
    Preferences,
    Quote,
    TransientBackendError,
    VirtualClock,
)
from aicontract.negotiate import rank_key
from aicontract.offer import check_offer
from fakes import FakeBackend, drive, make_offer

pytestmark = [pytest.mark.anyio, pytest.mark.anyio_backends("asyncio", "trio")]


def negotiator(clock: VirtualClock, *backends: FakeBackend, **options: float) -> Negotiator:
    # Tiny retry waits: the retry sleeps go through the virtual clock, and drive()
    # moves it; real quote timeouts are never reached unless a test wants them.
    return Negotiator(list(backends), clock=clock, **options)  # type: ignore[arg-type]


EU_ONLY = Contract(name="eu", gpus=GPU(count=1, models=["H100"]), jurisdictions=["EU"])


# -- guarantee 2: never placed where the contract forbids --------------------------------


@pytest.mark.parametrize(
    ("contract", "lie"),
    [
        pytest.param(EU_ONLY, {"region": "us-east-1", "jurisdiction": "US"}, id="us-for-eu"),
        pytest.param(EU_ONLY, {"jurisdiction": None}, id="unknown-jurisdiction"),
        pytest.param(
            Contract(gpus=1, placement={"deny_regions": ["eu-west-1"]}),
            {"region": "eu-west-1"},
            id="denied-region",
        ),
        pytest.param(
            Contract(gpus=1, regions=["eu-central-1"]), {"region": "eu-west-1"}, id="not-allowed"
        ),
        pytest.param(
            Contract(gpus=1, isolation="dedicated-host"),
            {"isolation": "dedicated-node"},
            id="weaker-isolation",
        ),
        pytest.param(
            Contract(gpus=1, placement={"providers": ["aws"]}),
            {"provider": "lambda"},
            id="wrong-provider",
        ),
    ],
)
async def test_lying_offer_is_never_committed_even_when_cheapest(
    clock: VirtualClock, contract: Contract, lie: dict[str, object]
) -> None:
    """The liar is free and ranked first by cost; the honest offer costs more and wins."""
    liar = FakeBackend(name="liar", clock=clock, offers=[{**lie, "price": Money.per_hour(0)}])
    honest = FakeBackend(
        name="honest",
        clock=clock,
        offers=[
            {
                "price": Money.per_hour(9),
                "region": "eu-central-1",
                "provider": "aws",
                "isolation": "dedicated-host",
            }
        ],
    )
    neg = negotiator(clock, liar, honest)
    lease = await neg.acquire(contract)
    assert lease.backend is honest
    assert liar.commits == []
    round_ = await neg.quote(contract)
    assert [o.backend for o in round_.offers] == ["honest"]
    assert any(
        r.backend == "liar" and r.requirement.startswith("placement.") for r in round_.rejections
    )


async def test_only_liars_means_no_offer_naming_placement(clock: VirtualClock) -> None:
    liar = FakeBackend(name="liar", clock=clock, offers=[{"jurisdiction": "US"}])
    with pytest.raises(NoOffer) as info:
        await negotiator(clock, liar).acquire(EU_ONLY)
    assert liar.commits == []
    assert "liar: placement.jurisdictions wants EU; has US" in str(info.value)


# -- guarantee 3: granted = within the contract -------------------------------------------


@pytest.mark.parametrize(
    ("contract", "grant"),
    [
        pytest.param(Contract(gpus="2..4"), {"gpus": 8}, id="gpus-above-max"),
        pytest.param(Contract(gpus="2..4"), {"gpus": 1}, id="gpus-below-min"),
        pytest.param(Contract(cpus="4..8"), {"cpus": 2}, id="cpus-below"),
        pytest.param(Contract(cpus="4..8"), {"cpus": 0}, id="cpus-missing"),
        pytest.param(Contract(memory="64GiB.."), {"memory": Bytes("32GiB")}, id="memory-below"),
        pytest.param(Contract(memory="64GiB"), {"memory": None}, id="memory-unstated"),
        pytest.param(Contract(cpus=2), {"gpus": 1, "gpu_model": "H100"}, id="gpus-unasked"),
        pytest.param(
            Contract(gpus=GPU(count=1, models=["H100"])), {"gpu_model": "A10"}, id="wrong-model"
        ),
        pytest.param(
            Contract(gpus=GPU(count=1, memory=">=80GiB")),
            {"gpu_memory": Bytes("40GiB")},
            id="gpu-memory-below",
        ),
        pytest.param(Contract(disk="1TiB.."), {"disk": None}, id="disk-unstated"),
    ],
)
async def test_grant_outside_a_range_is_dropped(
    clock: VirtualClock, contract: Contract, grant: dict[str, object]
) -> None:
    backend = FakeBackend(clock=clock, offers=[grant])
    round_ = await negotiator(clock, backend).quote(contract)
    assert round_.offers == ()
    assert any(r.requirement.startswith("resources.") for r in round_.rejections)


async def test_grant_inside_every_range_is_kept(clock: VirtualClock) -> None:
    contract = Contract(gpus=GPU(count="2..4", memory=">=80GiB"), cpus="4..8", memory="64GiB..")
    backend = FakeBackend(
        clock=clock,
        offers=[{"gpus": 4, "gpu_memory": Bytes("80GiB"), "cpus": 8, "memory": Bytes("64GiB")}],
    )
    round_ = await negotiator(clock, backend).quote(contract)
    assert len(round_.offers) == 1
    assert round_.rejections == ()


# -- guarantee 6 and terms: strength, price, preemption, start, expiry ---------------------


@pytest.mark.parametrize(
    ("minimum", "offered", "kept"),
    [
        ("reserved", "allocated", True),
        ("reserved", "reserved", True),
        ("reserved", "quota", False),
        ("allocated", "reserved", False),
        ("quota", "best-effort", False),
    ],
)
async def test_min_guarantee_filters_weaker_offers(
    clock: VirtualClock, minimum: str, offered: str, kept: bool
) -> None:
    contract = Contract(gpus=1, min_guarantee=minimum)
    backend = FakeBackend(clock=clock, offers=[{"guarantee": offered}])
    round_ = await negotiator(clock, backend).quote(contract)
    assert bool(round_.offers) is kept
    if not kept:
        assert [r.requirement for r in round_.rejections] == ["terms.min_guarantee"]


@pytest.mark.parametrize(
    ("price", "kept"),
    [
        (Money.per_hour("2.50"), True),
        (Money.per_hour("2.51"), False),
        (Money.per_hour("1", "EUR"), False),  # no exchange rates: another currency is refused
        (None, False),  # an unpriced offer cannot be shown to be under the cap
    ],
)
async def test_max_price_filters(clock: VirtualClock, price: Money | None, kept: bool) -> None:
    contract = Contract(gpus=1, max_price="2.50 USD/h")
    backend = FakeBackend(clock=clock, offers=[{"price": price}])
    round_ = await negotiator(clock, backend).quote(contract)
    assert bool(round_.offers) is kept
    if not kept:
        assert [r.requirement for r in round_.rejections] == ["terms.max_price"]


def test_check_offer_refuses_preemptible_late_and_expired() -> None:
    contract = Contract(gpus=1, start_by="10m")
    now = 1000.0
    offer = make_offer("x", contract, now, preemptible=True, start_in=3600.0, expires_at=now)
    assert {r.requirement for r in check_offer(offer, contract, now)} == {
        "terms.preemptible",
        "terms.start_by",
        "offer",
    }
    assert check_offer(make_offer("x", contract, now), contract, now) == []


# -- ranking -------------------------------------------------------------------------------


def _ranked(contract: Contract, *variants: dict[str, object]) -> list[str]:
    offers = [make_offer(f"b{i}", contract, 0.0, **v) for i, v in enumerate(variants)]
    return [o.backend for o in sorted(offers, key=lambda o: rank_key(o, contract))]


def test_rank_by_cost_start_time_guarantee_locality() -> None:
    cheap, dear = Money.per_hour(1), Money.per_hour(5)
    by_cost = Contract(gpus=1, preferences=Preferences(rank=["cost"]))
    assert _ranked(by_cost, {"price": dear}, {"price": cheap}) == ["b1", "b0"]
    by_start = Contract(gpus=1, preferences=Preferences(rank=["start_time", "cost"]))
    assert _ranked(by_start, {"price": cheap, "start_in": 60.0}, {"price": dear}) == ["b1", "b0"]
    by_guarantee = Contract(gpus=1, preferences=Preferences(rank=["guarantee", "cost"]))
    assert _ranked(by_guarantee, {"price": cheap, "guarantee": "quota"}, {"price": dear}) == [
        "b1",
        "b0",
    ]
    by_place = Contract(
        gpus=1, preferences=Preferences(rank=["locality"], regions=["eu-north-1", "eu-west-1"])
    )
    assert _ranked(
        by_place, {"region": "us-east-1"}, {"region": "eu-west-1"}, {"region": "eu-north-1"}
    ) == ["b2", "b1", "b0"]


def test_default_rank_puts_guarantee_before_cost() -> None:
    contract = Contract(gpus=1)
    assert _ranked(
        contract,
        {"price": Money.per_hour(0), "guarantee": "best-effort"},
        {"price": Money.per_hour(9), "guarantee": "allocated"},
    ) == ["b1", "b0"]


def test_model_order_breaks_ties_then_more_gpus() -> None:
    contract = Contract(gpus=GPU(count="1..4", models=["H100", "A100-80GB"]))
    assert _ranked(contract, {"gpu_model": "A100-80GB"}, {"gpu_model": "H100"}) == ["b1", "b0"]
    assert _ranked(contract, {"gpus": 2}, {"gpus": 4}) == ["b1", "b0"]


async def test_quote_returns_offers_best_first(clock: VirtualClock) -> None:
    contract = Contract(gpus=1, preferences=Preferences(rank=["cost"]))
    backends = [
        FakeBackend(name=f"b{n}", clock=clock, offers=[{"price": Money.per_hour(n)}])
        for n in (3, 1, 2)
    ]
    round_ = await negotiator(clock, *backends).quote(contract)
    assert [o.price.amount for o in round_.offers if o.price] == [1, 2, 3]


# -- commit: fail-over, retries with one idempotency key ------------------------------------


async def test_capacity_gone_at_commit_fails_over_to_next_offer(clock: VirtualClock) -> None:
    contract = Contract(gpus=1, preferences=Preferences(rank=["cost"]))
    best = FakeBackend(
        name="best",
        clock=clock,
        offers=[{"price": Money.per_hour(1)}],
        commit_errors=[CapacityUnavailable("best", "taken meanwhile")],
    )
    next_ = FakeBackend(name="next", clock=clock, offers=[{"price": Money.per_hour(2)}])
    lease = await negotiator(clock, best, next_).acquire(contract)
    assert lease.backend is next_
    assert len(best.commits) == 1  # CapacityUnavailable is not retried
    assert best.quotes == 1  # the same negotiation round, no re-quote


async def test_an_offer_that_expired_while_another_was_tried_is_not_committed(
    clock: VirtualClock,
) -> None:
    # acquire() re-checks only the time of an offer its own round checked: that check must
    # still refuse an offer that expired while a better one was being committed.
    contract = Contract(gpus=1, preferences=Preferences(rank=["cost"]))

    async def slow(offer: object) -> None:
        clock.now += 120  # the failing commit takes two minutes

    best = FakeBackend(
        name="best",
        clock=clock,
        offers=[{"price": Money.per_hour(1)}],
        on_commit=slow,
        commit_errors=[CapacityUnavailable("best", "taken meanwhile")],
    )
    next_ = FakeBackend(
        name="next",
        clock=clock,
        offers=[{"price": Money.per_hour(2), "expires_at": clock.now + 60}],
    )
    with pytest.raises(NoOffer, match="expired offer"):
        await negotiator(clock, best, next_).acquire(contract)
    assert next_.commits == []


async def test_account_errors_fail_over_too(clock: VirtualClock) -> None:
    first = FakeBackend(
        name="first",
        clock=clock,
        offers=[{"price": Money.per_hour(0)}],
        commit_errors=[AuthenticationError("first", "token refused")],
    )
    second = FakeBackend(name="second", clock=clock)
    lease = await negotiator(clock, first, second).acquire(Contract(gpus=1))
    assert lease.backend is second


async def test_transient_commit_errors_retry_with_the_same_key(clock: VirtualClock) -> None:
    backend = FakeBackend(
        clock=clock,
        commit_errors=[TransientBackendError("fake", "502"), TransientBackendError("fake", "503")],
    )
    neg = negotiator(clock, backend, commit_attempts=4)
    lease = await drive(clock, lambda: neg.acquire(Contract(gpus=1)))
    offer_ids = {o for o, _ in backend.commits}
    keys = [k for _, k in backend.commits]
    assert len(keys) == 3
    assert len(offer_ids) == 1
    assert len(set(keys)) == 1, "a retry must reuse the idempotency key (guarantee 5)"
    assert lease is backend.by_key[keys[0]]
    assert len(backend.by_key) == 1


async def test_retries_are_bounded_then_next_offer(clock: VirtualClock) -> None:
    flaky = FakeBackend(
        name="flaky",
        clock=clock,
        offers=[{"price": Money.per_hour(0)}],
        commit_errors=[TransientBackendError("flaky", "timeout") for _ in range(10)],
    )
    steady = FakeBackend(name="steady", clock=clock)
    neg = negotiator(clock, flaky, steady, commit_attempts=3)
    lease = await drive(clock, lambda: neg.acquire(Contract(gpus=1)))
    assert len(flaky.commits) == 3
    assert lease.backend is steady
    # The last attempt's outcome is unknown: it is abandoned before moving on, so no
    # lease is left that nobody holds (guarantee 5).
    assert flaky.abandoned == [flaky.commits[0][1]]
    assert steady.abandoned == []


async def test_explicit_idempotency_key_is_passed_through(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, commit_errors=[TransientBackendError("fake", "reset")])
    neg = negotiator(clock, backend)
    offer = (await neg.quote(Contract(gpus=1))).offers[0]
    first = await drive(clock, lambda: neg.commit(offer, "key-1"))
    again = await neg.commit(offer, "key-1")
    assert first is again
    assert [k for _, k in backend.commits] == ["key-1"] * 3


# -- quotes: timeouts and errors become rejections ----------------------------------------


async def test_slow_backend_becomes_a_rejection(clock: VirtualClock) -> None:
    slow = FakeBackend(name="slow", clock=clock, quote_hangs=True)
    quick = FakeBackend(name="quick", clock=clock)
    neg = negotiator(clock, slow, quick, quote_timeout=0.05)
    round_ = await neg.quote(Contract(gpus=1))
    assert [o.backend for o in round_.offers] == ["quick"]
    (why,) = round_.rejections
    assert (why.backend, why.requirement, why.available) == ("slow", "quote", "no answer")
    assert "0.05s" in why.wanted


async def test_quote_error_becomes_a_rejection(clock: VirtualClock) -> None:
    class Broken(FakeBackend):
        async def quote(self, contract: Contract) -> object:  # type: ignore[override]
            raise AuthenticationError(self.name, "no credentials")

    round_ = await negotiator(clock, Broken(name="broken", clock=clock)).quote(Contract(gpus=1))
    assert round_.offers == ()
    assert "no credentials" in round_.rejections[0].available


# -- waiting for capacity up to start_by -------------------------------------------------


async def test_time_spent_waiting_comes_off_start_by(clock: VirtualClock) -> None:
    """start_by: 5m. Capacity shows up after 4 minutes, but starting takes 2 more: the
    work would start at 6m, past the deadline, so it is not committed."""
    backend = FakeBackend(clock=clock, available=False, offers=[{"start_in": 120.0}])
    start = clock.now

    async def capacity_later() -> None:
        while clock.now < start + 240:
            await clock.sleep(1)
        backend.available = True

    async def scenario() -> object:
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(capacity_later)
            try:
                return await negotiator(clock, backend).acquire(Contract(gpus=1, start_by="5m"))
            except NoOffer as exc:
                return exc
            finally:
                tg.cancel_scope.cancel()

    refused = await drive(clock, scenario, step=1.0)
    assert isinstance(refused, NoOffer)
    assert "terms.start_by wants a start within" in str(refused)
    assert backend.commits == []


async def test_capacity_appearing_before_start_by_is_taken(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, available=False)
    start = clock.now

    async def capacity_later() -> None:
        while clock.now < start + 30:
            await clock.sleep(1)
        backend.available = True

    async def scenario() -> object:
        import anyio

        async with anyio.create_task_group() as tg:
            tg.start_soon(capacity_later)
            return await negotiator(clock, backend).acquire(Contract(gpus=1, start_by="5m"))

    lease = await drive(clock, scenario, step=1.0)
    assert lease.backend is backend  # type: ignore[attr-defined]
    assert start + 30 <= clock.now < start + 300
    assert backend.quotes > 1


async def test_start_by_deadline_gives_no_offer(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, available=False)
    start = clock.now
    with pytest.raises(NoOffer) as info:
        await drive(
            clock,
            lambda: negotiator(clock, backend).acquire(Contract(gpus=1, start_by="2m")),
            step=1.0,
        )
    assert "start_by deadline passed" in str(info.value)
    assert start + 120 <= clock.now <= start + 122


async def test_requote_wait_max_bounds_the_first_wait_too(clock: VirtualClock) -> None:
    """Every wait between re-quotes is at most ``requote_wait_max``: the first one was
    25-50 ms whatever the bound (a 5 ms bound slowed contended loops tenfold)."""
    backend = FakeBackend(clock=clock, available=False)
    waits: list[float] = []
    sleep = clock.sleep

    async def recorded(seconds: float) -> None:
        waits.append(seconds)
        await sleep(seconds)

    clock.sleep = recorded  # type: ignore[method-assign]
    with pytest.raises(NoOffer):
        await drive(
            clock,
            lambda: negotiator(clock, backend, requote_wait_max=0.005).acquire(
                Contract(gpus=1, start_by="1s")
            ),
            step=0.001,
        )
    assert len(waits) > 10
    assert max(waits) <= 0.005


async def test_without_start_by_there_is_one_round(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, available=False)
    with pytest.raises(NoOffer) as info:
        await negotiator(clock, backend).acquire(Contract(gpus=1))
    assert backend.quotes == 1
    assert info.value.reason is None


# -- NoOffer: per backend, what it lacked; counter-offers ----------------------------------


async def test_no_offer_lists_each_backend_and_carries_counter_offers(clock: VirtualClock) -> None:
    contract = Contract(name="big", gpus=GPU(count=8, models=["H100"]), jurisdictions=["EU"])
    full = FakeBackend(name="full", clock=clock, available=False, counter_offers=[{"gpus": 4}])
    abroad = FakeBackend(name="abroad", clock=clock, offers=[{"jurisdiction": "US"}])
    slow = FakeBackend(name="slow", clock=clock, quote_hangs=True)
    with pytest.raises(NoOffer) as info:
        await negotiator(clock, full, abroad, slow, quote_timeout=0.05).acquire(contract)
    err = info.value
    text = str(err)
    assert text.startswith("no offer satisfies contract 'big'")
    assert "full: resources.gpus.count" in text
    assert "abroad: placement.jurisdictions wants EU; has US" in text
    assert "slow: quote" in text
    assert {r.backend for r in err.rejections} == {"full", "abroad", "slow"}
    assert [o.grant.gpus for o in err.counter_offers] == [4]
    assert "counter-offer: full: 4 x H100" in text


async def test_no_offer_names_commit_failures(clock: VirtualClock) -> None:
    backend = FakeBackend(clock=clock, commit_errors=[CapacityUnavailable("fake", "gone")])
    with pytest.raises(NoOffer) as info:
        await negotiator(clock, backend).acquire(Contract(gpus=1))
    assert "fake: capacity at commit" in str(info.value)
    assert "gone" in str(info.value)


async def test_no_backends_at_all() -> None:
    with pytest.raises(NoOffer, match="no backend answered"):
        await Negotiator([]).acquire(Contract(gpus=1))


# -- guarantee 3 for direct commits, and backends that crash -----------------------------


async def test_committing_an_offer_that_breaks_its_own_contract_is_refused(
    clock: VirtualClock,
) -> None:
    """A caller committing an offer directly (a counter-offer, say) gets guarantee 3 too."""
    backend = FakeBackend(clock=clock)
    contract = Contract(name="four", gpus=4)
    bad = make_offer("fake", contract, clock.time(), gpus=2)
    with pytest.raises(NoOffer, match=r"resources\.gpus\.count wants 4; has 2"):
        await negotiator(clock, backend).commit(bad)
    assert backend.commits == []


class _Broken(FakeBackend):
    async def quote(self, contract: Contract) -> Quote:
        raise RuntimeError("GET https://api.example/v1?token=s3cr3t failed")


async def test_a_backend_that_crashes_while_quoting_does_not_sink_the_others(
    clock: VirtualClock,
) -> None:
    good = FakeBackend(name="good", clock=clock)
    broken = _Broken(name="broken", clock=clock)
    result = await negotiator(clock, broken, good).quote(Contract(gpus=1))
    assert [o.backend for o in result.offers] == ["good"]
    (why,) = result.rejections
    # Its text may hold a secret: the rejection names only the type (the log has the rest).
    assert (why.backend, why.available) == ("broken", "RuntimeError (details in the log)")
    assert "s3cr3t" not in str(result.rejections)


def test_cost_ranking_keeps_currencies_apart_and_unknown_prices_last() -> None:
    by_cost = Contract(gpus=1, max_price="10 EUR/h", preferences=Preferences(rank=["cost"]))
    ranked = _ranked(
        by_cost,
        {"price": None},
        {"price": Money("1 USD/h")},
        {"price": Money("5 EUR/h")},
        {"price": Money("2 EUR/h")},
    )
    assert ranked == ["b3", "b2", "b1", "b0"]


# -- guarantee 3 reaches the GPU's properties ------------------------------------------------


@pytest.mark.parametrize(
    ("gpu", "grant", "requirement"),
    [
        pytest.param(
            {"compute_capability": "9.0"},
            {"gpu_compute_capability": "8.0"},
            "resources.gpus.compute_capability",
            id="capability-too-low",
        ),
        pytest.param(
            {"compute_capability": "9.0"},
            {},
            "resources.gpus.compute_capability",
            id="capability-unknown",
        ),
        pytest.param({"mig": "1g.10gb"}, {}, "resources.gpus.mig", id="whole-gpu-for-mig"),
    ],
)
def test_gpu_properties_a_backend_cannot_show_are_refused(
    gpu: dict[str, str], grant: dict[str, str], requirement: str
) -> None:
    """A backend that says nothing about a required property never satisfies it."""
    contract = Contract(gpus=GPU(count=1, **gpu))
    offer = make_offer("x", contract, 0.0, gpus=1, gpu_model="H100", **grant)
    assert [r.requirement for r in check_offer(offer, contract, 0.0)] == [requirement]


def test_gpu_properties_that_meet_the_contract_pass() -> None:
    contract = Contract(gpus=GPU(count=1, compute_capability="8.0", interconnect="nvlink"))
    offer = make_offer(
        "x",
        contract,
        0.0,
        gpus=1,
        gpu_model="H100",
        gpu_compute_capability="9.0",
        gpu_interconnect="nvlink",
    )
    assert check_offer(offer, contract, 0.0) == []
