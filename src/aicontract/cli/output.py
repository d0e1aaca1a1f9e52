"""What every command shares: where output goes, how it reads, and one map from errors
to exit statuses.

- Results go to stdout, messages to stderr. ``--json`` output is plain JSON written
  with ``click.echo``: never coloured, whatever ``FORCE_COLOR`` says (Jupyter sets it),
  so ``aicontract leases --json | python -m json.tool`` always works.
- Tables are never shortened when piped: without a terminal there is no width to fit.
- Exit statuses: 0 done; 1 the answer is no (no offer, no such lease, an invalid
  file); 2 an error (bad input, configuration, a backend failed); 3 a held lease was
  lost; 130 interrupted. :func:`friendly` applies them to every command.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from ..errors import AIContractError, ContractError, LeaseNotFound, NoOffer

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_LOST",
    "EXIT_NO",
    "check_files",
    "exit_status",
    "friendly",
    "messages",
    "path_option",
    "print_json",
    "reading",
    "report",
    "results",
    "when",
]

EXIT_NO = 1
EXIT_ERROR = 2
EXIT_LOST = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's way

F = TypeVar("F", bound=Callable[..., Any])
D = TypeVar("D")

# Where an error keeps the file it came from (set by reading(), read by friendly()).
_SOURCE = "_aicontract_cli_source"

# Wide enough for any lease id, grant or path: piped output is for grep and awk, not a screen.
_PIPED_WIDTH = 10_000


def results() -> Console:
    """The console for human-readable results on stdout (sized to fit only a terminal)."""
    return Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)


def messages() -> Console:
    """The console for messages and progress on stderr."""
    return Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)


def path_option(*names: str, help: str) -> Callable[[F], F]:
    """An optional option that names a file or folder: a ``Path``, or None when not given."""
    return click.option(*names, type=click.Path(path_type=Path), default=None, help=help)


def print_json(data: Any) -> None:
    """``data`` as indented JSON on stdout: plain text, never coloured."""
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def when(epoch: float) -> str:
    """An instant for people, in UTC: ``2026-11-29 13:05:00Z``."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def exit_status(exc: AIContractError) -> int:
    """The exit status for ``exc``: 1 when the answer is no, 2 for an error."""
    if isinstance(exc, (NoOffer, LeaseNotFound)):
        return EXIT_NO
    return EXIT_ERROR


def report(exc: AIContractError, file: Path | None = None) -> int:
    """Print ``exc`` as one message on stderr (naming ``file``); return its exit status."""
    # (an error that already names the file, as load()'s do, is not prefixed twice)
    where = f"{file}: " if file is not None and str(file) not in str(exc) else ""
    console = messages()
    if isinstance(exc, NoOffer):
        console.print(f"[bold red]no offer[/]: {escape(where + str(exc))}", highlight=False)
    else:
        console.print(f"error: {where}{exc}", highlight=False, markup=False)
    return exit_status(exc)


def friendly(func: F) -> F:
    """Turn library errors into one clear message and the exit status :func:`exit_status` maps."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except AIContractError as exc:
            sys.exit(report(exc, getattr(exc, _SOURCE, None)))

    return wrapper  # type: ignore[return-value]


@contextlib.contextmanager
def reading(file: Path) -> Iterator[None]:
    """Errors raised inside the block name ``file`` when :func:`friendly` reports them.

    Not a :class:`ConfigError` that names its own file (a broken policy): that is not
    the contract's fault.
    """
    try:
        yield
    except AIContractError as exc:
        if getattr(exc, _SOURCE, None) is None and getattr(exc, "file", None) is None:
            setattr(exc, _SOURCE, file)
        raise


def check_files(
    files: tuple[Path, ...],
    load: Callable[[Path], D],
    summary: Callable[[D], str],
    *,
    quiet: bool,
) -> None:
    """Load each of ``files`` with ``load``: ``PATH: ok (SUMMARY)`` for a good one (unless
    ``quiet``), ``PATH: ERROR`` on stderr for a bad one; exit 1 if any is invalid."""
    failed = 0
    for path in files:
        try:
            loaded = load(path)
        except ContractError as exc:
            failed += 1
            click.echo(f"{path}: {exc}", err=True)
        else:
            if not quiet:
                click.echo(f"{path}: ok ({summary(loaded)})")
    if failed:
        click.echo(f"{failed} of {len(files)} file(s) invalid", err=True)
        sys.exit(EXIT_NO)
