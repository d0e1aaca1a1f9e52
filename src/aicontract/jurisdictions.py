"""Jurisdictions: where a place is, in law, as one hierarchy every backend shares.

A jurisdiction code is an ISO 3166-1 alpha-2 country (``DE``, ``CH``, ``US``) or
a union of countries (``EU``, ``EEA``). A place *satisfies* an allowed code when
it lies inside it: ``DE`` satisfies ``DE``, ``EU`` and ``EEA``; ``EU`` satisfies
``EU`` and ``EEA`` (every member state is in the EEA) but not ``DE`` (a place
known only to be "in the EU" may be in any member state); ``CH`` satisfies only
``CH``. An unknown place (``None``) satisfies nothing.

This is the only home of that rule: the negotiator, the contract's
:meth:`~aicontract.contract.Placement.allows` and every backend's own
pre-filtering call :func:`satisfies`, so they cannot disagree.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

__all__ = ["EEA_MEMBERS", "EU_MEMBERS", "UNIONS", "jurisdictions_of", "satisfies"]

EU_MEMBERS: frozenset[str] = frozenset(
    [
        "AT",
        "BE",
        "BG",
        "HR",
        "CY",
        "CZ",
        "DK",
        "EE",
        "FI",
        "FR",
        "DE",
        "GR",
        "IE",
        "IT",
        "LV",
        "LT",
        "LU",
        "MT",
        "NL",
        "PL",
        "PT",
        "RO",
        "SK",
        "SI",
        "ES",
        "SE",
    ]
)
"""The 27 EU member states (ISO 3166-1 alpha-2; Greece is ``GR``)."""

EEA_MEMBERS: frozenset[str] = EU_MEMBERS | {"IS", "LI", "NO"}
"""The European Economic Area: the EU plus Iceland, Liechtenstein and Norway."""


UNIONS: dict[str, frozenset[str]] = {"EU": EU_MEMBERS, "EEA": EEA_MEMBERS}
"""Each union code and the countries inside it."""


@functools.lru_cache(maxsize=256)  # a pure function of one code: every offer asks again
def jurisdictions_of(code: str | None) -> frozenset[str]:
    """Every jurisdiction code a place is inside: itself and each union that contains it.

    ``DE`` → ``{DE, EU, EEA}``; ``NO`` → ``{NO, EEA}``; ``EU`` → ``{EU, EEA}``
    (a union is inside another when all its members are); ``None`` → ``{}``.
    """
    if code is None:
        return frozenset()
    members = UNIONS.get(code, frozenset({code}))
    return frozenset({code} | {union for union, inside in UNIONS.items() if members <= inside})


def satisfies(jurisdiction: str | None, allowed: Iterable[str]) -> bool:
    """True when a place in ``jurisdiction`` lies inside one of the ``allowed`` codes."""
    return not jurisdictions_of(jurisdiction).isdisjoint(allowed)
