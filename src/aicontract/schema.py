"""JSON Schema for contract files, for editors and CI checks of contract repositories."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from ._version import __version__
from .contract import Contract
from .units import Bytes, BytesRange, CountRange, Duration, Money, Quantity, Rate, Ratio

__all__ = ["json_schema", "template_json_schema"]

# Patterns accept what the loader accepts (the loader stays the final judge: it also
# refuses inverted ranges and absurd sizes, which a pattern cannot see).
_NUMBER = r"(\d+(\.\d+)?|\.\d+)"
# A size always has a unit (512MiB): a bare number is refused, as a bare duration is.
_BYTES = rf"{_NUMBER}\s*(B|[kKMGTP]B?|[KMGTP]iB?|[kKMGTP]i)"
_COUNT = r"\d+"
_DURATION = (
    rf"\s*({_NUMBER}\s*(ns|us|µs|ms|min|s|m|h|d|w)\s*)+"
    r"|\s*P(\d+(\.\d+)?D)?(T(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?\s*"
)


def _range(one: str) -> str:
    return rf"^\s*((>=|<=)\s*{one}|{one}|({one})?\s*\.\.\s*({one})?)\s*$"


def _range_schema(one: str, examples: list[Any], *, counts: bool) -> dict[str, Any]:
    """A range of quantities matching ``one``: a bare value, range text, or a pair.

    Only counts may be bare integers; sizes need their unit.
    """
    integer = [{"type": "integer", "minimum": 0}] if counts else []
    value = {"anyOf": [*integer, {"type": "string", "pattern": rf"^\s*{one}\s*$"}]}
    return {
        "anyOf": [
            *integer,
            {"type": "string", "pattern": _range(one)},
            _pair(value),
        ],
        "examples": examples,
    }


def _pair(one: dict[str, Any]) -> dict[str, Any]:
    """A ``[min, max]`` pair, either end null for open."""
    return {
        "type": "array",
        "minItems": 2,
        "maxItems": 2,
        "items": {"anyOf": [{"type": "null"}, one]},
    }


def _text(pattern: str, *examples: str) -> dict[str, Any]:
    """A quantity written as text that matches ``pattern`` whole."""
    return {"type": "string", "pattern": f"^{pattern}$", "examples": list(examples)}


def _hook(kind: type) -> dict[str, Any]:
    if kind is Bytes:
        return _text(rf"\s*{_BYTES}\s*", "80GiB")
    if kind is Duration:
        return _text(f"({_DURATION})", "4h", "200ms")
    if kind is Rate:
        return {"type": "string", "examples": ["500/s", "512 tokens/s"]}
    if kind is Money:
        return _text(r"\d+(\.\d+)?\s*[A-Z]{3}\s*/\s*(h|hr|hour)", "2.50 USD/h")
    if kind is Ratio:
        return {
            "anyOf": [
                {"type": "number", "minimum": 0, "maximum": 1},
                {"type": "string", "pattern": r"^\d+(\.\d+)?%$"},
            ]
        }
    if kind is Quantity:
        return {
            "anyOf": [{"type": "string"}, {"type": "number", "minimum": 0, "maximum": 1}],
            "description": "a latency (200ms), a rate (500 tokens/s) or a ratio (99.9%)",
            "examples": ["200ms", "500 tokens/s", "99.9%"],
        }
    if kind is CountRange:
        return _range_schema(_COUNT, [8, "1..8", ">=2"], counts=True)
    if kind is BytesRange:
        return _range_schema(_BYTES, ["80GiB", ">=24GiB", "40GiB..80GiB", "256GiB.."], counts=False)
    raise TypeError(f"no JSON Schema for {kind!r}")  # every contract type is covered above


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a contract document."""
    # Through JSON and back: msgspec writes tuple defaults as tuples; a schema is plain JSON.
    schema: dict[str, Any] = json.loads(
        json.dumps(msgspec.json.schema(Contract, schema_hook=_hook))
    )
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"aicontract contract (aicontract {__version__})"
    gpus = schema["$defs"]["Resources"]["properties"]["gpus"]
    # `gpus: 4` and `gpus: "1..8"` are a count, as the loader reads them (not the pair form:
    # a list under `gpus` is more likely a list of models, and is refused as such).
    gpus["anyOf"].extend(_hook(CountRange)["anyOf"][:2])
    _add_template_use(schema)
    return schema


# -- templates ---------------------------------------------------------------------------
# A contract file may instead name a template (`template: train-eu@1.2`, `params:`, and
# unlocked overrides, shortcuts allowed as in code); a template document's `contract:` is a
# contract body in which any value may be a `${parameter}` placeholder.

_TEMPLATE_REF = r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?(@\d+(\.\d+){0,3})?$"
_PLACEHOLDER = {
    "type": "string",
    "pattern": r"\$\{[A-Za-z_][A-Za-z0-9_]*\}",
    "description": "a ${parameter} placeholder, filled when the template is rendered",
}


def _contract_body(defs: dict[str, Any]) -> dict[str, Any]:
    """The contract's own keys plus the shortcuts (``gpus``, ``duration``…), as a template
    or a file naming one may write them; the loader merges shortcuts into their sections."""
    contract = defs["Contract"]
    properties = dict(contract["properties"])
    for key, section in Contract._SHORTCUTS.items():
        properties[key] = defs[section.capitalize()]["properties"][key]
    return {"type": "object", "properties": properties, "additionalProperties": False}


def _add_template_use(schema: dict[str, Any]) -> None:
    """Let ``schema`` accept a contract file that names a template instead of a contract."""
    defs = schema["$defs"]
    use = _contract_body(defs)
    use["title"] = "TemplateUse"
    use["description"] = (
        "A contract made from a template: its name and version, parameters, and overrides"
        " of fields the template does not lock."
    )
    use["properties"] = {
        "template": {
            "type": "string",
            "pattern": _TEMPLATE_REF,
            "description": "NAME, NAME@MAJOR (newest MAJOR.x) or NAME@VERSION",
            "examples": ["train-eu@1.2", "notebook"],
        },
        "params": {
            "type": "object",
            "additionalProperties": {"type": ["string", "number", "boolean"]},
            "description": "values for the template's parameters",
        },
        **use["properties"],
    }
    use["required"] = ["template"]
    defs["TemplateUse"] = use
    schema["anyOf"] = [{"$ref": "#/$defs/Contract"}, {"$ref": "#/$defs/TemplateUse"}]
    del schema["$ref"]


def _placeholders_allowed(node: Any) -> Any:
    """A copy of a schema in which every property value and item may be a placeholder."""
    if isinstance(node, list):
        return [_placeholders_allowed(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _placeholders_allowed(v) for k, v in node.items()}
    if isinstance(node.get("properties"), dict):
        out["properties"] = {
            k: {"anyOf": [_placeholders_allowed(v), _PLACEHOLDER]}
            for k, v in node["properties"].items()
        }
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            out[key] = {"anyOf": [_placeholders_allowed(node[key]), _PLACEHOLDER]}
    return out


def template_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a template document (``aicontract template schema``).

    Its ``contract`` is checked key by key like a contract (shortcuts allowed), any
    value may be a ``${parameter}`` placeholder; the loader still checks the rest
    (declared parameters, locks, that the defaults render).
    """
    from .governance.templates import Template

    contract = json_schema()
    template: dict[str, Any] = json.loads(
        json.dumps(msgspec.json.schema(Template, schema_hook=_hook))
    )
    defs = {k: v for k, v in contract["$defs"].items() if k != "TemplateUse"}
    body = _contract_body(defs)
    defs = _placeholders_allowed(defs)
    defs.update(template["$defs"])
    defs["Template"]["properties"]["contract"] = _placeholders_allowed(body)
    defs["Template"]["properties"]["name"]["pattern"] = _TEMPLATE_REF.split("(@")[0] + "$"
    defs["Template"]["properties"]["version"]["pattern"] = r"^\d+(\.\d+){0,3}$"
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"aicontract template (aicontract {__version__})",
        "$ref": "#/$defs/Template",
        "$defs": defs,
    }
