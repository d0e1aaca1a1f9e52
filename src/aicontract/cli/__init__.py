"""The ``aicontract`` command: one group, one module per family of subcommands."""

from __future__ import annotations

import click

from .._version import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="aicontract")
def main() -> None:
    """State what a workload needs as a contract; get a lease that keeps it."""


def _register() -> None:
    from . import contracts, gc, governance, leases, metrics, watch

    for module in (contracts, leases, metrics, watch, gc, governance):
        for command in module.COMMANDS:
            main.add_command(command)


_register()
