"""``aicontract validate`` and ``aicontract schema``: contract files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ..documents import load
from ..errors import ContractError
from ..schema import json_schema
from .output import EXIT_NO, friendly


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only errors.")
@friendly
def validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Check contract files (YAML, TOML or JSON); exit 1 if any is invalid."""
    failed = 0
    for path in files:
        try:
            contract = load(path)
        except ContractError as exc:
            failed += 1
            click.echo(f"{path}: {exc}", err=True)
        else:
            if not quiet:
                click.echo(f"{path}: ok ({contract.name})")
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) invalid", err=True)
        sys.exit(EXIT_NO)


@click.command()
@click.option("--indent", default=2, show_default=True, help="JSON indentation.")
@friendly
def schema(indent: int) -> None:
    """Print the JSON Schema of contract files."""
    click.echo(json.dumps(json_schema(), indent=indent, ensure_ascii=False))


COMMANDS = [validate, schema]
