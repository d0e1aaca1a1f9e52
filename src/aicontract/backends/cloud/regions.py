"""Where a cloud region is, in law: region → ISO 3166 country (→ jurisdictions).

A region's country comes from a kept table per provider, never from its name
(``eu-central-2`` is Zurich, outside the EU; ``eu-west-2`` is London). The
provider's own description of the region (``"Frankfurt, Germany"``,
``"Europe (Zurich)"``) is a cross-check: when it names a different country the
region's jurisdiction is unknown, and an unknown jurisdiction never satisfies
a contract's ``placement.jurisdictions`` (the negotiator refuses it).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from ...jurisdictions import EEA_MEMBERS, jurisdictions_of

__all__ = [
    "AWS_REGIONS",
    "LAMBDA_REGIONS",
    "countries_named_in",
    "jurisdiction_for",
    "region_country",
]

log = logging.getLogger("aicontract.backends.cloud")

AWS_REGIONS: Mapping[str, str] = {
    "us-east-1": "US",
    "us-east-2": "US",
    "us-west-1": "US",
    "us-west-2": "US",
    "us-gov-east-1": "US",
    "us-gov-west-1": "US",
    "ca-central-1": "CA",
    "ca-west-1": "CA",
    "mx-central-1": "MX",
    "sa-east-1": "BR",
    "eu-central-1": "DE",
    "eu-central-2": "CH",
    "eu-west-1": "IE",
    "eu-west-2": "GB",
    "eu-west-3": "FR",
    "eu-south-1": "IT",
    "eu-south-2": "ES",
    "eu-north-1": "SE",
    "eusc-de-east-1": "DE",
    "il-central-1": "IL",
    "me-south-1": "BH",
    "me-central-1": "AE",
    "af-south-1": "ZA",
    "ap-east-1": "HK",
    "ap-east-2": "TW",
    "ap-south-1": "IN",
    "ap-south-2": "IN",
    "ap-southeast-1": "SG",
    "ap-southeast-2": "AU",
    "ap-southeast-3": "ID",
    "ap-southeast-4": "AU",
    "ap-southeast-5": "MY",
    "ap-southeast-7": "TH",
    "ap-northeast-1": "JP",
    "ap-northeast-2": "KR",
    "ap-northeast-3": "JP",
}
"""AWS region → country of its data centres."""

LAMBDA_REGIONS: Mapping[str, str] = {
    "us-east-1": "US",
    "us-east-2": "US",
    "us-east-3": "US",
    "us-west-1": "US",
    "us-west-2": "US",
    "us-west-3": "US",
    "us-south-1": "US",
    "us-south-2": "US",
    "us-south-3": "US",
    "us-midwest-1": "US",
    "us-midwest-2": "US",
    "europe-central-1": "DE",
    "asia-south-1": "IN",
    "asia-northeast-1": "JP",
    "asia-northeast-2": "KR",
    "me-west-1": "IL",
    "australia-east-1": "AU",
}
"""Lambda Cloud region (its ``PublicRegionCode``) → country."""

# Words a provider's region description may use, and the countries they name.
_PLACES: Mapping[str, frozenset[str]] = {
    name: frozenset(codes.split())
    for name, codes in {
        "usa": "US",
        "united states": "US",
        "us": "US",
        "virginia": "US",
        "n. virginia": "US",
        "ohio": "US",
        "oregon": "US",
        "california": "US",
        "n. california": "US",
        "texas": "US",
        "arizona": "US",
        "utah": "US",
        "illinois": "US",
        "washington dc": "US",
        "washington": "US",
        "austin": "US",
        "dallas": "US",
        "chicago": "US",
        "canada": "CA",
        "calgary": "CA",
        "mexico": "MX",
        "brazil": "BR",
        "sao paulo": "BR",
        "germany": "DE",
        "frankfurt": "DE",
        "brandenburg": "DE",
        "switzerland": "CH",
        "zurich": "CH",
        "ireland": "IE",
        "london": "GB",
        "united kingdom": "GB",
        "uk": "GB",
        "paris": "FR",
        "france": "FR",
        "milan": "IT",
        "italy": "IT",
        "spain": "ES",
        "stockholm": "SE",
        "sweden": "SE",
        "finland": "FI",
        "netherlands": "NL",
        "amsterdam": "NL",
        "norway": "NO",
        "iceland": "IS",
        "israel": "IL",
        "tel aviv": "IL",
        "bahrain": "BH",
        "uae": "AE",
        "cape town": "ZA",
        "hong kong": "HK",
        "taipei": "TW",
        "mumbai": "IN",
        "hyderabad": "IN",
        "india": "IN",
        "singapore": "SG",
        "sydney": "AU",
        "melbourne": "AU",
        "australia": "AU",
        "jakarta": "ID",
        "malaysia": "MY",
        "thailand": "TH",
        "tokyo": "JP",
        "osaka": "JP",
        "japan": "JP",
        "seoul": "KR",
        "south korea": "KR",
        "korea": "KR",
        "europe": " ".join(sorted(EEA_MEMBERS | {"GB", "CH"})),
    }.items()
}


def _word(name: str) -> re.Pattern[str]:
    return re.compile(rf"(?<![a-z]){re.escape(name)}(?![a-z])")


def countries_named_in(description: str | None) -> frozenset[str] | None:
    """Countries a region description points at, or ``None`` when it names none we know.

    ``"Europe (Frankfurt)"`` → ``{"DE"}`` (the most specific place wins);
    ``"Austin, Texas"`` → ``{"US"}``.
    """
    if not description:
        return None
    text = description.lower()
    found = [codes for name, codes in _PLACES.items() if _word(name).search(text)]
    if not found:
        return None
    return min(found, key=len)


def region_country(
    region: str, table: Mapping[str, str], description: str | None = None
) -> str | None:
    """The region's country from ``table``, cross-checked against ``description``.

    Returns ``None`` (unknown) when the region is not in the table, or when the
    provider's description names another country.
    """
    country = table.get(region)
    if country is None:
        return None
    named = countries_named_in(description)
    if named is not None and country not in named:
        log.warning(
            "region %s: kept table says %s but the provider describes it as %r;"
            " treating its jurisdiction as unknown",
            region,
            country,
            description,
        )
        return None
    return country


def jurisdiction_for(country: str | None, wanted: Iterable[str] = ()) -> str | None:
    """The one jurisdiction an offer states.

    An offer carries a single code; a Frankfurt region is both ``DE`` and ``EU``.
    The first of the contract's ``wanted`` codes the country is inside is stated
    (so ``[DE]`` and ``[EU]`` are both honoured); otherwise ``EU`` for member
    states and the country code for the rest. ``None`` for an unknown country.
    """
    if country is None:
        return None
    inside = jurisdictions_of(country)
    for code in wanted:
        if code in inside:
            return code
    return "EU" if "EU" in inside else country
