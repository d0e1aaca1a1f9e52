"""Alternatives on the local backend: real inventories, the real ledger, policy, record, CLI.

Hosts are inventory files (``AICONTRACT_INVENTORY``), so a host "without a GPU" is
one on every machine. Governance is real: a policy file, the hash-chained record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aicontract as ac
from aicontract import GPU, Contract, Negotiator, NoOffer, Resources
from aicontract.backends.local import LocalBackend
from aicontract.cli import main
from aicontract.governance import Record, loads_policy
from aicontract.governance.enforce import Governance, contract_digest
from aicontract.governance.record import verify
from aicontract.monitor.policies import find_replacement

pytestmark = pytest.mark.anyio

NO_GPU = "cpus: 16\nmemory: 64GiB\ngpus: []\n"
ONE_H100 = "cpus: 16\nmemory: 64GiB\ngpus:\n  - {model: H100, memory: 80GiB}\n"
GPU_ELSE_CPUS = Contract(
    name="gpu-else-cpus",
    tenant="research",
    gpus=GPU(count=1, models=["H100"]),
    alternatives=[Resources(cpus=8)],
)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """``host(inventory_text)`` points the library and the CLI at a made-up host."""
    monkeypatch.setenv("AICONTRACT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("AICONTRACT_RECORD", str(tmp_path / "record.jsonl"))
    monkeypatch.setenv("AICONTRACT_POLICY", "off")
    monkeypatch.setenv("AICONTRACT_TEMPLATES", str(tmp_path / "templates"))
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.delenv("AICONTRACT_BACKENDS", raising=False)
    monkeypatch.delenv("AICONTRACT_JURISDICTION", raising=False)

    def make(text: str) -> Path:
        path = tmp_path / "inventory.yaml"
        path.write_text(text)
        monkeypatch.setenv("AICONTRACT_INVENTORY", str(path))
        return path

    return make


def _entries(path: Path, kind: str) -> list[dict[str, Any]]:
    return [e for e in Record(path).entries() if e["kind"] == kind]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


# -- the user story: "a GPU, else 8 CPUs", one contract, one call ---------------------------


async def test_no_gpu_on_the_host_grants_the_cpu_alternative_and_records_it(
    host: Any, tmp_path: Path
) -> None:
    host(NO_GPU)
    lease = await ac.acquire(GPU_ELSE_CPUS)
    try:
        assert (lease.grant.gpus, lease.grant.cpus, lease.grant.alternative) == (0, 8, 0)
        assert lease.contract == GPU_ELSE_CPUS  # the whole contract, every choice in it
        assert len(lease.env["AICONTRACT_CPUS"].split(",")) == 8
    finally:
        await lease.release()
    record = tmp_path / "record.jsonl"
    [grant] = _entries(record, "grant")
    assert grant["alternative"] == "alternatives[0]"
    assert grant["grant"] == "8 CPUs (alternatives[0])"
    assert grant["digest"] == contract_digest(GPU_ELSE_CPUS)  # not a narrowed one
    assert any("resources.gpus" in r for r in grant["rejections"])  # why the GPU was not had
    assert verify(record).ok


async def test_a_gpu_on_the_host_grants_the_first_choice(host: Any, tmp_path: Path) -> None:
    host(ONE_H100)
    lease = await ac.acquire(GPU_ELSE_CPUS)
    try:
        assert (lease.grant.gpus, lease.grant.gpu_model, lease.grant.alternative) == (
            1,
            "H100",
            None,
        )
        assert lease.env["CUDA_VISIBLE_DEVICES"] == "0"
    finally:
        await lease.release()
    [grant] = _entries(tmp_path / "record.jsonl", "grant")
    assert grant["alternative"] == "resources"


def test_the_blocking_face_takes_alternatives_too(host: Any) -> None:
    host(NO_GPU)
    with ac.lease(GPU_ELSE_CPUS) as held:
        assert held.grant.alternative == 0


# -- rejections and counter-offers name their choice ----------------------------------------


async def test_nothing_fits_names_every_choice(host: Any) -> None:
    host(NO_GPU)
    greedy = GPU_ELSE_CPUS.with_(alternatives=[{"gpus": {"count": 2}}, {"cpus": 64}])
    with pytest.raises(NoOffer) as caught:
        await ac.acquire(greedy)
    found = {r.requirement for r in caught.value.rejections}
    assert found == {"resources.gpus", "alternatives[0].gpus", "alternatives[1].cpus"}
    assert "alternatives[1].cpus wants 64; has 16 free of 16" in str(caught.value)


async def test_a_counter_offer_for_a_choice_commits_with_the_whole_contract(host: Any) -> None:
    host(ONE_H100)
    too_many = Contract(
        name="too-many",
        gpus=GPU(count=4, models=["H100"]),
        alternatives=[Resources(gpus=GPU(count=8, models=["L4"]))],
    )
    negotiator = Negotiator([LocalBackend()])
    try:
        with pytest.raises(NoOffer) as caught:
            await negotiator.acquire(too_many)
        [counter] = caught.value.counter_offers
        assert counter.grant.alternative is None  # for resources: 1 H100 instead of 4
        assert counter.contract.alternatives == too_many.alternatives
        lease = await negotiator.commit(counter)
        assert lease.grant.gpus == 1
        assert lease.contract.alternatives == too_many.alternatives
        await lease.release()
    finally:
        await negotiator.aclose()


# -- renegotiation quotes the whole contract again -------------------------------------------


async def test_a_replacement_may_be_another_choice(host: Any) -> None:
    """The lease holds the H100; its replacement (made before the break) cannot have it,
    so the renegotiation must quote the other choices: the whole contract, not the one held."""
    host(ONE_H100)
    negotiator = Negotiator([LocalBackend()])
    try:
        old = await negotiator.acquire(GPU_ELSE_CPUS)
        assert old.grant.alternative is None
        new = await find_replacement(negotiator, old)
        assert (new.grant.alternative, new.grant.cpus) == (0, 8)
        assert new.contract == GPU_ELSE_CPUS
        await new.release()
        await old.release()
    finally:
        await negotiator.aclose()


# -- the CLI -------------------------------------------------------------------------------


def test_quote_and_leases_show_the_choice(host: Any, tmp_path: Path) -> None:
    host(NO_GPU)
    contract = Path(__file__).parent.parent / "examples" / "contracts" / "gpu-else-cpus.yaml"
    quoted = run("quote", str(contract))
    assert quoted.exit_code == 0, quoted.output
    row = next(line for line in quoted.stdout.splitlines() if "8 CPUs" in line)
    assert "alternatives[1]" in row
    assert "alternatives[0].gpus" in quoted.stdout  # the A100 choice, declined
    data = json.loads(run("quote", "--json", str(contract)).stdout)
    assert [o["grant"]["alternative"] for o in data["offers"]] == [1]

    with ac.lease(ac.load(contract)):
        listed = run("leases").stdout
    assert "8 CPUs, 32GiB memory (alternatives[1])" in listed


# -- policy: each choice is judged on its own ------------------------------------------------


def _governed(tmp_path: Path, policy: dict[str, Any]) -> Negotiator:
    return Negotiator(
        [LocalBackend()],
        governance=Governance(
            policy=loads_policy(json.dumps(policy), "json"),
            record=Record(tmp_path / "record.jsonl"),
        ),
    )


async def test_a_barred_choice_is_refused_and_the_next_granted(host: Any, tmp_path: Path) -> None:
    host(ONE_H100)
    negotiator = _governed(tmp_path, {"tenants": {"research": {"gpu_models": ["A100"]}}})
    try:
        lease = await negotiator.acquire(GPU_ELSE_CPUS)
        assert (lease.grant.alternative, lease.grant.cpus) == (0, 8)
        await lease.release()
    finally:
        await negotiator.aclose()
    record = tmp_path / "record.jsonl"
    [refused] = _entries(record, "refuse")
    assert refused["alternative"] == "resources"
    assert refused["refusals"][0].startswith("tenants.research.gpu_models")
    [granted] = _entries(record, "grant")
    assert granted["alternative"] == "alternatives[0]"


TEMPLATE = """\
name: gpu-or-cpus
version: "1.0"
locked: [resources, alternatives]
contract:
  name: tpl
  tenant: research
  resources: {gpus: {count: 1, models: [H100]}}
  alternatives: [{cpus: 8}]
"""


@pytest.fixture
def fresh_catalog() -> Iterator[None]:
    """The policy reads the template catalog once per process: read this test's, then forget it."""
    from aicontract.governance import policy

    policy._forget_catalog()
    yield
    policy._forget_catalog()


async def test_templates_carry_alternatives_and_lock_them(
    host: Any, tmp_path: Path, fresh_catalog: None
) -> None:
    """The policy admits template contracts only; the locked choices are checked on the
    whole contract, so a granted fallback is not mistaken for a changed template."""
    host(NO_GPU)
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "gpu-or-cpus.yaml").write_text(TEMPLATE)
    contract = Contract.from_template("gpu-or-cpus")
    assert contract.alternatives == (Resources(cpus=8),)
    with pytest.raises(ac.ContractError, match="alternatives is locked"):
        Contract.from_template("gpu-or-cpus", alternatives=[{"cpus": 2}])
    policy = {"default": {"free_form": False, "templates": ["gpu-or-cpus"]}}
    negotiator = _governed(tmp_path, policy)
    try:
        lease = await negotiator.acquire(contract)
        assert lease.grant.alternative == 0
        await lease.release()
        with pytest.raises(ac.PolicyViolation, match=r"templates\.locked"):
            await negotiator.acquire(contract.with_(alternatives=[{"cpus": 4}]))
    finally:
        await negotiator.aclose()


# -- hypothesis: on random hosts, the earliest satisfiable choice is granted ----------------

MODELS = ("H100", "L4", "T4")
choice_st = st.one_of(
    st.builds(
        lambda n, m: Resources(gpus=GPU(count=n, models=[m])),
        st.integers(1, 3),
        st.sampled_from(MODELS),
    ),
    st.builds(lambda n: Resources(cpus=n), st.integers(1, 12)),
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    choices=st.lists(choice_st, min_size=1, max_size=4),
    gpus=st.lists(st.sampled_from(MODELS), max_size=5),
    cpus=st.integers(1, 12),
)
def test_on_any_host_the_earliest_satisfiable_choice_is_granted(
    host: Any, tmp_path: Path, choices: list[Resources], gpus: list[str], cpus: int
) -> None:
    inventory = {"cpus": cpus, "memory": "64GiB", "gpus": [{"model": m} for m in gpus]}
    for device in inventory["gpus"]:
        device["memory"] = "24GiB"
    host(yaml.safe_dump(inventory))
    contract = Contract(resources=choices[0], alternatives=choices[1:])

    def fits(choice: Resources) -> bool:  # the oracle: counted from the inventory alone
        if choice.gpus is not None:
            return gpus.count(choice.gpus.models[0]) >= (choice.gpus.count.min or 1)
        return (choice.cpus.min or 0) <= cpus if choice.cpus is not None else True

    expected = next((i for i, c in enumerate(contract.choices) if fits(c)), None)

    async def attempt() -> int | None:
        negotiator = Negotiator([LocalBackend()], governance=None)
        try:
            try:
                lease = await negotiator.acquire(contract)
            except NoOffer:
                return None
            await lease.release()
            return 0 if lease.grant.alternative is None else lease.grant.alternative + 1
        finally:
            await negotiator.aclose()

    assert anyio.run(attempt) == expected
