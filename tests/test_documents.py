"""Contract files: lossless round trips in every format, strict parsing, clear refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from aicontract import GPU, Contract, ContractError, Resources, dump, dumps, load, loads
from aicontract.documents import format_of, parse, to_builtins

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "contracts").iterdir())
FORMATS = ("yaml", "toml", "json")


def test_there_are_examples_in_every_format() -> None:
    assert {format_of(p) for p in EXAMPLES} == set(FORMATS)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
@pytest.mark.parametrize("fmt", FORMATS)
def test_examples_round_trip(path: Path, fmt: str) -> None:
    contract = load(path)
    text = dumps(contract, fmt)  # type: ignore[arg-type]
    again = loads(text, fmt)  # type: ignore[arg-type]
    assert again == contract
    assert to_builtins(again) == to_builtins(contract)  # same text for every quantity
    assert dumps(again, fmt) == text  # and a second trip is a fixed point  # type: ignore[arg-type]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_through_files(path: Path, tmp_path: Path) -> None:
    contract = load(path)
    for suffix in (".yaml", ".yml", ".toml", ".json"):
        target = tmp_path / f"contract{suffix}"
        dump(contract, target)
        assert load(target) == contract


def test_dump_keeps_the_canonical_shape() -> None:
    """Shortcuts are for code; files always use the sections of the design."""
    contract = Contract(name="a", gpus=2, memory="64GiB", duration="1h", regions=["eu-west-1"])
    assert json.loads(dumps(contract, "json")) == {
        "name": "a",
        "resources": {"gpus": {"count": 2}, "memory": "64GiB"},
        "placement": {"regions": ["eu-west-1"]},
        "terms": {"duration": "1h"},
    }


def test_dump_writes_quantities_as_written() -> None:
    text = dumps(load(EXAMPLES[-1]), "yaml")  # train-8gpu-eu.yaml
    for written in ("memory: '>=80GiB'", "256GiB..", "30 USD/h", "4h", "32..64"):
        assert written in text


def test_format_from_suffix() -> None:
    assert format_of("a.YML") == "yaml"
    assert format_of(Path("x/y.toml")) == "toml"
    with pytest.raises(ContractError) as info:
        format_of("contract.txt")
    assert info.value.value == ".txt"
    assert info.value.allowed == ".json, .toml, .yaml, .yml"


def test_explicit_format_wins_over_suffix(tmp_path: Path) -> None:
    target = tmp_path / "contract.txt"
    target.write_text('{"name": "a"}')
    assert load(target, "json").name == "a"


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ContractError) as info:
        load(tmp_path / "missing.yaml")
    assert "cannot read" in info.value.message
    assert info.value.value == str(tmp_path / "missing.yaml")


# -- YAML strictness -------------------------------------------------------------------


def test_yaml_norway_stays_norway() -> None:
    contract = loads("placement: {jurisdictions: [NO, DE]}")
    assert contract.placement.jurisdictions == ("NO", "DE")
    assert loads(dumps(contract, "yaml")) == contract


@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "y", "n"])
def test_yaml_only_true_and_false_are_booleans(word: str) -> None:
    with pytest.raises(ContractError) as info:
        loads(f"terms: {{preemptible: {word}}}")
    assert info.value.path == "$.terms.preemptible"
    assert info.value.value == word
    assert info.value.allowed == "bool"


@pytest.mark.parametrize("word", ["true", "True", "TRUE"])
def test_yaml_true(word: str) -> None:
    assert loads(f"terms: {{preemptible: {word}}}").terms.preemptible is True


def test_yaml_refuses_python_tags() -> None:
    with pytest.raises(ContractError, match="not valid YAML"):
        loads("name: !!python/object/apply:os.system [echo hi]")


# -- the documented refusals -----------------------------------------------------------


def _refusal(text: str | bytes, fmt: str = "yaml") -> ContractError:
    with pytest.raises(ContractError) as info:
        loads(text, fmt)  # type: ignore[arg-type]
    return info.value


RANGE_FORM = "a size like 80GiB, or a range like 40GiB..80GiB, 256GiB.. or >=24GiB"
COUNT_FORM = "a whole number like 8, or a range like 1..8, 2.. or >=2"
DURATION_FORM = "text like 90s, 200ms, 5m, 4h, 1h30m, 2d or ISO 8601 like PT4H"

# (document, format, path, value, words in the message, allowed form)
REFUSALS: list[tuple[str | bytes, str, str, Any, str, str]] = [
    ("", "yaml", "$", None, "the document is empty", "a mapping with the contract's keys"),
    ("# only a comment\n", "yaml", "$", None, "empty", "a mapping"),
    ("", "json", "$", None, "not valid JSON", "a JSON object"),
    ("- a\n- b\n", "yaml", "$", None, "must be a mapping, got list", "a mapping"),
    ("42", "yaml", "$", 42, "must be a mapping, got int", "a mapping"),
    ('"text"', "json", "$", "text", "must be a mapping, got str", "a mapping"),
    ("[1]", "json", "$", None, "must be a mapping, got list", "a mapping"),
    (b"\xff\xfe\x00\x01junk", "yaml", "$", None, "not UTF-8 text (byte 0)", "UTF-8 text"),
    ("name: a\x00", "yaml", "$", None, "contains NUL bytes", "text"),
    ("a: [", "yaml", "$", None, "not valid YAML", "a YAML mapping"),
    ("name = ", "toml", "$", None, "not valid TOML", "a TOML table"),
    ('{"name": ', "json", "$", None, "not valid JSON", "a JSON object"),
    ("a: " + "[" * 5000 + "]" * 5000, "yaml", "$", None, "nested too deeply", "a YAML mapping"),
    ('{"a": ' + "[" * 50000 + "]" * 50000 + "}", "json", "$", None, "too deeply", "JSON"),
    ("name: a\nname: b\n", "yaml", "$", "name", "line 2: key 'name' appears twice", "once"),
    ('{"name": "a", "name": "b"}', "json", "$", "name", "key 'name' appears twice", "once"),
    ("{1: a}", "yaml", "$", 1, "keys must be text, got 1", "text keys"),
    ('{"resources": {"memory": NaN}}', "json", "$", "NaN", "not a number", "finite numbers"),
    (
        "resources: {memory: 1e400GiB}",
        "yaml",
        "$.resources.memory",
        "1e400GiB",
        "'1e400GiB' is not a byte quantity",
        RANGE_FORM,
    ),
    (
        '{"resources": {"memory": 1e400}}',
        "json",
        "$.resources.memory",
        1e400,
        "inf is not a finite byte quantity",
        RANGE_FORM,
    ),
    (
        "resources: {memory: 1.0e+400}",
        "yaml",
        "$.resources.memory",
        1e400,
        "not a finite byte quantity",
        RANGE_FORM,
    ),
    (
        "resources: {memory: 8GiB..2GiB}",
        "yaml",
        "$.resources.memory",
        "8GiB..2GiB",
        "is an inverted range (minimum above maximum)",
        RANGE_FORM,
    ),
    (
        "resources: {cpus: 8..2}",
        "yaml",
        "$.resources.cpus",
        "8..2",
        "'8..2' is an inverted range",
        COUNT_FORM,
    ),
    (
        "resources: {gpus: {count: 0..-1}}",
        "yaml",
        "$.resources.gpus.count",
        "0..-1",
        "'-1' is not a whole number",
        COUNT_FORM,
    ),
    (
        "resources: {gpus: {count: 0}}",
        "yaml",
        "$.resources.gpus.count",
        0,
        "0 allows zero GPUs; omit gpus for none",
        "at least one GPU, like 1, 1..8 or >=2",
    ),
    (
        "resources: {memory: eighty}",
        "yaml",
        "$.resources.memory",
        "eighty",
        "'eighty' is not a byte quantity",
        RANGE_FORM,
    ),
    (
        "resources: {gpus: {memory: 80 GB RAM}}",
        "yaml",
        "$.resources.gpus.memory",
        "80 GB RAM",
        "is not a byte quantity",
        RANGE_FORM,
    ),
    (
        "resources: {cpus: '>8'}",
        "yaml",
        "$.resources.cpus",
        ">8",
        "strict bounds are not supported; use >= or <=",
        COUNT_FORM,
    ),
    (
        "resources: {cpus: ..4}",
        "yaml",
        "$.resources.cpus",
        "..4",
        "..4 allows zero CPUs",
        "at least one CPU",
    ),
    (
        "objectives: [{sli: latency_p100, op: '<=', target: 1s}]",
        "yaml",
        "$.objectives[0].sli",
        "latency_p100",
        "names no usable percentile",
        "p50, p90, p99",
    ),
    (
        "workload: {env: {'A=B': x}}",
        "yaml",
        "$.workload.env",
        None,
        "is not a usable environment variable",
        "letters, digits and '_'",
    ),
    (
        "resources: {cpus: 0}",
        "yaml",
        "$.resources.cpus",
        0,
        "0 allows zero CPUs",
        "at least one CPU, like 4, 1..8 or >=2",
    ),
    (
        "placement: {regions: [eu-west-1, eu-central-1], deny_regions: [eu-west-1]}",
        "yaml",
        "$.placement.deny_regions",
        ["eu-west-1"],
        "['eu-west-1'] are both required (regions) and denied",
        "deny_regions that do not also appear in regions",
    ),
    (
        "objectives: [{sli: latency_p99, op: '<=', target: 200ms, window: 0s}]",
        "yaml",
        "$.objectives[0].window",
        "0s",
        "the window must be longer than zero",
        "a duration like 5m or 1h",
    ),
    (
        "objectives: [{sli: latency_p99, op: '<=', target: 200ms, window: -5m}]",
        "yaml",
        "$.objectives[0].window",
        "-5m",
        "a duration cannot be negative",
        DURATION_FORM,
    ),
    (
        "objectives: [{sli: latency_p99, op: '<=', target: 200ms, window: 5}]",
        "yaml",
        "$.objectives[0].window",
        5,
        "a duration needs a unit: write 5s or 5m, not 5",
        DURATION_FORM,
    ),
    (
        "objectives: [{sli: latency_p99, op: '<=', target: 99.9%}]",
        "yaml",
        "$.objectives[0].target",
        "99.9%",
        "latency_p99 needs a latency like 200ms, got '99.9%'",
        "a latency like 200ms",
    ),
    (
        "objectives: [{sli: availability, op: '>=', target: 200ms}]",
        "yaml",
        "$.objectives[0].target",
        "200ms",
        "availability needs a percentage like 99.9%, got '200ms'",
        "a percentage like 99.9%",
    ),
    (
        "objectives: [{sli: throughput, op: '>=', target: 0.5}]",
        "yaml",
        "$.objectives[0].target",
        0.5,
        "throughput needs a rate like 500/s",
        "a rate like 500/s",
    ),
    (
        "objectives: [{ok: 1, sli: latency_p99, op: '<=', target: 1s}]",
        "yaml",
        "$.objectives[0]",
        "ok",
        "unknown key 'ok'",
        "op, sli, target, window",
    ),
    (
        "objectives: [{sli: p99_latency, op: '<=', target: 1s}]",
        "yaml",
        "$.objectives[0].sli",
        "p99_latency",
        "unknown SLI 'p99_latency'",
        "latency_p50/p90/p95/p99/p999",
    ),
    (
        "objectives: [{sli: latency_p99, op: '=', target: 1s}]",
        "yaml",
        "$.objectives[0].op",
        "=",
        "Invalid enum value '='",
        "<= | < | >= | >",
    ),
    (
        "objectives: [{sli: latency_p99}]",
        "yaml",
        "$.objectives[0]",
        {"sli": "latency_p99"},
        "missing required field `op`",
        "",
    ),
    (
        "resorces: {gpus: 1}",
        "yaml",
        "$",
        "resorces",
        "unknown key 'resorces'; did you mean 'resources'?",
        "labels, name, objectives, placement, preferences, resources, tenant, terms, workload",
    ),
    (
        "resources: {gpu: {count: 1}}",
        "yaml",
        "$.resources",
        "gpu",
        "unknown key 'gpu'; did you mean 'gpus'?",
        "cpus, disk, gpus, memory",
    ),
    (
        "resources: {gpus: {count: 1, modles: [H100]}}",
        "yaml",
        "$.resources.gpus",
        "modles",
        "did you mean 'models'?",
        "compute_capability, count, interconnect, memory, mig, models",
    ),
    (
        "[placement]\nisolaton = 'shared'",
        "toml",
        "$.placement",
        "isolaton",
        "did you mean 'isolation'?",
        "isolation",
    ),
    (
        '{"terms": {"xyzzy": 1}}',
        "json",
        "$.terms",
        "xyzzy",
        "unknown key 'xyzzy'",
        "duration",
    ),
    (
        "terms: {min_guarantee: gold}",
        "yaml",
        "$.terms.min_guarantee",
        "gold",
        "Invalid enum value 'gold'",
        "allocated | reserved | quota | best-effort",
    ),
    (
        "placement: {isolation: alone}",
        "yaml",
        "$.placement.isolation",
        "alone",
        "Invalid enum value 'alone'",
        "shared | dedicated-node | dedicated-host",
    ),
    (
        "workload: {kind: game}",
        "yaml",
        "$.workload.kind",
        "game",
        "Invalid enum value 'game'",
        "training | inference | notebook | batch",
    ),
    (
        "preferences: {rank: [cost, speed]}",
        "yaml",
        "$.preferences.rank[1]",
        "speed",
        "Invalid enum value 'speed'",
        "cost | start_time | locality | guarantee",
    ),
    (
        "terms: {on_violation: panic}",
        "yaml",
        "$.terms.on_violation",
        "panic",
        "Invalid enum value",
        "notify | renegotiate | release",
    ),
    (
        "terms: {duration: 0s}",
        "yaml",
        "$.terms.duration",
        "0s",
        "the duration must be longer than zero",
        "a duration like 4h or 30m",
    ),
    (
        "terms: {duration: 2001-12-14}",
        "yaml",
        "$.terms.duration",
        None,
        "expected a duration, got date",
        DURATION_FORM,
    ),
    (
        "terms: {max_price: 30 dollars}",
        "yaml",
        "$.terms.max_price",
        "30 dollars",
        "is not a price per hour",
        "text like 2.50 USD/h or 30 EUR/h",
    ),
    (
        "terms: {priority: high}",
        "yaml",
        "$.terms.priority",
        "high",
        "expected `int`, got `str`",
        "int",
    ),
    (
        "name: Train Llama",
        "yaml",
        "$.name",
        "Train Llama",
        "'Train Llama' is not a name",
        "lowercase letters",
    ),
    (
        "placement: {jurisdictions: [eu]}",
        "yaml",
        "$.placement.jurisdictions",
        ["eu"],
        "'eu' is not a jurisdiction code",
        "like EU, US or DE",
    ),
    (
        "workload: {ports: {http: 70000}}",
        "yaml",
        "$.workload.ports",
        {"http": 70000},
        "port http=70000 is outside 1..65535",
        "port numbers in 1..65535",
    ),
    (
        "workload: {probe: {endpoint: http}, ports: {web: 8000}}",
        "yaml",
        "$.workload.probe",
        {"endpoint": "http"},
        "probe endpoint 'http' is not one of the ports ['web']",
        "workload.ports",
    ),
    (
        "labels: {team: 7}",
        "yaml",
        "$.labels[...]",
        None,
        "expected `str`, got `int`",
        "str",
    ),
]


@pytest.mark.parametrize(
    ("text", "fmt", "path", "value", "says", "allowed"),
    REFUSALS,
    ids=[f"{i}-{r[4][:30]}" for i, r in enumerate(REFUSALS)],
)
def test_documented_refusals(
    text: str | bytes, fmt: str, path: str, value: Any, says: str, allowed: str
) -> None:
    error = _refusal(text, fmt)
    assert error.path == path
    if value is not None:
        assert error.value == value
    assert says in error.message
    if allowed:
        assert error.allowed is not None
        assert allowed in error.allowed
        assert allowed in str(error)  # the rendered message names the allowed form
    # The rendering puts the path first, so one line tells the whole story.
    if path != "$":
        assert str(error).startswith(f"{path}: ")


def test_large_documents_are_refused_before_parsing(tmp_path: Path) -> None:
    error = _refusal("#" * ((256 << 10) + 1))
    assert "larger than 256 KiB" in error.message
    error = _refusal(b"#" * ((1 << 20) + 1))
    assert "larger than 256 KiB" in error.message
    # A 1 MiB YAML list is refused by its size: no parser ever sees it.
    big = tmp_path / "big.yaml"
    big.write_text("- 1\n" * (1 << 18))
    with pytest.raises(ContractError, match="larger than 256 KiB"):
        load(big)


def test_huge_integers_are_refused_not_crashed() -> None:
    for fmt, text in [
        ("yaml", "resources: {memory: " + "9" * 5000 + "}"),
        ("json", '{"resources": {"memory": ' + "9" * 5000 + "}}"),
        ("toml", "[resources]\nmemory = " + "9" * 5000),
    ]:
        _refusal(text, fmt)
    error = _refusal("resources: {memory: " + "9" * 40 + "GiB}")
    assert "absurdly large" in error.message


def test_unknown_format() -> None:
    error = _refusal("name: a", "xml")
    assert error.allowed == "yaml, toml, json"
    with pytest.raises(ContractError):
        dumps(Contract(), "xml")  # type: ignore[arg-type]


def test_shortcuts_are_not_file_keys() -> None:
    """Files use the canonical sections, so one spelling means one thing in a repository."""
    error = _refusal("gpus: 1")
    assert error.message.startswith("unknown key 'gpus'")
    assert error.path == "$"


def test_parse_gives_builtins_without_validation() -> None:
    assert parse("resources: {cpus: 4..8}", "yaml") == {"resources": {"cpus": "4..8"}}
    assert parse('{"a": [1, 2.5]}', "json") == {"a": [1, 2.5]}
    assert parse("a = 1979-05-27", "toml") is not None


@pytest.mark.parametrize(
    ("text", "count"),
    [("gpus: 2", "2"), ("gpus: '1..8'", "1..8"), ("gpus: '>=2'", ">=2"), ("gpus: {count: 4}", "4")],
)
def test_gpus_shorthand_in_files_is_a_count(text: str, count: str) -> None:
    contract = loads(f"name: x\nresources:\n  {text}\nalternatives:\n  - {text}\n")
    assert contract.resources.gpus is not None
    assert str(contract.resources.gpus.count) == count
    assert contract.alternatives[0].gpus == contract.resources.gpus
    assert contract == loads(dumps(contract))  # written back in the canonical shape


@pytest.mark.parametrize(
    ("text", "path", "value"),
    [
        ("resources: {gpus: 0}", "$.resources.gpus.count", 0),
        ("alternatives: [{gpus: 'lots'}]", "$.alternatives[0].gpus.count", "lots"),
        ("resources: {gpus: true}", "$.resources.gpus", True),
    ],
)
def test_gpus_shorthand_errors_name_the_count(text: str, path: str, value: object) -> None:
    with pytest.raises(ContractError) as caught:
        loads(f"name: x\n{text}\n")
    assert caught.value.path == path
    assert caught.value.value == value


def test_resources_take_the_gpus_shorthand_in_code() -> None:
    assert Resources(gpus=2) == Resources(gpus=GPU(count=2))
    assert Contract(name="x", resources={"gpus": "2..4"}).resources.gpus == GPU(count="2..4")
