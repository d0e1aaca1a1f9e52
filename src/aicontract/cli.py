"""The ``aicontract`` command."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from ._version import __version__
from .documents import load
from .errors import ContractError
from .schema import json_schema


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aicontract")
def main() -> None:
    """State what a workload needs as a contract; get a lease that keeps it."""


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--quiet", "-q", is_flag=True, help="Print only errors.")
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
        sys.exit(1)


@main.command()
@click.option("--indent", default=2, show_default=True, help="JSON indentation.")
def schema(indent: int) -> None:
    """Print the JSON Schema of contract files."""
    click.echo(json.dumps(json_schema(), indent=indent, ensure_ascii=False))
