"""``aicontract validate`` and ``aicontract schema``: contract files."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..documents import load
from ..schema import json_schema
from .output import check_files, friendly


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only errors.")
@friendly
def validate(files: tuple[Path, ...], quiet: bool) -> None:
    """Check contract files (YAML, TOML or JSON); exit 1 if any is invalid."""
    check_files(files, load, lambda contract: contract.name, quiet=quiet)


@click.command()
@click.option("--indent", default=2, show_default=True, help="JSON indentation.")
@friendly
def schema(indent: int) -> None:
    """Print the JSON Schema of contract files."""
    click.echo(json.dumps(json_schema(), indent=indent, ensure_ascii=False))


COMMANDS = [validate, schema]
