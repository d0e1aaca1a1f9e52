"""Who is asking: the identity a backend acts as, never what a contract claims.

A contract's ``tenant`` is a claim; an :class:`Identity` is what the backend
that would grant the lease knows about the caller — the OS user and groups of
this process on a host, the namespace and service account on Kubernetes, the
account or credential profile on a cloud. A policy maps identities to the
tenants they may act for (see :mod:`aicontract.governance.policy`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import msgspec

__all__ = ["Identity", "local_identity", "unix_user_identity"]


class Identity(msgspec.Struct, frozen=True, kw_only=True):
    """The caller as a backend sees it.

    ``kind`` says what ``name`` is (``user`` for an OS or Kubernetes user,
    ``serviceaccount`` for ``namespace/name`` on Kubernetes, ``account`` for a
    cloud account, ``api-key`` for a key's fingerprint); ``groups`` are the groups
    (or namespaces, or organisations) it belongs to; ``aliases`` are further
    whole principals it is also known by (an AWS ARN, ``profile:NAME``);
    ``source`` names the backend that said so, and how it knows
    (``kubernetes (SelfSubjectReview)``, ``kubernetes (token claims)``…).
    """

    kind: str
    name: str
    groups: tuple[str, ...] = ()
    source: str = "local"
    aliases: tuple[str, ...] = ()

    def principals(self) -> tuple[str, ...]:
        """Every name a policy may match this identity by: ``user:alice``, ``group:ml``, …."""
        return (
            f"{self.kind}:{self.name}",
            *self.aliases,
            *(f"group:{g}" for g in self.groups),
        )

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"


_last_os: tuple[tuple[int, ...], Identity] | None = None
"""The last (uid, gid, *groups) looked up, and its identity: a loop asks once per commit."""


def _os_identity(uid: int, gids: tuple[int, ...]) -> Identity:
    import pwd

    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (containers): the number is the name
        user = str(uid)
    return Identity(kind="user", name=user, groups=_group_names(gids), source="local")


def _group_names(gids: Iterable[int]) -> tuple[str, ...]:
    """Each group's name, in order, once (a gid with no entry is named by its number)."""
    import grp

    groups: list[str] = []
    for gid in gids:
        try:
            name = grp.getgrgid(gid).gr_name
        except KeyError:
            name = str(gid)
        if name not in groups:
            groups.append(name)
    return tuple(groups)


def local_identity() -> Identity:
    """This process's OS user and groups (primary group first), as the local backend sees it.

    Read from the OS at every call (a process may change its user or groups), named once
    per distinct answer.
    """
    global _last_os
    if not hasattr(os, "getuid"):  # pragma: no cover - Windows: the login name, no groups
        import getpass

        return Identity(kind="user", name=getpass.getuser(), source="local")
    key = (os.getuid(), os.getgid(), *os.getgroups())
    last = _last_os
    if last is not None and last[0] == key:
        return last[1]
    gid = key[1]
    identity = _os_identity(key[0], (gid, *(g for g in key[2:] if g != gid)))
    _last_os = (key, identity)
    return identity


def unix_user_identity(user: str, source: str) -> Identity:
    """The named user with its Unix groups on this host (primary first), as ``source`` says.

    For a backend that acts as a user other than this process's (a Slurm JWT minted
    for ``alice``): where the user has no account on this host, no groups are known.
    """
    import pwd

    try:
        primary = pwd.getpwnam(user).pw_gid
        gids = [primary, *(g for g in os.getgrouplist(user, primary) if g != primary)]
    except (KeyError, OSError):
        gids = []
    return Identity(kind="user", name=user, groups=_group_names(gids), source=source)
