"""Lambda Cloud backend against a respx fake of its documented API."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar

import anyio
import httpx
import pytest
import respx
from cloud_support import API_KEY, FAST_OPTIONS, instance_type
from fake_lambda import BASE, FakeLambda, error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aicontract import (
    GPU,
    AuthenticationError,
    Contract,
    LeaseLost,
    LeaseState,
    Negotiator,
    NoOffer,
    QuotaExceeded,
    TransientBackendError,
)
from aicontract.backends.cloud import LambdaBackend, node_env
from aicontract.backends.cloud.credentials import Secret

H100 = instance_type("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 1, 249, vcpus=26, memory_gib=200)
A10 = instance_type("gpu_1x_a10", "A10 (24 GB PCIe)", 1, 75)
H100x8 = instance_type("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 8, 2392, vcpus=208, memory_gib=1800)

FAST: dict[str, Any] = {**FAST_OPTIONS, "listing_lag": 0.05}


def backend(fake: FakeLambda, **kw: Any) -> LambdaBackend:
    options = {**FAST, "api_key": API_KEY, "ssh_key_name": "laptop", "base_url": fake.base, **kw}
    return LambdaBackend(**options)


@pytest.mark.anyio
async def test_catalog_becomes_offers_with_jurisdiction(fake: FakeLambda) -> None:
    fake.add_type(H100, ["us-east-1", "europe-central-1"])
    fake.add_type(A10, [])
    quote = await backend(fake).quote(Contract(gpus=GPU(models=["H100"])))
    by_region = {o.region: o for o in quote.offers}
    assert set(by_region) == {"us-east-1", "europe-central-1"}
    eu = by_region["europe-central-1"]
    assert eu.jurisdiction == "EU"
    assert by_region["us-east-1"].jurisdiction == "US"
    assert eu.grant.gpus == 1
    assert eu.grant.gpu_model == "H100"
    assert str(eu.grant.gpu_memory) == "80GiB"
    assert eu.grant.cpus == 26
    assert eu.price is not None
    assert eu.price.amount == Decimal("2.49")
    assert eu.guarantee == "allocated"
    assert eu.provider == "lambda"


@pytest.mark.anyio
async def test_contract_spelling_of_model_is_kept(fake: FakeLambda) -> None:
    fake.add_type(H100, ["us-east-1"])
    quote = await backend(fake).quote(Contract(gpus=GPU(models=["H100-80GB"])))
    assert [o.grant.gpu_model for o in quote.offers] == ["H100-80GB"]


@pytest.mark.anyio
async def test_acquire_launches_polls_and_release_terminates(fake: FakeLambda) -> None:
    fake.add_type(H100, ["us-east-1"])
    fake.boot_polls = 3
    contract = Contract(gpus=1, workload={"kind": "inference", "ports": {"http": 8000}})
    negotiator = Negotiator(backends=[backend(fake)])
    lease = await negotiator.acquire(contract)
    assert lease.state == LeaseState.ACTIVE
    [inst] = fake.live
    assert inst["status"] == "active"
    assert inst["name"].startswith("aicontract-")
    assert lease.endpoints == {"host": inst["ip"], "http": f"{inst['ip']}:8000"}
    assert lease.env["MASTER_ADDR"] == inst["private_ip"]
    assert lease.env["NNODES"] == "1"
    assert fake.launches[0]["ssh_key_names"] == ["laptop"]
    assert await lease.backend.renew(lease) > 0
    await lease.release()
    assert fake.live == []
    assert lease.state == LeaseState.RELEASED


@pytest.mark.anyio
async def test_launch_that_times_out_and_is_retried_yields_one_instance(fake: FakeLambda) -> None:
    fake.add_type(H100, ["us-east-1"])
    fake.launch_timeouts_after_create = 1  # the instance is made, the answer is lost
    lease = await Negotiator(backends=[backend(fake)]).acquire(Contract(gpus=1))
    assert len(fake.launches) == 1, "the retry found the instance by name instead of launching"
    assert len(fake.instances) == 1
    assert lease.details["instance_ids"] == next(iter(fake.instances))


@pytest.mark.anyio
async def test_commit_twice_with_one_key_is_one_lease(fake: FakeLambda) -> None:
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake)
    offer = (await b.quote(Contract(gpus=1))).offers[0]
    first = await b.commit(offer, "key-1")
    again = await b.commit(offer, "key-1")
    other = backend(fake)  # another process: finds the instance by its name tag
    third = await other.commit(offer, "key-1")
    assert first is again
    assert len(fake.instances) == 1
    assert third.details["instance_ids"] == first.details["instance_ids"]


@pytest.mark.anyio
async def test_insufficient_capacity_moves_to_next_offer(fake: FakeLambda) -> None:
    fake.add_type(A10, ["us-east-1"])
    fake.add_type(H100, ["us-west-1"])
    fake.launch_errors = [
        error(
            400,
            "instance-operations/launch/insufficient-capacity",
            "Not enough capacity to fulfill launch request.",
        )
    ]
    lease = await Negotiator(backends=[backend(fake)]).acquire(Contract(gpus=1))
    assert [body["instance_type_name"] for body in fake.launches] == [
        "gpu_1x_a10",
        "gpu_1x_h100_pcie",
    ]
    assert lease.grant.gpu_model == "H100"
    assert len(fake.live) == 1


@pytest.mark.anyio
async def test_quota_exceeded_is_final_and_clear(fake: FakeLambda) -> None:
    fake.add_type(A10, ["us-east-1"])
    fake.launch_errors = [
        error(
            400,
            "global/quota-exceeded",
            "Quota exceeded.",
            "Contact Support to increase your quota.",
        )
    ]
    b = backend(fake)
    offer = (await b.quote(Contract(gpus=1))).offers[0]
    with pytest.raises(QuotaExceeded, match=r"quota-exceeded.*Contact Support"):
        await b.commit(offer, "k")
    assert len(fake.launches) == 1, "a final error is not retried"
    fake.launch_errors = [error(400, "global/quota-exceeded", "Quota exceeded.")]
    with pytest.raises(NoOffer, match="- lambda: quota wants"):
        await Negotiator(backends=[b]).acquire(Contract(gpus=1))


@pytest.mark.anyio
async def test_invalid_api_key_is_final(fake: FakeLambda) -> None:
    fake.add_type(A10, ["us-east-1"])
    b = backend(fake, api_key="wrong_key_value_0000")
    with pytest.raises(AuthenticationError, match="invalid-api-key"):
        await b.quote(Contract(gpus=1))
    round_ = await Negotiator(backends=[b]).quote(Contract(gpus=1))
    assert round_.offers == ()
    assert "invalid-api-key" in round_.rejections[0].available


@pytest.mark.anyio
async def test_no_api_key_says_where_to_put_it(tmp_path: Any) -> None:
    b = LambdaBackend(environ={"AICONTRACT_CREDENTIALS_FILE": str(tmp_path / "none.toml")})
    with pytest.raises(AuthenticationError, match="LAMBDA_API_KEY"):
        await b.quote(Contract(gpus=1))


@pytest.mark.anyio
async def test_429_and_5xx_are_retried(fake: FakeLambda) -> None:
    fake.add_type(A10, ["us-east-1"])
    fake.launch_errors = [
        error(429, "global/rate-limited", "Too many requests"),
        httpx.Response(503, text="<html>upstream</html>"),
    ]
    lease = await Negotiator(backends=[backend(fake)]).acquire(Contract(gpus=1))
    assert len(fake.launches) == 3
    assert len(fake.live) == 1
    assert lease.is_active


@pytest.mark.anyio
async def test_transient_errors_give_up_after_attempts_and_leak_nothing(fake: FakeLambda) -> None:
    fake.add_type(A10, ["us-east-1"])
    fake.launch_errors = [httpx.Response(500, text="oops")] * 50
    b = backend(fake, attempts=3)
    offer = (await b.quote(Contract(gpus=1))).offers[0]
    with pytest.raises(TransientBackendError):
        await b.commit(offer, "k")
    assert len(fake.launches) == 3
    assert fake.live == []


@pytest.mark.anyio
@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="not json"),
        httpx.Response(200, json={"instances": []}),
        httpx.Response(200, json={"data": {"instance_types": "nope"}}),
        httpx.Response(400, text="<html>bad</html>"),
    ],
)
async def test_malformed_catalog_is_a_clear_refusal(response: httpx.Response) -> None:
    with respx.mock() as router:
        router.get(f"{BASE}/instance-types").mock(return_value=response)
        b = LambdaBackend(**{**FAST, "api_key": API_KEY, "attempts": 2})
        round_ = await Negotiator(backends=[b]).quote(Contract(gpus=1))
    assert round_.offers == ()
    assert round_.rejections
    assert round_.rejections[0].requirement == "quote"


@pytest.mark.anyio
async def test_404_on_instance_means_lease_lost(fake: FakeLambda) -> None:
    fake.add_type(A10, ["us-east-1"])
    lease = await Negotiator(backends=[backend(fake)]).acquire(Contract(gpus=1))
    fake.instances.clear()
    with pytest.raises(LeaseLost, match="gone"):
        await lease.renew()
    assert lease.state == LeaseState.REVOKED
    await lease.release()  # safe on a lost lease


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("status", "kind"), [("preempted", "preempted"), ("unhealthy", "node-lost")]
)
async def test_preempted_or_unhealthy_revokes_the_lease(
    fake: FakeLambda, status: str, kind: str
) -> None:
    fake.add_type(A10, ["us-east-1"])
    lease = await Negotiator(backends=[backend(fake)]).acquire(Contract(gpus=1))
    fake.live[0]["status"] = status
    observation = await lease.backend.observe(lease)
    assert [f.kind for f in observation.faults] == [kind]
    assert lease.state == LeaseState.REVOKED


@pytest.mark.anyio
async def test_instance_lost_while_booting_fails_over(fake: FakeLambda) -> None:
    fake.add_type(A10, ["us-east-1"])
    fake.boot_polls = 10**6
    b = backend(fake, ready_timeout=0.05)
    with pytest.raises(NoOffer, match="not ready within"):
        await Negotiator(backends=[b]).acquire(Contract(gpus=1))
    assert fake.live == [], "the instance that never became ready was terminated"


@pytest.mark.anyio
async def test_multi_node_offer_and_training_env(fake: FakeLambda) -> None:
    fake.add_type(H100x8, ["us-east-1"])
    lease = await Negotiator(backends=[backend(fake)]).acquire(Contract(gpus=16))
    assert lease.grant.gpus == 16
    assert len(fake.live) == 2
    head = next(i for i in fake.live if i["name"].endswith("-0"))
    assert lease.env["MASTER_ADDR"] == head["private_ip"]
    assert (lease.env["NNODES"], lease.env["NPROC_PER_NODE"], lease.env["WORLD_SIZE"]) == (
        "2",
        "8",
        "16",
    )
    assert node_env(lease, 1)["NODE_RANK"] == "1"
    assert lease.env["NODE_RANK"] == "0"
    assert lease.details["price"] == "47.84 USD/h"
    await lease.release()
    assert fake.live == []


@pytest.mark.anyio
async def test_max_spend_caps_what_one_backend_commits(fake: FakeLambda) -> None:
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake, max_spend="4 USD/h")
    negotiator = Negotiator(backends=[b])
    await negotiator.acquire(Contract(gpus=1))
    with pytest.raises(NoOffer, match="max_spend"):
        await negotiator.acquire(Contract(gpus=1))
    assert len(fake.live) == 1


# -- guarantees, over random catalogs ------------------------------------------------------

REGIONS = [
    "us-east-1",
    "us-west-1",
    "us-south-1",
    "europe-central-1",
    "asia-northeast-1",
    "me-west-1",
    "test-east-1",
]
catalogs = st.lists(
    st.tuples(st.sampled_from(REGIONS), st.integers(min_value=1, max_value=5000)),
    min_size=1,
    max_size=8,
)


def _install(fake: FakeLambda, catalog: list[tuple[str, int]], prefix: str = "t") -> None:
    for index, (region, cents) in enumerate(catalog):
        fake.add_type(instance_type(f"{prefix}{index}", "A100 (40 GB SXM4)", 1, cents), [region])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalog=catalogs)
def test_eu_contract_never_commits_outside_the_eu(catalog: list[tuple[str, int]]) -> None:
    async def main() -> None:
        fake = FakeLambda(API_KEY)
        _install(fake, catalog)
        with respx.mock(assert_all_called=False) as router:
            fake.install(router)
            negotiator = Negotiator(backends=[backend(fake)])
            contract = Contract(gpus=1, jurisdictions=["EU"])
            eu = [c for r, c in catalog if r == "europe-central-1"]
            try:
                lease = await negotiator.acquire(contract)
            except NoOffer:
                assert not eu
                return
            assert lease.region == "europe-central-1"
            assert lease.jurisdiction == "EU"
            assert Decimal(lease.details["price"].split()[0]) == Decimal(min(eu)) / 100
            assert [i["region"]["name"] for i in fake.live] == ["europe-central-1"]
            assert all(b["region_name"] == "europe-central-1" for b in fake.launches)

    anyio.run(main)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=catalogs, b=catalogs, cap=st.integers(min_value=1, max_value=5000))
def test_max_price_is_never_exceeded_and_the_cheaper_provider_wins(
    a: list[tuple[str, int]], b: list[tuple[str, int]], cap: int
) -> None:
    async def main() -> None:
        fa, fb = (
            FakeLambda(API_KEY, "https://a.example/api/v1"),
            FakeLambda(API_KEY, "https://b.example/api/v1"),
        )
        _install(fa, a, "a")
        _install(fb, b, "b")
        with respx.mock(assert_all_called=False) as router:
            fa.install(router)
            fb.install(router)
            backends = [backend(fa, name="lambda-a"), backend(fb, name="lambda-b")]
            max_price = f"{Decimal(cap) / 100} USD/h"
            contract = Contract(gpus=1, max_price=max_price)
            fitting = sorted(c for _, c in a + b if c <= cap)
            try:
                lease = await Negotiator(backends=backends).acquire(contract)
            except NoOffer:
                assert not fitting
                return
            price = Decimal(lease.details["price"].split()[0])
            assert price <= Decimal(cap) / 100
            assert price == Decimal(fitting[0]) / 100
            assert len(fa.live) + len(fb.live) == 1

    anyio.run(main)


# -- nothing leaks -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_no_credential_in_logs_reprs_or_errors(
    fake: FakeLambda, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.add_type(A10, ["us-east-1"])
    b = backend(fake)
    seen: list[str] = [repr(b), str(b), repr(b._api_key), str(b._api_key)]
    lease = await Negotiator(backends=[b]).acquire(Contract(gpus=1))
    seen += [repr(lease), str(lease.to_dict())]
    await lease.release()
    bad = backend(fake, api_key=API_KEY + "-but-revoked")
    for failing in (bad.quote(Contract(gpus=1)),):
        try:
            await failing
        except Exception as exc:
            seen += [str(exc), repr(exc)]
    fake.launch_errors = [error(400, "global/quota-exceeded", f"quota for key {API_KEY}")]
    try:
        await Negotiator(backends=[b]).acquire(Contract(gpus=1))
    except NoOffer as exc:
        seen.append(str(exc))
    seen += [r.getMessage() for r in caplog.records]
    seen += [str(r.__dict__) for r in caplog.records]
    assert caplog.records, "the lifecycle logged something"
    for text in seen:
        assert API_KEY not in text
        assert API_KEY + "-but-revoked" not in text
    assert Secret("abc").reveal() == "abc"
    assert "abc" not in repr(Secret("abc"))


@pytest.mark.anyio
async def test_abandon_terminates_what_a_lost_reply_launched(fake: FakeLambda) -> None:
    """What the negotiator calls when retries run out with the outcome unknown."""
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake)
    offer = (await b.quote(Contract(gpus=1))).offers[0]
    await b.commit(offer, "key-lost")
    assert len(fake.live) == 1
    await b.abandon(offer, "key-lost")
    assert fake.live == []


@pytest.mark.anyio
async def test_compute_capability_comes_from_the_gpu_model(fake: FakeLambda) -> None:
    """Catalogs name GPUs, not capabilities: the offer states the published one, so a
    contract asking for >= 9.0 gets the H100 and not the cheaper A10 (8.6)."""
    fake.add_type(H100, ["us-east-1"])
    fake.add_type(A10, ["us-east-1"])
    round_ = await Negotiator(backends=[backend(fake)]).quote(
        Contract(gpus=GPU(count=1, compute_capability="9.0"))
    )
    assert [o.grant.gpu_compute_capability for o in round_.offers] == ["9.0"]


T = TypeVar("T")


async def _in_virtual_time(clock: Any, func: Callable[[], Awaitable[T]]) -> T:
    """Run ``func`` while moving ``clock`` on, a tenth of a second at a time (bounded)."""
    result: list[T] = []

    async def run() -> None:
        result.append(await func())

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        for _ in range(100_000):
            if result:
                break
            await clock.advance(0.1)
        else:
            tg.cancel_scope.cancel()
            raise AssertionError("still running after 10,000 virtual seconds")
    return result[0]


@pytest.mark.anyio
@pytest.mark.parametrize("lag", [0.0, 1.5, 9.0])
async def test_lost_launch_answer_and_a_lagging_list_give_one_instance(
    fake: FakeLambda, lag: float
) -> None:
    """The instance is made, the answer lost, and GET /instances does not show it for
    ``lag`` seconds: the retry must wait for it, not launch a second one."""
    from aicontract import VirtualClock

    clock = VirtualClock()
    fake.now = clock.monotonic
    fake.listing_lag = lag
    fake.launch_timeouts_after_create = 1
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake, clock=clock, listing_lag=None)  # the provider's own default
    offer = (await b.quote(Contract(gpus=1))).offers[0]
    lease = await _in_virtual_time(clock, lambda: b.commit(offer, "lost-answer"))
    assert len(fake.launches) == 1
    assert len(fake.instances) == 1
    assert lease.details["instance_ids"] == next(iter(fake.instances))


@pytest.mark.anyio
async def test_cleanup_waits_for_a_lagging_list_too(fake: FakeLambda) -> None:
    """Retries run out after a lost answer: what that launch made is still found
    and terminated (abandon), though the list showed it late."""
    from aicontract import VirtualClock

    clock = VirtualClock()
    fake.now = clock.monotonic
    fake.listing_lag = 2.0
    fake.launch_timeouts_after_create = 1
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake, clock=clock, attempts=1, listing_lag=None)
    offer = (await b.quote(Contract(gpus=1))).offers[0]

    async def commit() -> None:
        with pytest.raises(TransientBackendError):
            await b.commit(offer, "gives-up")

    await _in_virtual_time(clock, commit)
    assert len(fake.instances) == 1
    assert fake.live == [], "the launched instance was terminated, not orphaned"


@pytest.mark.anyio
async def test_a_key_reused_for_another_offer_is_a_conflict(fake: FakeLambda) -> None:
    """Returning the first lease would lie: it holds what the first offer asked for."""
    from aicontract import IdempotencyConflict

    fake.add_type(A10, ["us-east-1"])
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake)
    offers = {o.details["instance_type"]: o for o in (await b.quote(Contract(gpus=1))).offers}
    first = await b.commit(offers["gpu_1x_a10"], "one-key")
    with pytest.raises(IdempotencyConflict, match="use a new key"):
        await b.commit(offers["gpu_1x_h100_pcie"], "one-key")
    assert len(fake.instances) == 1
    requoted = next(
        o
        for o in (await b.quote(Contract(gpus=1))).offers
        if o.details["instance_type"] == "gpu_1x_a10"
    )
    assert await b.commit(requoted, "one-key") is first  # the same offer, quoted again
    await first.release()


@pytest.mark.anyio
@pytest.mark.parametrize("when", ["before-the-answer", "after-the-answer"])
async def test_a_commit_cancelled_around_the_launch_leaks_no_instance(
    fake: FakeLambda, when: str
) -> None:
    """The caller gives up (start_by, Ctrl-C) while the launch is in flight, or just after
    it answered: the instance exists but GET /instances does not list it yet. The cleanup
    must still terminate it — an instance left running costs money."""
    from aicontract import VirtualClock

    clock = VirtualClock()
    fake.now = clock.monotonic
    fake.listing_lag = 5.0
    fake.boot_polls = 3  # booting for a while: the wait for ready sleeps
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake, clock=clock, listing_lag=None)  # the provider's own default
    offer = (await b.quote(Contract(gpus=1))).offers[0]
    launch = b._launch_instance
    scope = anyio.CancelScope()

    async def launch_then_cancel(offer: Any, tag: str) -> str:
        instance_id = await launch(offer, tag)
        scope.cancel()
        if when == "before-the-answer":
            await anyio.sleep(0)  # the cancellation lands before the id is returned
        return instance_id

    b._launch_instance = launch_then_cancel  # type: ignore[method-assign]

    async def commit() -> bool:
        with scope:
            await b.commit(offer, f"cancelled-{when}")
        return scope.cancelled_caught

    assert await _in_virtual_time(clock, commit)
    assert len(fake.instances) == 1
    assert fake.live == [], "the launched instance was terminated, not orphaned"


@pytest.mark.anyio
async def test_an_instance_never_ready_is_given_up_at_start_by(fake: FakeLambda) -> None:
    """The contract says start within 60 s; the instance stays ``booting``. The commit
    gives up at start_by (not at the backend's 20-minute ready_timeout), terminates the
    instance and says why, so the negotiation can move on."""
    from aicontract import CapacityUnavailable, VirtualClock

    clock = VirtualClock()
    fake.now = clock.monotonic
    fake.boot_polls = 10**9  # never active
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake, clock=clock, poll_interval=1.0, poll_max=5.0)
    assert b.ready_timeout > 600
    contract = Contract(gpus=1, start_by="60s")
    offer = (await b.quote(contract)).offers[0]
    started = clock.monotonic()

    async def commit() -> str:
        with pytest.raises(CapacityUnavailable) as caught:
            await b.commit(offer, "never-ready")
        return str(caught.value)

    message = await _in_virtual_time(clock, commit)
    assert clock.monotonic() - started <= 60 + 5, "waited past the contract's start_by"
    assert "start_by" in message
    assert fake.live == [], "the instance that never came up was terminated"


@pytest.mark.anyio
async def test_max_spend_counts_a_revoked_lease_until_its_instance_is_terminated(
    fake: FakeLambda,
) -> None:
    """An ``unhealthy`` instance revokes its lease but keeps running (and billing) until
    the lease is released: max_spend must still count it, or a second commit goes over."""
    fake.add_type(H100, ["us-east-1"])
    b = backend(fake, max_spend="4 USD/h")
    negotiator = Negotiator(backends=[b])
    first = await negotiator.acquire(Contract(gpus=1))
    fake.live[0]["status"] = "unhealthy"
    await b.observe(first)
    assert first.state == LeaseState.REVOKED
    with pytest.raises(NoOffer, match="max_spend"):
        await negotiator.acquire(Contract(gpus=1))
    assert len(fake.live) == 1
    await first.release()
    second = await negotiator.acquire(Contract(gpus=1))
    assert [i["id"] for i in fake.live] == [second.details["instance_ids"]]
    await second.release()
