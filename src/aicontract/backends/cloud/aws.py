"""AWS EC2 through boto3 (the ``aicontract[aws]`` extra), with Capacity Blocks for ML.

Catalog: per configured region, ``describe_instance_type_offerings``
(``LocationType="region"``) for the GPU types we can price, then
``describe_instance_types`` for their GPUs (``GpuInfo.Gpus[].Name/Count/
MemoryInfo.SizeInMiB``), vCPUs and memory. Prices come from the price table
(see :mod:`.prices`) or, with ``use_pricing_api=True``, the AWS Price List API.

On-demand offers are ``allocated``-level once launched: ``run_instances``
with a ``aicontract-lease`` tag and a ``ClientToken`` (EC2's own idempotency),
and every attempt first looks for an instance with that tag.

**Capacity Blocks for ML** are the one EC2 primitive that is a true
time-boxed guarantee: ``describe_capacity_block_offerings`` for the
contract's duration become ``reserved``-level offers (price per hour = the
upfront fee / the block's hours), and commit is ``purchase_capacity_block``.
The block is paid up front and cannot be cancelled: releasing the lease
terminates instances launched into it but refunds nothing.

boto3 is synchronous; every call runs in a worker thread (``anyio.to_thread``).
Its own retries are off — transient errors are retried by the backend.
"""

from __future__ import annotations

import datetime as _dt
import functools
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import anyio
import anyio.to_thread

from ...clock import Clock, system_clock
from ...contract import Contract
from ...errors import (
    AuthenticationError,
    BackendError,
    CapacityUnavailable,
    ConfigError,
    LeaseLost,
    QuotaExceeded,
    TransientBackendError,
)
from ...governance.identity import Identity
from ...leases import Lease
from ...offer import Offer
from ...units import Money
from ..base import granted_lease, offer_details
from .base import CatalogEntry, CloudBackend, InstanceState, InstanceView, lease_tag, mib
from .credentials import Secret, load_secret, redact, register_secret
from .interconnect import aws_interconnect
from .prices import AWS_PRICES, PriceTable, load_price_file, parse_prices
from .regions import AWS_REGIONS, region_country

try:
    import boto3
    import botocore.config
    import botocore.exceptions
    import botocore.parsers
except ImportError as exc:  # pragma: no cover - the registry turns this into a hint
    # Keep the missing module's name: the registry maps it to the extra to install.
    raise ImportError(
        f"the aws backend needs boto3: pip install 'aicontract[aws]' ({exc})", name=exc.name
    ) from exc

__all__ = ["TAG_KEY", "AWSBackend"]

TAG_KEY = "aicontract-lease"
_CAPACITY_CODES = frozenset(
    {
        "InsufficientInstanceCapacity",
        "InsufficientCapacity",
        "InsufficientHostCapacity",
        "InsufficientReservedInstanceCapacity",
        "InsufficientCapacityOnHost",
        "Unsupported",
        "ReservationCapacityExceeded",
        "CapacityBlockOfferingNotAvailable",
    }
)
_QUOTA_CODES = frozenset(
    {
        "InstanceLimitExceeded",
        "VcpuLimitExceeded",
        "MaxSpotInstanceCountExceeded",
        "ResourceLimitExceeded",
        "CapacityReservationLimitExceeded",
    }
)
_AUTH_CODES = frozenset(
    {
        "AuthFailure",
        "UnauthorizedOperation",
        "InvalidClientTokenId",
        "SignatureDoesNotMatch",
        "OptInRequired",
        "Blocked",
        "ExpiredToken",
        "AccessDenied",
        "AccessDeniedException",
        "UnrecognizedClientException",
        "PendingVerification",
    }
)
_TRANSIENT_CODES = frozenset(
    {
        "RequestLimitExceeded",
        "Throttling",
        "ThrottlingException",
        "InternalError",
        "InternalFailure",
        "Unavailable",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
        "IdempotentParameterMismatch",
    }
)
_MAX_PAGES = 1000  # EC2 listings here are a few pages; far more is a provider loop
_NOT_FOUND = frozenset({"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"})
_STATES = {
    "pending": InstanceState.BOOTING,
    "running": InstanceState.READY,
    "stopping": InstanceState.UNHEALTHY,
    "stopped": InstanceState.UNHEALTHY,
    "shutting-down": InstanceState.TERMINATED,
    "terminated": InstanceState.TERMINATED,
}
# Types Capacity Blocks are sold for (EC2 User Guide, "Capacity Blocks for ML").
_BLOCK_FAMILIES = ("p4d.", "p4de.", "p5.", "p5e.", "p5en.", "p6-b200.", "trn1.", "trn2.")


class _NotFound(Exception):
    pass


class AWSBackend(CloudBackend):
    """GPU instances from AWS EC2, and Capacity Blocks for ML as reserved offers.

    Configuration (keyword options, else the environment):

    ``regions``
        ``AICONTRACT_AWS_REGIONS`` (comma-separated), else ``AWS_REGION`` /
        ``AWS_DEFAULT_REGION``, else ``us-east-1``.
    ``image_id``
        ``AICONTRACT_AWS_IMAGE_ID``: the AMI to launch (or ``images`` per region).
    ``key_name``, ``subnet_id``, ``security_group_ids``
        passed to ``run_instances`` when given (``AICONTRACT_AWS_KEY_NAME`` ...).
    ``access_key_id``, ``secret_access_key``, ``session_token``, ``profile``
        explicit credentials; otherwise boto3's own chain (env, ``~/.aws``,
        instance role). Never printed.
    ``endpoint_url``
        ``AICONTRACT_AWS_ENDPOINT_URL``: another EC2 endpoint (a moto server);
        ``AICONTRACT_AWS_STS_ENDPOINT_URL`` another STS endpoint (for :meth:`identity`).
    ``prices``, ``use_pricing_api``
        ``{"type@region": "x USD/h"}`` or ``AICONTRACT_AWS_PRICES_FILE``; the
        kept table otherwise.
    ``capacity_blocks``
        offer Capacity Blocks when the contract has a duration (default on).
    """

    provider = "aws"
    # Launches carry a ClientToken (EC2's own idempotency), so a relaunch is the same
    # launch; EC2's reads are eventually consistent too, so a lost answer is still
    # looked for a few seconds before relaunching, and before cleanup gives up.
    default_listing_lag = 5.0

    def __init__(
        self,
        *,
        regions: Sequence[str] | str | None = None,
        image_id: str | None = None,
        images: Mapping[str, str] | None = None,
        key_name: str | None = None,
        subnet_id: str | None = None,
        security_group_ids: Sequence[str] | None = None,
        access_key_id: str | Secret | None = None,
        secret_access_key: str | Secret | None = None,
        session_token: str | Secret | None = None,
        profile: str | None = None,
        endpoint_url: str | None = None,
        prices: Mapping[str, str | Money] | None = None,
        use_pricing_api: bool = False,
        capacity_blocks: bool = True,
        client_factory: Callable[[str, str], Any] | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Clock = system_clock,
        requests_per_second: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(clock=clock, requests_per_second=requests_per_second, **options)
        env = os.environ if environ is None else environ
        if regions is None:
            listed = (
                env.get("AICONTRACT_AWS_REGIONS")
                or env.get("AWS_REGION")
                or env.get("AWS_DEFAULT_REGION", "us-east-1")
            )
            regions = listed
        if isinstance(regions, str):
            regions = [r.strip() for r in regions.split(",") if r.strip()]
        self.regions = list(regions)
        self.image_id = image_id or env.get("AICONTRACT_AWS_IMAGE_ID") or None
        self.images = dict(images or {})
        self.key_name = key_name or env.get("AICONTRACT_AWS_KEY_NAME") or None
        self.subnet_id = subnet_id or env.get("AICONTRACT_AWS_SUBNET_ID") or None
        groups = security_group_ids
        if groups is None:
            groups = [g for g in env.get("AICONTRACT_AWS_SECURITY_GROUP_IDS", "").split(",") if g]
        self.security_group_ids = list(groups)
        self.endpoint_url = endpoint_url or env.get("AICONTRACT_AWS_ENDPOINT_URL") or None
        self.sts_endpoint_url = env.get("AICONTRACT_AWS_STS_ENDPOINT_URL") or None
        self.profile = profile
        self._access_key_id = load_secret(
            "aws", "access_key_id", env_vars=(), given=access_key_id, environ={}
        )
        self._secret_access_key = load_secret(
            "aws", "secret_access_key", env_vars=(), given=secret_access_key, environ={}
        )
        self._session_token = load_secret(
            "aws", "session_token", env_vars=(), given=session_token, environ={}
        )
        # boto3's env credentials are masked too, in case a DEBUG log prints them.
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            load_secret("aws", name.lower(), env_vars=(name,), environ=env)
        table: dict[tuple[str, str], Money] = dict(AWS_PRICES)
        price_file = env.get("AICONTRACT_AWS_PRICES_FILE")
        if price_file:
            table.update(load_price_file(price_file))
        if prices:
            table.update(parse_prices(prices))
        self.prices: PriceTable = table
        self.use_pricing_api = use_pricing_api
        self.capacity_blocks = capacity_blocks
        self._client_factory = client_factory
        self._clients: dict[tuple[str, str], Any] = {}

    # -- boto3 -----------------------------------------------------------------------------

    def _client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            if self._client_factory is not None:
                self._clients[key] = self._client_factory(service, region)
            else:
                session = boto3.session.Session(
                    aws_access_key_id=self._access_key_id.reveal() if self._access_key_id else None,
                    aws_secret_access_key=(
                        self._secret_access_key.reveal() if self._secret_access_key else None
                    ),
                    aws_session_token=self._session_token.reveal() if self._session_token else None,
                    profile_name=self.profile,
                    region_name=region,
                )
                config = botocore.config.Config(
                    retries={"max_attempts": 1, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=30,
                    user_agent_extra="aicontract",
                )
                self._register_found_credentials(session)
                endpoint = {"ec2": self.endpoint_url, "sts": self.sts_endpoint_url}.get(service)
                self._clients[key] = session.client(service, endpoint_url=endpoint, config=config)
        return self._clients[key]

    @staticmethod
    def _register_found_credentials(session: Any) -> None:
        """Mask what boto3's own chain found (a profile, an instance role) in every log."""
        try:
            found = session.get_credentials()
            frozen = found.get_frozen_credentials() if found is not None else None
        except botocore.exceptions.BotoCoreError:
            return  # the client's first call reports it, as a ConfigError naming the profile
        if frozen is not None:
            for value in (frozen.access_key, frozen.secret_key, frozen.token):
                register_secret(value)

    async def _call(self, region: str, operation: str, service: str = "ec2", **params: Any) -> Any:
        """One boto3 call in a worker thread, its errors mapped into the hierarchy."""
        try:
            client = self._client(service, region)
        except botocore.exceptions.BotoCoreError as exc:
            # An unknown profile or region: the configuration, not the provider, is wrong.
            raise ConfigError(
                redact(f"[{self.name}] cannot create an AWS {service} client in {region}: {exc}")
            ) from None
        method = getattr(client, operation)
        try:
            return await anyio.to_thread.run_sync(functools.partial(method, **params))
        except botocore.exceptions.ClientError as exc:
            raise self._error(operation, exc) from None
        except botocore.exceptions.NoCredentialsError:
            raise AuthenticationError(
                self.name,
                "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
                " (and AWS_SESSION_TOKEN for temporary ones), or AWS_PROFILE to a profile in"
                " ~/.aws, or pass access_key_id=/secret_access_key=; on EC2 an instance"
                " role also works",
            ) from None
        except (
            botocore.exceptions.ConnectionError,
            botocore.exceptions.HTTPClientError,
            botocore.parsers.ResponseParserError,
        ) as exc:
            raise TransientBackendError(self.name, f"{operation}: {type(exc).__name__}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise BackendError(self.name, redact(f"{operation}: {exc}")) from None

    def _error(self, operation: str, exc: botocore.exceptions.ClientError) -> Exception:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        text = redact(f"{operation}: {code}: {error.get('Message', '')}")
        if code in _NOT_FOUND:
            return _NotFound(text)
        if code in _CAPACITY_CODES:
            return CapacityUnavailable(self.name, text)
        if code in _QUOTA_CODES:
            return QuotaExceeded(self.name, text)
        if code in _AUTH_CODES:
            return AuthenticationError(self.name, text)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if code in _TRANSIENT_CODES or (isinstance(status, int) and status >= 500):
            return TransientBackendError(self.name, text)
        return BackendError(self.name, text)

    async def _pages(self, region: str, operation: str, key: str, **params: Any) -> list[Any]:
        items: list[Any] = []
        token: str | None = None
        seen: set[str] = set()
        while True:
            page = await self._call(
                region, operation, **params, **({"NextToken": token} if token else {})
            )
            items.extend(page.get(key, []))
            token = page.get("NextToken")
            if not token:
                return items
            # A token seen before (a provider bug, a replaying proxy) would page forever.
            if token in seen or len(seen) >= _MAX_PAGES:
                raise BackendError(
                    self.name,
                    f"{operation} in {region}: the listing did not end (NextToken repeated,"
                    f" or over {_MAX_PAGES} pages); expected pages that end",
                )
            seen.add(token)

    # -- catalog ---------------------------------------------------------------------------

    def _price(self, itype: str, region: str) -> Money | None:
        return self.prices.get((itype, region))

    async def _pricing_api(self, itypes: Iterable[str], region: str) -> dict[str, Money]:
        """On-demand Linux prices from the AWS Price List API (its endpoint is us-east-1)."""
        out: dict[str, Money] = {}
        for itype in itypes:
            filters = [
                {"Type": "TERM_MATCH", "Field": field, "Value": value}
                for field, value in (
                    ("instanceType", itype),
                    ("regionCode", region),
                    ("operatingSystem", "Linux"),
                    ("tenancy", "Shared"),
                    ("preInstalledSw", "NA"),
                    ("capacitystatus", "Used"),
                )
            ]
            answer = await self._call(
                "us-east-1",
                "get_products",
                service="pricing",
                ServiceCode="AmazonEC2",
                Filters=filters,
                MaxResults=1,
            )
            for raw in answer.get("PriceList", []):
                price = _on_demand_usd(raw)
                if price is not None:
                    out[itype] = Money.per_hour(price, "USD")
        return out

    async def _list_catalog(self) -> list[CatalogEntry]:
        entries: list[CatalogEntry] = []
        known = sorted({itype for itype, _ in self.prices})
        for region in self.regions:
            wanted = known if not self.use_pricing_api else None
            filters = [{"Name": "instance-type", "Values": wanted}] if wanted else []
            offered = await self._pages(
                region,
                "describe_instance_type_offerings",
                "InstanceTypeOfferings",
                LocationType="region",
                Filters=filters,
            )
            names = sorted({o["InstanceType"] for o in offered})
            infos: list[Any] = []
            for start in range(0, len(names), 100):
                infos += await self._pages(
                    region,
                    "describe_instance_types",
                    "InstanceTypes",
                    InstanceTypes=names[start : start + 100],
                )
            gpu_infos = [i for i in infos if i.get("GpuInfo", {}).get("Gpus")]
            live: dict[str, Money] = {}
            if self.use_pricing_api:
                try:
                    live = await self._pricing_api([i["InstanceType"] for i in gpu_infos], region)
                except BackendError as exc:  # the Price List API is optional
                    self._log_pricing(exc)
            for info in gpu_infos:
                entry = self._entry(info, region, live.get(info["InstanceType"]))
                if entry is not None:
                    entries.append(entry)
        return entries

    def _log_pricing(self, exc: BackendError) -> None:
        from .base import log

        log.warning("%s: Price List API unreachable (%s); using the price table", self.name, exc)

    def _entry(
        self, info: Mapping[str, Any], region: str, live: Money | None
    ) -> CatalogEntry | None:
        itype = str(info["InstanceType"])
        gpu = info["GpuInfo"]["Gpus"][0]
        count = sum(int(g.get("Count", 0)) for g in info["GpuInfo"]["Gpus"])
        memory_mib = gpu.get("MemoryInfo", {}).get("SizeInMiB")
        storage = info.get("InstanceStorageInfo", {}).get("TotalSizeInGB")
        return CatalogEntry(
            instance_type=itype,
            region=region,
            country=region_country(region, AWS_REGIONS, _region_description(region)),
            gpu_model=str(gpu.get("Name")) if gpu.get("Name") else None,
            gpus=count,
            gpu_memory=mib(int(memory_mib)) if memory_mib else None,
            vcpus=int(info["VCpuInfo"]["DefaultVCpus"]),
            memory=mib(int(info["MemoryInfo"]["SizeInMiB"])),
            disk=mib(int(storage) * 1024) if storage else None,
            price=live or self._price(itype, region),
            details={"market": "on-demand"},
            gpu_interconnect=aws_interconnect(itype, count),
        )

    async def _contract_entries(self, contract: Contract) -> list[CatalogEntry]:
        duration = contract.terms.duration
        if not self.capacity_blocks or duration is None or contract.resources.gpus is None:
            return []
        hours = _block_hours(duration.seconds)
        if hours is None:
            return []
        entries: list[CatalogEntry] = []
        catalog = await self.catalog()
        now = self.clock.time()
        seen: set[tuple[str, str]] = set()
        for base in catalog:
            if not base.instance_type.startswith(_BLOCK_FAMILIES):
                continue
            if (base.instance_type, base.region) in seen:
                continue
            seen.add((base.instance_type, base.region))
            nodes = self._nodes_for(base, contract)
            found = await self._retrying(
                lambda b=base, n=nodes: self._pages(  # type: ignore[misc]
                    b.region,
                    "describe_capacity_block_offerings",
                    "CapacityBlockOfferings",
                    InstanceType=b.instance_type,
                    InstanceCount=n,
                    CapacityDurationHours=hours,
                )
            )
            for block in found:
                entry = self._block_entry(base, block, nodes, now)
                if entry is not None:
                    entries.append(entry)
        return entries

    def _block_entry(
        self, base: CatalogEntry, block: Mapping[str, Any], nodes: int, now: float
    ) -> CatalogEntry | None:
        hours = int(block.get("CapacityBlockDurationHours") or 0)
        fee = block.get("UpfrontFee")
        if hours <= 0 or fee is None or int(block.get("InstanceCount", 0)) != nodes:
            return None
        per_instance = Decimal(str(fee)) / hours / nodes
        start, end = block["StartDate"], block["EndDate"]
        return msgspec_replace(
            base,
            price=Money.per_hour(
                format(per_instance.quantize(Decimal("0.0001")).normalize(), "f"),
                str(block.get("CurrencyCode", "USD")),
            ),
            guarantee="reserved",
            start_in=max(0.0, start.timestamp() - now),
            max_nodes=nodes,
            details={
                "market": "capacity-block",
                "offering_id": str(block["CapacityBlockOfferingId"]),
                "availability_zone": str(block.get("AvailabilityZone", "")),
                "starts_at": start.isoformat(),
                "ends_at": end.isoformat(),
                "upfront_fee": str(fee),
            },
        )

    # -- instances -------------------------------------------------------------------------

    def _view(self, data: Mapping[str, Any], region: str) -> InstanceView:
        raw = str(data.get("State", {}).get("Name", ""))
        state = _STATES.get(raw, InstanceState.UNHEALTHY)
        reason = str(data.get("StateReason", {}).get("Code", ""))
        if state == InstanceState.TERMINATED and "Spot" in reason:
            state = InstanceState.PREEMPTED
        return InstanceView(
            id=str(data["InstanceId"]),
            state=state,
            region=region,
            public_ip=data.get("PublicIpAddress") or None,
            private_ip=data.get("PrivateIpAddress") or None,
            raw_state=raw,
        )

    async def _find_instance(self, tag: str, region: str) -> InstanceView | None:
        reservations = await self._pages(
            region,
            "describe_instances",
            "Reservations",
            Filters=[
                {"Name": f"tag:{TAG_KEY}", "Values": [tag]},
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ],
        )
        for reservation in reservations:
            for instance in reservation.get("Instances", []):
                return self._view(instance, region)
        return None

    async def _launch_instance(self, offer: Offer, tag: str) -> str:
        image = self.images.get(offer.region) or self.image_id
        if not image:
            raise ConfigError(
                f"[{self.name}] no AMI to launch in {offer.region}: set AICONTRACT_AWS_IMAGE_ID"
                " (or image_id= / images={region: ami})"
            )
        params: dict[str, Any] = {
            "ImageId": image,
            "InstanceType": offer.details["instance_type"],
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": tag[:64],
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": [{"Key": TAG_KEY, "Value": tag}, {"Key": "Name", "Value": tag}],
                }
            ],
        }
        if self.key_name:
            params["KeyName"] = self.key_name
        if self.subnet_id:
            params["SubnetId"] = self.subnet_id
        if self.security_group_ids:
            params["SecurityGroupIds"] = list(self.security_group_ids)
        reservation = offer.details.get("capacity_reservation_id")
        if reservation:
            params["InstanceMarketOptions"] = {"MarketType": "capacity-block"}
            params["CapacityReservationSpecification"] = {
                "CapacityReservationTarget": {"CapacityReservationId": reservation}
            }
        answer = await self._call(offer.region, "run_instances", **params)
        instances = answer.get("Instances") or []
        if len(instances) != 1:
            raise TransientBackendError(self.name, "run_instances answered without one instance")
        return str(instances[0]["InstanceId"])

    async def _describe_instance(self, instance_id: str, region: str) -> InstanceView | None:
        try:
            answer = await self._call(region, "describe_instances", InstanceIds=[instance_id])
        except _NotFound:
            return None
        for reservation in answer.get("Reservations", []):
            for instance in reservation.get("Instances", []):
                return self._view(instance, region)
        return None

    async def _terminate_instances(self, instance_ids: Sequence[str], region: str) -> None:
        try:
            await self._call(region, "terminate_instances", InstanceIds=list(instance_ids))
        except _NotFound:
            return

    # -- capacity blocks -------------------------------------------------------------------

    async def _commit(self, offer: Offer, key: str) -> Lease:
        """The per-market step of the base's commit: on-demand offers launch instances,
        Capacity Block offers purchase the block (the base holds the key lock and the
        spend reservation around either)."""
        if offer.details.get("market") != "capacity-block":
            return await super()._commit(offer, key)
        tag = lease_tag(key)

        async def attempt() -> Mapping[str, Any]:
            # Every attempt looks for the block by tag first: a purchase whose answer
            # was lost (timeout, 5xx) must be found, not bought a second time.
            found = await self._find_block(tag, offer.region)
            if found is not None:
                return found
            answer = await self._call(
                offer.region,
                "purchase_capacity_block",
                CapacityBlockOfferingId=offer.details["offering_id"],
                InstancePlatform="Linux/UNIX",
                TagSpecifications=[
                    {
                        "ResourceType": "capacity-reservation",
                        "Tags": [{"Key": TAG_KEY, "Value": tag}],
                    }
                ],
            )
            reservation = answer.get("CapacityReservation")
            if not reservation:
                raise TransientBackendError(
                    self.name, "purchase_capacity_block answered no reservation"
                )
            return dict(reservation)

        return self._block_lease(offer, tag, await self._retrying(attempt))

    async def _find_block(self, tag: str, region: str) -> Mapping[str, Any] | None:
        found = await self._pages(
            region,
            "describe_capacity_reservations",
            "CapacityReservations",
            Filters=[{"Name": f"tag:{TAG_KEY}", "Values": [tag]}],
        )
        for reservation in found:
            if reservation.get("State") not in ("cancelled", "expired", "failed", "payment-failed"):
                return dict(reservation)
        return None

    def _block_lease(self, offer: Offer, tag: str, reservation: Mapping[str, Any]) -> Lease:
        end = reservation.get("EndDate")
        ends_at = (
            end.timestamp() if isinstance(end, _dt.datetime) else self.clock.time() + self.lease_ttl
        )
        reservation_id = str(reservation["CapacityReservationId"])
        details = {
            "provider": self.provider,
            "market": "capacity-block",
            "capacity_reservation_id": reservation_id,
            "instance_type": offer.details.get("instance_type", ""),
            "nodes": offer.details.get("nodes", "1"),
            "starts_at": offer.details.get("starts_at", ""),
            "ends_at": offer.details.get("ends_at", ""),
            "state": str(reservation.get("State", "")),
            "instance_ids": "",
            "tag": tag,
            **offer_details(offer),
        }
        lease_id = self._lease_id(tag)
        return granted_lease(
            self,
            offer,
            lease_id,
            guarantee="reserved",
            expires_at=ends_at,
            env={
                "AICONTRACT_LEASE_ID": lease_id,
                "AICONTRACT_CAPACITY_RESERVATION_ID": reservation_id,
            },
            details=details,
        )

    async def identity(self) -> Identity:
        """The AWS account these credentials act as, from STS ``GetCallerIdentity``.

        ``account:ID`` for policies, with the caller's ARN
        (``arn:aws:iam::ID:user/NAME``, ``arn:aws:sts::ID:assumed-role/ROLE/SESSION``)
        and ``profile:NAME`` (when a profile was given) as aliases. The call needs no
        permission: STS answers it for any valid credentials.
        """
        region = self.regions[0] if self.regions else "us-east-1"
        found = await self._call(region, "get_caller_identity", service="sts")
        aliases = [str(found["Arn"])] if found.get("Arn") else []
        if self.profile:
            aliases.append(f"profile:{self.profile}")
        return Identity(
            kind="account",
            name=str(found["Account"]),
            aliases=tuple(aliases),
            source=f"{self.name} (STS GetCallerIdentity)",
        )

    async def renew(self, lease: Lease) -> float:
        """A Capacity Block lease lasts until the block ends; instances are checked as usual."""
        if lease.details.get("market") != "capacity-block":
            return await super().renew(lease)
        ends = lease.details.get("ends_at")
        end = _dt.datetime.fromisoformat(ends).timestamp() if ends else lease.expires_at
        if self.clock.time() >= end:
            raise LeaseLost(lease.id, "the capacity block has ended")
        await super().renew(lease)
        return end


def msgspec_replace(entry: CatalogEntry, **changes: Any) -> CatalogEntry:
    """A copy of ``entry`` with some fields changed."""
    import msgspec

    return msgspec.structs.replace(entry, **changes)


def _block_hours(seconds: float) -> int | None:
    """The Capacity Block length covering ``seconds``: whole days, 1-14, then weeks to 182 days."""
    days = max(1, math.ceil(seconds / 86400))
    if days <= 14:
        return days * 24
    weeks = math.ceil(days / 7)
    return weeks * 7 * 24 if weeks * 7 <= 182 else None


@functools.cache
def _region_description(region: str) -> str | None:
    """AWS's own description of a region (``"Europe (Frankfurt)"``) from botocore's data."""
    try:
        import botocore.loaders

        data = botocore.loaders.create_loader().load_data("endpoints")
    except Exception:
        return None
    for partition in data.get("partitions", []):
        described = partition.get("regions", {}).get(region)
        if described:
            return str(described.get("description")) if described.get("description") else None
    return None


def _on_demand_usd(raw: str | Mapping[str, Any]) -> Decimal | None:
    """The hourly USD price in one Price List product document."""
    product = json.loads(raw) if isinstance(raw, str) else raw
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dimension in term.get("priceDimensions", {}).values():
            usd = dimension.get("pricePerUnit", {}).get("USD")
            if usd is not None and dimension.get("unit") in ("Hrs", "Hours", "hours"):
                value = Decimal(usd)
                if value > 0:
                    return Decimal(format(value.normalize(), "f"))
    return None
