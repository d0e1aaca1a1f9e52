"""Contracts as files: load and dump YAML, TOML and JSON, losslessly.

Every format goes through the same two steps — parse to plain builtins, then
:func:`aicontract.contract.convert` — so a contract means the same thing
whatever it is written in. Parsing is strict where the formats are lax: YAML
duplicate keys are refused (the later one would silently drop the earlier),
and only ``true``/``false`` are booleans (so the jurisdiction ``NO`` stays
Norway, not ``False``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

import msgspec
import tomli_w
import yaml

from ._compat import tomllib
from .contract import Contract, convert, encode_quantity
from .errors import ContractError

__all__ = [
    "Format",
    "dump",
    "dumps",
    "load",
    "loads",
    "read_document",
    "read_limited",
    "to_builtins",
]

Format = Literal["yaml", "toml", "json"]
_SUFFIXES: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml", ".json": "json"}
# A contract (or an inventory) is a page, not a megabyte: anything larger is refused by
# its size, before any parser spends time on it.
_MAX_DOCUMENT = 256 << 10
_MAX_TEXT = "256 KiB"
_TOP: dict[str, str] = {"yaml": "a YAML mapping", "toml": "a TOML table", "json": "a JSON object"}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans and no duplicate keys."""


# The same rules over libyaml's parser when PyYAML was built with it (ten times faster);
# resolving and constructing stay in Python, so both loaders give the same builtins.
_FastBase: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictCLoader(_FastBase):  # type: ignore[misc]
    """CSafeLoader (when present) with YAML 1.2 booleans and no duplicate keys."""


for _loader in (_StrictLoader, _StrictCLoader):
    _loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    _loader.add_implicit_resolver(
        "tag:yaml.org,2002:bool",
        __import__("re").compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
        list("tTfF"),
    )


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise ContractError(
                f"line {key_node.start_mark.line + 1}: keys must be text, got {key!r}",
                value=key,
                allowed="text keys",
            )
        if key in mapping:
            raise ContractError(
                f"line {key_node.start_mark.line + 1}: key {key!r} appears twice",
                value=key,
                allowed="each key once per mapping",
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_StrictCLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that double-quotes text holding YAML 1.1 line breaks other than newline."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    # PyYAML writes NEL (U+0085) raw inside single quotes, where a reader folds it
    # into a space: the text would change on the way back. Double quotes escape it.
    if any(char in data for char in "\x85\u2028\u2029"):
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style='"')
    return dumper.represent_str(data)


_Dumper.add_representer(str, _represent_str)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ContractError(
                f"key {key!r} appears twice", value=key, allowed="each key once per object"
            )
        result[key] = value
    return result


def _refuse_constant(name: str) -> Any:
    raise ContractError(f"{name} is not a number here", value=name, allowed="finite numbers")


def parse(text: str | bytes, format: Format) -> Any:
    """Parse a document to builtins (no contract validation yet)."""
    if isinstance(text, bytes):
        if len(text) > _MAX_DOCUMENT:
            raise ContractError(
                f"the document is larger than {_MAX_TEXT}", allowed=f"a file under {_MAX_TEXT}"
            )
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ContractError(
                f"the document is not UTF-8 text (byte {exc.start})", allowed="UTF-8 text"
            ) from None
    if len(text) > _MAX_DOCUMENT:
        raise ContractError(
            f"the document is larger than {_MAX_TEXT}", allowed=f"a file under {_MAX_TEXT}"
        )
    if "\x00" in text:
        raise ContractError("the document contains NUL bytes", allowed="text")
    try:
        if format == "yaml":
            return yaml.load(text, Loader=_StrictCLoader)  # a (C)SafeLoader subclass
        if format == "toml":
            return tomllib.loads(text)
        if format == "json":
            return json.loads(
                text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant
            )
    except ContractError:
        raise
    except yaml.YAMLError as exc:
        if "nesting depth" in str(exc):  # libyaml's own limit, worded its own way
            raise ContractError("not valid YAML: nested too deeply", allowed=_TOP[format]) from None
        raise ContractError(
            f"not valid YAML: {_one_line(exc)[:200]}", allowed="a YAML mapping"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ContractError(f"not valid TOML: {exc}", allowed="a TOML table") from None
    except json.JSONDecodeError as exc:
        raise ContractError(f"not valid JSON: {exc}", allowed="a JSON object") from None
    except RecursionError:
        raise ContractError(
            f"not valid {format.upper()}: nested too deeply", allowed=_TOP[format]
        ) from None
    except (ValueError, OverflowError) as exc:  # YAML's int/float constructors on odd literals
        raise ContractError(f"not valid {format.upper()}: {exc}") from None
    raise ContractError(f"unknown format {format!r}", value=format, allowed="yaml, toml, json")


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())


def loads(text: str | bytes, format: Format = "yaml") -> Contract:
    """Load a contract from text in ``format`` (``yaml``, ``toml`` or ``json``)."""
    data = parse(text, format)
    if data is None or data == "":
        raise ContractError("the document is empty", allowed="a mapping with the contract's keys")
    if not isinstance(data, dict):
        raise ContractError(
            f"a contract must be a mapping, got {type(data).__name__}",
            value=data if isinstance(data, (int, float, str, bool)) else None,
            allowed="a mapping with the contract's keys",
        )
    if "template" in data:  # `template: train-eu@1.2` with `params:` and overrides
        from .governance.templates import render_document

        return render_document(data)
    result: Contract = convert(data, Contract)
    return result


def format_of(path: str | Path) -> Format:
    """The format a file name implies, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in _SUFFIXES:
        raise ContractError(
            f"cannot tell the format of {str(path)!r} from its suffix",
            value=suffix,
            allowed=", ".join(sorted(_SUFFIXES)),
        )
    return _SUFFIXES[suffix]


def read_limited(path: str | os.PathLike[str]) -> bytes:
    """A document's bytes, refused by its size before it is read whole (``OSError`` passes)."""
    with open(path, "rb") as file:
        raw = file.read(_MAX_DOCUMENT + 1)  # a FIFO or /dev/zero has no honest size
    if len(raw) > _MAX_DOCUMENT:
        raise ContractError(
            f"{str(path)[:80]!r} is larger than {_MAX_TEXT}", allowed=f"a file under {_MAX_TEXT}"
        )
    return raw


def read_document(path: str | Path) -> bytes:
    """A contract, policy or template file's bytes; an unreadable file is a ContractError."""
    try:
        return read_limited(path)
    except OSError as exc:
        raise ContractError(f"cannot read {str(path)!r}: {exc.strerror}", value=str(path)) from None


def load(path: str | Path, format: Format | None = None) -> Contract:
    """Load a contract file; the format comes from the suffix unless given."""
    fmt = format or format_of(path)
    return loads(read_document(path), fmt)


def to_builtins(contract: Contract) -> dict[str, Any]:
    """The contract as plain dicts/lists/str/int, defaults left out."""
    data: dict[str, Any] = msgspec.to_builtins(contract, enc_hook=encode_quantity)
    return data


def dumps(contract: Contract, format: Format = "yaml") -> str:
    """Write a contract as text; :func:`loads` gives back an equal contract."""
    data = to_builtins(contract)
    if format == "yaml":
        text: str = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
        return text
    if format == "toml":
        return tomli_w.dumps(data)
    if format == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    raise ContractError(f"unknown format {format!r}", value=format, allowed="yaml, toml, json")


def dump(contract: Contract, path: str | Path, format: Format | None = None) -> None:
    """Write a contract file; the format comes from the suffix unless given."""
    Path(path).write_text(dumps(contract, format or format_of(path)), encoding="utf-8")
