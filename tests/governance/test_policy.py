"""Policies: files validated like contracts, and refusals that name the rule and the numbers."""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import re
import time
from pathlib import Path
from typing import Any

import anyio
import attrs
import jsonschema
import pytest
import tomli_w
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aicontract as ac
from aicontract.cli import main
from aicontract.cli.governance import policy_json_schema
from aicontract.governance import Identity, Record, loads_policy
from aicontract.governance.enforce import Governance
from aicontract.negotiate import Negotiator
from fakes import FakeBackend

POLICY = {
    "identities": [
        {"match": "user:alice", "tenants": ["team-a"]},
        {"match": "group:ml", "tenants": ["ml"]},
    ],
    "default": {"free_form": False, "templates": ["notebook"]},
    "tenants": {
        "team-a": {
            "jurisdictions": ["EU"],
            "gpu_models": ["H100"],
            "max_duration": "24h",
            "quotas": {"gpus": 4, "gpu_hours_per_day": 40, "spend_per_day": "100 USD"},
        },
        "ml": {"max_guarantee": "reserved"},
    },
}
ALICE = Identity(kind="user", name="alice", groups=("staff",))


@attrs.define(eq=False)
class Who(FakeBackend):
    """A fake backend that says who is asking."""

    who: Identity = ALICE

    async def identity(self) -> Identity:
        return self.who


def _negotiator(
    tmp_path: Path, policy: dict[str, Any] = POLICY, **backend: Any
) -> tuple[Negotiator, Who]:
    fake = Who(**backend)
    gov = Governance(
        policy=loads_policy(json.dumps(policy), "json"),
        record=Record(tmp_path / "record.jsonl"),
        clock=fake.clock,
    )
    return Negotiator([fake], clock=fake.clock, governance=gov), fake


# -- files -------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["yaml", "toml", "json"])
def test_policy_loads_in_every_format(fmt: str) -> None:
    text = {
        "yaml": lambda d: yaml.safe_dump(d),
        "toml": tomli_w.dumps,
        "json": json.dumps,
    }[fmt](POLICY)
    policy = loads_policy(text, fmt)  # type: ignore[arg-type]
    assert policy.tenants["team-a"].quotas.gpus == 4
    assert policy.tenants_for(ALICE) == ("team-a",)


@pytest.mark.parametrize(
    ("doc", "path", "words"),
    [
        ({"tenants": {"a": {"quotaz": {}}}}, "$.tenants.a", "did you mean 'quotas'"),
        (
            {"default": {"quotas": {"spend_per_day": "100"}}},
            "$.default.quotas.spend_per_day",
            "not a sum of money",
        ),
        (
            {"default": {"min_guarantee": "allocated", "max_guarantee": "quota"}},
            "$.default.max_guarantee",
            "weaker",
        ),
        (
            {"identities": [{"match": "alice", "tenants": ["a"]}]},
            "$.identities[0].match",
            "names no identity",
        ),
        ({"default": {"max_duration": "forever"}}, "$.default.max_duration", "duration"),
        ({"default": {"jurisdictions": ["eu"]}}, "$.default.jurisdictions", "jurisdiction code"),
        ({"version": 2}, "$.version", "not known"),
    ],
)
def test_bad_policies_name_the_path(doc: dict[str, Any], path: str, words: str) -> None:
    with pytest.raises(ac.ContractError) as info:
        loads_policy(json.dumps(doc), "json")
    assert info.value.path.startswith(path), info.value
    assert words in str(info.value)


def test_schema_accepts_the_example_and_refuses_junk() -> None:
    schema = policy_json_schema()
    jsonschema.validate(POLICY, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"default": {"quotas": {"gpus": "many"}}}, schema)


_junk = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
_keys = st.sampled_from(
    [
        "quotas",
        "gpus",
        "jurisdictions",
        "regions",
        "gpu_models",
        "min_guarantee",
        "max_guarantee",
        "max_duration",
        "templates",
        "free_form",
        "spend_per_day",
        "gpu_hours_per_month",
        "match",
        "tenants",
        "identities",
        "default",
        "version",
    ]
)
_shaped = st.recursive(
    _junk, lambda inner: st.dictionaries(_keys, inner, max_size=4), max_leaves=16
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_shaped, fmt=st.sampled_from(["yaml", "json"]))
def test_fuzzed_policies_give_only_clear_errors(doc: Any, fmt: str) -> None:
    try:
        text = json.dumps(doc) if fmt == "json" else yaml.safe_dump(doc)
    except ValueError:
        return  # NaN and friends: not a document either format can carry
    try:
        loads_policy(text, fmt)  # type: ignore[arg-type]
    except ac.ContractError as exc:
        message = str(exc)  # a message, never a traceback
        assert message


@settings(max_examples=200, deadline=None)
@given(text=st.binary(max_size=200))
def test_fuzzed_policy_bytes_give_only_clear_errors(text: bytes) -> None:
    for fmt in ("yaml", "toml", "json"):
        with contextlib.suppress(ac.ContractError):
            loads_policy(text, fmt)  # type: ignore[arg-type]


def test_cli_policy_validate(tmp_path: Path) -> None:
    good = tmp_path / "policy.yaml"
    good.write_text(yaml.safe_dump(POLICY))
    bad = tmp_path / "bad.json"
    bad.write_text('{"default": {"quotas": {"gpu": 2}}}')
    runner = CliRunner()
    ok = runner.invoke(main, ["policy", "validate", str(good)])
    assert ok.exit_code == 0
    assert "ok (2 tenant(s)" in ok.output
    failed = runner.invoke(main, ["policy", "validate", str(good), str(bad)])
    assert failed.exit_code == 1
    assert "$.default.quotas: unknown key 'gpu'; did you mean 'gpus'?" in failed.output
    schema = runner.invoke(main, ["policy", "schema"])
    assert json.loads(schema.output)["$schema"].startswith("https://json-schema.org")


# -- enforcement -------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_tenant_the_identity_may_not_act_for_is_refused(tmp_path: Path) -> None:
    negotiator, fake = _negotiator(tmp_path)
    contract = ac.Contract(name="x", tenant="ml", gpus=1, duration="1h")
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(contract)
    text = str(info.value)
    assert "user:alice may not act for tenant 'ml'" in text
    assert "'team-a'" in text
    assert info.value.rule == "identities"
    assert info.value.tenant == "ml"
    assert fake.commits == []  # refused before the backend was touched
    kinds = [e["kind"] for e in Record(tmp_path / "record.jsonl").entries()]
    assert kinds == ["refuse"]


@pytest.mark.anyio
async def test_group_membership_maps_to_a_tenant(tmp_path: Path) -> None:
    bob = Identity(kind="user", name="bob", groups=("ml",))
    negotiator, _ = _negotiator(tmp_path, who=bob, offers=[{"guarantee": "reserved"}])
    lease = await negotiator.acquire(ac.Contract(name="x", tenant="ml", gpus=1, duration="1h"))
    assert lease.is_active
    await lease.release()


@pytest.mark.anyio
async def test_offers_outside_the_tenants_jurisdictions_are_skipped(tmp_path: Path) -> None:
    negotiator, _fake = _negotiator(
        tmp_path,
        offers=[
            {"jurisdiction": "US", "region": "us-east-1", "price": ac.Money.per_hour(0)},
            {"jurisdiction": "DE", "region": "eu-central-1", "price": ac.Money.per_hour(1)},
        ],
    )
    contract = ac.Contract(
        name="x", tenant="team-a", gpus=ac.GPU(count=1, models=["H100"]), duration="1h"
    )
    lease = await negotiator.acquire(contract)
    assert lease.jurisdiction == "DE"  # the cheaper US offer was refused by policy
    await lease.release()
    only_us, _ = _negotiator(tmp_path / "b", offers=[{"jurisdiction": "US"}])
    with pytest.raises(
        ac.PolicyViolation, match=r"tenants.team-a.jurisdictions .*US is not allowed; allowed: EU"
    ):
        await only_us.acquire(contract)


@pytest.mark.parametrize(
    ("contract", "rule"),
    [
        (
            {"tenant": "team-a", "gpus": ac.GPU(count=1, models=["H100"]), "duration": "48h"},
            "tenants.team-a.max_duration",
        ),
        (
            {"tenant": "team-a", "gpus": ac.GPU(count=1, models=["H100"])},
            "tenants.team-a.max_duration",
        ),
        (
            {"tenant": "team-a", "gpus": ac.GPU(count=1, models=["A100"]), "duration": "1h"},
            "tenants.team-a.gpu_models",
        ),
        ({"tenant": "other", "gpus": 1, "duration": "1h"}, "default.free_form"),
    ],
)
@pytest.mark.anyio
async def test_rules_refuse_with_their_name(
    tmp_path: Path, contract: dict[str, Any], rule: str
) -> None:
    policy = {**POLICY, "identities": []}
    negotiator, _ = _negotiator(tmp_path, policy)
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(ac.Contract(name="x", **contract))
    assert any(r.rule == rule for r in info.value.refusals), info.value


@pytest.mark.anyio
async def test_guarantee_cap(tmp_path: Path) -> None:
    negotiator, _ = _negotiator(
        tmp_path,
        who=Identity(kind="user", name="b", groups=("ml",)),
        offers=[{"guarantee": "allocated"}],
    )
    with pytest.raises(ac.PolicyViolation, match="stronger than reserved"):
        await negotiator.acquire(ac.Contract(name="x", tenant="ml", gpus=1))


@pytest.mark.anyio
async def test_templates_are_the_only_way_in_when_free_form_is_off(tmp_path: Path) -> None:
    policy = {**POLICY, "identities": []}
    big = {"gpu_memory": ac.Bytes("80GiB"), "gpu_interconnect": "nvlink"}
    negotiator, _ = _negotiator(tmp_path, policy, offers=[big])
    contract = ac.Contract.from_template("notebook", tenant="other")
    lease = await negotiator.acquire(contract)
    await lease.release()
    grant = next(e for e in Record(tmp_path / "record.jsonl").entries() if e["kind"] == "grant")
    assert grant["template"] == "notebook@1.1"
    other = ac.Contract.from_template("train-eu", tenant="other")
    with pytest.raises(
        ac.PolicyViolation, match=re.escape("template 'train-eu@1.2' is not allowed")
    ):
        await negotiator.acquire(other)
    # A contract that claims the template but changed a locked field is refused.
    forged = contract.with_(gpus=2)
    with pytest.raises(
        ac.PolicyViolation, match=re.escape("changes its locked resources.gpus.count")
    ):
        await negotiator.acquire(forged)


def test_a_contracts_verdict_is_kept_only_for_the_same_policy_identity_and_catalog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """check_contract keeps its verdict per policy, identity, contract and template catalog:
    a change of any of them is judged afresh, whatever was judged before."""
    from aicontract.governance import policy as policy_module
    from aicontract.governance.templates import catalog, render

    contract = render(catalog()["notebook"][0], {})  # a template's contract
    strict = loads_policy("default: {free_form: false, templates: [notebook]}\n")
    other = loads_policy("default: {free_form: false, templates: [train-eu]}\n")
    mapped = loads_policy("identities: [{match: 'user:alice', tenants: [default]}]\n")
    bob = Identity(kind="user", name="bob")

    def rules(policy: Any, identity: Identity = ALICE, judged: ac.Contract = contract) -> list[str]:
        return [r.rule for r in policy_module.check_contract(policy, identity, judged)[0]]

    for _ in range(2):  # judged, then from what was kept: the same answers
        assert rules(strict) == []
        assert rules(other) == ["default.templates"]
        assert rules(mapped) == []
        assert rules(mapped, bob) == ["identities"]
        assert rules(strict, judged=contract.with_(labels={})) == ["default.free_form"]
    monkeypatch.setattr(policy_module, "_catalog", lambda: {})  # the template is gone
    assert rules(strict) == ["templates.locked"]
    monkeypatch.undo()
    assert rules(strict) == []


@pytest.mark.anyio
async def test_quota_counts_held_gpus_and_refusals_count_for_nothing(tmp_path: Path) -> None:
    negotiator, _ = _negotiator(tmp_path)
    h100 = {"tenant": "team-a", "duration": "1h", "max_price": "1 USD/h"}
    held = await negotiator.acquire(
        ac.Contract(name="a", gpus=ac.GPU(count=3, models=["H100"]), **h100)
    )
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(
            ac.Contract(name="b", gpus=ac.GPU(count=2, models=["H100"]), **h100)
        )
    refusal = info.value.refusals[0]
    assert refusal.rule == "tenants.team-a.quotas.gpus"
    assert (refusal.used, refusal.limit) == ("3 + 2", "4")
    # The refused request took nothing: one more GPU still fits.
    one = await negotiator.acquire(
        ac.Contract(name="c", gpus=ac.GPU(count=1, models=["H100"]), **h100)
    )
    await one.release()
    await held.release()
    again = await negotiator.acquire(
        ac.Contract(name="d", gpus=ac.GPU(count=2, models=["H100"]), **h100)
    )
    await again.release()


@pytest.mark.anyio
async def test_usage_counts_what_another_process_appended_between_our_entries(
    tmp_path: Path,
) -> None:
    """The usage takes this process's own entries without reading them back only when it
    had read all before them: a grant another process appended in between still counts."""
    from aicontract.governance.enforce import UsageIndex

    policy = {"tenants": {"t": {"quotas": {"gpus": 2}}}}
    other = Record(tmp_path / "record.jsonl")  # another process's handle on the same file
    interleaved: list[int] = []

    async def meanwhile(offer: ac.Offer) -> None:
        if not interleaved:  # between our admission and our grant
            at = fake.clock.time()
            fields = {"tenant": "t", "gpus": 1, "lease": "theirs", "expires_at": at + 3600}
            other.append("grant", at, fields)
            interleaved.append(1)

    negotiator, fake = _negotiator(tmp_path, policy, on_commit=meanwhile, ttl=3600.0)
    ours = await negotiator.acquire(ac.Contract(name="a", tenant="t", gpus=1))
    with pytest.raises(ac.PolicyViolation) as info:  # theirs 1 + ours 1 + 1 > 2
        await negotiator.acquire(ac.Contract(name="b", tenant="t", gpus=1))
    assert (info.value.refusals[0].used, info.value.refusals[0].limit) == ("2 + 1", "2")
    await ours.release()
    other.append("end", fake.clock.time(), {"tenant": "t", "lease": "theirs"})
    fits = await negotiator.acquire(ac.Contract(name="c", tenant="t", gpus=2))
    # What this process keeps is what a reader of the whole file finds.
    assert negotiator.governance is not None
    kept = negotiator.governance._index
    fresh = UsageIndex(Record(tmp_path / "record.jsonl"))
    fresh.refresh()
    assert kept is not None
    now = fake.clock.time()
    assert kept.usage("t", now) == fresh.usage("t", now)
    assert kept.usage("t", now).gpus == 2
    await fits.release()


@pytest.mark.anyio
async def test_gpu_hours_and_spend_per_day(tmp_path: Path) -> None:
    negotiator, _ = _negotiator(tmp_path, offers=[{"price": ac.Money.per_hour(2)}])
    first = ac.Contract(
        name="a", tenant="team-a", gpus=ac.GPU(count=2, models=["H100"]), duration="10h"
    )
    lease = await negotiator.acquire(first)  # 20 GPU-hours, 40 USD planned
    await lease.release()  # released at once: what it used, not what it planned, counts
    big = ac.Contract(
        name="b", tenant="team-a", gpus=ac.GPU(count=4, models=["H100"]), duration="11h"
    )
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(big)  # 44 GPU-hours > 40, 88 USD... within 100
    rules = {r.rule: r for r in info.value.refusals}
    assert "4 GPUs x 11h = 44 GPU-hours" in rules["tenants.team-a.quotas.gpu_hours_per_day"].message
    pricey = ac.Contract(
        name="c", tenant="team-a", gpus=ac.GPU(count=4, models=["H100"]), duration="9h"
    )
    negotiator2, _ = _negotiator(tmp_path / "p", offers=[{"price": ac.Money.per_hour(12)}])
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator2.acquire(pricey)
    spend = {r.rule: r for r in info.value.refusals}["tenants.team-a.quotas.spend_per_day"]
    assert "12 USD/h x 9h = 108.00 USD" in spend.message
    assert spend.limit == "100 USD"


# -- across processes (the local backend, the default record) ---------------------------

QUOTA_POLICY = """\
tenants:
  team-a:
    quotas: {gpus: 2}
"""


def _holder(env: dict[str, str], ready: str, stop: str) -> None:
    os.environ.update(env)

    async def run() -> None:
        lease = await ac.acquire(ac.Contract(name="holder", tenant="team-a", gpus=2))
        Path(ready).write_text(lease.id)
        while not Path(stop).exists():
            await anyio.sleep(0.02)
        await lease.release()

    anyio.run(run)


def test_over_quota_is_refused_across_processes(tmp_path: Path, private_state: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(QUOTA_POLICY)
    os.environ["AICONTRACT_POLICY"] = str(policy)  # undone by the fixture's monkeypatch
    env = {k: v for k, v in os.environ.items() if k.startswith("AICONTRACT_")}
    ready, stop = tmp_path / "ready", tmp_path / "stop"
    worker = mp.get_context("spawn").Process(target=_holder, args=(env, str(ready), str(stop)))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and worker.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ready.exists(), "the holder never got its lease"
        with pytest.raises(ac.PolicyViolation) as info:
            ac.acquire_sync(ac.Contract(name="me", tenant="team-a", gpus=1))
        assert (info.value.refusals[0].used, info.value.refusals[0].limit) == ("2 + 1", "2")
        other = ac.acquire_sync(ac.Contract(name="me", tenant="team-b", gpus=1))  # not capped
        ac.release_sync(other)
    finally:
        stop.write_text("")
        worker.join(60)
    assert worker.exitcode == 0
    lease = ac.acquire_sync(ac.Contract(name="me", tenant="team-a", gpus=1))  # freed now
    ac.release_sync(lease)
    assert ac.governance.verify(private_state / "record.jsonl").ok


@pytest.mark.anyio
async def test_ended_leases_count_what_they_used_until_the_day_turns(tmp_path: Path) -> None:
    policy = {"tenants": {"t": {"quotas": {"gpu_hours_per_day": 40, "gpu_hours_per_month": 60}}}}
    negotiator, fake = _negotiator(tmp_path, policy)
    clock = fake.clock
    await clock.advance(86400 - clock.time() % 86400 + 3600)  # 01:00 UTC on some day

    def contract(gpus: int, hours: int) -> ac.Contract:
        return ac.Contract(name="x", tenant="t", gpus=gpus, duration=f"{hours}h")

    fake.ttl = 100 * 3600
    lease = await negotiator.acquire(contract(2, 10))
    await clock.advance(5 * 3600)
    await lease.release()  # 2 GPUs x 5h = 10 GPU-hours used, not the 20 planned
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(contract(4, 8))  # 10 + 32 > 40
    assert info.value.refusals[0].used == "10 + 32"
    fits = await negotiator.acquire(contract(4, 7))  # 10 + 28 <= 40
    await fits.release()  # at once: 0 more
    await clock.advance(24 * 3600)  # the next day: the day's quota is fresh, the month's is not
    if (
        ac.governance.policy.windows(clock.time())[1]
        != ac.governance.policy.windows(clock.time() - 24 * 3600)[1]
    ):
        return  # the month turned too; nothing left to tell apart
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(contract(4, 13))  # 52 > 40 a day
    assert {r.rule for r in info.value.refusals} == {
        "tenants.t.quotas.gpu_hours_per_day",
        "tenants.t.quotas.gpu_hours_per_month",  # 10 + 52 > 60
    }
    ok = await negotiator.acquire(contract(4, 10))  # 40 a day; 10 + 40 <= 60 a month
    await ok.release()


def test_usage_windows_follow_the_clock_across_days_and_months_both_ways(tmp_path: Path) -> None:
    """The index keeps its day and month while the clock stays in that UTC day, and only
    then: a new day, a new month or a clock set back gets the windows of its own time."""
    import datetime as dt

    from aicontract.governance.enforce import UsageIndex
    from aicontract.governance.policy import windows

    index = UsageIndex(Record(tmp_path / "record.jsonl"))
    eve = dt.datetime(2026, 1, 31, 23, 30, tzinfo=dt.timezone.utc).timestamp()
    for moment in (eve, eve + 1799, eve + 1800, eve + 1799, eve - 86400, eve + 40 * 86400, eve):
        assert index.usage("t", moment) == ac.governance.policy.Usage()
        assert index._roll(moment) == windows(moment), moment


@pytest.mark.anyio
async def test_a_refusal_is_a_kind_of_no_offer(tmp_path: Path) -> None:
    """Code that copes with NoOffer (a renegotiation keeping its lease) copes with refusals."""
    negotiator, _ = _negotiator(tmp_path)
    with pytest.raises(ac.NoOffer) as info:
        await negotiator.acquire(ac.Contract(name="x", tenant="ml", gpus=1))
    assert isinstance(info.value, ac.PolicyViolation)
    assert info.value.contract_name == "x"
    assert info.value.rejections[0].requirement == "identities"
    assert str(info.value).startswith("refused by policy: identities [tenant ml]")


@pytest.mark.anyio
async def test_quota_counts_every_node_of_a_gang(tmp_path: Path) -> None:
    # 2 nodes x 2 GPUs hold 4 GPUs, not 2: with 3 held already the gang breaks the quota of 4.
    negotiator, _ = _negotiator(tmp_path, offers=[{"nodes": 2}])
    terms = {"tenant": "team-a", "duration": "1h", "max_price": "1 USD/h"}
    gang = ac.Contract(
        name="gang", resources=ac.Resources(gpus=ac.GPU(count=2, models=["H100"]), nodes=2), **terms
    )
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(
            gang.with_(name="big", resources={"gpus": {"count": 3, "models": ["H100"]}, "nodes": 2})
        )
    assert (info.value.refusals[0].used, info.value.refusals[0].limit) == ("0 + 6", "4")
    held = await negotiator.acquire(gang)
    with pytest.raises(ac.PolicyViolation) as info:
        await negotiator.acquire(gang.with_(name="more"))
    assert (info.value.refusals[0].used, info.value.refusals[0].limit) == ("4 + 4", "4")
    await held.release()
