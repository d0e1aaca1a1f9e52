"""Every exception aicontract raises, in one hierarchy.

    AIContractError
    ├── ContractError            bad input: names the path, the value and the allowed form
    ├── ConfigError              bad configuration (inventory file, state dir, backend options)
    │   └── BackendNotFound      no backend registered under that name
    ├── NegotiationError
    │   └── NoOffer              no backend could satisfy the contract (says why, per backend)
    │       └── PolicyViolation  the policy forbids it: names the rule, the tenant and the numbers
    ├── BackendError             a backend failed; carries the backend's name
    │   ├── CapacityUnavailable  the offer's capacity went away before commit: try the next offer
    │   ├── TransientBackendError  retry may help (timeouts, 5xx, rate limits)
    │   ├── QuotaExceeded        final: the account may not have more
    │   ├── AuthenticationError  final: credentials missing or refused
    │   ├── IdempotencyConflict  an idempotency key was reused for a different offer
    │   └── LedgerError          the local ledger is damaged, unreadable, read-only, full or locked
    └── LeaseError               something about one lease; carries its id
        ├── LeaseNotFound
        ├── LeaseStateError      an operation the lease's state does not allow
        └── LeaseLost            the lease was revoked or expired under its holder

Catch ``AIContractError`` to handle anything from this library; everything else
escaping it is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .offer import Offer, Rejection

__all__ = [
    "AIContractError",
    "AuthenticationError",
    "BackendError",
    "BackendNotFound",
    "CapacityUnavailable",
    "ConfigError",
    "ContractError",
    "IdempotencyConflict",
    "LeaseError",
    "LeaseLost",
    "LeaseNotFound",
    "LeaseStateError",
    "LedgerError",
    "NegotiationError",
    "NoOffer",
    "PolicyViolation",
    "QuotaExceeded",
    "TransientBackendError",
]


_LONG_QUOTED = re.compile(r"""(['"])([^'"]{81,})\1""")
_LONG_WORD = re.compile(r"\S{121,}")


def _clip_quoted(text: str) -> str:
    """Quote at most ~80 characters of any value a message echoes (a value may be 1 MB)."""
    if len(text) <= 200:
        return text
    text = _LONG_QUOTED.sub(lambda m: f"{m[1]}{m[2][:77]}...{m[1]} ({len(m[2])} chars)", text)
    return _LONG_WORD.sub(lambda m: f"{m[0][:77]}... ({len(m[0])} chars)", text)


class AIContractError(Exception):
    """Root of every error this library raises on purpose."""


class ContractError(AIContractError, ValueError):
    """A contract (or one of its quantities) is invalid.

    ``path`` is where in the document the problem is (``$.resources.gpus.memory``),
    ``value`` what was found there and ``allowed`` the form that would be accepted.
    It subclasses :class:`ValueError` so validation layers that expect one
    (msgspec, argparse, click) report it naturally.
    """

    def __init__(
        self, message: str, *, path: str = "$", value: Any = None, allowed: str | None = None
    ) -> None:
        self.message = message
        self.path = path
        self.value = value
        self.allowed = allowed
        super().__init__(self._render())

    def _render(self) -> str:
        text = self.message if self.path == "$" else f"{self.path}: {self.message}"
        if self.allowed and self.allowed not in self.message:
            text += f" (allowed: {self.allowed})"
        return _clip_quoted(text)

    def at(self, prefix: str) -> ContractError:
        """Return the same error located under ``prefix`` (``$.resources`` + ``$.gpus``)."""
        path = prefix + self.path[1:] if self.path.startswith("$") else prefix
        return ContractError(self.message, path=path, value=self.value, allowed=self.allowed)


class ConfigError(AIContractError):
    """Configuration outside a contract is wrong: an inventory file, a state dir, an option."""

    file: str | None = None
    """The configuration file at fault, when the message names one (a policy file): the
    CLI then does not blame the contract file it was reading."""


class BackendNotFound(ConfigError, LookupError):
    """No backend is registered under the requested name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        self.name = name
        self.known = tuple(known)
        choices = ", ".join(self.known) or "none installed"
        super().__init__(f"no backend named {name!r} (registered: {choices})")


class NegotiationError(AIContractError):
    """Negotiation could not produce a lease."""


class NoOffer(NegotiationError):
    """No backend can satisfy the contract.

    ``rejections`` says, per backend, which requirement failed and what the
    backend has instead; ``counter_offers`` are the closest offers that relax
    the contract (``4 x H100 available now; you asked for 8``), ready for a caller
    to accept in code.
    """

    def __init__(
        self,
        contract_name: str,
        rejections: Sequence[Rejection],
        counter_offers: Sequence[Offer] = (),
        *,
        reason: str | None = None,
    ) -> None:
        self.contract_name = contract_name
        self.rejections = tuple(rejections)
        self.counter_offers = tuple(counter_offers)
        self.reason = reason
        lines = [f"no offer satisfies contract {contract_name!r}"]
        if reason:
            lines[0] += f": {reason}"
        lines.extend(f"  - {r}" for r in self.rejections)
        if not self.rejections and not reason:
            lines.append("  - no backend answered")
        lines.extend(f"  counter-offer: {o.summary()}" for o in self.counter_offers)
        super().__init__("\n".join(lines))


class PolicyViolation(NoOffer):
    """The governing policy refuses a request; retrying will not help until usage drops.

    ``refusals`` are :class:`~aicontract.governance.Refusal` records, each naming the
    policy ``rule``, the ``tenant`` and the numbers (``used`` / ``limit``). It is a
    :class:`NoOffer` (no offer may be committed), so code that copes with no offer —
    keep the old lease, back off, report — copes with a refusal too; ``rejections``
    carry the refusals in that form.
    """

    def __init__(self, refusals: Sequence[Any], contract_name: str = "") -> None:
        from .offer import Rejection

        self.refusals = tuple(refusals)
        first = self.refusals[0] if self.refusals else None
        self.rule: str = getattr(first, "rule", "policy")
        self.tenant: str = getattr(first, "tenant", "")
        rejections = [
            Rejection(
                backend="policy",
                requirement=getattr(r, "rule", "policy"),
                wanted=f"at most {r.limit}" if getattr(r, "limit", None) else "allowed",
                available=getattr(r, "message", str(r)),
            )
            for r in self.refusals
        ]
        super().__init__(contract_name, rejections, reason="refused by policy")
        lines = [f"refused by policy: {r}" for r in self.refusals] or ["refused by policy"]
        self.args = ("\n".join(lines),)


class BackendError(AIContractError):
    """A backend failed an operation."""

    def __init__(self, backend: str, message: str) -> None:
        self.backend = backend
        super().__init__(f"[{backend}] {message}")


class CapacityUnavailable(BackendError):
    """The capacity behind an offer is gone (taken meanwhile); the next offer may do."""


class TransientBackendError(BackendError):
    """A failure that a retry may cure: timeouts, connection resets, 5xx, rate limits."""


class IdempotencyConflict(BackendError):
    """An idempotency key was reused with a different offer; retrying will not help.

    A key names one commit of one offer: a retry must send the same offer again.
    """


class QuotaExceeded(BackendError):
    """The account's quota forbids more; retrying will not help."""


class AuthenticationError(BackendError):
    """Credentials are missing or were refused; retrying will not help."""


class LedgerError(BackendError):
    """The local ledger cannot be used or trusted: damaged, unreadable, read-only, full, locked.

    ``path`` is the ledger file, ``problem`` what is wrong with it and
    ``remedy`` what to do about it.
    """

    def __init__(self, path: str, problem: str, remedy: str) -> None:
        self.path = path
        self.problem = problem
        self.remedy = remedy
        super().__init__("local", f"ledger {path}: {problem}; {remedy}")


class LeaseError(AIContractError):
    """Something about one lease."""

    def __init__(self, lease_id: str, message: str) -> None:
        self.lease_id = lease_id
        super().__init__(f"lease {lease_id}: {message}")


class LeaseNotFound(LeaseError, LookupError):
    """No lease with that id exists (any more)."""


class LeaseStateError(LeaseError):
    """The lease's state does not allow the operation (renewing a released lease)."""


class LeaseLost(LeaseError):
    """The lease was revoked or expired while it was held."""
