"""Property tests: junk never escapes as anything but ContractError; valid contracts round-trip.

Guarantee 7 (clear refusal) is a promise about *every* input, so it is tested
on generated ones: random documents, documents shaped like the real schema
with junk values, and random text and numbers in every quantity. Example
counts are modest to keep the suite fast; hypothesis's database replays any
failure it finds first on the next run.
"""

from __future__ import annotations

import json
import math
import pickle
import string
from decimal import Decimal
from typing import Any

import jsonschema
import tomli_w
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
    dumps,
    json_schema,
    loads,
)
from aicontract.contract import convert
from aicontract.documents import to_builtins
from aicontract.units import parse_target

FORMATS = ("yaml", "toml", "json")
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEWER = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- junk ------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "..", ">=", "1..", "0", "-1", "1e400", "NaN", "80GiB", "4h", "99%"]),
)

junk = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=8), inner, max_size=4),
    ),
    max_leaves=12,
)

SECTIONS: dict[str, list[str]] = {
    "": [
        "name",
        "tenant",
        "resources",
        "objectives",
        "placement",
        "terms",
        "workload",
        "preferences",
        "labels",
    ],
    "resources": ["gpus", "cpus", "memory", "disk"],
    "gpus": ["count", "models", "memory", "compute_capability", "interconnect", "mig"],
    "objective": ["sli", "op", "target", "window"],
    "placement": ["regions", "deny_regions", "jurisdictions", "providers", "isolation"],
    "terms": [
        "duration",
        "renewable",
        "start_by",
        "max_price",
        "priority",
        "preemptible",
        "min_guarantee",
        "on_violation",
        "max_renegotiations_per_hour",
    ],
    "workload": ["kind", "image", "command", "env", "ports", "probe"],
    "probe": ["endpoint", "path", "method", "body", "interval", "timeout"],
    "preferences": ["rank", "regions"],
}


def _section(name: str, children: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """A mapping with some of the section's real keys (and a typo now and then).

    Each value is junk, or (for sub-sections) a real-shaped child holding junk.
    """
    keys = [*SECTIONS[name], "junk", SECTIONS[name][0][:-1]]
    return st.fixed_dictionaries(
        {}, optional={key: st.one_of(children.get(key, junk), junk) for key in keys}
    )


schemaish = _section(
    "",
    {
        "resources": _section("resources", {"gpus": _section("gpus", {})}),
        "objectives": st.lists(_section("objective", {}), max_size=3),
        "placement": _section("placement", {}),
        "terms": _section("terms", {}),
        "workload": _section("workload", {"probe": _section("probe", {})}),
        "preferences": _section("preferences", {}),
    },
)


def _refusal(fn: Any, *args: Any) -> ContractError | None:
    """Call ``fn``; a ContractError is returned, anything else escapes and fails the test."""
    try:
        fn(*args)
    except ContractError as exc:
        return exc
    return None


def _only_contract_errors(fn: Any, *args: Any) -> None:
    error = _refusal(fn, *args)
    if error is not None:
        assert error.message  # never an empty refusal
        assert str(error)
        assert error.path.startswith("$")


@FAST
@given(st.one_of(junk, schemaish))
def test_junk_data_is_refused_with_contract_error(data: Any) -> None:
    _only_contract_errors(convert, data, Contract)


@FAST
@given(st.one_of(junk, schemaish))
def test_junk_yaml_and_json_documents(data: Any) -> None:
    text = yaml.safe_dump(data, allow_unicode=True)
    _only_contract_errors(loads, text, "yaml")
    text = json.dumps(data, ensure_ascii=False)  # NaN/Infinity go in as JSON extensions
    _only_contract_errors(loads, text, "json")


@FEWER
@given(schemaish)
def test_junk_toml_documents(data: Any) -> None:
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):  # None and friends have no TOML form
        return
    _only_contract_errors(loads, text, "toml")


@FAST
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)), st.sampled_from(FORMATS))
def test_random_text_and_bytes(text: str | bytes, fmt: str) -> None:
    _only_contract_errors(loads, text, fmt)


# -- quantities ------------------------------------------------------------------------

quantity_text = st.text(
    alphabet=string.digits + ".-+e%/ <>=KMGTPiBkbsmhdwnuµ:_PTSHDYlUEORa\t",
    max_size=16,
)
quantity_input = st.one_of(
    quantity_text,
    st.text(max_size=12),
    st.integers(),
    st.floats(),
    st.decimals(),
    st.booleans(),
    st.none(),
    st.tuples(
        st.one_of(st.none(), st.integers(), quantity_text),
        st.one_of(st.none(), st.integers(), quantity_text),
    ),
    st.lists(st.integers(), max_size=3),
)
KINDS = [Bytes, Duration, Rate, Money, Ratio, CountRange, BytesRange, parse_target]


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(KINDS), quantity_input)
def test_quantity_fields_refuse_only_with_contract_error(kind: Any, value: Any) -> None:
    error = _refusal(kind, value)
    if error is not None:
        assert error.allowed  # a quantity always says what it would have taken
        return
    quantity = kind(value)
    # Whatever was accepted prints back to text that parses to the same value.
    text = str(quantity)
    again = kind(text) if not isinstance(quantity, Ratio) else Ratio(quantity.to_builtin())
    assert again == quantity
    assert pickle.loads(pickle.dumps(quantity)) == quantity


PATHS = [
    ("resources", "memory"),
    ("resources", "disk"),
    ("resources", "cpus"),
    ("resources", "gpus", "count"),
    ("resources", "gpus", "memory"),
    ("terms", "duration"),
    ("terms", "start_by"),
    ("terms", "max_price"),
    ("objectives", 0, "target"),
    ("objectives", 0, "window"),
    ("workload", "probe", "interval"),
]


def _put(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "objectives": [{"sli": "latency_p99", "op": "<=", "target": "200ms"}],
        "workload": {"ports": {"http": 80}, "probe": {"endpoint": "http"}},
    }
    node: Any = document
    for step in path[:-1]:
        if isinstance(step, str) and step not in node:
            node[step] = {}
        node = node[step]
    node[path[-1]] = value
    return document


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), quantity_input.filter(lambda v: not isinstance(v, tuple)))
def test_quantity_fields_in_documents(path: tuple[Any, ...], value: Any) -> None:
    document = _put(path, value)
    error = _refusal(convert, document, Contract)
    if error is not None:
        location = "$." + ".".join(str(p) for p in path).replace(".0.", "[0].")
        assert error.path.startswith(location.rsplit(".", 1)[0])  # the section at least
        return
    contract = convert(document, Contract)
    for fmt in FORMATS:
        assert loads(dumps(contract, fmt), fmt) == contract  # type: ignore[arg-type]


# -- valid contracts -------------------------------------------------------------------

names = st.from_regex(r"[a-z0-9]([a-z0-9._-]{0,20}[a-z0-9])?", fullmatch=True)
words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)
identifiers = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,10}", fullmatch=True)
env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
small = st.integers(min_value=0, max_value=4096)


@st.composite
def byte_texts(draw: st.DrawFn) -> Any:
    unit = draw(st.sampled_from(sorted(Bytes.UNITS)))
    whole = draw(small)
    if unit in ("B",) or draw(st.booleans()):
        return draw(st.sampled_from([f"{whole}{unit}", f"{whole} {unit}"]))
    return f"{whole}.5{unit}"  # every unit above B is even, so .5 is whole bytes


def _range_of(one: st.SearchStrategy[Any], floor: Any = None) -> st.SearchStrategy[Any]:
    @st.composite
    def build(draw: st.DrawFn) -> Any:
        a, b = sorted([draw(one), draw(one)], key=_magnitude)
        form = draw(st.sampled_from(["exact", "both", "open-high", "open-low", ">=", "<="]))
        if floor is not None and form in ("open-low", "<="):
            form = "both"
        if form == "exact":
            return a
        if form == "both":
            return f"{a}..{b}"
        if form == "open-high":
            return f"{a}.."
        if form == "open-low":
            return f"..{b}"
        return f"{form}{a if form == '>=' else b}"

    return build()


def _magnitude(value: Any) -> int:
    return Bytes(value).bytes if not isinstance(value, int) or isinstance(value, bool) else value


cpu_ranges = _range_of(st.integers(min_value=1, max_value=512), floor=1)
gpu_counts = _range_of(st.integers(min_value=1, max_value=64), floor=1)
byte_ranges = _range_of(byte_texts())
durations = st.one_of(
    st.builds(lambda n, u: f"{n}{u}", st.integers(1, 999), st.sampled_from(["ms", "s", "m", "h"])),
    st.builds(lambda h, m: f"{h}h{m}m", st.integers(1, 48), st.integers(1, 59)),
    st.builds(lambda h: f"PT{h}H", st.integers(1, 72)),
    st.builds(lambda d: f"P{d}D", st.integers(1, 30)),
)
money = st.builds(
    lambda n, c, cur: f"{n}.{c:02d} {cur}/h",
    st.integers(0, 9999),
    st.integers(0, 99),
    st.sampled_from(["USD", "EUR", "CHF"]),
)
ratios = st.one_of(
    st.builds(lambda n, d: f"{n}.{d}%", st.integers(0, 99), st.integers(0, 9)),
    st.floats(min_value=0, max_value=1),
    st.sampled_from([0, 1]),
)


@st.composite
def objectives(draw: st.DrawFn) -> Objective:
    kind = draw(st.sampled_from(["latency", "rate", "ratio"]))
    if kind == "latency":
        sli = draw(
            st.from_regex(r"(latency|ttft|tpot)_(p50|p90|p99|p999|mean|max)", fullmatch=True)
        )
        target: Any = draw(st.builds(lambda n: f"{n}ms", st.integers(1, 10_000)))
    elif kind == "rate":
        sli = "throughput"
        target = draw(
            st.builds(
                lambda n, w, p: f"{n}{w}/{p}",
                st.integers(1, 10**6),
                st.sampled_from(["", " tokens", " req"]),
                st.sampled_from(["s", "min", "h"]),
            )
        )
    else:
        sli = draw(st.sampled_from(["availability", "error_rate", "gpu_utilization"]))
        target = draw(ratios)
    return Objective(
        sli=sli,
        op=draw(st.sampled_from(["<=", "<", ">=", ">"])),
        target=target,
        window=draw(durations),
    )


regions = st.lists(st.from_regex(r"[a-z]{2}-[a-z]{4,7}-[1-3]", fullmatch=True), max_size=3)


@st.composite
def placements(draw: st.DrawFn) -> Placement:
    allowed = draw(regions.map(lambda r: sorted(set(r))))
    denied = [r for r in draw(regions) if r not in allowed]
    return Placement(
        regions=allowed,
        deny_regions=sorted(set(denied)),
        jurisdictions=draw(
            st.lists(
                st.sampled_from(["EU", "US", "DE", "NO", "CH", "GBR"]), unique=True, max_size=3
            )
        ),
        providers=draw(st.lists(identifiers, unique=True, max_size=2)),
        isolation=draw(st.sampled_from(["shared", "dedicated-node", "dedicated-host"])),
    )


@st.composite
def workloads(draw: st.DrawFn) -> Workload:
    ports = draw(st.dictionaries(identifiers, st.integers(1, 65535), max_size=3))
    probe = None
    if ports and draw(st.booleans()):
        probe = Probe(
            endpoint=draw(st.sampled_from(sorted(ports))),
            path="/" + draw(st.from_regex(r"[a-z/]{0,10}", fullmatch=True)),
            method=draw(st.sampled_from(["GET", "HEAD", "POST"])),
            interval=draw(durations),
            timeout=draw(durations),
        )
    return Workload(
        kind=draw(st.sampled_from(["training", "inference", "notebook", "batch"])),
        image=draw(st.one_of(st.none(), words)),
        command=draw(st.lists(words, max_size=4)),
        env=draw(st.dictionaries(env_names, words, max_size=3)),
        ports=ports,
        probe=probe,
    )


@st.composite
def contracts(draw: st.DrawFn) -> Contract:
    gpus = None
    if draw(st.booleans()):
        gpus = GPU(
            count=draw(gpu_counts),
            models=draw(st.lists(identifiers, unique=True, max_size=3)),
            memory=draw(st.one_of(st.none(), byte_ranges)),
            compute_capability=draw(st.one_of(st.none(), st.sampled_from(["8.0", "9.0", "12.1"]))),
            interconnect=draw(st.one_of(st.none(), st.sampled_from(["pcie", "nvlink"]))),
            mig=draw(st.one_of(st.none(), st.sampled_from(["1g.10gb", "3g.40gb", "1g.12gb+me"]))),
        )
    maybe = lambda s: draw(st.one_of(st.none(), s))  # noqa: E731
    return Contract(
        name=draw(names),
        tenant=draw(names),
        resources=Resources(
            gpus=gpus, cpus=maybe(cpu_ranges), memory=maybe(byte_ranges), disk=maybe(byte_ranges)
        ),
        objectives=draw(st.lists(objectives(), max_size=3)),
        placement=draw(placements()),
        terms=Terms(
            duration=maybe(durations),
            renewable=draw(st.booleans()),
            start_by=maybe(durations),
            max_price=maybe(money),
            priority=draw(st.integers(-1000, 1000)),
            preemptible=draw(st.booleans()),
            min_guarantee=draw(st.sampled_from(["allocated", "reserved", "quota", "best-effort"])),
            on_violation=draw(st.sampled_from(["notify", "renegotiate", "release"])),
            max_renegotiations_per_hour=draw(st.integers(0, 3600)),
        ),
        workload=maybe(workloads()),
        preferences=Preferences(
            rank=draw(st.permutations(["cost", "start_time", "locality", "guarantee"])),
            regions=draw(st.lists(identifiers, max_size=2)),
        ),
        labels=draw(st.dictionaries(words, words, max_size=3)),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contracts())
def test_valid_contracts_round_trip_through_every_format(contract: Contract) -> None:
    for fmt in FORMATS:
        text = dumps(contract, fmt)  # type: ignore[arg-type]
        again = loads(text, fmt)  # type: ignore[arg-type]
        assert again == contract, fmt
        assert to_builtins(again) == to_builtins(contract), fmt  # quantities keep their text
    assert pickle.loads(pickle.dumps(contract)) == contract


SCHEMA = json_schema()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contracts())
def test_valid_contracts_satisfy_the_json_schema(contract: Contract) -> None:
    jsonschema.validate(json.loads(dumps(contract, "json")), SCHEMA)


def test_float_ratio_keeps_exact_value() -> None:
    ratio = Ratio(0.1)
    assert ratio.to_builtin() == 0.1
    assert not math.isnan(ratio.fraction)
    assert Ratio(Decimal("0.1")) == ratio
