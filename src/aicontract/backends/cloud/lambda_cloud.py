"""Lambda Cloud (https://cloud.lambda.ai/api/v1) over httpx.

Shapes used (Lambda Cloud API v1, ``openapi.json``):

* ``GET /instance-types`` → ``{"data": {name: {"instance_type": {"name",
  "description", "gpu_description", "price_cents_per_hour", "specs": {"vcpus",
  "memory_gib", "storage_gib", "gpus"}}, "regions_with_capacity_available":
  [{"name", "description"}]}}}``
* ``POST /instance-operations/launch`` with ``{"region_name",
  "instance_type_name", "ssh_key_names", "file_system_names", "name"}`` →
  ``{"data": {"instance_ids": [...]}}``
* ``GET /instances`` → ``{"data": [Instance]}``; ``GET /instances/{id}`` →
  ``{"data": Instance}`` with ``status`` one of ``booting``, ``active``,
  ``unhealthy``, ``terminating``, ``terminated``, ``preempted``
* ``POST /instance-operations/terminate`` with ``{"instance_ids": [...]}`` →
  ``{"data": {"terminated_instances": [Instance]}}``
* errors: ``{"error": {"code", "message", "suggestion"}}``; launch answers 400
  with ``instance-operations/launch/insufficient-capacity``,
  ``global/quota-exceeded``, ``global/invalid-parameters``...; 401 with
  ``global/invalid-api-key``; 403 with ``global/account-inactive``; 404 with
  ``global/object-does-not-exist``.

The instance ``name`` (at most 64 characters) carries the lease tag, which is
how a retried launch finds the instance it already made.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

import httpx

from ...clock import Clock, system_clock
from ...errors import (
    AuthenticationError,
    BackendError,
    CapacityUnavailable,
    ConfigError,
    QuotaExceeded,
    TransientBackendError,
)
from ...governance.identity import Identity
from ...offer import Offer
from ...units import Money
from .base import CatalogEntry, CloudBackend, InstanceState, InstanceView, gib
from .credentials import Secret, load_secret, load_setting, redact, register_secret
from .interconnect import lambda_interconnect
from .regions import LAMBDA_REGIONS, region_country

__all__ = ["LambdaBackend", "LambdaCloudError"]

DEFAULT_BASE_URL = "https://cloud.lambda.ai/api/v1"
API_KEY_ENV = ("LAMBDA_API_KEY", "AICONTRACT_LAMBDA_API_KEY")

_STATES = {
    "booting": InstanceState.BOOTING,
    "active": InstanceState.READY,
    "unhealthy": InstanceState.UNHEALTHY,
    "terminating": InstanceState.TERMINATED,
    "terminated": InstanceState.TERMINATED,
    "preempted": InstanceState.PREEMPTED,
}
_GPU = re.compile(r"^\s*(?P<model>[A-Za-z0-9][A-Za-z0-9 .\-]*?)\s*\((?P<gb>\d+(?:\.\d+)?)\s*GB")


class LambdaCloudError(BackendError):
    """An answer from Lambda Cloud that fits no other error: bad parameters, odd shapes.

    ``code`` is Lambda's error code (``global/invalid-parameters``) when it sent one.
    """

    def __init__(
        self, backend: str, message: str, code: str | None = None, status: int | None = None
    ) -> None:
        self.code = code
        self.status = status
        super().__init__(backend, message)


class LambdaBackend(CloudBackend):
    """GPU instances from Lambda Cloud: on-demand, per-instance-hour prices.

    Configuration (keyword options, else the environment):

    ``api_key``
        ``LAMBDA_API_KEY`` (or ``AICONTRACT_LAMBDA_API_KEY``), else ``api_key``
        in the ``[lambda]`` table of the credentials file.
    ``ssh_key_name``
        ``LAMBDA_SSH_KEY_NAME``: the SSH key (registered with Lambda) to put on
        instances; Lambda requires exactly one to launch.
    ``file_system_names``
        ``LAMBDA_FILE_SYSTEMS`` (comma-separated) to attach.
    ``base_url``
        ``LAMBDA_API_BASE_URL``, default ``https://cloud.lambda.ai/api/v1``.

    Rate limits follow Lambda's documentation: about one request a second, one
    launch every 12 seconds (``launch_interval``).
    """

    provider = "lambda"
    # Lambda's launch takes no idempotency token, and GET /instances has been seen to
    # lag a launch by over a second: after a lost launch answer, look this long first.
    default_listing_lag = 15.0

    def __init__(
        self,
        *,
        api_key: str | Secret | None = None,
        ssh_key_name: str | None = None,
        file_system_names: Sequence[str] | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Clock = system_clock,
        requests_per_second: float = 1.0,
        launch_interval: float = 12.0,
        **options: Any,
    ) -> None:
        super().__init__(
            clock=clock,
            requests_per_second=requests_per_second,
            launch_interval=launch_interval,
            **options,
        )
        env = os.environ if environ is None else environ
        self._environ = env
        self._api_key = load_secret(
            "lambda", "api_key", env_vars=API_KEY_ENV, given=api_key, environ=env
        )
        self.ssh_key_name = ssh_key_name or env.get("LAMBDA_SSH_KEY_NAME") or None
        systems = file_system_names
        if systems is None:
            systems = [
                s.strip() for s in env.get("LAMBDA_FILE_SYSTEMS", "").split(",") if s.strip()
            ]
        self.file_system_names = list(systems)
        self.base_url = (base_url or env.get("LAMBDA_API_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=timeout,
            transport=transport,
            headers={"Accept": "application/json", "User-Agent": "aicontract"},
        )

    @property
    def has_credentials(self) -> bool:
        """True when an API key was found."""
        return bool(self._api_key)

    def _check_ready_to_quote(self) -> None:
        if not self._api_key:
            raise AuthenticationError(
                self.name,
                "no Lambda Cloud API key: set LAMBDA_API_KEY or put api_key under [lambda]"
                " in the credentials file (AICONTRACT_CREDENTIALS_FILE)",
            )

    # -- HTTP ------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; returns the ``data`` member or raises a mapped error."""
        self._check_ready_to_quote()
        assert self._api_key is not None
        headers = {"Authorization": f"Bearer {self._api_key.reveal()}"}
        try:
            response = await self._client.request(method, path, json=body, headers=headers)
        except httpx.TimeoutException as exc:
            raise TransientBackendError(
                self.name, f"{method} {path} timed out ({type(exc).__name__})"
            ) from None
        except httpx.TransportError as exc:
            raise TransientBackendError(
                self.name, f"{method} {path} failed: {type(exc).__name__}"
            ) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.is_success:
            if not isinstance(payload, dict) or "data" not in payload:
                raise TransientBackendError(
                    self.name,
                    f"{method} {path}: answer {response.status_code} has no 'data' member",
                )
            return payload["data"]
        raise self._error(method, path, response.status_code, payload)

    def _error(self, method: str, path: str, status: int, payload: Any) -> BackendError:
        error = payload.get("error") if isinstance(payload, dict) else None
        code = str(error.get("code", "")) if isinstance(error, dict) else ""
        message = str(error.get("message", "")) if isinstance(error, dict) else ""
        suggestion = error.get("suggestion") if isinstance(error, dict) else None
        text = f"{method} {path}: {status}" + (f" {code}" if code else "")
        if message:
            text += f": {message}"
        if suggestion:
            text += f" ({suggestion})"
        text = redact(text)
        if status == 429:
            return TransientBackendError(self.name, f"rate limited; {text}")
        if code == "instance-operations/launch/insufficient-capacity":
            return CapacityUnavailable(self.name, text)
        if code == "global/quota-exceeded":
            return QuotaExceeded(self.name, text)
        if code in (
            "global/invalid-api-key",
            "global/account-inactive",
            "global/invalid-address",
        ) or status in (401, 403):
            return AuthenticationError(self.name, text)
        if status >= 500 or code.startswith("provider/"):
            return TransientBackendError(self.name, text)
        return LambdaCloudError(self.name, text, code or None, status)

    # -- provider hooks --------------------------------------------------------------------

    async def _list_catalog(self) -> list[CatalogEntry]:
        data = await self._request("GET", "/instance-types")
        if not isinstance(data, dict):
            raise LambdaCloudError(self.name, "GET /instance-types: 'data' is not an object")
        entries: list[CatalogEntry] = []
        for name, item in data.items():
            try:
                entries.extend(self._entries(str(name), item))
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                raise LambdaCloudError(
                    self.name,
                    f"GET /instance-types: entry {name!r} is malformed"
                    f" ({type(exc).__name__}: {exc})",
                ) from None
        return entries

    def _entries(self, name: str, item: Mapping[str, Any]) -> list[CatalogEntry]:
        itype = item["instance_type"]
        specs = itype["specs"]
        gpus = int(specs["gpus"])
        model, memory = None, None
        match = _GPU.match(str(itype.get("gpu_description") or ""))
        if match:
            model, memory = match["model"].strip(), gib(Decimal(match["gb"]))
        price = Money.per_hour(Decimal(int(itype["price_cents_per_hour"])) / 100, "USD")
        storage = specs.get("storage_gib")
        out = []
        for region in item.get("regions_with_capacity_available") or []:
            region_name = str(region["name"])
            description = region.get("description")
            out.append(
                CatalogEntry(
                    instance_type=name,
                    region=region_name,
                    country=region_country(
                        region_name, LAMBDA_REGIONS, str(description) if description else None
                    ),
                    gpu_model=model,
                    gpus=gpus,
                    gpu_memory=memory if gpus else None,
                    vcpus=int(specs["vcpus"]),
                    memory=gib(specs["memory_gib"]),
                    disk=gib(storage) if storage is not None else None,
                    price=price,
                    details={"gpu_description": str(itype.get("gpu_description") or "")},
                    gpu_interconnect=lambda_interconnect(
                        name, gpus, str(itype.get("gpu_description") or "")
                    ),
                )
            )
        return out

    def _view(self, data: Any) -> InstanceView:
        if not isinstance(data, dict) or "id" not in data or "status" not in data:
            raise TransientBackendError(self.name, "instance answer lacks 'id' or 'status'")
        raw = str(data["status"])
        region = data.get("region")
        return InstanceView(
            id=str(data["id"]),
            state=_STATES.get(raw, InstanceState.UNHEALTHY),
            region=str(region.get("name", "")) if isinstance(region, dict) else "",
            public_ip=data.get("ip") or None,
            private_ip=data.get("private_ip") or None,
            raw_state=raw,
        )

    async def _find_instance(self, tag: str, region: str) -> InstanceView | None:
        data = await self._request("GET", "/instances")
        if not isinstance(data, list):
            raise TransientBackendError(self.name, "GET /instances: 'data' is not a list")
        for item in data:
            if isinstance(item, dict) and item.get("name") == tag:
                view = self._view(item)
                if view.state != InstanceState.TERMINATED:
                    return view
        return None

    async def _launch_instance(self, offer: Offer, tag: str) -> str:
        if not self.ssh_key_name:
            raise ConfigError(
                f"[{self.name}] Lambda Cloud needs an SSH key to launch: set LAMBDA_SSH_KEY_NAME"
                " (or ssh_key_name=) to a key registered at cloud.lambda.ai"
            )
        body = {
            "region_name": offer.region,
            "instance_type_name": offer.details["instance_type"],
            "ssh_key_names": [self.ssh_key_name],
            "file_system_names": list(self.file_system_names),
            "name": tag,
        }
        data = await self._request("POST", "/instance-operations/launch", body)
        ids = data.get("instance_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list) or len(ids) != 1 or not isinstance(ids[0], str):
            # The launch may have happened: a retry looks the instance up by its name.
            raise TransientBackendError(self.name, "launch answer lacks one instance id")
        return ids[0]

    async def _describe_instance(self, instance_id: str, region: str) -> InstanceView | None:
        try:
            data = await self._request("GET", f"/instances/{instance_id}")
        except LambdaCloudError as exc:
            if exc.code == "global/object-does-not-exist" or exc.status == 404:
                return None
            raise
        return self._view(data)

    async def _terminate_instances(self, instance_ids: Sequence[str], region: str) -> None:
        try:
            await self._request(
                "POST", "/instance-operations/terminate", {"instance_ids": list(instance_ids)}
            )
        except LambdaCloudError as exc:
            if exc.code != "global/object-does-not-exist" and exc.status != 404:
                raise

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def identity(self) -> Identity:
        """The API key in use, by fingerprint, and the account name it was configured under.

        Lambda Cloud's documented API has no call that names the account a key belongs
        to, so the key itself is the identity: ``api-key:`` the first 16 hex digits of
        its SHA-256 (never the key). ``AICONTRACT_LAMBDA_ACCOUNT``, or ``account`` under
        ``[lambda]`` in the credentials file, adds ``account:NAME`` — a name the
        configuration gives, which the provider does not confirm.
        """
        self._check_ready_to_quote()
        assert self._api_key is not None
        fingerprint = hashlib.sha256(self._api_key.reveal().encode()).hexdigest()[:16]
        account = self._account_name()
        return Identity(
            kind="api-key",
            name=fingerprint,
            aliases=(f"account:{account}",) if account else (),
            source=f"{self.name} (the configured API key; the API names no account)",
        )

    def _account_name(self) -> str | None:
        """``AICONTRACT_LAMBDA_ACCOUNT``, else ``account`` under ``[lambda]`` in the file."""
        named = self._environ.get("AICONTRACT_LAMBDA_ACCOUNT")
        return named or load_setting("lambda", "account", self._environ)

    def set_api_key(self, api_key: str | Secret) -> None:
        """Replace the API key (it is masked in logs from then on)."""
        self._api_key = Secret(api_key)
        register_secret(self._api_key)
