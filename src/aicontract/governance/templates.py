"""Templates: named, versioned, parameterised contracts a platform team publishes.

A template is a contract document with ``${param}`` placeholders, typed
parameters (with defaults and ranges) and locked fields that a user of the
template cannot override::

    name: train-eu
    version: "1.2"
    description: 8 x H100 over NVLink, in the EU
    parameters:
      gpus: {type: int, default: 8, min: 1, max: 8}
      duration: {type: duration, default: 4h, max: 24h}
    locked: [placement.jurisdictions, terms.min_guarantee]
    contract:
      name: train
      gpus: {count: "${gpus}", models: [H100], interconnect: nvlink}
      duration: "${duration}"
      jurisdictions: [EU]
      min_guarantee: allocated

Templates are found in catalog directories — ``AICONTRACT_TEMPLATES``
(``os.pathsep``-separated), ``/etc/aicontract/templates``, the
``aicontract.templates`` entry-point group, and the ones shipped with
aicontract — earlier places winning for the same name and version. A
contract made from one carries the labels ``aicontract.io/template`` and
``aicontract.io/template-version``, so its lease and the record name it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal

import msgspec

from ..contract import (
    Contract,
    _Invalid,
    _Model,
    convert,
    encode_quantity,
    expand_shorthands,
)
from ..documents import Format, format_of, parse, read_document
from ..errors import ContractError
from ..units import Bytes, Duration, Money
from .policy import TEMPLATE_LABEL, VERSION_LABEL

__all__ = [
    "ENTRY_POINT_GROUP",
    "SYSTEM_TEMPLATES",
    "Parameter",
    "Template",
    "catalog",
    "find_template",
    "load_template",
    "loads_template",
    "render",
    "render_document",
]

ENTRY_POINT_GROUP = "aicontract.templates"
"""Entry points here name a catalog directory, or a callable returning one or Templates."""
SYSTEM_TEMPLATES = Path("/etc/aicontract/templates")
SHIPPED = Path(__file__).parent / "catalog"

ParamType = Literal["int", "number", "text", "bool", "duration", "bytes", "price", "choice"]
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VERSION = re.compile(r"^\d+(\.\d+){0,3}$")
_TEMPLATE_NAME = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_SUFFIXES = (".yaml", ".yml", ".toml", ".json")


class Parameter(_Model, frozen=True):
    """One declared parameter: its type, default and (for ordered types) range or choices."""

    type: ParamType = "text"
    default: Any = None
    min: Any = None
    max: Any = None
    choices: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self) -> None:
        if self.type == "choice" and not self.choices:
            raise _Invalid("choices", "a choice parameter lists no choices", "a list of values")
        if self.type not in ("int", "number", "duration", "bytes", "price") and (
            self.min is not None or self.max is not None
        ):
            raise _Invalid(
                "min", f"a {self.type} parameter has no range", "min/max only on ordered types"
            )
        for bound in ("min", "max", "default"):
            value = getattr(self, bound)
            if value is not None:
                try:
                    self.coerce(value, bounds=False)
                except ContractError as exc:
                    raise _Invalid(bound, exc.message, exc.allowed) from None

    def coerce(self, value: Any, *, bounds: bool = True) -> Any:
        """``value`` (from code, a file or ``-p k=v`` text) as this parameter's type, in range."""
        kind = self.type
        allowed = {
            "int": "a whole number",
            "number": "a number",
            "text": "text",
            "bool": "true or false",
            "duration": "a duration like 4h",
            "bytes": "a size like 80GiB",
            "price": "a price like 2.50 USD/h",
            "choice": " | ".join(self.choices),
        }[kind]
        out: Any
        try:
            if kind == "int":
                if isinstance(value, bool) or not isinstance(value, (int, str)):
                    raise ValueError
                out = int(value)
            elif kind == "number":
                if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                    raise ValueError
                out = float(value)
                if out != out or out in (float("inf"), float("-inf")):
                    raise ValueError
            elif kind == "bool":
                if isinstance(value, bool):
                    out = value
                elif isinstance(value, str) and value.lower() in ("true", "false"):
                    out = value.lower() == "true"
                else:
                    raise ValueError
            elif kind == "duration":
                out = Duration(value)
            elif kind == "bytes":
                out = Bytes(value)
            elif kind == "price":
                out = Money(value)
            else:
                if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                    raise ValueError
                out = str(value)
                if kind == "choice" and out not in self.choices:
                    raise ValueError
        except (ValueError, TypeError, OverflowError):
            raise ContractError(
                f"{value!r} is not {allowed}", value=value, allowed=allowed
            ) from None
        except ContractError as exc:
            raise ContractError(exc.message, value=value, allowed=allowed) from None
        if bounds:
            low = None if self.min is None else self.coerce(self.min, bounds=False)
            high = None if self.max is None else self.coerce(self.max, bounds=False)
            try:
                below = low is not None and out < low
                above = high is not None and out > high
            except TypeError:  # prices in different currencies do not compare
                below = above = True
            if below or above:
                span = f"{'' if low is None else low}..{'' if high is None else high}"
                raise ContractError(f"{out} is outside {span}", value=value, allowed=span)
        return out


class Template(_Model, frozen=True):
    """A named, versioned, parameterised contract document."""

    name: str
    version: str
    contract: dict[str, Any]
    description: str = ""
    parameters: dict[str, Parameter] = msgspec.field(default_factory=dict)
    locked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _TEMPLATE_NAME.match(self.name):
            raise _Invalid(
                "name", f"{self.name!r} is not a template name", "a lowercase name like train-eu"
            )
        if not _VERSION.match(self.version):
            raise _Invalid("version", f"{self.version!r} is not a version", "numbers like 1.2")
        for name in self.parameters:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise _Invalid(
                    "parameters", f"{name!r} is not a parameter name", "letters, digits and '_'"
                )
        for name in sorted(_placeholders(self.contract) - set(self.parameters)):
            raise _Invalid(
                "contract", f"${{{name}}} names no declared parameter", "a parameter declared above"
            )
        for path in self.locked:
            if not re.match(r"^[a-z_]+(\.[a-z_]+)*$", path):
                raise _Invalid(
                    "locked", f"{path!r} is not a field path", "like terms.min_guarantee"
                )
        # The defaults must make a valid contract: a template that cannot render is refused here.
        required = [n for n, p in self.parameters.items() if p.default is None]
        if not required:
            try:
                render(self, {})
            except ContractError as exc:
                raise _Invalid(
                    "contract", f"the defaults do not make a valid contract: {exc}"
                ) from None

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def version_key(self) -> tuple[int, ...]:
        """The version as numbers, for ordering (``1.10`` after ``1.9``)."""
        return tuple(int(p) for p in self.version.split("."))


def _placeholders(value: Any) -> set[str]:
    if isinstance(value, str):
        return set(_PLACEHOLDER.findall(value))
    if isinstance(value, Mapping):
        return set().union(*(_placeholders(v) for v in value.values())) if value else set()
    if isinstance(value, (list, tuple)):
        return set().union(*(_placeholders(v) for v in value)) if value else set()
    return set()


def _builtin(value: Any) -> Any:
    if isinstance(value, (Duration, Bytes, Money)):
        return str(value)
    return value


def _substitute(value: Any, params: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:  # "${gpus}" alone keeps the parameter's type (4, not "4")
            return _builtin(params[whole[1]])
        return _PLACEHOLDER.sub(lambda m: str(_builtin(params[m[1]])), value)
    if isinstance(value, Mapping):
        return {k: _substitute(v, params) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_substitute(v, params) for v in value]
    return value


def _leaves(data: Mapping[str, Any], prefix: str = "") -> Iterable[str]:
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _leaves(value, path + ".")
        else:
            yield path


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


def _expand(document: Mapping[str, Any]) -> dict[str, Any]:
    """Shortcut keys (``gpus``, ``duration``, …) into their sections, as Contract does."""
    data = dict(document)
    for section, values in Contract.pop_shortcuts(data).items():
        current = data.get(section)
        data[section] = _merge(dict(current) if isinstance(current, Mapping) else {}, values)
    return expand_shorthands(data)


def _locked_by(path: str, locks: Iterable[str]) -> str | None:
    for lock in locks:
        if path == lock or path.startswith(lock + ".") or lock.startswith(path + "."):
            return lock
    return None


def render(
    template: Template, params: Mapping[str, Any], overrides: Mapping[str, Any] | None = None
) -> Contract:
    """The contract ``template`` makes with ``params``, plus ``overrides`` of unlocked fields.

    An unknown parameter, a value of the wrong type or out of range, and an
    override of a locked field each raise one :class:`ContractError` naming it.
    """
    values: dict[str, Any] = {}
    for name, value in params.items():
        if name not in template.parameters:
            raise ContractError(
                f"template {template.ref} has no parameter {name!r}",
                path=f"$.params.{name}",
                value=name,
                allowed=", ".join(sorted(template.parameters)) or "no parameters",
            )
        try:
            values[name] = template.parameters[name].coerce(value)
        except ContractError as exc:
            raise exc.at(f"$.params.{name}") from None
    for name, parameter in template.parameters.items():
        if name not in values:
            if parameter.default is None:
                raise ContractError(
                    f"template {template.ref} needs parameter {name!r}",
                    path=f"$.params.{name}",
                    allowed=parameter.description or parameter.type,
                )
            values[name] = parameter.coerce(parameter.default, bounds=False)
    document = _expand(_substitute(template.contract, values))
    if overrides:
        extra = _expand(overrides)
        for path in _leaves(extra):
            lock = _locked_by(path, template.locked)
            if lock is not None:
                raise ContractError(
                    f"{lock} is locked by template {template.ref}",
                    path=f"$.{path}",
                    value=_at(extra, path),
                    allowed=f"the template's own {lock}; locked: {', '.join(template.locked)}",
                )
        document = _merge(document, extra)
    labels = dict(document.get("labels") or {})
    labels[TEMPLATE_LABEL], labels[VERSION_LABEL] = template.name, template.version
    document["labels"] = labels
    contract: Contract = convert(document, Contract)
    if overrides and "alternatives" in extra:
        # Fallbacks of the user's own must keep what the template locks in its resources.
        for path in locked_mismatches(template, contract):
            if path.startswith("alternatives["):
                lock = "resources." + path.split(".", 1)[1]
                raise ContractError(
                    f"{lock} is locked by template {template.ref}, in every alternative too",
                    path=f"$.{path}",
                    value=_at(msgspec.to_builtins(contract, enc_hook=encode_quantity), path),
                    allowed=f"the template's own {lock}; locked: {', '.join(template.locked)}",
                )
    return contract


def _at(data: Mapping[str, Any], path: str) -> Any:
    current: Any = data
    for step in path.split("."):
        current = current.get(step) if isinstance(current, Mapping) else None
    return current


def locked_mismatches(template: Template, contract: Contract) -> list[str]:
    """Locked fields where ``contract`` differs from what ``template`` makes of them.

    A locked value written in the template must be the contract's; one a parameter
    fills whole (``${gpus}``) must be a value that parameter allows (its type and
    range); one a parameter fills in part (``train-${tier}``) is not checked. A lock
    under ``resources`` binds each of the contract's ``alternatives`` too, so a
    fallback cannot escape it (``alternatives[0].gpus.count``).
    """
    fixed = msgspec.to_builtins(render(template, {}), enc_hook=encode_quantity)
    actual = msgspec.to_builtins(contract, enc_hook=encode_quantity)
    written = _expand(template.contract)
    out = []
    for lock in template.locked:
        expected, made = _at(written, lock), _at(fixed, lock)
        if not _lock_holds(template, expected, made, _at(actual, lock)):
            out.append(lock)
        if lock.startswith("resources.") and actual.get("alternatives") != fixed.get(
            "alternatives"
        ):  # the template's own fallbacks are its choice; others must keep its locks
            rest = lock[len("resources.") :]
            for i, choice in enumerate(actual.get("alternatives") or ()):
                if not _lock_holds(template, expected, made, _at(choice, rest)):
                    out.append(f"alternatives[{i}].{rest}")
    return out


def _lock_holds(template: Template, written: Any, made: Any, actual: Any) -> bool:
    """Is ``actual`` what the template makes of a locked field (``written`` in the template,
    ``made`` when rendered with its defaults)?"""
    if isinstance(written, str) and _placeholders(written):
        whole = _PLACEHOLDER.fullmatch(written)
        if whole is None:
            return True  # a parameter fills part of it: any rendering is the template's
        parameter = template.parameters.get(whole[1])
        if parameter is None or actual is None:
            return bool(actual == made)
        try:
            parameter.coerce(actual)
        except ContractError:
            return False
        return True
    if isinstance(written, Mapping) and _placeholders(written):
        if not isinstance(actual, Mapping) or not isinstance(made, Mapping):
            return False
        if set(actual) != set(made):
            return False
        return all(_lock_holds(template, written.get(k), made[k], actual[k]) for k in made)
    return bool(actual == made)


# -- files and the catalog -------------------------------------------------------------


def loads_template(text: str | bytes, format: Format = "yaml") -> Template:
    """Parse and validate a template document."""
    data = parse(text, format)
    if not isinstance(data, dict):
        raise ContractError(
            "a template must be a mapping",
            allowed="a mapping with name, version, parameters, locked and contract",
        )
    template: Template = convert(data, Template)
    return template


def load_template(path: str | Path) -> Template:
    """Load one template file; the format comes from its suffix."""
    raw = read_document(path)
    try:
        return loads_template(raw, format_of(path))
    except ContractError as exc:
        raise ContractError(
            f"{path}: {exc.message}", path=exc.path, value=exc.value, allowed=exc.allowed
        ) from None


def _directories() -> list[Path]:
    named = os.environ.get("AICONTRACT_TEMPLATES", "")
    return [Path(p) for p in named.split(os.pathsep) if p] + [SYSTEM_TEMPLATES]


def catalog_fingerprint() -> tuple[Any, ...]:
    """What the catalog's folders hold, as cheaply as it can be told: each folder, and each
    template file's name, size and modification time (entry points are fixed per process)."""
    out: list[Any] = []
    for directory in _directories():
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:
            out.append((str(directory), None))
            continue
        files = []
        for entry in entries:
            if os.path.splitext(entry.name)[1].lower() in _SUFFIXES:
                try:
                    stat = entry.stat()
                except OSError:
                    continue
                files.append((entry.name, stat.st_size, stat.st_mtime_ns, stat.st_ino))
        out.append((str(directory), tuple(files)))
    return tuple(out)


def _from_entry_points() -> list[Template | Path]:
    out: list[Template | Path] = []
    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            found = point.load()
            if callable(found):
                found = found()
        except Exception as exc:  # a broken plugin must not hide the other templates
            raise ContractError(
                f"template entry point {point.name!r} failed to load: {type(exc).__name__}: {exc}"
            ) from None
        items = found if isinstance(found, (list, tuple)) else [found]
        for item in items:
            out.append(item if isinstance(item, Template) else Path(str(item)))
    return out


def catalog() -> dict[str, list[Template]]:
    """Every template found, by name, newest version first."""
    sources: list[Template | Path] = [*_directories(), *_from_entry_points(), SHIPPED]
    found: dict[str, dict[str, Template]] = {}
    for source in sources:
        if isinstance(source, Template):
            found.setdefault(source.name, {}).setdefault(source.version, source)
            continue
        if not source.is_dir():
            continue
        for path in sorted(source.iterdir()):
            if path.suffix.lower() in _SUFFIXES and path.is_file():
                template = load_template(path)
                found.setdefault(template.name, {}).setdefault(template.version, template)
    return {
        name: sorted(versions.values(), key=Template.version_key, reverse=True)
        for name, versions in sorted(found.items())
    }


def find_template(ref: str, templates: Mapping[str, list[Template]] | None = None) -> Template:
    """The template ``name`` (newest), ``name@1`` (newest 1.x) or ``name@1.2`` (exactly)."""
    name, _, version = ref.partition("@")
    known = catalog() if templates is None else templates
    if name not in known:
        raise ContractError(
            f"no template named {name!r}",
            path="$.template",
            value=ref,
            allowed=", ".join(known) or "no templates installed",
        )
    for template in known[name]:
        if not version or template.version == version or template.version.startswith(version + "."):
            return template
    raise ContractError(
        f"template {name!r} has no version {version!r}",
        path="$.template",
        value=ref,
        allowed=", ".join(t.ref for t in known[name]),
    )


def render_document(document: Mapping[str, Any]) -> Contract:
    """A contract file that says ``template: NAME@VERSION``, ``params:`` and overrides."""
    data = dict(document)
    ref = data.pop("template")
    if not isinstance(ref, str):
        raise ContractError(
            "template must name one", path="$.template", value=ref, allowed="NAME or NAME@VERSION"
        )
    params = data.pop("params", None) or {}
    if not isinstance(params, Mapping):
        raise ContractError("params must be a mapping", path="$.params", allowed="name: value")
    return render(find_template(ref), params, data)


def from_template(ref: str, **values: Any) -> Contract:
    """``Contract.from_template``: keywords that name parameters fill them; others override."""
    template = find_template(ref)
    params = {k: v for k, v in values.items() if k in template.parameters}
    overrides = {
        k: msgspec.to_builtins(v, enc_hook=encode_quantity)
        for k, v in values.items()
        if k not in template.parameters
    }
    return render(template, params, overrides)
