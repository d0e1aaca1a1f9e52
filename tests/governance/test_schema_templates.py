"""The JSON Schemas know templates: files that use one, and template documents themselves.

Every shipped template and every example contract file must validate; documents the
loader refuses for their shape (unknown keys, wrong types) must be refused too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

from aicontract import json_schema, loads
from aicontract.cli import main
from aicontract.documents import format_of, parse
from aicontract.governance.templates import SHIPPED, loads_template
from aicontract.schema import template_json_schema

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLES = sorted((ROOT / "examples" / "contracts").iterdir())
TEMPLATES = sorted(SHIPPED.iterdir())
CONTRACT = jsonschema.Draft202012Validator(json_schema())
TEMPLATE = jsonschema.Draft202012Validator(template_json_schema())


def test_both_schemas_are_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(json_schema())
    jsonschema.Draft202012Validator.check_schema(template_json_schema())


def test_an_example_names_a_template() -> None:
    assert any("template" in parse(p.read_bytes(), format_of(p)) for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_contract_files_validate(path: Path) -> None:
    CONTRACT.validate(parse(path.read_bytes(), format_of(path)))


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_shipped_templates_validate(path: Path) -> None:
    TEMPLATE.validate(parse(path.read_bytes(), format_of(path)))


@pytest.mark.parametrize(
    "document",
    [
        {"template": "train-eu@1.2", "params": {"gpus": 4}},
        {"template": "notebook"},
        {"template": "train-eu@1", "tenant": "team-a", "duration": "2h", "gpus": 2},
        {"template": "inference@1.0", "terms": {"budget": "50 USD"}},
    ],
)
def test_template_uses_validate_and_load(document: dict[str, Any]) -> None:
    CONTRACT.validate(document)
    loads(json.dumps(document), "json")  # the loader agrees


@pytest.mark.parametrize(
    "document",
    [
        {"template": 7},
        {"template": "Train EU"},
        {"template": "train-eu@v1"},
        {"template": "train-eu", "params": ["gpus", 4]},
        {"template": "train-eu", "params": {"gpus": {"count": 4}}},
        {"template": "train-eu", "tennant": "a"},  # misspelt override
        {"template": "train-eu", "terms": {"duration": "4 hours"}},
        {"params": {"gpus": 4}},  # params without a template: not a contract either
    ],
)
def test_bad_template_uses_are_refused(document: Any) -> None:
    with pytest.raises(jsonschema.ValidationError):
        CONTRACT.validate(document)


GOOD_TEMPLATE = """
name: tiny
version: "1.0"
parameters:
  gpus: {type: int, default: 1, min: 1, max: 2}
locked: [placement.jurisdictions]
contract:
  name: tiny
  gpus: {count: "${gpus}", models: [L4]}
  jurisdictions: [EU]
"""


def test_a_template_with_placeholders_validates_and_loads() -> None:
    TEMPLATE.validate(parse(GOOD_TEMPLATE, "yaml"))
    loads_template(GOOD_TEMPLATE, "yaml")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("name: tiny\nversion", "name: Tiny Template\nversion"),
        ('version: "1.0"', "version: one"),
        ("  gpus: {count", "  gpu: {count"),  # misspelt key inside the contract
        ("models: [L4]", "models: L4"),  # not a list, not a placeholder
        ("{type: int,", "{type: integer,"),
        ("locked: [placement.jurisdictions]", "locked: placement.jurisdictions"),
        ("contract:\n", "contracts:\n"),
    ],
)
def test_bad_templates_are_refused(old: str, new: str) -> None:
    text = GOOD_TEMPLATE.replace(old, new, 1)
    assert text != GOOD_TEMPLATE
    with pytest.raises(jsonschema.ValidationError):
        TEMPLATE.validate(parse(text, "yaml"))


def test_template_schema_command() -> None:
    result = CliRunner().invoke(main, ["template", "schema"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == template_json_schema()
