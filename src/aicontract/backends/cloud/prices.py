"""A small kept table of AWS on-demand prices, with the date it was taken.

Prices change (AWS cut P4d/P5 prices in June 2025); this table is a fallback
so that offers can be ranked and capped without network access to the AWS
Price List API. Pass ``prices=`` to the AWS backend, point
``AICONTRACT_AWS_PRICES_FILE`` at a TOML/JSON file, or enable the Pricing API
(``use_pricing_api=True``) for current figures. A type/region pair that no
source prices is never offered: an unpriced offer could not honour a price cap
and would rank as free.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path

from ..._compat import tomllib
from ...errors import ConfigError
from ...units import Money

__all__ = ["AWS_PRICES", "AWS_PRICES_AS_OF", "PriceTable", "load_price_file"]

AWS_PRICES_AS_OF = "2024-12-01"
"""When :data:`AWS_PRICES` was taken from the public on-demand price list."""

# On-demand, Linux, shared tenancy, USD per instance-hour, us-east-1 and us-west-2.
_US = {
    "g5.xlarge": "1.006",
    "g5.2xlarge": "1.212",
    "g5.4xlarge": "1.624",
    "g5.8xlarge": "2.448",
    "g5.12xlarge": "5.672",
    "g5.16xlarge": "4.096",
    "g5.24xlarge": "8.144",
    "g5.48xlarge": "16.288",
    "g6.xlarge": "0.8048",
    "g6.12xlarge": "4.6016",
    "g6.48xlarge": "13.3504",
    "p4d.24xlarge": "32.7726",
    "p5.48xlarge": "98.32",
}
AWS_PRICES: Mapping[tuple[str, str], Money] = {
    (itype, region): Money.per_hour(Decimal(price))
    for region in ("us-east-1", "us-west-2")
    for itype, price in _US.items()
}
"""``(instance type, region)`` → on-demand price per hour, as of :data:`AWS_PRICES_AS_OF`."""

PriceTable = Mapping[tuple[str, str], Money]


def load_price_file(path: str | Path) -> dict[tuple[str, str], Money]:
    """Read ``{"g5.xlarge@eu-central-1": "1.258 USD/h", ...}`` from TOML or JSON."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read price file {path}: {exc}") from None
    return parse_prices(data, where=str(path))


def parse_prices(
    data: Mapping[str, object], *, where: str = "prices"
) -> dict[tuple[str, str], Money]:
    """``"type@region" → "x USD/h"`` entries as a price table."""
    out: dict[tuple[str, str], Money] = {}
    for key, value in data.items():
        itype, sep, region = str(key).partition("@")
        if not sep or not itype or not region:
            raise ConfigError(f"{where}: {key!r} is not 'instance-type@region'")
        out[(itype, region)] = Money(value if isinstance(value, Money) else str(value))
    return out
