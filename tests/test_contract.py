"""Contracts built in code: shortcuts, the same validation as files, helpers."""

from __future__ import annotations

import pickle

import msgspec
import pytest

from aicontract import (
    GPU,
    Bytes,
    BytesRange,
    Contract,
    ContractError,
    CountRange,
    Duration,
    Money,
    Objective,
    Placement,
    Preferences,
    Probe,
    Rate,
    Ratio,
    Resources,
    Terms,
    Workload,
    loads,
)


def test_code_and_file_build_the_same_contract() -> None:
    in_code = Contract(
        name="train",
        gpus=GPU(count=8, models=["H100", "A100-80GB"], memory=">=80GiB"),
        cpus="32..64",
        memory="256GiB..",
        duration="4h",
        max_price="30 USD/h",
        regions=["eu-west-1"],
        jurisdictions=["EU"],
    )
    in_file = loads(
        """
        name: train
        resources:
          gpus: {count: 8, models: [H100, A100-80GB], memory: ">=80GiB"}
          cpus: 32..64
          memory: 256GiB..
        terms: {duration: 4h, max_price: 30 USD/h}
        placement: {regions: [eu-west-1], jurisdictions: [EU]}
        """
    )
    assert in_code == in_file


def test_values_are_typed() -> None:
    c = Contract(gpus=GPU(count="1..8", memory=">=24GiB"), memory="64GiB", duration="PT4H")
    assert c.resources.gpus is not None
    assert c.resources.gpus.count == CountRange("1..8")
    assert c.resources.gpus.memory == BytesRange(">=24GiB")
    assert c.resources.memory == BytesRange("64GiB")
    assert Bytes("64GiB") in c.resources.memory
    assert c.terms.duration == Duration("4h")


def test_gpus_shortcut_accepts_a_count() -> None:
    assert Contract(gpus=2).resources.gpus == GPU(count=2)
    assert Contract(gpus="1..8").resources.gpus == GPU(count="1..8")
    assert Contract(gpus={"count": 2, "models": ["H100"]}).resources.gpus == GPU(
        count=2, models=["H100"]
    )


def test_defaults() -> None:
    c = Contract()
    assert c.name == "unnamed"
    assert c.tenant == "default"
    assert c.resources == Resources()
    assert c.objectives == ()
    assert c.placement.isolation == "shared"
    assert c.terms.min_guarantee == "best-effort"
    assert c.terms.renewable is True
    assert c.terms.preemptible is False
    assert c.workload is None
    assert c.preferences.rank == ("guarantee", "cost", "start_time", "locality")
    assert GPU().count == CountRange(1)
    assert Objective(sli="latency_p99", op="<=", target="200ms").window == Duration("5m")


def test_shortcut_and_section_together_are_refused() -> None:
    with pytest.raises(ContractError) as info:
        Contract(gpus=1, resources=Resources(cpus=4))
    assert info.value.path == "$.resources"
    assert "either as shortcuts or inside resources=, not both" in info.value.message


def test_structs_are_frozen_and_keyword_only() -> None:
    c = Contract(name="a")
    with pytest.raises(AttributeError):
        c.name = "b"  # type: ignore[misc]
    with pytest.raises(TypeError, match="keyword arguments only"):
        GPU(8)  # type: ignore[misc]


def test_with_revalidates() -> None:
    c = Contract(name="a", gpus=1)
    d = c.with_(name="b", gpus=2, duration="1h")
    assert (d.name, d.resources.gpus, d.terms.duration) == ("b", GPU(count=2), Duration("1h"))
    assert c.name == "a"  # unchanged
    with pytest.raises(ContractError) as info:
        c.with_(name="Not A Name")
    assert info.value.path == "$.name"
    with pytest.raises(ContractError, match="did you mean 'name'"):
        c.with_(nme="b")


def test_contracts_pickle() -> None:
    c = loads(
        "name: a\nresources: {gpus: {count: 1..8}, memory: 16GiB..}\n"
        "objectives: [{sli: availability, op: '>=', target: 0.999}]"
    )
    assert pickle.loads(pickle.dumps(c)) == c


# -- errors from code carry the Struct's name, from contracts the document path ---------


def test_error_path_in_code() -> None:
    with pytest.raises(ContractError) as info:
        GPU(count=0)
    assert info.value.path == "GPU.count"
    assert info.value.value == 0
    assert info.value.allowed == "at least one GPU, like 1, 1..8 or >=2"

    with pytest.raises(ContractError) as info:
        Contract(gpus=0)
    assert info.value.path == "$.resources.gpus.count"
    assert "allows zero GPUs" in str(info.value)


def test_unknown_keyword_in_code_suggests_shortcuts_too() -> None:
    with pytest.raises(ContractError) as info:
        Contract(duraton="4h")
    assert info.value.message == "unknown key 'duraton'; did you mean 'duration'?"
    assert info.value.value == "duraton"
    assert info.value.allowed is not None
    assert "duration" in info.value.allowed.split(", ")
    with pytest.raises(ContractError) as info:
        GPU(cout=1)
    assert "did you mean 'count'?" in info.value.message
    assert info.value.path == "GPU"


@pytest.mark.parametrize(
    ("build", "path", "says", "allowed"),
    [
        (lambda: GPU(models=["H100", "H100"]), "GPU.models", "lists a model twice", "distinct"),
        (lambda: GPU(models=[" "]), "GPU.models", "must not be empty", "non-empty"),
        (lambda: GPU(compute_capability="9"), "GPU.compute_capability", "not a compute", "9.0"),
        (lambda: GPU(mig="big"), "GPU.mig", "not a MIG profile", "1g.10gb"),
        (lambda: GPU(interconnect="ethernet"), "GPU.interconnect", "enum", "nvlink"),
        (lambda: Resources(cpus=0), "Resources.cpus", "allows zero CPUs", "at least one CPU"),
        (
            lambda: Objective(sli="latency_p99", op="<=", target="200ms", window="0s"),
            "Objective.window",
            "longer than zero",
            "5m",
        ),
        (
            lambda: Objective(sli="p99", op="<=", target="200ms"),
            "Objective.sli",
            "unknown SLI 'p99'",
            "latency_p50",
        ),
        (
            lambda: Objective(sli="throughput", op=">=", target="200ms"),
            "Objective.target",
            "throughput needs a rate like 500/s, got '200ms'",
            "500/s",
        ),
        (
            lambda: Objective(sli="latency_p99", op="==", target="200ms"),
            "Objective.op",
            "Invalid enum value '=='",
            "<= | < | >= | >",
        ),
        (
            lambda: Placement(regions=["eu-west-1"], deny_regions=["eu-west-1", "us-east-1"]),
            "Placement.deny_regions",
            "['eu-west-1'] are both required (regions) and denied",
            "deny_regions",
        ),
        (lambda: Placement(jurisdictions=["Europe"]), "Placement.jurisdictions", "not a", "EU"),
        (lambda: Placement(isolation="solo"), "Placement.isolation", "enum", "dedicated-node"),
        (lambda: Terms(duration="0s"), "Terms.duration", "longer than zero", "4h"),
        (lambda: Terms(priority=1001), "Terms.priority", "outside -1000..1000", "integer"),
        (lambda: Terms(min_guarantee="gold"), "Terms.min_guarantee", "enum", "allocated"),
        (lambda: Terms(on_violation="panic"), "Terms.on_violation", "enum", "renegotiate"),
        (lambda: Terms(max_price="2 dollars"), "Terms.max_price", "price per hour", "USD/h"),
        (lambda: Terms(max_renegotiations_per_hour=-1), "Terms", "outside 0..3600", "0..3600"),
        (lambda: Probe(path="health"), "Probe.path", "must start with '/'", "/health"),
        (lambda: Probe(interval="0s"), "Probe.interval", "longer than zero", "10s"),
        (lambda: Workload(ports={"http": 0}), "Workload.ports", "outside 1..65535", "1..65535"),
        (lambda: Workload(kind="game"), "Workload.kind", "enum", "inference"),
        (
            lambda: Workload(probe=Probe(endpoint="http"), ports={"web": 80}),
            "Workload.probe",
            "not one of the ports ['web']",
            "workload.ports",
        ),
        (lambda: Preferences(rank=["cost", "cost"]), "Preferences.rank", "twice", "at most once"),
        (lambda: Contract(name="Train"), "$.name", "is not a name", "lowercase"),
        (lambda: Contract(tenant="-x"), "$.tenant", "is not a name", "lowercase"),
        (lambda: Contract(name="a" * 64), "$.name", "is not a name", "1-63"),
        (
            lambda: Contract(workload=Workload(probe=Probe())),
            "$.workload",
            "a probe needs at least one published port",
            "ports",
        ),
    ],
)
def test_refusals_in_code(build, path: str, says: str, allowed: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ContractError) as info:
        build()
    assert info.value.path.startswith(path)
    assert says in info.value.message
    assert info.value.allowed is not None
    assert allowed in info.value.allowed
    assert allowed in str(info.value)


def test_contract_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the point is the base class
        GPU(count=0)


# -- behaviour -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("op", "target", "value", "met"),
    [
        ("<=", "200ms", "200ms", True),
        ("<=", "200ms", "201ms", False),
        ("<", "200ms", "200ms", False),
        ("<", "200ms", "199ms", True),
        (">=", "99.9%", "99.95%", True),
        (">=", "99.9%", "99.8%", False),
        (">", "99.9%", "99.9%", False),
    ],
)
def test_objective_met_by(op: str, target: str, value: str, met: bool) -> None:
    sli = "latency_p99" if target.endswith("ms") else "availability"
    objective = Objective(sli=sli, op=op, target=target)
    measured = Duration(value) if value.endswith("ms") else Ratio(value)
    assert objective.met_by(measured) is met


def test_objective_targets_by_sli() -> None:
    assert Objective(sli="ttft_p95", op="<=", target="1s").target == Duration("1s")
    assert Objective(sli="tpot_mean", op="<=", target="50ms").target == Duration("50ms")
    assert Objective(sli="throughput", op=">=", target="512 tokens/s").target == Rate(
        "512 tokens/s"
    )
    assert Objective(sli="error_rate", op="<=", target="0.1%").target == Ratio(0.001)
    assert Objective(sli="gpu_utilization", op=">=", target=0.5).target == Ratio("50%")


def test_placement_allows() -> None:
    p = Placement(
        regions=["eu-west-1", "eu-central-1"],
        deny_regions=["us-east-1"],
        jurisdictions=["EU"],
        providers=["aws"],
    )
    assert p.allows(region="eu-west-1", jurisdiction="EU", provider="aws")
    assert not p.allows(region="us-east-1", jurisdiction="EU", provider="aws")
    assert not p.allows(region="ap-south-1", jurisdiction="EU", provider="aws")
    assert not p.allows(region="eu-west-1", jurisdiction="US", provider="aws")
    assert not p.allows(region="eu-west-1", jurisdiction=None, provider="aws")  # unknown: no
    assert not p.allows(region="eu-west-1", jurisdiction="EU", provider="gcp")
    assert Placement().allows(region="anywhere", jurisdiction=None, provider="any")
    assert not Placement(deny_regions=["x"]).allows(region="x", jurisdiction=None, provider="p")


def test_money_cap_in_terms() -> None:
    assert Terms(max_price="30 USD/h").max_price == Money("30 USD/h")


def test_structs_are_msgspec_structs() -> None:
    # Wire types: other layers (offers, leases) encode contracts with msgspec directly.
    assert isinstance(Contract(), msgspec.Struct)
