"""Slurm REST shapes the 22.05 test cluster does not serve (respx), and the parsing helpers.

Newer slurmrestd plugins (``v0.0.39``+, Slurm 23.02 and later) wrap numbers as
``{"set", "infinite", "number"}``, write states as lists, put the batch script
inside ``job`` and the environment as ``["K=V"]``. These tests pin that the
backend reads and writes those shapes; the real-daemon tests cover 22.05's.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import respx

from aicontract import Contract
from aicontract.backends.slurm import SlurmBackend
from aicontract.backends.slurm.api import SlurmAPI, expand_hostlist, number, states
from aicontract.backends.slurm.quote import parse_gres
from aicontract.errors import AuthenticationError, ConfigError, TransientBackendError
from aicontract.offer import check_offer

pytestmark = pytest.mark.anyio

URL = "http://slurm.test:6820"
V40 = f"{URL}/slurm/v0.0.40"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_numbers_states_and_host_lists_in_every_shape() -> None:
    assert number(5) == 5
    assert number({"set": True, "infinite": False, "number": 7}) == 7
    assert number({"set": False, "infinite": False, "number": 0}) is None
    assert number({"set": True, "infinite": True, "number": 0}) is None
    assert number(None) is None
    assert states("idle") == {"IDLE"}
    assert states(["IDLE", "DRAIN"]) == {"IDLE", "DRAIN"}
    assert states("MIXED+DRAIN") == {"MIXED", "DRAIN"}
    assert expand_hostlist("node[01-03,7],gpu-a") == [
        "node01",
        "node02",
        "node03",
        "node7",
        "gpu-a",
    ]
    assert expand_hostlist("rack[1-2]-n[1-2]") == ["rack1-n1", "rack1-n2", "rack2-n1", "rack2-n2"]
    assert expand_hostlist("") == []


def test_gres_in_every_spelling() -> None:
    assert parse_gres("gpu:h100:4") == {"h100": 4}
    assert parse_gres("gpu:h100:4(S:0-1),gpu:a100:2") == {"h100": 4, "a100": 2}
    assert parse_gres("gpu:h100:2(IDX:0-1)") == {"h100": 2}
    assert parse_gres("gpu:h100:0(IDX:N/A)") == {"h100": 0}
    assert parse_gres("gres:gpu:h100:3") == {"h100": 3}
    assert parse_gres("gres/gpu:h100=2") == {"h100": 2}
    assert parse_gres("gpu:4,nic:1") == {"": 4}
    assert parse_gres("(null)") == {}


def wrapped(value: int) -> dict[str, Any]:
    return {"set": True, "infinite": False, "number": value}


def modern_node(name: str, used: int) -> dict[str, Any]:
    return {
        "name": name,
        "address": f"10.0.0.{name[-1]}",
        "hostname": name,
        "state": ["MIXED"] if used else ["IDLE"],
        "cpus": 64,
        "alloc_cpus": 8 * used,
        "real_memory": 512000,
        "alloc_memory": 16000 * used,
        "gres": "gpu:h100:8(S:0-1)",
        "gres_used": f"gpu:h100:{used}(IDX:0-{max(0, used - 1)})",
        "partitions": ["batch"],
        "reason": "",
    }


def modern_job(job_id: int, state: str, start: int) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "name": "aic-k1",
        "comment": "aicontract key=k1",
        "job_state": [state],
        "state_reason": "None",
        "nodes": "gpu[1-2]",
        "start_time": wrapped(start),
        "end_time": wrapped(start + 3600),
        "time_limit": wrapped(60),
        "partition": "batch",
        "tres_per_node": "gres/gpu:h100:8",
        "exit_code": {"status": ["SUCCESS"], "return_code": wrapped(0)},
    }


def serve_v40(router: respx.MockRouter, submitted: list[dict[str, Any]]) -> None:
    for old in ("v0.0.38", "v0.0.37", "v0.0.39"):
        router.get(f"{URL}/slurm/{old}/ping").respond(404, json={"errors": [{"error": "nope"}]})
    router.get(f"{V40}/ping").respond(200, json={"pings": [], "errors": []})
    router.get(f"{V40}/nodes").respond(
        200, json={"nodes": [modern_node("gpu1", 0), modern_node("gpu2", 0)], "errors": []}
    )
    router.get(f"{V40}/partitions").respond(
        200,
        json={
            "partitions": [
                {
                    "name": "batch",
                    "partition": {"state": ["UP"]},
                    "nodes": {"configured": "gpu[1-2]"},
                    "maximums": {
                        "time": wrapped(240),
                        "nodes": {"set": True, "infinite": True, "number": 0},
                    },
                    "flags": [],
                }
            ],
            "errors": [],
        },
    )
    router.get(f"{V40}/reservations").respond(200, json={"reservations": [], "errors": []})
    router.get(f"{V40}/jobs").respond(200, json={"jobs": [], "errors": []})

    def submit(request: httpx.Request) -> httpx.Response:
        submitted.append(json.loads(request.content))
        return httpx.Response(200, json={"job_id": 41, "errors": []})

    router.post(f"{V40}/job/submit").mock(side_effect=submit)
    router.get(f"{V40}/job/41").respond(
        200, json={"jobs": [modern_job(41, "RUNNING", int(time.time()) - 1)], "errors": []}
    )


async def test_a_v0_0_40_daemon_is_quoted_and_committed_in_its_shapes() -> None:
    submitted: list[dict[str, Any]] = []
    with respx.mock(assert_all_called=False) as router:
        serve_v40(router, submitted)
        async with SlurmBackend(url=URL, token="t", user="alice", region="lab") as backend:
            contract = Contract(
                resources={"nodes": 2, "gpus": {"count": 8, "models": ["H100"]}}, duration="1h"
            )
            quote = await backend.quote(contract)
            assert [o.guarantee for o in quote.offers] == ["allocated"]
            offer = quote.offers[0]
            assert (offer.details["nodes"], offer.details["gpus_per_node"]) == ("2", "8")
            # 16 GPUs on one node do not exist: a two-node counter-offer says so.
            one_node = await backend.quote(contract.with_(nodes=1, gpus=16))
            assert one_node.offers == ()
            (counter,) = one_node.counter_offers
            assert (counter.grant.nodes, counter.grant.gpus) == (2, 8)
            assert counter.details["nodes"] == "2"
            assert offer.details["time_limit"] == "60"
            lease = await backend.commit(offer, "k1")
            assert backend.rest.version == "v0.0.40"
    body = submitted[0]
    assert set(body) == {"job"}
    job = body["job"]
    assert job["script"].startswith("#!/bin/sh")
    assert job["time_limit"] == wrapped(60)
    assert job["tres_per_node"] == "gres/gpu:h100:8"
    assert "gres" not in job
    assert job["nodes"] == "2"
    assert "AICONTRACT_LEASE_ID=aic-k1" in job["environment"]
    assert lease.env["SLURM_JOB_ID"] == "41"
    assert lease.env["NNODES"] == "2"
    assert lease.env["MASTER_ADDR"] == "10.0.0.1"
    assert lease.endpoints == {"host": "10.0.0.1", "node-1": "10.0.0.2"}


async def test_modern_partition_limits_refuse_a_long_contract() -> None:
    with respx.mock(assert_all_called=False) as router:
        serve_v40(router, [])
        async with SlurmBackend(url=URL, token="t", user="alice") as backend:
            quote = await backend.quote(Contract(gpus=1, duration="5h"))
    assert not quote.offers
    assert [(r.requirement, r.available) for r in quote.rejections] == [
        ("terms.duration", "partition batch allows at most 04:00:00")
    ]


async def test_errors_map_to_the_hierarchy() -> None:
    api = SlurmAPI(URL, user="alice", token="t", version="v0.0.38")
    with respx.mock() as router:
        route = router.get(f"{URL}/slurm/v0.0.38/nodes")
        route.respond(401, text="Unauthorized")
        with pytest.raises(AuthenticationError, match="refused the credentials"):
            await api.nodes()
        route.respond(503, text="busy")
        with pytest.raises(TransientBackendError):
            await api.nodes()
        router.get(f"{URL}/slurm/v0.0.38/job/9").respond(
            500,
            json={
                "errors": [
                    {"description": "Unable to find JobId=9", "error_number": 2017, "error": "x"}
                ],
                "jobs": [],
            },
        )
        assert await api.job(9) is None
        # 22.05 with slurmctld away: the same words for a job that runs, errno -1.
        router.get(f"{URL}/slurm/v0.0.38/job/10").respond(
            500,
            json={
                "errors": [
                    {"description": "Unable to find JobId=10", "error_number": -1, "error": "x"}
                ],
                "jobs": [],
            },
        )
        with pytest.raises(TransientBackendError, match="slurmctld did not answer"):
            await api.job(10)
        router.post(f"{URL}/slurm/v0.0.38/job/submit").respond(
            500,
            json={"errors": [{"error_code": 1800, "error": "Unable to contact slurm controller"}]},
        )
        with pytest.raises(TransientBackendError, match="slurmctld did not answer"):
            await api.submit({"name": "x"}, "#!/bin/sh\n")
    await api.aclose()


def test_configuration_errors_say_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURMRESTD_URL", raising=False)
    with pytest.raises(ConfigError, match="SLURMRESTD_URL"):
        _ = SlurmBackend().rest
    with pytest.raises(ConfigError, match="not a slurmrestd address"):
        SlurmAPI("slurm.test:6820", token="t")
    monkeypatch.delenv("SLURM_JWT", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")  # no scontrol to mint a token
    with pytest.raises(ConfigError, match="needs a JWT"):
        SlurmAPI(URL)


async def test_a_per_node_gang_is_quoted_per_node() -> None:
    """``resources.nodes: N``: N nodes, each with the contract's GPUs; more nodes than the
    partition holds is refused naming ``resources.nodes``."""
    with respx.mock(assert_all_called=False) as router:
        serve_v40(router, [])
        async with SlurmBackend(url=URL, token="t", user="alice") as backend:
            two = Contract(resources={"nodes": 2, "gpus": {"count": "2..8"}}, duration="1h")
            quote = await backend.quote(two)
            three = await backend.quote(two.with_(nodes=3))
    offer = quote.offers[0]
    assert (offer.grant.nodes, offer.grant.gpus, offer.grant.total_gpus) == (2, 8, 16)
    assert (offer.details["nodes"], offer.details["gpus_per_node"]) == ("2", "8")
    assert check_offer(offer, two, time.time()) == []
    assert not three.offers
    assert [r.requirement for r in three.rejections] == ["resources.nodes"]
    assert three.rejections[0].available.startswith("at most 2 node(s) in batch")
