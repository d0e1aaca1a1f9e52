"""The JSON Schema accepts every example contract and refuses obviously bad documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest

from aicontract import __version__, json_schema, loads
from aicontract.documents import format_of, parse

EXAMPLES = sorted((Path(__file__).parent.parent / "examples" / "contracts").iterdir())
SCHEMA = json_schema()
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert __version__ in SCHEMA["title"]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_validate(path: Path) -> None:
    document = parse(path.read_bytes(), format_of(path))
    VALIDATOR.validate(document)


@pytest.mark.parametrize(
    "document",
    [
        {"resorces": {}},  # unknown keys are refused, as by the loader
        {"resources": {"gpu": 1}},
        {"resources": {"memory": "eighty"}},
        {"resources": {"memory": "1e400GiB"}},
        {"resources": {"cpus": "8 cores"}},
        {"resources": {"cpus": -1}},
        {"resources": {"gpus": "many"}},
        {"resources": {"gpus": [1, 8]}},  # a list under gpus reads as models: refused
        {"resources": {"gpus": {"count": "many"}}},
        {"terms": {"duration": "4 hours"}},
        {"terms": {"duration": 4}},
        {"terms": {"preemptible": "yes"}},
        {"terms": {"priority": "high"}},
        {"terms": {"min_guarantee": "gold"}},
        {"terms": {"max_price": "2.50 dollars"}},
        {"placement": {"isolation": "alone"}},
        {"placement": {"regions": "eu-west-1"}},
        {"objectives": [{"sli": "latency_p99", "op": "=", "target": "200ms"}]},
        {"objectives": [{"sli": "latency_p99", "target": "200ms"}]},  # no op
        {"objectives": [{"sli": "availability", "op": ">=", "target": 1.5}]},
        {"workload": {"kind": "game"}},
        {"workload": {"ports": {"http": "80"}}},
        {"labels": {"team": 7}},
        {"name": 7},
        ["not", "a", "mapping"],
        "text",
    ],
)
def test_bad_documents_fail_the_schema(document: Any) -> None:
    assert not VALIDATOR.is_valid(document)


def test_schema_describes_the_quantity_forms() -> None:
    defs = SCHEMA["$defs"]
    memory = defs["Resources"]["properties"]["memory"]
    assert "80GiB" in str(memory)
    assert "40GiB..80GiB" in str(memory)
    assert set(defs["Placement"]["properties"]["isolation"]["enum"]) == {
        "shared",
        "dedicated-node",
        "dedicated-host",
    }
    for name in ("Contract", "Resources", "GPU", "Objective", "Placement", "Terms", "Workload"):
        assert defs[name]["additionalProperties"] is False, name


def test_schema_is_plain_json() -> None:
    """Editors and CI tools read it as JSON: no tuples or other Python-only values."""
    import json

    assert json.loads(json.dumps(SCHEMA)) == SCHEMA


@pytest.mark.parametrize(
    "document",
    [
        {"resources": {"memory": ".5GiB"}},
        {"resources": {"cpus": [1, 4], "memory": ["40GiB", None]}},
        {"resources": {"gpus": {"count": [1, None], "memory": [None, "80GiB"]}}},
        {"resources": {"gpus": 8}},  # `gpus: N` is a count, in files as in code
        {"resources": {"gpus": "1..8"}, "alternatives": [{"gpus": ">=2"}]},
        {"terms": {"duration": "1h 30m", "start_by": " 90s "}},
    ],
)
def test_schema_accepts_what_the_loader_accepts(document: Any) -> None:
    import json

    loads(json.dumps(document), "json")  # the loader takes it...
    assert list(VALIDATOR.iter_errors(document)) == []  # ...so the schema must too
