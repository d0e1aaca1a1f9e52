"""A stateful Lambda Cloud API fake for respx, written by hand from the documented shapes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import respx

BASE = "https://cloud.lambda.ai/api/v1"
REGION_DESCRIPTIONS = {
    "us-east-1": "Virginia, USA",
    "us-west-1": "California, USA",
    "us-south-1": "Texas, USA",
    "europe-central-1": "Germany",
    "asia-northeast-1": "Tokyo, Japan",
    "me-west-1": "Israel",
}


def error(status: int, code: str, message: str, suggestion: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"error": {"code": code, "message": message}}
    if suggestion is not None:
        body["error"]["suggestion"] = suggestion
    return httpx.Response(status, json=body)


class FakeLambda:
    """Instance types with capacity, instances with states, scripted failures."""

    def __init__(self, api_key: str, base: str = BASE) -> None:
        self.api_key = api_key
        self.base = base
        self.types: dict[str, dict[str, Any]] = {}
        self.capacity: dict[str, list[str]] = {}
        self.instances: dict[str, dict[str, Any]] = {}
        self.launch_errors: list[httpx.Response | Exception] = []
        self.launch_timeouts_after_create = 0
        self.boot_polls = 1
        self.launches: list[dict[str, Any]] = []
        self._polls: dict[str, int] = {}
        # GET /instances shows an instance only this long after its launch (seconds of now()).
        self.listing_lag = 0.0
        self.now: Callable[[], float] = time.monotonic
        self._launched_at: dict[str, float] = {}

    def add_type(self, itype: dict[str, Any], regions: list[str]) -> None:
        self.types[itype["name"]] = itype
        self.capacity[itype["name"]] = regions

    def _auth(self, request: httpx.Request) -> httpx.Response | None:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error(
                401,
                "global/invalid-api-key",
                "API key was invalid, expired, or deleted.",
                "Check your API key or create a new one, then try again.",
            )
        return None

    def install(self, router: respx.MockRouter) -> None:
        router.get(f"{self.base}/instance-types").mock(side_effect=self.instance_types)
        router.post(f"{self.base}/instance-operations/launch").mock(side_effect=self.launch)
        router.get(f"{self.base}/instances").mock(side_effect=self.list_instances)
        router.get(url__regex=rf"{self.base}/instances/(?P<iid>[^/]+)$").mock(
            side_effect=self.get_instance
        )
        router.post(f"{self.base}/instance-operations/terminate").mock(side_effect=self.terminate)

    def instance_types(self, request: httpx.Request) -> httpx.Response:
        denied = self._auth(request)
        if denied:
            return denied
        data = {
            name: {
                "instance_type": itype,
                "regions_with_capacity_available": [
                    {"name": r, "description": REGION_DESCRIPTIONS.get(r, r)}
                    for r in self.capacity.get(name, [])
                ],
            }
            for name, itype in self.types.items()
        }
        return httpx.Response(200, json={"data": data})

    def launch(self, request: httpx.Request) -> httpx.Response:
        denied = self._auth(request)
        if denied:
            return denied
        body = json.loads(request.content)
        self.launches.append(body)
        if self.launch_errors:
            failure = self.launch_errors.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        name, region = body.get("instance_type_name"), body.get("region_name")
        if name not in self.types or not body.get("ssh_key_names"):
            return error(400, "global/invalid-parameters", "Invalid request data.")
        if region not in self.capacity.get(name, []):
            return error(
                400,
                "instance-operations/launch/insufficient-capacity",
                "Not enough capacity to fulfill launch request.",
            )
        iid = uuid.uuid4().hex
        self._launched_at[iid] = self.now()
        self.instances[iid] = {
            "id": iid,
            "name": body.get("name"),
            "ip": f"198.51.100.{len(self.instances) + 10}",
            "private_ip": f"10.0.0.{len(self.instances) + 10}",
            "status": "booting",
            "ssh_key_names": body["ssh_key_names"],
            "file_system_names": [],
            "region": {"name": region, "description": REGION_DESCRIPTIONS.get(region, region)},
            "instance_type": self.types[name],
            "hostname": f"h-{iid[:8]}",
        }
        if self.launch_timeouts_after_create:
            self.launch_timeouts_after_create -= 1
            raise httpx.ReadTimeout("the answer was lost", request=request)
        return httpx.Response(200, json={"data": {"instance_ids": [iid]}})

    def list_instances(self, request: httpx.Request) -> httpx.Response:
        denied = self._auth(request)
        if denied:
            return denied
        now = self.now()
        live = [
            i
            for i in self.instances.values()
            if i["status"] != "terminated" and now - self._launched_at[i["id"]] >= self.listing_lag
        ]
        return httpx.Response(200, json={"data": live})

    def get_instance(self, request: httpx.Request, iid: str) -> httpx.Response:
        denied = self._auth(request)
        if denied:
            return denied
        inst = self.instances.get(iid)
        if inst is None:
            return error(404, "global/object-does-not-exist", "Specified instance does not exist.")
        polls = self._polls[iid] = self._polls.get(iid, 0) + 1
        if inst["status"] == "booting" and polls >= self.boot_polls:
            inst["status"] = "active"
        return httpx.Response(200, json={"data": inst})

    def terminate(self, request: httpx.Request) -> httpx.Response:
        denied = self._auth(request)
        if denied:
            return denied
        ids = json.loads(request.content).get("instance_ids", [])
        done = []
        for iid in ids:
            if iid not in self.instances:
                return error(
                    404, "global/object-does-not-exist", "Specified instance does not exist."
                )
            self.instances[iid]["status"] = "terminated"
            done.append(self.instances[iid])
        return httpx.Response(200, json={"data": {"terminated_instances": done}})

    @property
    def live(self) -> list[dict[str, Any]]:
        return [i for i in self.instances.values() if i["status"] != "terminated"]
