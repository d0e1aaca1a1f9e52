"""Quantities with units, and ranges of them.

Every quantity is exact (bytes and nanoseconds are integers; rates are
fractions; money is a decimal), compares by magnitude, and prints back as the
text it was written in: ``str(Bytes("512MB")) == "512MB"``. Parsing refuses
anything it cannot represent exactly, with a :class:`~aicontract.ContractError`
that says which form is allowed.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from abc import ABC
from collections.abc import Callable
from decimal import Decimal, InvalidOperation, localcontext
from fractions import Fraction
from typing import Any, ClassVar, Generic, TypeVar

from .errors import ContractError

__all__ = [
    "Bytes",
    "BytesRange",
    "CountRange",
    "Duration",
    "Money",
    "Quantity",
    "Range",
    "Rate",
    "Ratio",
    "parse_target",
]

_NUMBER = r"(?P<num>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
# Bigger than any machine we can imagine leasing, small enough to catch typos and 1e400.
_MAX_BYTES = 2**70  # 1 ZiB
_MAX_NS = 100 * 366 * 86400 * 10**9  # a century
_MAX_COUNT = 10**9


def _decimal(text: str, what: str, allowed: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ContractError(f"{text!r} is not a {what}", value=text, allowed=allowed) from None
    if not value.is_finite():
        raise ContractError(f"{text!r} is not a finite {what}", value=text, allowed=allowed)
    return value


def _number_text(value: Decimal | Fraction | int) -> str:
    """Shortest exact decimal text for a value (``1.5``, ``80``)."""
    if isinstance(value, Fraction):
        if value.denominator == 1:
            return str(value.numerator)
        # Our fractions come from decimals, so they terminate; give the division
        # enough digits to be exact (the default context keeps only 28).
        digits = len(str(abs(value.numerator))) + 4 * len(str(value.denominator))
        with localcontext() as context:
            context.prec = max(28, digits)
            value = Decimal(value.numerator) / Decimal(value.denominator)
            return format(value.normalize(), "f")
    return format(Decimal(value).normalize(), "f")


def _as_exact(value: object, what: str, allowed: str) -> Fraction:
    """Turn a plain number (from YAML/JSON or Python) into an exact fraction."""
    if isinstance(value, bool):
        raise ContractError(f"expected a {what}, got a boolean", value=value, allowed=allowed)
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ContractError(f"{value!r} is not a finite {what}", value=value, allowed=allowed)
        return Fraction(Decimal(repr(value)))
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ContractError(f"{value!r} is not a finite {what}", value=value, allowed=allowed)
        return Fraction(value)
    raise ContractError(
        f"expected a {what}, got {type(value).__name__}", value=value, allowed=allowed
    )


def _read(
    pattern: re.Pattern[str],
    value: object,
    what: str,
    allowed: str,
    *,
    most: int,
    noun: str | None = None,
) -> tuple[re.Match[str], Decimal]:
    """``value`` as text that matches ``pattern``, and its number (group ``num``).

    The number is at most ``most``; ``what`` names the quantity in errors (``a rate``),
    ``noun`` what the text is not when it does not match (default: ``what``).
    """
    if not isinstance(value, str):
        raise ContractError(
            f"expected a {what}, got {type(value).__name__}", value=value, allowed=allowed
        )
    match = pattern.match(value.strip())
    if not match:
        raise ContractError(f"{value!r} is not a {noun or what}", value=value, allowed=allowed)
    number = _decimal(match["num"], what, allowed)
    if number > most:
        raise ContractError(f"{value!r} is absurdly large", value=value, allowed=allowed)
    return match, number


def _in_largest_unit(n: int, units: dict[str, int], names: tuple[str, ...], base: str) -> str:
    """``n`` base units as text in the first of ``names`` that divides it (``80GiB``, ``4h``)."""
    for unit in names:
        size = units[unit]
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}{base}"


class Quantity:
    """Base of every quantity: exact magnitude, ordering and hashing by it, original text."""

    __slots__ = ("_magnitude", "_text")
    ALLOWED: ClassVar[str]
    _magnitude: Any
    _text: str

    def _key(self) -> Any:
        return self._magnitude

    def _compatible(self, other: object) -> bool:
        return type(other) is type(self)

    def __eq__(self, other: object) -> bool:
        if not self._compatible(other):
            return NotImplemented
        return bool(self._key() == other._key())  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self._key()))

    def __lt__(self, other: Any) -> bool:
        if not self._compatible(other):
            return NotImplemented
        return bool(self._key() < other._key())

    def __le__(self, other: Any) -> bool:
        if not self._compatible(other):
            return NotImplemented
        return bool(self._key() <= other._key())

    def __gt__(self, other: Any) -> bool:
        if not self._compatible(other):
            return NotImplemented
        return bool(self._key() > other._key())

    def __ge__(self, other: Any) -> bool:
        if not self._compatible(other):
            return NotImplemented
        return bool(self._key() >= other._key())

    def __str__(self) -> str:
        return self._text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._text!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._text,))


class Bytes(Quantity):
    """An amount of memory or storage: ``"80GiB"``, ``"512MB"``, ``"64Gi"`` or an int of bytes."""

    __slots__ = ()
    ALLOWED = "an integer number of bytes or text like 80GiB, 512MB, 1.5TiB or 64Gi"
    UNITS: ClassVar[dict[str, int]] = {
        "B": 1,
        "kB": 10**3,
        "KB": 10**3,
        "K": 10**3,
        "k": 10**3,
        "MB": 10**6,
        "M": 10**6,
        "GB": 10**9,
        "G": 10**9,
        "TB": 10**12,
        "T": 10**12,
        "PB": 10**15,
        "P": 10**15,
        "KiB": 2**10,
        "Ki": 2**10,
        "MiB": 2**20,
        "Mi": 2**20,
        "GiB": 2**30,
        "Gi": 2**30,
        "TiB": 2**40,
        "Ti": 2**40,
        "PiB": 2**50,
        "Pi": 2**50,
    }
    _RE: ClassVar[re.Pattern[str]] = re.compile(rf"^{_NUMBER}\s*(?P<unit>[A-Za-z]+)?$")
    _magnitude: int

    def __init__(self, value: int | str | Bytes) -> None:
        if isinstance(value, Bytes):
            self._magnitude, self._text = value._magnitude, value._text
            return
        if isinstance(value, str):
            match = self._RE.match(value.strip())
            if not match:
                raise ContractError(
                    f"{value!r} is not a byte quantity", value=value, allowed=self.ALLOWED
                )
            unit = match["unit"] or "B"
            if unit not in self.UNITS:
                raise ContractError(
                    f"unknown byte unit {unit!r} in {value!r}", value=value, allowed=self.ALLOWED
                )
            number = _decimal(match["num"], "byte quantity", self.ALLOWED)
            exact = Fraction(number) * self.UNITS[unit]
            if exact.denominator != 1:
                raise ContractError(
                    f"{value!r} is not a whole number of bytes", value=value, allowed=self.ALLOWED
                )
            magnitude = int(exact)
            text = f"{_number_text(number)}{unit}"
        else:
            exact = _as_exact(value, "byte quantity", self.ALLOWED)
            if exact.denominator != 1 or exact < 0:
                raise ContractError(
                    f"{value!r} is not a whole, non-negative number of bytes",
                    value=value,
                    allowed=self.ALLOWED,
                )
            magnitude = int(exact)
            text = self._format(magnitude)
        if magnitude > _MAX_BYTES:
            raise ContractError(
                f"{value!r} is absurdly large (more than 1ZiB)", value=value, allowed=self.ALLOWED
            )
        self._magnitude, self._text = magnitude, text

    @staticmethod
    def _format(n: int) -> str:
        return _in_largest_unit(n, Bytes.UNITS, ("PiB", "TiB", "GiB", "MiB", "KiB"), "B")

    def __int__(self) -> int:
        return self._magnitude

    __index__ = __int__

    def human(self) -> str:
        """For people: the largest binary unit, one decimal at most (``23.5GiB``, ``80GiB``)."""
        for unit in ("PiB", "TiB", "GiB", "MiB", "KiB"):
            if self._magnitude >= self.UNITS[unit]:
                value = round(self._magnitude / self.UNITS[unit], 1)
                return f"{value:g}{unit}" if value < 1000 else f"{value:.0f}{unit}"
        return f"{self._magnitude}B"

    @property
    def bytes(self) -> int:
        """The exact number of bytes."""
        return self._magnitude

    def to(self, unit: str) -> Fraction:
        """The amount in ``unit`` (``"GiB"``), exactly."""
        return Fraction(self._magnitude, self.UNITS[unit])

    def __add__(self, other: Bytes) -> Bytes:
        if not isinstance(other, Bytes):
            return NotImplemented
        return Bytes(self._magnitude + other._magnitude)

    def __sub__(self, other: Bytes) -> Bytes:
        if not isinstance(other, Bytes):
            return NotImplemented
        return Bytes(max(0, self._magnitude - other._magnitude))

    def __mul__(self, factor: int) -> Bytes:
        if not isinstance(factor, int) or isinstance(factor, bool):
            return NotImplemented
        return Bytes(self._magnitude * factor)

    __rmul__ = __mul__


class Duration(Quantity):
    """A span of time: ``"4h"``, ``"90s"``, ``"200ms"``, ``"1h30m"``, ``"PT4H"`` or a timedelta."""

    __slots__ = ()
    ALLOWED = "text like 90s, 200ms, 5m, 4h, 1h30m, 2d or ISO 8601 like PT4H"
    UNITS: ClassVar[dict[str, int]] = {
        "ns": 1,
        "us": 10**3,
        "µs": 10**3,
        "ms": 10**6,
        "s": 10**9,
        "m": 60 * 10**9,
        "min": 60 * 10**9,
        "h": 3600 * 10**9,
        "d": 86400 * 10**9,
        "w": 7 * 86400 * 10**9,
    }
    _PART: ClassVar[re.Pattern[str]] = re.compile(rf"{_NUMBER}(?P<unit>ns|us|µs|ms|min|s|m|h|d|w)")
    _ISO: ClassVar[re.Pattern[str]] = re.compile(
        r"^P(?:(?P<d>[0-9]+(?:\.[0-9]+)?)D)?(?:T(?:(?P<h>[0-9]+(?:\.[0-9]+)?)H)?"
        r"(?:(?P<m>[0-9]+(?:\.[0-9]+)?)M)?(?:(?P<s>[0-9]+(?:\.[0-9]+)?)S)?)?$"
    )
    _magnitude: int

    def __init__(self, value: str | _dt.timedelta | Duration) -> None:
        if isinstance(value, Duration):
            self._magnitude, self._text = value._magnitude, value._text
            return
        if isinstance(value, _dt.timedelta):
            ns = (value.days * 86400 + value.seconds) * 10**9 + value.microseconds * 10**3
            if ns < 0:
                raise ContractError(
                    "a duration cannot be negative", value=value, allowed=self.ALLOWED
                )
            self._set(ns, self._format(ns), value)
            return
        if not isinstance(value, str):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                raise ContractError(
                    f"a duration needs a unit: write {value}s or {value}m, not {value}",
                    value=value,
                    allowed=self.ALLOWED,
                )
            raise ContractError(
                f"expected a duration, got {type(value).__name__}",
                value=value,
                allowed=self.ALLOWED,
            )
        text = "".join(value.split())
        if text.startswith("-"):
            raise ContractError(
                f"a duration cannot be negative: {value!r}", value=value, allowed=self.ALLOWED
            )
        if text.startswith("P"):
            ns = self._parse_iso(text, value)
        else:
            ns = self._parse_units(text, value)
        self._set(ns, text, value)

    def _set(self, ns: int, text: str, original: object) -> None:
        if ns > _MAX_NS:
            raise ContractError(
                f"{original!r} is longer than a century", value=original, allowed=self.ALLOWED
            )
        self._magnitude, self._text = ns, text

    def _parse_units(self, text: str, original: str) -> int:
        pos, total, seen = 0, Fraction(0), False
        for match in self._PART.finditer(text):
            if match.start() != pos:
                break
            number = _decimal(match["num"], "duration", self.ALLOWED)
            total += Fraction(number) * self.UNITS[match["unit"]]
            pos, seen = match.end(), True
        if not seen or pos != len(text):
            raise ContractError(
                f"{original!r} is not a duration", value=original, allowed=self.ALLOWED
            )
        if total.denominator != 1:
            raise ContractError(
                f"{original!r} is finer than a nanosecond", value=original, allowed=self.ALLOWED
            )
        return int(total)

    def _parse_iso(self, text: str, original: str) -> int:
        match = self._ISO.match(text)
        if not match or text in ("P", "PT") or text.endswith("T"):
            raise ContractError(
                f"{original!r} is not an ISO 8601 duration", value=original, allowed=self.ALLOWED
            )
        total = Fraction(0)
        for group, unit in (("d", "d"), ("h", "h"), ("m", "m"), ("s", "s")):
            if match[group]:
                total += Fraction(Decimal(match[group])) * self.UNITS[unit]
        if total.denominator != 1:
            raise ContractError(
                f"{original!r} is finer than a nanosecond", value=original, allowed=self.ALLOWED
            )
        return int(total)

    @staticmethod
    def _format(ns: int) -> str:
        return _in_largest_unit(ns, Duration.UNITS, ("d", "h", "m", "s", "ms", "us"), "ns")

    @classmethod
    def of_seconds(cls, seconds: float) -> Duration:
        """A duration of ``seconds`` (rounded to the nanosecond)."""
        return cls(cls._format(round(seconds * 10**9)))

    @property
    def nanoseconds(self) -> int:
        """The exact number of nanoseconds."""
        return self._magnitude

    @property
    def seconds(self) -> float:
        """The duration in seconds (a float, for clocks and sleeps)."""
        return self._magnitude / 10**9

    def timedelta(self) -> _dt.timedelta:
        """The duration as a :class:`datetime.timedelta` (microsecond resolution)."""
        return _dt.timedelta(microseconds=self._magnitude // 1000)

    def __add__(self, other: Duration) -> Duration:
        if not isinstance(other, Duration):
            return NotImplemented
        return Duration(self._format(self._magnitude + other._magnitude))

    def __bool__(self) -> bool:
        return self._magnitude != 0


class Rate(Quantity):
    """Events per unit of time: ``"500/s"``, ``"512 tokens/s"``, ``"10/min"``."""

    __slots__ = ("_what",)
    ALLOWED = "text like 500/s, 512 tokens/s, 10 req/min or 3600/h"
    _PER: ClassVar[dict[str, int]] = {"s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "hour": 3600}
    _RE: ClassVar[re.Pattern[str]] = re.compile(
        rf"^{_NUMBER}\s*(?P<what>[A-Za-z_][\w-]*)?\s*/\s*(?P<per>s|sec|min|m|h|hour)$"
    )
    _magnitude: Fraction
    _what: str

    def __init__(self, value: str | Rate) -> None:
        if isinstance(value, Rate):
            self._magnitude, self._text, self._what = value._magnitude, value._text, value._what
            return
        match, number = _read(self._RE, value, "rate", self.ALLOWED, most=_MAX_COUNT * 1000)
        self._what = match["what"] or ""
        self._magnitude = Fraction(number) / self._PER[match["per"]]
        what = f" {self._what}" if self._what else ""
        self._text = f"{_number_text(number)}{what}/{match['per']}"

    def __eq__(self, other: object) -> bool:
        # Equal means interchangeable: "500 tokens/s" is not "500 req/s", nor "500/s"
        # (equality must be transitive, and hashing agree with it).
        if not isinstance(other, Rate):
            return NotImplemented
        return (self._what, self._magnitude) == (other._what, other._magnitude)

    def __hash__(self) -> int:
        return hash(("Rate", self._what, self._magnitude))

    def _compatible(self, other: object) -> bool:
        # "500/s" compares with "500 tokens/s"; tokens and requests do not compare.
        return isinstance(other, Rate) and (
            other._what == self._what or "" in (other._what, self._what)
        )

    @property
    def per_second(self) -> float:
        """Events per second."""
        return float(self._magnitude)

    @property
    def unit(self) -> str:
        """What is counted (``"tokens"``), or ``""`` for plain events."""
        return self._what


class Money(Quantity):
    """A price per hour: ``"2.50 USD/h"``. Amounts in different currencies do not compare."""

    __slots__ = ("_currency",)
    ALLOWED = "text like 2.50 USD/h or 30 EUR/h"
    _RE: ClassVar[re.Pattern[str]] = re.compile(
        rf"^{_NUMBER}\s*(?P<cur>[A-Z]{{3}})\s*/\s*(?P<per>h|hr|hour)$"
    )
    _magnitude: Decimal
    _currency: str

    def __init__(self, value: str | Money) -> None:
        if isinstance(value, Money):
            self._magnitude, self._text = value._magnitude, value._text
            self._currency = value._currency
            return
        match, amount = _read(
            self._RE, value, "price", self.ALLOWED, most=10**7, noun="price per hour"
        )
        self._magnitude, self._currency = amount, match["cur"]
        self._text = f"{match['num']} {self._currency}/h"

    @classmethod
    def per_hour(cls, amount: Decimal | str | int, currency: str = "USD") -> Money:
        """Build a price from an amount and a currency code."""
        return cls(f"{amount} {currency}/h")

    def _compatible(self, other: object) -> bool:
        return isinstance(other, Money) and other._currency == self._currency

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Money) and other._currency != self._currency:
            return False
        return super().__eq__(other)

    def __hash__(self) -> int:
        return hash(("Money", self._currency, self._magnitude))

    @property
    def amount(self) -> Decimal:
        """The amount per hour."""
        return self._magnitude

    @property
    def currency(self) -> str:
        """ISO 4217 currency code."""
        return self._currency


class Ratio(Quantity):
    """A fraction of one: ``"99.9%"``, ``0.999``. Used for availability and utilisation."""

    __slots__ = ()
    ALLOWED = "a percentage like 99.9% or a number between 0 and 1"
    _magnitude: Fraction

    def __init__(self, value: str | float | int | Ratio) -> None:
        if isinstance(value, Ratio):
            self._magnitude, self._text = value._magnitude, value._text
            return
        if isinstance(value, str):
            text = value.strip()
            if not text.endswith("%"):
                raise ContractError(
                    f"{value!r} is not a percentage", value=value, allowed=self.ALLOWED
                )
            number = _decimal(text[:-1].strip(), "percentage", self.ALLOWED)
            exact = Fraction(number) / 100
            text = f"{_number_text(number)}%"
        else:
            exact = _as_exact(value, "ratio", self.ALLOWED)
            text = _number_text(exact)
        if not 0 <= exact <= 1:
            raise ContractError(f"{value!r} is outside 0%..100%", value=value, allowed=self.ALLOWED)
        self._magnitude, self._text = exact, text

    @property
    def fraction(self) -> float:
        """The ratio as a float in [0, 1]."""
        return float(self._magnitude)

    def to_builtin(self) -> str | int | float:
        """The value to write in a document, such that :class:`Ratio` reads it back equal.

        A percentage stays text. A ratio written as a number stays a number (its
        text, ``"0.999"``, would read back as neither a percentage nor a number);
        when a float cannot carry it exactly, it is written as a percentage.
        """
        if self._text.endswith("%"):
            return self._text
        if self._magnitude.denominator == 1:
            return int(self._magnitude)
        as_float = float(self._magnitude)
        if Fraction(Decimal(repr(as_float))) == self._magnitude:
            return as_float
        return f"{_number_text(self._magnitude * 100)}%"

    def __reduce__(self) -> tuple[Any, ...]:
        if self._text.endswith("%"):
            return (Ratio, (self._text,))
        return (Ratio, (Decimal(self._text),))


def parse_target(value: object) -> Duration | Rate | Ratio:
    """Parse an objective's target: a latency, a rate or a ratio, told apart by its form."""
    if isinstance(value, (Duration, Rate, Ratio)):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            return Ratio(text)
        if "/" in text:
            return Rate(text)
        return Duration(text)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return Ratio(value)
    raise ContractError(
        f"expected an objective target, got {type(value).__name__}",
        value=value,
        allowed="a latency like 200ms, a rate like 500 tokens/s or a ratio like 99.9%",
    )


Q = TypeVar("Q", int, Bytes)


class Range(ABC, Generic[Q]):
    """An inclusive range of acceptable values; either end may be open.

    Written ``"40GiB..80GiB"``, ``"256GiB.."``, ``"..8"``, ``">=24GiB"``,
    ``"<=80GiB"``, a single value (exactly that) or a ``(min, max)`` pair in code.
    """

    __slots__ = ("_form", "max", "min")
    KIND: ClassVar[str]
    ALLOWED: ClassVar[str]
    min: Q | None
    max: Q | None
    _form: str  # how it was written, so it prints back the same way
    _parse: ClassVar[Callable[[Any], Any]]  # parses one bound

    def __init_subclass__(
        cls, *, kind: str, allowed: str, parse: Callable[[Any], Any], **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        cls.KIND, cls.ALLOWED = kind, allowed
        cls._parse = staticmethod(parse)

    def __init__(self, value: Any) -> None:
        if isinstance(value, Range):
            if type(value) is not type(self):
                raise ContractError(
                    f"expected a {self.KIND} range, got a {value.KIND} range",
                    value=value,
                    allowed=self.ALLOWED,
                )
            self.min, self.max, self._form = value.min, value.max, value._form
            return
        if isinstance(value, (tuple, list)):
            if len(value) != 2:
                raise ContractError(
                    f"a range pair needs exactly two items, got {len(value)}",
                    value=value,
                    allowed=self.ALLOWED,
                )
            low, high = value
            if low is None and high is None:
                raise ContractError(f"{value!r} has no bounds", value=value, allowed=self.ALLOWED)
            self._set(
                None if low is None else self._one(low),
                None if high is None else self._one(high),
                "..",
                value,
            )
            return
        if isinstance(value, str):
            text = value.strip()
            if text.startswith(">="):
                self._set(self._one(text[2:].strip()), None, ">=", value)
            elif text.startswith("<="):
                self._set(None, self._one(text[2:].strip()), "<=", value)
            elif text.startswith((">", "<")):
                raise ContractError(
                    f"{value!r}: strict bounds are not supported; use >= or <=",
                    value=value,
                    allowed=self.ALLOWED,
                )
            elif ".." in text:
                low_text, _, high_text = text.partition("..")
                if not low_text.strip() and not high_text.strip():
                    raise ContractError(
                        f"{value!r} has no bounds", value=value, allowed=self.ALLOWED
                    )
                self._set(
                    self._one(low_text.strip()) if low_text.strip() else None,
                    self._one(high_text.strip()) if high_text.strip() else None,
                    "..",
                    value,
                )
            else:
                one = self._one(text)
                self._set(one, one, "=", value)
            return
        one = self._one(value)
        self._set(one, one, "=", value)

    def _one(self, raw: Any) -> Q:
        try:
            one: Q = type(self)._parse(raw)
            return one
        except ContractError as exc:
            raise ContractError(exc.message, value=raw, allowed=self.ALLOWED) from None

    def _set(self, low: Q | None, high: Q | None, form: str, original: object) -> None:
        if low is not None and high is not None and low > high:
            raise ContractError(
                f"{original!r} is an inverted range (minimum above maximum)",
                value=original,
                allowed=self.ALLOWED,
            )
        self.min, self.max, self._form = low, high, form

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, "_form"):
            raise AttributeError(f"{type(self).__name__} is immutable")
        object.__setattr__(self, name, value)

    @property
    def is_exact(self) -> bool:
        """True when the range admits exactly one value."""
        return self.min is not None and self.min == self.max

    def __contains__(self, value: Any) -> bool:
        if self.min is not None and value < self.min:
            return False
        return not (self.max is not None and value > self.max)

    def grant(self, available: Q) -> Q | None:
        """The value to grant from ``available``: as much as the range allows, else ``None``.

        A bounded range takes up to its maximum; an open-ended range takes its
        minimum (there is no reason to take all of a host because the contract
        said ``256GiB..``).
        """
        target = self.max if self.max is not None else self.min
        if target is None:
            return None
        value = min(target, available)
        if self.min is None and int(value) == 0:
            return None  # "up to 80GiB" asks for some: granting nothing is refusing
        return value if value in self else None

    @property
    def floor(self) -> Q | None:
        """The least acceptable value (``None`` when open below)."""
        return self.min

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Range)
        return (self.min, self.max) == (other.min, other.max)

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.min, self.max))

    def __str__(self) -> str:
        if self._form == "=":
            return str(self.min)
        if self._form == ">=":
            return f">={self.min}"
        if self._form == "<=":
            return f"<={self.max}"
        low = "" if self.min is None else str(self.min)
        high = "" if self.max is None else str(self.max)
        return f"{low}..{high}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self),))

    def to_builtin(self) -> int | str:
        """The value to write in a document: an int for an exact count, else the text."""
        if self._form == "=" and isinstance(self.min, int):
            return self.min
        return str(self)


def _count(raw: Any) -> int:
    allowed = "a whole number like 8"
    if isinstance(raw, bool):
        raise ContractError("expected a count, got a boolean", value=raw, allowed=allowed)
    if isinstance(raw, str):
        text = raw.strip()
        if not re.fullmatch(r"[0-9]+", text):
            raise ContractError(f"{raw!r} is not a whole number", value=raw, allowed=allowed)
        if len(text) > 12:
            raise ContractError(f"{raw!r} is absurdly large", value=raw, allowed=allowed)
        raw = int(text)
    exact = _as_exact(raw, "count", allowed)
    if exact.denominator != 1:
        raise ContractError(f"{raw!r} is not a whole number", value=raw, allowed=allowed)
    if exact < 0:
        raise ContractError(f"{raw!r} is negative", value=raw, allowed=allowed)
    if exact > _MAX_COUNT:
        raise ContractError(f"{raw!r} is absurdly large", value=raw, allowed=allowed)
    return int(exact)


class CountRange(
    Range[int],
    kind="count",
    allowed="a whole number like 8, or a range like 1..8, 2.. or >=2",
    parse=_count,
):
    """A range of whole numbers: ``8``, ``"1..8"``, ``">=2"``."""

    __slots__ = ()


class BytesRange(
    Range[Bytes],
    kind="bytes",
    allowed="a size like 80GiB, or a range like 40GiB..80GiB, 256GiB.. or >=24GiB",
    parse=Bytes,
):
    """A range of byte quantities: ``"40GiB..80GiB"``, ``">=24GiB"``, ``"256GiB.."``."""

    __slots__ = ()
