"""Provider credentials: read from the environment or a config file, never shown.

A credential lives in a :class:`Secret`, whose ``repr``/``str`` is a mask; the
value comes out only through :meth:`Secret.reveal`, at the one place it is
sent to the provider. Every secret loaded is also registered with a logging
filter on the HTTP and AWS SDK loggers, so a library that logs request headers
at DEBUG cannot leak it either; and provider error text passes through
:func:`redact` before it reaches an exception.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ...errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = ["Secret", "credentials_file", "load_secret", "redact", "register_secret"]

_MASK = "***"
_KNOWN: set[str] = set()
# Loggers that may print request headers or bodies at DEBUG.
_NOISY_LOGGERS = (
    "httpx",
    "httpcore",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.connection",
    "botocore",
    "botocore.endpoint",
    "botocore.auth",
    "botocore.hooks",
    "botocore.parsers",
    "botocore.httpsession",
    "botocore.retryhandler",
    "botocore.client",
    "botocore.credentials",
    "botocore.awsrequest",
    "botocore.utils",
    "botocore.regions",
    "botocore.stub",
    "boto3",
    "boto3.resources.action",
    "urllib3",
    "urllib3.connectionpool",
)


class Secret:
    """A credential string that never prints itself."""

    __slots__ = ("_value",)

    def __init__(self, value: str | Secret) -> None:
        self._value = value.reveal() if isinstance(value, Secret) else str(value)

    def reveal(self) -> str:
        """The value itself: call only where it is sent to the provider."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret cannot be pickled")


def redact(text: str, secrets: Iterable[str] | None = None) -> str:
    """``text`` with every registered (or given) secret replaced by a mask."""
    for value in sorted(_KNOWN if secrets is None else set(secrets), key=len, reverse=True):
        if value and value in text:
            text = text.replace(value, _MASK)
    return text


class _RedactingFilter(logging.Filter):
    """Rewrites a log record whose rendered message contains a registered secret."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _KNOWN:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's business
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


_FILTER = _RedactingFilter()


def register_secret(secret: Secret | str | None) -> None:
    """Mask ``secret`` in the HTTP/SDK loggers' records and in :func:`redact`."""
    if secret is None:
        return
    value = secret.reveal() if isinstance(secret, Secret) else secret
    if len(value) < 4:  # masking one or two characters would garble every message
        return
    _KNOWN.add(value)
    for name in _NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


def credentials_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where credentials are read from when not in the environment.

    ``AICONTRACT_CREDENTIALS_FILE`` when set, else ``credentials.toml`` in the
    user's config directory (``~/.config/aicontract`` on Linux).
    """
    env = os.environ if environ is None else environ
    explicit = env.get("AICONTRACT_CREDENTIALS_FILE")
    if explicit:
        return Path(explicit).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir("aicontract")) / "credentials.toml"


def load_secret(
    provider: str,
    key: str,
    *,
    env_vars: Iterable[str],
    given: str | Secret | None = None,
    environ: Mapping[str, str] | None = None,
) -> Secret | None:
    """A credential from ``given``, else the first set of ``env_vars``, else the file.

    The file is TOML with one table per provider::

        [lambda]
        api_key = "..."

    Returns ``None`` when none of them has it (the backend then refuses to
    quote with an :class:`~aicontract.AuthenticationError` naming where to put it).
    """
    env = os.environ if environ is None else environ
    secret: Secret | None = None
    if given is not None and str(given if isinstance(given, str) else given.reveal()):
        secret = Secret(given)
    if secret is None:
        for name in env_vars:
            if env.get(name):
                secret = Secret(env[name])
                break
    if secret is None:
        path = credentials_file(env)
        if path.is_file():
            try:
                data = tomllib.loads(path.read_text(encoding="utf-8"))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                # The parser's message may quote the line, and the line may hold a key.
                raise ConfigError(
                    f"cannot read credentials file {path}: {type(exc).__name__}"
                ) from None
            table = data.get(provider)
            value = table.get(key) if isinstance(table, dict) else None
            if isinstance(value, str) and value:
                secret = Secret(value)
    register_secret(secret)
    return secret
