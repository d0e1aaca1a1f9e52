"""AWS EC2 backend: a real moto server for what moto has, botocore's Stubber for the rest."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import anyio
import boto3
import botocore.exceptions
import pytest
from botocore.stub import ANY, Stubber
from cloud_support import AWS_KEY_ID, AWS_SECRET, FAST_OPTIONS

from aicontract import (
    GPU,
    AuthenticationError,
    BackendError,
    ConfigError,
    Contract,
    Grant,
    LeaseState,
    Money,
    Negotiator,
    NoOffer,
    Offer,
    QuotaExceeded,
    create_backend,
)
from aicontract.backends.cloud.aws import TAG_KEY, AWSBackend

pytestmark = pytest.mark.anyio

FAST: dict[str, Any] = {**FAST_OPTIONS, "listing_lag": 0.5}
PRICES = {
    "g5.xlarge@eu-central-1": "1.258 USD/h",
    "g5.xlarge@us-east-1": "1.006 USD/h",
    "p4d.24xlarge@us-east-1": "32.77 USD/h",
}


def _image(endpoint: str, region: str) -> str:
    ec2 = boto3.client(
        "ec2",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=AWS_KEY_ID,
        aws_secret_access_key=AWS_SECRET,
    )
    return str(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


def moto_backend(endpoint: str, **kw: Any) -> AWSBackend:
    options = {
        **FAST,
        "regions": ["us-east-1", "eu-central-1"],
        "endpoint_url": endpoint,
        "access_key_id": AWS_KEY_ID,
        "secret_access_key": AWS_SECRET,
        "prices": PRICES,
        "images": {r: _image(endpoint, r) for r in ("us-east-1", "eu-central-1")},
        "capacity_blocks": False,
        **kw,
    }
    return AWSBackend(**options)


async def test_catalog_from_moto_offers_gpu_types_with_prices(moto_reset: str) -> None:
    quote = await moto_backend(moto_reset).quote(Contract(gpus=GPU(models=["A10G"])))
    found = {(o.region, o.details["instance_type"]): o for o in quote.offers}
    assert {("us-east-1", "g5.xlarge"), ("eu-central-1", "g5.xlarge")} <= set(found)
    assert [t for r, t in found if r == "eu-central-1"] == ["g5.xlarge"], "unpriced: not offered"
    eu = found[("eu-central-1", "g5.xlarge")]
    assert eu.jurisdiction == "EU"
    assert eu.grant.cpus == 4
    assert str(eu.grant.memory) == "16GiB"
    assert eu.grant.gpus == 1
    assert str(eu.price) == "1.258 USD/h"
    assert found[("us-east-1", "g5.xlarge")].jurisdiction == "US"


async def test_eu_contract_launches_in_frankfurt_with_a_lease_tag(moto_reset: str) -> None:
    backend = moto_backend(moto_reset)
    contract = Contract(gpus=1, jurisdictions=["EU"], workload={"ports": {"http": 8080}})
    lease = await Negotiator(backends=[backend]).acquire(contract)
    assert lease.region == "eu-central-1"
    assert lease.jurisdiction == "EU"
    ec2 = backend._client("ec2", "eu-central-1")
    [reservation] = ec2.describe_instances(
        Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [lease.details["tag"]]}]
    )["Reservations"]
    [instance] = reservation["Instances"]
    assert instance["InstanceType"] == "g5.xlarge"
    assert instance["State"]["Name"] == "running"
    assert lease.endpoints["http"].endswith(":8080")
    assert lease.env["MASTER_ADDR"] == instance["PrivateIpAddress"]
    await lease.release()
    state = ec2.describe_instances(InstanceIds=[instance["InstanceId"]])
    assert state["Reservations"][0]["Instances"][0]["State"]["Name"] in (
        "shutting-down",
        "terminated",
    )
    assert lease.state == LeaseState.RELEASED


class _LosesFirstAnswer:
    """A real client whose first run_instances succeeds at the server and then times out."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.launches = 0

    def run_instances(self, **kw: Any) -> Any:
        self.launches += 1
        answer = self._client.run_instances(**kw)
        if self.launches == 1:
            raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://moto")
        return answer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


async def test_launch_timeout_retried_yields_one_instance(moto_reset: str) -> None:
    wrapped: dict[str, _LosesFirstAnswer] = {}

    def factory(service: str, region: str) -> Any:
        client = boto3.client(
            service,
            region_name=region,
            endpoint_url=moto_reset,
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=AWS_SECRET,
        )
        wrapped[region] = _LosesFirstAnswer(client)
        return wrapped[region]

    backend = moto_backend(moto_reset, client_factory=factory, regions=["us-east-1"])
    lease = await Negotiator(backends=[backend]).acquire(Contract(gpus=1))
    assert wrapped["us-east-1"].launches == 1, "the retry found the tagged instance"
    ec2 = wrapped["us-east-1"]._client
    live = [
        i
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    assert [i["InstanceId"] for i in live] == [lease.details["instance_ids"]]


def _stubbed(region: str = "us-east-1") -> tuple[Any, Stubber]:
    client = boto3.client(
        "ec2", region_name=region, aws_access_key_id=AWS_KEY_ID, aws_secret_access_key=AWS_SECRET
    )
    return client, Stubber(client)


P4D = {
    "InstanceType": "p4d.24xlarge",
    "VCpuInfo": {"DefaultVCpus": 96},
    "MemoryInfo": {"SizeInMiB": 1179648},
    "GpuInfo": {
        "Gpus": [
            {
                "Name": "A100",
                "Manufacturer": "NVIDIA",
                "Count": 8,
                "MemoryInfo": {"SizeInMiB": 40960},
            }
        ],
        "TotalGpuMemoryInMiB": 327680,
    },
}


def _catalog(stub: Stubber) -> None:
    stub.add_response(
        "describe_instance_type_offerings",
        {
            "InstanceTypeOfferings": [
                {"InstanceType": "p4d.24xlarge", "LocationType": "region", "Location": "us-east-1"}
            ]
        },
        {"LocationType": "region", "Filters": ANY},
    )
    stub.add_response(
        "describe_instance_types", {"InstanceTypes": [P4D]}, {"InstanceTypes": ["p4d.24xlarge"]}
    )


async def test_capacity_block_is_a_reserved_offer_and_purchase_is_idempotent() -> None:
    client, stub = _stubbed()
    start = dt.datetime(2030, 1, 2, 11, 30, tzinfo=dt.timezone.utc)
    end = start + dt.timedelta(days=1)
    _catalog(stub)
    stub.add_response(
        "describe_capacity_block_offerings",
        {
            "CapacityBlockOfferings": [
                {
                    "CapacityBlockOfferingId": "cbr-0123456789abcdef0",
                    "InstanceType": "p4d.24xlarge",
                    "AvailabilityZone": "us-east-1a",
                    "InstanceCount": 1,
                    "StartDate": start,
                    "EndDate": end,
                    "CapacityBlockDurationHours": 24,
                    "UpfrontFee": "354.00",
                    "CurrencyCode": "USD",
                    "Tenancy": "default",
                }
            ]
        },
        {"InstanceType": "p4d.24xlarge", "InstanceCount": 1, "CapacityDurationHours": 24},
    )
    stub.add_response(
        "describe_capacity_reservations", {"CapacityReservations": []}, {"Filters": ANY}
    )
    stub.add_response(
        "purchase_capacity_block",
        {
            "CapacityReservation": {
                "CapacityReservationId": "cr-0123456789abcdef0",
                "InstanceType": "p4d.24xlarge",
                "AvailabilityZone": "us-east-1a",
                "TotalInstanceCount": 1,
                "State": "scheduled",
                "StartDate": start,
                "EndDate": end,
                "ReservationType": "capacity-block",
            }
        },
        {
            "CapacityBlockOfferingId": "cbr-0123456789abcdef0",
            "InstancePlatform": "Linux/UNIX",
            "TagSpecifications": ANY,
        },
    )
    backend = AWSBackend(
        **{
            **FAST,
            "regions": ["us-east-1"],
            "client_factory": lambda s, r: client,
            "prices": PRICES,
        }
    )
    contract = Contract(gpus=8, duration="20h", min_guarantee="reserved")
    with stub:
        round_ = await Negotiator(backends=[backend]).quote(contract)
        [offer] = [o for o in round_.offers if o.guarantee == "reserved"]
        assert offer.guarantee == "reserved"
        assert offer.details["market"] == "capacity-block"
        assert str(offer.price) == "14.75 USD/h"
        assert offer.start_in > 0
        lease = await backend.commit(offer, "block-1")
        again = await backend.commit(offer, "block-1")
        stub.assert_no_pending_responses()
    assert again is lease
    assert lease.guarantee == "reserved"
    assert lease.env["AICONTRACT_CAPACITY_RESERVATION_ID"] == "cr-0123456789abcdef0"
    assert lease.expires_at == end.timestamp()


async def test_capacity_block_found_by_tag_is_not_bought_twice() -> None:
    client, stub = _stubbed()
    start = dt.datetime(2030, 1, 2, 11, 30, tzinfo=dt.timezone.utc)
    stub.add_response(
        "describe_capacity_reservations",
        {
            "CapacityReservations": [
                {
                    "CapacityReservationId": "cr-0aaaaaaaaaaaaaaaa",
                    "State": "scheduled",
                    "StartDate": start,
                    "EndDate": start + dt.timedelta(days=1),
                }
            ]
        },
        {"Filters": ANY},
    )
    backend = AWSBackend(
        **{**FAST, "regions": ["us-east-1"], "client_factory": lambda s, r: client}
    )

    offer = Offer(
        id="o",
        backend="aws",
        contract=Contract(gpus=8),
        grant=Grant(gpus=8),
        guarantee="reserved",
        region="us-east-1",
        jurisdiction="US",
        provider="aws",
        isolation="dedicated-node",
        price=None,
        expires_at=4e9,
        details={"market": "capacity-block", "offering_id": "cbr-x", "nodes": "1"},
    )
    with stub:
        lease = await backend.commit(offer, "block-2")  # no purchase_capacity_block stubbed
        stub.assert_no_pending_responses()
    assert lease.details["capacity_reservation_id"] == "cr-0aaaaaaaaaaaaaaaa"


def _block_offer(price: str | None = None) -> Any:
    return Offer(
        id="o",
        backend="aws",
        contract=Contract(gpus=8),
        grant=Grant(gpus=8),
        guarantee="reserved",
        region="us-east-1",
        jurisdiction="US",
        provider="aws",
        isolation="dedicated-node",
        price=Money(price) if price else None,
        expires_at=4e9,
        details={"market": "capacity-block", "offering_id": "cbr-x", "nodes": "1"},
    )


async def test_capacity_block_purchase_that_timed_out_is_not_bought_again() -> None:
    # The purchase went through at AWS but its answer was lost (a 5xx): the retry must
    # find the block by its tag, not buy a second, non-refundable one (guarantee 5).
    client, stub = _stubbed()
    start = dt.datetime(2030, 1, 2, 11, 30, tzinfo=dt.timezone.utc)
    stub.add_response(
        "describe_capacity_reservations", {"CapacityReservations": []}, {"Filters": ANY}
    )
    stub.add_client_error(
        "purchase_capacity_block", service_error_code="InternalError", http_status_code=500
    )
    stub.add_response(
        "describe_capacity_reservations",
        {
            "CapacityReservations": [
                {
                    "CapacityReservationId": "cr-0bbbbbbbbbbbbbbbb",
                    "State": "scheduled",
                    "StartDate": start,
                    "EndDate": start + dt.timedelta(days=1),
                }
            ]
        },
        {"Filters": ANY},
    )
    backend = AWSBackend(
        **{**FAST, "regions": ["us-east-1"], "client_factory": lambda s, r: client}
    )
    with stub:
        lease = await backend.commit(_block_offer(), "block-3")
        stub.assert_no_pending_responses()
    assert lease.details["capacity_reservation_id"] == "cr-0bbbbbbbbbbbbbbbb"


async def test_concurrent_capacity_block_commits_respect_max_spend() -> None:
    # Two blocks at 10 USD/h each under a 15 USD/h cap: only one may be bought.
    start = dt.datetime(2030, 1, 2, 11, 30, tzinfo=dt.timezone.utc)
    purchases: list[str] = []

    class Client:
        def describe_capacity_reservations(self, **kw: Any) -> dict[str, Any]:
            return {"CapacityReservations": []}

        def purchase_capacity_block(self, **kw: Any) -> dict[str, Any]:
            purchases.append(kw["TagSpecifications"][0]["Tags"][0]["Value"])
            return {
                "CapacityReservation": {
                    "CapacityReservationId": f"cr-{len(purchases)}",
                    "State": "scheduled",
                    "StartDate": start,
                    "EndDate": start + dt.timedelta(days=1),
                }
            }

    client = Client()
    backend = AWSBackend(
        **{
            **FAST,
            "regions": ["us-east-1"],
            "client_factory": lambda s, r: client,
            "max_spend": "15 USD/h",
        }
    )
    refused: list[QuotaExceeded] = []

    async def commit(key: str) -> None:
        try:
            await backend.commit(_block_offer("10 USD/h"), key)
        except QuotaExceeded as exc:
            refused.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(commit, "block-a")
        tg.start_soon(commit, "block-b")
    assert len(purchases) == 1
    assert len(refused) == 1


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        ("InsufficientInstanceCapacity", "next-offer"),
        ("VcpuLimitExceeded", "quota"),
        ("UnauthorizedOperation", "account"),
    ],
)
async def test_run_instances_errors_are_mapped(code: str, outcome: str) -> None:
    client, stub = _stubbed()
    _catalog(stub)
    stub.add_response("describe_instances", {"Reservations": []}, {"Filters": ANY})
    stub.add_client_error("run_instances", service_error_code=code, http_status_code=400)
    stub.add_response("describe_instances", {"Reservations": []}, {"Filters": ANY})  # cleanup
    backend = AWSBackend(
        **{
            **FAST,
            "regions": ["us-east-1"],
            "client_factory": lambda s, r: client,
            "prices": PRICES,
            "image_id": "ami-12345678",
            "capacity_blocks": False,
        }
    )
    with stub, pytest.raises(NoOffer) as caught:
        await Negotiator(backends=[backend]).acquire(Contract(gpus=8))
    [rejection] = [r for r in caught.value.rejections if code in r.available]
    expected = {"next-offer": "capacity at commit"}.get(outcome, outcome)
    assert rejection.requirement == expected


async def test_throttling_is_retried() -> None:
    client, stub = _stubbed()
    stub.add_client_error(
        "describe_instance_type_offerings",
        service_error_code="RequestLimitExceeded",
        http_status_code=503,
    )
    _catalog(stub)
    backend = AWSBackend(
        **{
            **FAST,
            "regions": ["us-east-1"],
            "client_factory": lambda s, r: client,
            "prices": PRICES,
            "capacity_blocks": False,
        }
    )
    with stub:
        quote = await backend.quote(Contract(gpus=8))
    assert [o.details["instance_type"] for o in quote.offers] == ["p4d.24xlarge"]


async def test_pricing_api_prices_when_reachable() -> None:
    ec2, stub = _stubbed()
    pricing = boto3.client(
        "pricing",
        region_name="us-east-1",
        aws_access_key_id=AWS_KEY_ID,
        aws_secret_access_key=AWS_SECRET,
    )
    price_stub = Stubber(pricing)
    stub.add_response(
        "describe_instance_type_offerings",
        {
            "InstanceTypeOfferings": [
                {"InstanceType": "p4d.24xlarge", "LocationType": "region", "Location": "eu-west-1"}
            ]
        },
        {"LocationType": "region", "Filters": []},
    )
    stub.add_response(
        "describe_instance_types", {"InstanceTypes": [P4D]}, {"InstanceTypes": ["p4d.24xlarge"]}
    )
    product = (
        '{"terms": {"OnDemand": {"X.JRTCKXETXF": {"priceDimensions": {"X.6YS6EN2CT7":'
        ' {"unit": "Hrs", "pricePerUnit": {"USD": "35.3900000000"}}}}}}}'
    )
    price_stub.add_response(
        "get_products",
        {"PriceList": [product], "FormatVersion": "aws_v1"},
        {"ServiceCode": "AmazonEC2", "Filters": ANY, "MaxResults": 1},
    )
    backend = AWSBackend(
        **{
            **FAST,
            "regions": ["eu-west-1"],
            "use_pricing_api": True,
            "capacity_blocks": False,
            "client_factory": lambda s, r: pricing if s == "pricing" else ec2,
        }
    )
    with stub, price_stub:
        quote = await backend.quote(Contract(gpus=8, jurisdictions=["IE"]))
    [offer] = quote.offers
    assert str(offer.price) == "35.39 USD/h"
    assert offer.jurisdiction == "IE"


async def test_unknown_profile_is_a_config_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    # A profile missing from ~/.aws is bad configuration: a ConfigError naming it,
    # not botocore's ProfileNotFound escaping from the quote as a bare traceback.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    backend = AWSBackend(**{**FAST, "regions": ["us-east-1"], "profile": "no-such-profile"})
    with pytest.raises(ConfigError, match="no-such-profile"):
        await backend.quote(Contract(gpus=8))


async def test_missing_credentials_say_what_to_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """No key in the env, no ~/.aws, no instance role: one AuthenticationError that
    names the variables to set, never botocore's NoCredentialsError traceback."""
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    backend = AWSBackend(**{**FAST, "regions": ["us-east-1"], "capacity_blocks": False})
    with pytest.raises(AuthenticationError) as caught:
        await backend.quote(Contract(gpus=8))
    text = str(caught.value)
    assert "AWS_ACCESS_KEY_ID" in text
    assert "AWS_SECRET_ACCESS_KEY" in text
    assert "AWS_PROFILE" in text


async def test_create_backend_reads_env(monkeypatch: pytest.MonkeyPatch, moto_reset: str) -> None:
    monkeypatch.setenv("AICONTRACT_AWS_REGIONS", "eu-central-1")
    monkeypatch.setenv("AICONTRACT_AWS_ENDPOINT_URL", moto_reset)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    backend = create_backend(
        "aws", prices=PRICES, **{k: v for k, v in FAST.items() if k != "environ"}
    )
    assert isinstance(backend, AWSBackend)
    assert backend.regions == ["eu-central-1"]
    quote = await backend.quote(Contract(gpus=1))
    assert {o.region for o in quote.offers} == {"eu-central-1"}


async def test_no_aws_credential_in_logs_or_errors(
    moto_reset: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    backend = moto_backend(moto_reset, regions=["us-east-1"])
    lease = await Negotiator(backends=[backend]).acquire(Contract(gpus=1))
    await lease.release()
    texts = [repr(backend), repr(lease), str(lease.to_dict())]
    texts += [r.getMessage() for r in caplog.records]
    assert any("botocore" in r.name for r in caplog.records), "boto3 logged at DEBUG"
    for text in texts:
        assert AWS_SECRET not in text
        assert AWS_KEY_ID not in text


async def test_capacity_blocks_go_through_the_one_commit_skeleton() -> None:
    # The base's commit (offer checks, key lock, spend) wraps every market: an expired
    # Capacity Block offer is refused before any call, like an on-demand one.
    import msgspec

    from aicontract import CapacityUnavailable

    client, stub = _stubbed()
    backend = AWSBackend(
        **{**FAST, "regions": ["us-east-1"], "client_factory": lambda s, r: client}
    )
    expired = msgspec.structs.replace(_block_offer(), expires_at=1.0)
    with stub:  # nothing stubbed: any AWS call would fail the test
        with pytest.raises(CapacityUnavailable, match="has expired"):
            await backend.commit(expired, "block-expired")
        other = msgspec.structs.replace(_block_offer(), backend="elsewhere")
        with pytest.raises(CapacityUnavailable, match="is from elsewhere"):
            await backend.commit(other, "block-elsewhere")


class _LagsAndLosesFirstAnswer(_LosesFirstAnswer):
    """Loses the first launch answer, and its search by tag shows the new instance late."""

    def __init__(self, client: Any, hidden_searches: int) -> None:
        super().__init__(client)
        self.tokens: list[str] = []
        self.hidden_searches = hidden_searches

    def run_instances(self, **kw: Any) -> Any:
        self.tokens.append(kw["ClientToken"])
        return super().run_instances(**kw)

    def describe_instances(self, **kw: Any) -> Any:
        answer = self._client.describe_instances(**kw)
        if "Filters" in kw and self.launches and self.hidden_searches > 0:
            self.hidden_searches -= 1  # the list has not caught up with the launch yet
            return {**answer, "Reservations": []}
        return answer


async def test_ec2_lost_launch_answer_with_a_lagging_list_is_one_instance(
    moto_reset: str,
) -> None:
    """EC2's reads are eventually consistent: after a lost launch answer the search by
    tag may miss the instance. The relaunch carries the same ClientToken (EC2's own
    idempotency), and the backend first waits out the listing lag (moto ignores tokens)."""
    wrapped: dict[str, _LagsAndLosesFirstAnswer] = {}

    def factory(service: str, region: str) -> Any:
        client = boto3.client(
            service,
            region_name=region,
            endpoint_url=moto_reset,
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=AWS_SECRET,
        )
        wrapped[region] = _LagsAndLosesFirstAnswer(client, hidden_searches=3)
        return wrapped[region]

    backend = moto_backend(moto_reset, client_factory=factory, regions=["us-east-1"])
    lease = await Negotiator(backends=[backend]).acquire(Contract(gpus=1))
    client = wrapped["us-east-1"]
    assert client.launches == 1, "the lagging list was waited out, not relaunched into"
    assert client.tokens == [lease.details["tag"]], "the launch carried its ClientToken"
    live = [
        i
        for r in client._client.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    assert [i["InstanceId"] for i in live] == [lease.details["instance_ids"]]
    await lease.release()


class _LoopingPages:
    """An EC2 client whose listing always answers with the same NextToken (a provider bug,
    a proxy that replays): a client that trusts it pages forever."""

    def __init__(self) -> None:
        self.calls = 0

    def describe_instance_type_offerings(self, **params: Any) -> dict[str, Any]:
        self.calls += 1
        if self.calls > 100:
            raise RuntimeError("paged 100 times: the loop never ends")
        offering = {"InstanceType": "p4d.24xlarge", "LocationType": "region"}
        return {"InstanceTypeOfferings": [offering], "NextToken": "same-token"}


async def test_a_repeated_next_token_ends_the_listing_with_a_clear_error() -> None:
    client = _LoopingPages()
    backend = AWSBackend(
        **{
            **FAST,
            "regions": ["us-east-1"],
            "client_factory": lambda s, r: client,
            "prices": PRICES,
            "capacity_blocks": False,
            "attempts": 1,
        }
    )
    with pytest.raises(BackendError, match="NextToken"):
        await backend.quote(Contract(gpus=8))
    assert client.calls <= 3
