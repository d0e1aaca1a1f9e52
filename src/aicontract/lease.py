"""Leases: committed offers with endpoints, env, expiry and a state machine.

A lease's own state is kept apart from its workload's and its objectives'
(see the design): it can be ``active`` while an objective is violated.

    pending ─▶ active ⇄ renewing
                 │
                 ├─▶ released   (the holder let go)
                 ├─▶ expired    (not renewed in time)
                 ├─▶ revoked    (the provider took it back: node lost, preempted, device error)
                 └─▶ failed     (the backend could not keep it: a renewal was refused)
"""

from __future__ import annotations

import enum
import logging
import os
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
import attrs
import msgspec

from .clock import Clock, system_clock
from .contract import Contract, GuaranteeLevel, encode_quantity
from .errors import LeaseLost, LeaseStateError
from .offer import Grant

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["Lease", "LeaseRecord", "LeaseState"]

log = logging.getLogger("aicontract.lease")


class LeaseState(str, enum.Enum):
    """Where a lease is in its life."""

    PENDING = "pending"
    ACTIVE = "active"
    RENEWING = "renewing"
    RELEASED = "released"
    EXPIRED = "expired"
    REVOKED = "revoked"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        """True for the states a lease never leaves."""
        return self in _FINAL


_FINAL = frozenset({LeaseState.RELEASED, LeaseState.EXPIRED, LeaseState.REVOKED, LeaseState.FAILED})
_ALLOWED: dict[LeaseState, frozenset[LeaseState]] = {
    LeaseState.PENDING: frozenset({LeaseState.ACTIVE, LeaseState.FAILED, LeaseState.RELEASED}),
    LeaseState.ACTIVE: frozenset({LeaseState.RENEWING} | _FINAL),
    LeaseState.RENEWING: frozenset({LeaseState.ACTIVE} | _FINAL),
}


class LeaseRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A lease as data: what the ledger stores, the CLI prints and other processes read."""

    id: str
    backend: str
    contract: Contract
    grant: Grant
    guarantee: GuaranteeLevel
    state: LeaseState
    created_at: float
    expires_at: float
    region: str = "local"
    jurisdiction: str | None = None
    endpoints: dict[str, str] = msgspec.field(default_factory=dict)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    holder_pid: int | None = None
    reason: str | None = None
    details: dict[str, str] = msgspec.field(default_factory=dict)

    def to_json(self) -> bytes:
        """The record as JSON."""
        return msgspec.json.encode(self, enc_hook=encode_quantity)

    @classmethod
    def from_json(cls, data: bytes | str) -> LeaseRecord:
        """Read a record written by :meth:`to_json`."""
        from .contract import decode_quantity

        return msgspec.json.decode(data, type=cls, dec_hook=decode_quantity)


StateListener = Callable[["Lease", LeaseState, LeaseState], None]


@attrs.define(eq=False)
class Lease:
    """Resources reserved for you: granted values, endpoints, env, expiry.

    Use it as ``async with lease:`` (or ``with`` through :func:`aicontract.lease`)
    to keep it renewed while the block runs and released when it ends.
    """

    id: str
    contract: Contract
    grant: Grant
    backend: Backend
    guarantee: GuaranteeLevel
    expires_at: float
    region: str = "local"
    jurisdiction: str | None = None
    endpoints: dict[str, str] = attrs.field(factory=dict)
    env: dict[str, str] = attrs.field(factory=dict)
    details: dict[str, str] = attrs.field(factory=dict)
    clock: Clock = attrs.field(default=system_clock, repr=False)
    created_at: float = attrs.field(default=0.0)
    state: LeaseState = LeaseState.ACTIVE
    reason: str | None = None
    _listeners: list[StateListener] = attrs.field(factory=list, repr=False)
    _holding: anyio.abc.TaskGroup | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if not self.created_at:
            self.created_at = self.clock.time()

    # -- state ---------------------------------------------------------------------------

    def on_state_change(self, listener: StateListener) -> None:
        """Call ``listener(lease, old, new)`` on every state change."""
        self._listeners.append(listener)

    def transition(self, new: LeaseState, reason: str | None = None) -> None:
        """Move to ``new``; refuses moves the state machine does not allow."""
        old = self.state
        if new == old:
            return
        if new not in _ALLOWED.get(old, frozenset()):
            raise LeaseStateError(self.id, f"cannot go from {old.value} to {new.value}")
        self.state, self.reason = new, reason or self.reason
        log.info(
            "lease %s: %s -> %s%s", self.id, old.value, new.value, f" ({reason})" if reason else ""
        )
        for listener in list(self._listeners):
            listener(self, old, new)

    @property
    def is_active(self) -> bool:
        """True while the lease holds its resources (``active`` or ``renewing``)."""
        return self.state in (LeaseState.ACTIVE, LeaseState.RENEWING)

    @property
    def remaining(self) -> float:
        """Seconds until expiry (negative once past)."""
        return self.expires_at - self.clock.time()

    @property
    def ends_at(self) -> float | None:
        """When the contract's duration runs out (``None`` when it has none)."""
        duration = self.contract.terms.duration
        return None if duration is None else self.created_at + duration.seconds

    # -- operations ----------------------------------------------------------------------

    async def renew(self) -> None:
        """Extend the lease's expiry with its backend."""
        if not self.is_active:
            raise LeaseStateError(self.id, f"cannot renew a {self.state.value} lease")
        if self.remaining < 0:
            self.transition(LeaseState.EXPIRED, "expired before renewal")
            raise LeaseLost(self.id, "expired before it could be renewed")
        self.transition(LeaseState.RENEWING)
        try:
            self.expires_at = await self.backend.renew(self)
        except LeaseLost as exc:
            if self.is_active:
                self.transition(LeaseState.REVOKED, str(exc))
            raise
        except BaseException:
            if self.state == LeaseState.RENEWING:
                self.transition(LeaseState.ACTIVE)
            raise
        if self.state == LeaseState.RENEWING:
            self.transition(LeaseState.ACTIVE)

    async def release(self) -> None:
        """Give the resources back. Safe to call twice, and on a lost lease."""
        if self.state.is_final:
            return
        with anyio.CancelScope(shield=True):
            await self.backend.release(self)
        if not self.state.is_final:
            self.transition(LeaseState.RELEASED)

    def revoke(self, reason: str) -> None:
        """Mark the lease revoked by its provider (a node lost, a device fault)."""
        if self.is_active:
            self.transition(LeaseState.REVOKED, reason)

    def record(self) -> LeaseRecord:
        """The lease as a serialisable :class:`LeaseRecord`."""
        return LeaseRecord(
            id=self.id,
            backend=self.backend.name,
            contract=self.contract,
            grant=self.grant,
            guarantee=self.guarantee,
            state=self.state,
            created_at=self.created_at,
            expires_at=self.expires_at,
            region=self.region,
            jurisdiction=self.jurisdiction,
            endpoints=dict(self.endpoints),
            env=dict(self.env),
            holder_pid=os.getpid(),
            reason=self.reason,
            details=dict(self.details),
        )

    # -- keeping it alive ----------------------------------------------------------------

    def renew_interval(self) -> float:
        """How often the heartbeat renews: a third of the time left, at most a minute."""
        return max(0.05, min(60.0, (self.expires_at - self.clock.time()) / 3))

    async def keep_alive(self) -> None:
        """Renew the lease until it ends or the surrounding scope is cancelled."""
        while self.is_active:
            await self.clock.sleep(self.renew_interval())
            if not self.is_active:
                return
            ends_at = self.ends_at
            if ends_at is not None and self.clock.time() >= ends_at:
                log.info("lease %s: contract duration reached; releasing", self.id)
                await self.release()
                return
            try:
                await self.renew()
            except LeaseLost:
                log.warning("lease %s lost: %s", self.id, self.reason)
                return

    async def __aenter__(self) -> Lease:
        self._holding = anyio.create_task_group()
        await self._holding.__aenter__()
        self._holding.start_soon(self.keep_alive, name=f"aicontract-heartbeat-{self.id}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        holding, self._holding = self._holding, None
        try:
            await self.release()
        finally:
            if holding is not None:
                holding.cancel_scope.cancel()
                await holding.__aexit__(exc_type, exc, tb)
        return None

    def __repr__(self) -> str:
        return (
            f"<Lease {self.id} {self.state.value} {self.grant.describe()} on {self.backend.name}"
            f" [{self.guarantee}]>"
        )

    def to_dict(self) -> dict[str, Any]:
        """The lease's record as plain builtins (for JSON output)."""
        data: dict[str, Any] = msgspec.to_builtins(self.record(), enc_hook=encode_quantity)
        return data
