"""``python -m aicontract``: the same as the ``aicontract`` command."""

from .cli import main

main(prog_name="aicontract")
