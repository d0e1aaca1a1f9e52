"""Provider credentials: read from the environment or a config file, never shown.

A credential lives in a :class:`Secret`, whose ``repr``/``str`` is a mask; the
value comes out only through :meth:`Secret.reveal`, at the one place it is
sent to the provider. Every secret loaded is also registered for redaction, and
every log record from the HTTP and SDK libraries (httpx, httpcore, urllib3,
botocore, boto3 — any of their loggers, present or future) and from aicontract
is scrubbed as it is made: registered secrets, and the shapes a signed request
takes (``Credential=AKIA…``, ``x-amz-security-token: …``, ``Authorization: Bearer …``),
so credentials a library found by itself (an AWS profile) cannot leak either.
Provider error text passes through :func:`redact` before it reaches an exception.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..._compat import tomllib
from ...errors import ConfigError

__all__ = [
    "Secret",
    "credentials_file",
    "load_secret",
    "load_setting",
    "redact",
    "register_secret",
]

_MASK = "***"
_KNOWN: set[str] = set()
# Records from these loggers (and all their children) are scrubbed: they may print
# request headers or bodies at DEBUG.
_NOISY_PREFIXES = ("httpx", "httpcore", "urllib3", "botocore", "boto3", "s3transfer", "aicontract")
# Secrets in the shapes requests carry them, registered or not (the first group is kept).
_SHAPES = (
    # SigV4: the access key id in the Authorization header or a presigned URL.
    re.compile(r"(Credential=)[A-Z0-9]{16,128}"),
    re.compile(r"(X-Amz-Credential=)[A-Z0-9]{16,128}"),
    re.compile(r"((?:Signature|X-Amz-Signature)=)[0-9a-f]{64}"),
    # Session tokens, as a header line, a dict entry or a query parameter.
    re.compile(r"((?i:x-amz-security-token)['\"]?\s*[:=]\s*b?['\"]?)[^\s'\",&]+"),
    # Bearer / Basic credentials in an Authorization header.
    re.compile(r"((?i:authorization)['\"]?\s*[:=]\s*b?['\"]?(?i:bearer|basic|token)\s+)[^\s'\",]+"),
    re.compile(r"((?i:aws_secret_access_key|aws_session_token)['\"]?\s*[:=]\s*['\"]?)[^\s'\",]+"),
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
    """``text`` with every registered (or given) secret, and every secret-shaped
    request part (``Credential=…``, ``Authorization: Bearer …``), replaced by a mask."""
    for value in sorted(_KNOWN if secrets is None else set(secrets), key=len, reverse=True):
        if value and value in text:
            text = text.replace(value, _MASK)
    for shape in _SHAPES:
        text = shape.sub(rf"\g<1>{_MASK}", text)
    return text


def _scrub(record: logging.LogRecord) -> None:
    """Rewrite ``record``'s message with :func:`redact` when it holds a secret."""
    try:
        message = record.getMessage()
    except Exception:  # a malformed record is the logging module's business
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None


def _install_record_scrubber() -> None:
    """Scrub every record from the noisy libraries as it is made, whatever handler gets it.

    A filter on a logger sees only that logger's own records, not its children's,
    and a handler filter only the handlers we know; the record factory sees them all.
    It wraps the factory already in place, so others' factories keep working.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_aicontract_scrubs", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if record.name.startswith(_NOISY_PREFIXES):
            _scrub(record)
        return record

    factory._aicontract_scrubs = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


_install_record_scrubber()


def register_secret(secret: Secret | str | None) -> None:
    """Mask ``secret`` in the HTTP/SDK loggers' records and in :func:`redact`."""
    if secret is None:
        return
    value = secret.reveal() if isinstance(secret, Secret) else secret
    if len(value) < 4:  # masking one or two characters would garble every message
        return
    _KNOWN.add(value)
    _install_record_scrubber()  # again, in case someone replaced the factory since


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


def load_setting(provider: str, key: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A plain (not secret) value under ``[provider]`` in the credentials file, or ``None``.

    A file that cannot be read gives ``None``: :func:`load_secret` reports it.
    """
    path = credentials_file(environ)
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8")).get(provider)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = table.get(key) if isinstance(table, dict) else None
    return value if isinstance(value, str) and value else None
