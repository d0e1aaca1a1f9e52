"""A small async client for Slurm's REST daemon (``slurmrestd``), over httpx.

It speaks the OpenAPI plugin versions Slurm 22.05 serves (``v0.0.37``,
``v0.0.38``) and reads the newer ones (``v0.0.39`` and later, Slurm 23.02+)
where their shapes differ: numbers wrapped as ``{"set", "infinite", "number"}``,
states as lists, the batch script inside ``job`` and the environment as
``["K=V"]``. Everything the backend reads goes through the ``number``,
``states`` and ``text`` helpers here, so one code path serves every version.

Authentication is a JWT (``X-SLURM-USER-NAME``/``X-SLURM-USER-TOKEN``): given,
taken from ``$SLURM_JWT``, or minted with ``scontrol token``. A
``unix:///path`` URL talks to a ``slurmrestd`` listening on a local socket
(``rest_auth/local``: the socket's peer is the user, no token needed).

Every request is counted in :attr:`SlurmAPI.calls` (the benchmark reports
calls per lease).
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import subprocess
from collections.abc import Mapping
from typing import Any

import attrs
import httpx

from ...errors import (
    AuthenticationError,
    BackendError,
    ConfigError,
    TransientBackendError,
)
from ..http import send

__all__ = [
    "SUPPORTED_VERSIONS",
    "JobNotFound",
    "SlurmAPI",
    "SlurmError",
    "expand_hostlist",
    "number",
    "states",
    "text",
]

log = logging.getLogger("aicontract.slurm")

Obj = dict[str, Any]

SUPPORTED_VERSIONS = ("v0.0.38", "v0.0.37", "v0.0.39", "v0.0.40", "v0.0.41")
"""Plugin versions, in the order tried when none is configured."""

_INVALID_JOB_ID = 2017  # ESLURM_INVALID_JOB_ID
_ACCESS_DENIED = 2002  # ESLURM_ACCESS_DENIED
_TRANSIENT_ERRNOS = frozenset({1007, 1008, 5004})  # protocol/authentication timeouts, busy
# slurmrestd could not reach slurmctld (restarting, failing over): SLURM_COMMUNICATIONS_*
# (1001-1004) and SLURMCTLD_COMMUNICATIONS_* (1800-1804).
_CONTROLLER_AWAY = frozenset({1001, 1002, 1003, 1004, 1800, 1801, 1802, 1803, 1804})
_UNSPECIFIED = -1
"""22.05's errno when a call to slurmctld failed without one: with the controller away it
answers even ``Unable to find JobId=N`` this way, for a job that runs (a job truly gone
is ``2017``)."""


class SlurmError(BackendError):
    """slurmrestd (or slurmctld behind it) refused a request.

    ``status`` is the HTTP status, ``errno`` Slurm's error number (0 when none
    was given) and ``detail`` Slurm's own words.
    """

    def __init__(self, backend: str, status: int, errno: int, detail: str) -> None:
        self.status = status
        self.errno = errno
        self.detail = detail
        self.answer: Obj = {}
        """The rest of slurmrestd's answer (a submit may name the job it made anyway)."""
        super().__init__(backend, f"HTTP {status}, Slurm error {errno}: {detail}")


class JobNotFound(SlurmError):
    """The job id is unknown to slurmctld (never existed, or purged after ``MinJobAge``)."""


def number(value: Any) -> int | None:
    """A Slurm number in any plugin version's shape; ``None`` when unset or infinite.

    ``v0.0.38`` writes plain integers (and ``null``/``-1`` for none);
    ``v0.0.39+`` writes ``{"set": true, "infinite": false, "number": 5}``.
    """
    if isinstance(value, Mapping):
        if not value.get("set", True) or value.get("infinite"):
            return None
        value = value.get("number")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def states(value: Any) -> frozenset[str]:
    """A state field as a set of upper-case words.

    ``v0.0.38`` writes ``"idle"`` or ``"RUNNING"`` (plus a separate
    ``state_flags`` list); newer versions write ``["IDLE", "DRAIN"]``; compound
    text such as ``"IDLE+DRAIN"`` is split too.
    """
    if value is None:
        return frozenset()
    items = value if isinstance(value, (list, tuple)) else [value]
    out: set[str] = set()
    for item in items:
        out.update(part for part in re.split(r"[+,\s]+", str(item).upper()) if part)
    return frozenset(out)


def text(value: Any) -> str:
    """A string field that newer versions may write as a list (``nodes``, ``features``)."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def expand_hostlist(expression: str) -> list[str]:
    """Slurm's host list syntax expanded: ``node[1-3,7],gpu01`` → five names."""
    names: list[str] = []
    for part in _split_top(expression.strip()):
        if not part:
            continue
        match = re.match(r"^(.*?)\[([^\]]+)\](.*)$", part)
        if match is None:
            names.append(part)
            continue
        prefix, ranges, suffix = match.groups()
        for piece in ranges.split(","):
            found = _RANGE.match(piece.strip())
            if found is None:
                names.append(part)
                break
            low, high = found.group(1), found.group(2) or found.group(1)
            width = len(low)
            for index in range(int(low), int(high) + 1):
                for tail in expand_hostlist(suffix) if "[" in suffix else [suffix]:
                    names.append(f"{prefix}{index:0{width}d}{tail}")
    return names


def _split_top(expression: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in expression:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def token_from_scontrol(user: str | None, lifespan: int = 3600) -> str | None:
    """A JWT minted by ``scontrol token`` (``None`` when scontrol is missing or refuses)."""
    command = ["scontrol", "token", f"lifespan={lifespan}"]
    if user:
        command.append(f"username={user}")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.debug("scontrol token failed: %s", exc)
        return None
    for line in done.stdout.splitlines():
        if line.startswith("SLURM_JWT="):
            return line.partition("=")[2].strip() or None
    log.debug("scontrol token gave no token: %s", done.stderr.strip())
    return None


@attrs.define(eq=False)
class SlurmAPI:
    """JSON verbs on one ``slurmrestd``, with Slurm's errors turned into ``aicontract`` errors.

    ``version`` is the OpenAPI plugin version (``v0.0.38``); ``None`` asks the
    daemon which it serves (one ``ping`` per candidate, once).
    """

    url: str
    user: str | None = None
    token: str | None = None
    version: str | None = None
    timeout: float = 30.0
    backend: str = "slurm"
    http: httpx.AsyncClient | None = attrs.field(default=None, repr=False)
    calls: int = 0

    def __attrs_post_init__(self) -> None:
        if self.http is not None:
            return
        headers = {"Accept": "application/json"}
        if self.url.startswith("unix://"):
            # rest_auth/local: the daemon knows who we are from the socket.
            transport = httpx.AsyncHTTPTransport(uds=self.url.removeprefix("unix://"))
            self.http = httpx.AsyncClient(
                base_url="http://slurmrestd", transport=transport, timeout=self.timeout
            )
            return
        if not self.url.startswith(("http://", "https://")):
            raise ConfigError(
                f"slurm url {self.url!r} is not a slurmrestd address; expected"
                " http(s)://host:port or unix:///path/to/socket"
            )
        user = self.user or os.environ.get("SLURM_USER") or getpass.getuser()
        token = self.token or os.environ.get("SLURM_JWT") or token_from_scontrol(user)
        if not token:
            raise ConfigError(
                "the slurm backend needs a JWT for slurmrestd: pass token=, set SLURM_JWT"
                " (scontrol token) or use a unix:// socket with rest_auth/local"
            )
        headers["X-SLURM-USER-NAME"] = user
        headers["X-SLURM-USER-TOKEN"] = token
        self.user = user
        self.http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=self.timeout)

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client."""
        assert self.http is not None  # set in __attrs_post_init__
        return self.http

    @property
    def legacy(self) -> bool:
        """True for the 22.05 plugins (``v0.0.37``/``v0.0.38``), whose shapes are flat."""
        return (self.version or "v0.0.38") in ("v0.0.37", "v0.0.38")

    async def ensure_version(self) -> str:
        """The plugin version to speak, found by asking the daemon when not configured."""
        if self.version is not None:
            return self.version
        last: BackendError | None = None
        for candidate in SUPPORTED_VERSIONS:
            try:
                await self._send("GET", f"/slurm/{candidate}/ping")
            except SlurmError as exc:
                last = exc
                continue
            self.version = candidate
            return candidate
        raise ConfigError(
            f"slurmrestd at {self.url} serves none of {', '.join(SUPPORTED_VERSIONS)}"
            + (f" (last answer: {last})" if last else "")
        )

    async def request(self, method: str, path: str, *, body: Obj | None = None) -> Obj:
        """One call under ``/slurm/<version>``; returns the decoded body."""
        version = await self.ensure_version()
        return await self._send(method, f"/slurm/{version}{path}", body=body)

    async def _send(self, method: str, path: str, *, body: Obj | None = None) -> Obj:
        self.calls += 1
        content = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        response = await send(
            self.client, self.backend, method, path, content=content, headers=headers
        )
        try:
            data: Obj = response.json() if response.content else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        errors = [e for e in data.get("errors") or [] if isinstance(e, Mapping)]
        if response.status_code >= 400 or errors:
            error = self._error(method, path, response, errors)
            if isinstance(error, SlurmError):
                error.answer = data
            raise error
        return data

    def _error(
        self, method: str, path: str, response: httpx.Response, errors: list[Mapping[str, Any]]
    ) -> BackendError:
        status = response.status_code
        first: Mapping[str, Any] = errors[0] if errors else {}
        errno = number(first.get("error_number") or first.get("error_code")) or 0
        detail = "; ".join(str(e.get("description") or e.get("error") or e) for e in errors) or (
            response.text[:300] or response.reason_phrase
        )
        detail = f"{method} {path}: {detail}"
        if status in (401, 403) or errno in (1007, 6000, 6001):
            return AuthenticationError(
                self.backend, f"slurmrestd refused the credentials (HTTP {status}): {detail}"
            )
        if errno in _CONTROLLER_AWAY or (errno == _UNSPECIFIED and status >= 500):
            return TransientBackendError(
                self.backend, f"slurmctld did not answer (HTTP {status}, error {errno}): {detail}"
            )
        if errno == _INVALID_JOB_ID or (
            errno == 0 and ("Invalid job id" in detail or "Unable to find JobId" in detail)
        ):
            return JobNotFound(self.backend, status, errno, detail)
        if status in (429, 502, 503, 504) or errno in _TRANSIENT_ERRNOS:
            return TransientBackendError(self.backend, f"HTTP {status}: {detail}")
        if status >= 500 and not errors:
            return TransientBackendError(self.backend, f"HTTP {status}: {detail}")
        return SlurmError(self.backend, status, errno, detail)

    # -- the calls the backend makes -----------------------------------------------------

    async def nodes(self) -> list[Obj]:
        """Every node (``GET /nodes``)."""
        return list((await self.request("GET", "/nodes")).get("nodes") or [])

    async def partitions(self) -> list[Obj]:
        """Every partition (``GET /partitions``)."""
        return list((await self.request("GET", "/partitions")).get("partitions") or [])

    async def reservations(self) -> list[Obj]:
        """Every reservation (``GET /reservations``; none when there are none)."""
        try:
            data = await self.request("GET", "/reservations")
        except SlurmError as exc:
            # 22.05 answers "no reservations" as an error on some builds.
            if "reservation" in exc.detail.lower():
                return []
            raise
        return list(data.get("reservations") or [])

    async def jobs(self) -> list[Obj]:
        """Every job slurmctld still knows (``GET /jobs``)."""
        return list((await self.request("GET", "/jobs")).get("jobs") or [])

    async def job(self, job_id: int | str) -> Obj | None:
        """One job, ``None`` when slurmctld no longer knows it."""
        try:
            data = await self.request("GET", f"/job/{job_id}")
        except JobNotFound:
            return None
        jobs = data.get("jobs") or []
        return dict(jobs[0]) if jobs else None

    async def submit(self, job: Obj, script: str) -> int:
        """Submit a batch job; returns its id."""
        if self.legacy:
            body: Obj = {"script": script, "job": job}
        else:
            body = {"job": {**_modern_job(job), "script": script}}
        try:
            data = await self.request("POST", "/job/submit", body=body)
        except SlurmError as exc:
            # slurmctld may take the job and complain in the same answer (22.05, just
            # after a restart: "Required node not available" while the nodes register
            # again): the job exists, pending; waiting for it to run decides.
            job_id = number(exc.answer.get("job_id"))
            if job_id is None:
                raise
            log.warning("slurm: job %s submitted, with a complaint: %s", job_id, exc.detail)
            return job_id
        job_id = number(data.get("job_id"))
        if job_id is None:
            raise SlurmError(self.backend, 200, 0, f"submit answered without a job id: {data}")
        return job_id

    async def update(self, job_id: int | str, changes: Obj) -> None:
        """Change a job (``POST /job/{id}``), e.g. its ``time_limit`` in minutes."""
        body = changes if self.legacy else _modern_job(changes)
        await self.request("POST", f"/job/{job_id}", body=body)

    async def cancel(self, job_id: int | str) -> bool:
        """Cancel a job; ``False`` when it was already gone."""
        try:
            await self.request("DELETE", f"/job/{job_id}")
        except JobNotFound:
            return False
        except SlurmError as exc:
            # Cancelling a finished job is not an error for us.
            if "already completed" in exc.detail.lower() or exc.errno == 2021:
                return False
            raise
        return True

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self.client.aclose()


_WRAPPED = frozenset({"time_limit", "memory_per_node", "memory_per_cpu", "cpus_per_task"})


def _modern_job(job: Mapping[str, Any]) -> Obj:
    """A 22.05-shaped job description in the ``v0.0.39+`` shape."""
    out: Obj = {}
    for key, value in job.items():
        if key in _WRAPPED and isinstance(value, int):
            out[key] = {"set": True, "infinite": False, "number": value}
        elif key == "environment" and isinstance(value, Mapping):
            out[key] = [f"{k}={v}" for k, v in value.items()]
        elif key == "gres":
            out["tres_per_node"] = value if str(value).startswith("gres") else f"gres/{value}"
        elif key == "exclusive":
            out["exclusive"] = ["true"] if value else ["false"]
        else:
            out[key] = value
    return out
