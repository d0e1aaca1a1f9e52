"""``aicontract policy``, ``template`` and ``audit``: governance from the command line."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import click
import msgspec
import yaml

from .._version import __version__
from ..documents import dumps
from ..errors import AIContractError, ContractError
from ..governance.enforce import record_path
from ..governance.policy import Policy, find_policy, load_policy
from ..governance.record import Record, verify
from ..governance.templates import catalog, find_template, render
from ..schema import _hook, template_json_schema
from .output import EXIT_ERROR, check_files, path_option


@click.group()
def policy() -> None:
    """Check policy files and print their schema."""


@policy.command("validate")
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only errors.")
def policy_validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Check policy files (default: the one in force); exit 1 if any is invalid."""
    if not files:
        found = find_policy()
        if found is None:
            click.echo("no policy in force (set AICONTRACT_POLICY or /etc/aicontract/policy.yaml)")
            return
        files = (found,)
    check_files(
        files,
        load_policy,
        lambda loaded: (
            f"{len(loaded.tenants)} tenant(s), {len(loaded.identities)} identity rule(s)"
        ),
        quiet=quiet,
    )


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a policy document."""
    schema: dict[str, Any] = json.loads(json.dumps(msgspec.json.schema(Policy, schema_hook=_hook)))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"aicontract policy (aicontract {__version__})"
    return schema


@policy.command("schema")
@click.option("--indent", default=2, show_default=True, help="JSON indentation.")
def policy_schema(indent: int) -> None:
    """Print the JSON Schema of policy files."""
    click.echo(json.dumps(policy_json_schema(), indent=indent, ensure_ascii=False))


@click.group()
def template() -> None:
    """List, show and render contract templates."""


@template.command("list")
def template_list() -> None:
    """Every template found, newest version first."""
    try:
        found = catalog()
    except ContractError as exc:
        raise click.ClickException(str(exc)) from None
    if not found:
        click.echo("no templates found")
    for versions in found.values():
        newest = versions[0]
        others = ", ".join(t.version for t in versions[1:])
        extra = f" (also {others})" if others else ""
        click.echo(f"{newest.ref:<24} {newest.description}{extra}")


@template.command("show")
@click.argument("ref")
def template_show(ref: str) -> None:
    """A template's parameters, locked fields and contract document."""
    try:
        found = find_template(ref)
    except ContractError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{found.ref}: {found.description}")
    if found.parameters:
        click.echo("parameters:")
    for name, param in found.parameters.items():
        span = ""
        if param.min is not None or param.max is not None:
            low = "" if param.min is None else param.min
            span = f" in {low}..{'' if param.max is None else param.max}"
        if param.choices:
            span = f" one of {', '.join(param.choices)}"
        default = "" if param.default is None else f" (default {param.default})"
        click.echo(f"  {name}: {param.type}{span}{default}  {param.description}".rstrip())
    click.echo(f"locked: {', '.join(found.locked) or 'nothing'}")
    click.echo("contract:")
    click.echo(yaml.safe_dump(found.contract, sort_keys=False, allow_unicode=True).rstrip())


@template.command("schema")
@click.option("--indent", default=2, show_default=True, help="JSON indentation.")
def template_schema(indent: int) -> None:
    """Print the JSON Schema of template files (for editors and CI)."""
    click.echo(json.dumps(template_json_schema(), indent=indent, ensure_ascii=False))


def _param(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise click.BadParameter(f"{text!r} is not NAME=VALUE", param_hint="-p")
    return name, value


@template.command("render")
@click.argument("ref")
@click.option("--param", "-p", "params", multiple=True, help="A parameter: NAME=VALUE.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["yaml", "toml", "json"]),
    default="yaml",
    show_default=True,
)
def template_render(ref: str, params: tuple[str, ...], fmt: str) -> None:
    """Print the contract a template makes with the given parameters."""
    try:
        values = dict(_param(p) for p in params)
        contract = render(find_template(ref), values)
    except ContractError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(dumps(contract, fmt), nl=False)  # type: ignore[arg-type]


_RECORD = path_option(
    "--record",
    "path",
    help="The record file (default: AICONTRACT_RECORD, else record.jsonl in the state dir).",
)


@click.group()
def audit() -> None:
    """Show, verify and export the record of every negotiation."""


def _describe(entry: Mapping[str, Any]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(entry.get("at", 0)))
    kind = entry.get("kind", "?")
    who = entry.get("identity")
    parts = [f"#{entry.get('seq')}", when, kind]
    for key in ("tenant", "contract", "lease", "template"):
        if entry.get(key):
            parts.append(f"{key}={entry[key]}")
    if who:
        parts.append(f"by {who}")
    detail = entry.get("offer") or entry.get("grant")
    if kind == "grant":
        # A host with no jurisdiction set has none: say "in local", not "in local/None".
        where = "/".join(str(entry[k]) for k in ("region", "jurisdiction") if entry.get(k))
        detail = f"{entry.get('grant')} in {where or '?'}"
    if kind in ("refuse",):
        detail = "; ".join(entry.get("refusals", []))
    elif kind in ("no-offer", "commit-failed", "end"):
        detail = entry.get("reason") or entry.get("state")
    elif kind == "renew":
        detail = f"until {time.strftime('%H:%M:%S', time.gmtime(entry.get('expires_at', 0)))}"
    return " ".join(parts) + (f": {detail}" if detail else "")


class _Unreadable(click.ClickException):
    """A record that cannot be read at all (a directory, no permission): an error, exit 2."""

    exit_code = EXIT_ERROR

    def __init__(self, path: Path, exc: OSError) -> None:
        super().__init__(f"{path}: the record cannot be read ({exc.strerror or exc})")


def _select(path: Path | None, lease: str | None, tenant: str | None) -> Iterator[dict[str, Any]]:
    """The record's entries that match, streamed (a record may hold millions)."""
    record = Record(path or record_path())
    entries = record.entries()
    while True:
        try:
            entry = next(entries)
        except StopIteration:
            return
        except OSError as exc:
            raise _Unreadable(record.path, exc) from None
        except (msgspec.DecodeError, RecursionError) as exc:
            # RecursionError: JSON nested deeper than the decoder goes, no entry either.
            raise click.ClickException(
                f"{record.path}: damaged ({exc}); run `aicontract audit verify`"
            ) from None
        if not isinstance(entry, dict):
            raise click.ClickException(
                f"{record.path}: damaged (a line holds a JSON {type(entry).__name__},"
                " not an entry); run `aicontract audit verify`"
            )
        if lease and entry.get("lease") != lease:
            continue
        if tenant and entry.get("tenant") != tenant:
            continue
        yield entry


@audit.command("show")
@_RECORD
@click.option("--lease", default=None, help="Only entries about this lease.")
@click.option("--tenant", default=None, help="Only entries about this tenant.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def audit_show(path: Path | None, lease: str | None, tenant: str | None, as_json: bool) -> None:
    """The record's entries, oldest first."""
    for entry in _select(path, lease, tenant):
        click.echo(json.dumps(entry, ensure_ascii=False) if as_json else _summary(entry))


def _summary(entry: Mapping[str, Any]) -> str:
    """:func:`_describe`, or the entry as JSON when its fields are not what the record
    writes (an entry forged by hand: ``audit verify`` says so, ``show`` still shows it)."""
    try:
        return _describe(entry)
    except (TypeError, ValueError, OverflowError, OSError):
        return f"(not a record entry) {json.dumps(entry, ensure_ascii=False)}"


@audit.command("verify")
@_RECORD
def audit_verify(path: Path | None) -> None:
    """Check every entry's hash and the chain; exit 1 naming the first entry changed."""
    target = path or record_path()
    try:
        result = verify(target)
    except AIContractError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise _Unreadable(target, exc) from None
    if not result.ok:
        click.echo(f"{target}: TAMPERED: {result.problem}", err=True)
        sys.exit(1)
    if not result.entries and not target.exists():
        # Not "chain intact": a mistyped --record must not read as a verified record.
        click.echo(f"{target}: no record yet (nothing has been recorded there)")
        return
    click.echo(f"{target}: ok, {result.entries} entries, chain intact")


@audit.command("export")
@_RECORD
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "otel"]),
    default="jsonl",
    show_default=True,
    help="JSON lines, or OpenTelemetry log records as OTLP/JSON lines (needs the otel extra).",
)
@click.option("--lease", default=None, help="Only entries about this lease.")
@click.option("--tenant", default=None, help="Only entries about this tenant.")
def audit_export(path: Path | None, fmt: str, lease: str | None, tenant: str | None) -> None:
    """Write the record to stdout for another system to keep."""
    selected = _select(path, lease, tenant)
    if fmt == "jsonl":
        for entry in selected:
            click.echo(json.dumps(entry, ensure_ascii=False))
        return
    from ..monitor.telemetry import export_record_otlp_json

    try:  # the SDK is imported only now: it is in the otel extra
        export_record_otlp_json(selected, sys.stdout, describe=_summary)
    except ImportError:
        raise click.ClickException(
            "--format otel needs the OpenTelemetry SDK: pip install 'aicontract[otel]'"
        ) from None


COMMANDS = [policy, template, audit]
