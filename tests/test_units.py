"""Quantities and ranges: exact, comparable, printed back as written, refused clearly."""

from __future__ import annotations

import copy
import datetime as dt
import pickle
from decimal import Decimal
from fractions import Fraction

import pytest

from aicontract import Bytes, BytesRange, ContractError, CountRange, Duration, Money, Rate, Ratio
from aicontract.units import parse_target

# -- Bytes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.5GiB", 1_610_612_736),
        ("80GiB", 80 * 2**30),
        ("512MB", 512_000_000),
        ("64Gi", 64 * 2**30),
        ("0.1GB", 100_000_000),  # 0.1 is not a binary float: must not drift
        ("0.3GB", 300_000_000),
        (".5KiB", 512),
        ("1TiB", 2**40),
        ("2PB", 2 * 10**15),
        ("1 GiB", 2**30),
        ("123", 123),
        ("1kB", 1000),
        ("0B", 0),
    ],
)
def test_bytes_parse_exactly(text: str, expected: int) -> None:
    assert Bytes(text).bytes == expected
    assert int(Bytes(text)) == expected


def test_bytes_sums_do_not_drift() -> None:
    total = Bytes(0)
    for _ in range(10):
        total = total + Bytes("0.1GB")
    assert total == Bytes("1GB")
    assert total.bytes == 10**9
    assert Bytes("0.5GiB") + Bytes("512MiB") == Bytes("1GiB")
    assert Bytes("1GiB") * 3 == Bytes("3GiB") == 3 * Bytes("1GiB")
    assert Bytes("1GiB").to("MiB") == Fraction(1024)
    assert Bytes("1.5GiB").to("GiB") == Fraction(3, 2)


def test_bytes_subtraction_floors_at_zero() -> None:
    assert Bytes("1GiB") - Bytes("2GiB") == Bytes(0)
    assert Bytes("2GiB") - Bytes("1GiB") == Bytes("1GiB")


def test_bytes_compare_by_magnitude_across_units() -> None:
    assert Bytes("1GiB") == Bytes("1024MiB") == Bytes("1Gi") == Bytes(2**30)
    assert hash(Bytes("1GiB")) == hash(Bytes("1024MiB"))
    assert Bytes("1GB") < Bytes("1GiB")
    assert Bytes("80GiB") >= Bytes("80GiB")
    assert Bytes("1TB") > Bytes("931GiB")
    assert sorted([Bytes("1GiB"), Bytes("1MB"), Bytes("1TB")]) == [
        Bytes("1MB"),
        Bytes("1GiB"),
        Bytes("1TB"),
    ]


def test_bytes_do_not_compare_with_other_kinds() -> None:
    assert Bytes("1KiB") != 1024  # a bare number has no unit; never silently equal
    with pytest.raises(TypeError):
        _ = Bytes("1KiB") < 2048  # type: ignore[operator]
    with pytest.raises(TypeError):
        _ = Bytes("1KiB") < Duration("1s")  # type: ignore[operator]


@pytest.mark.parametrize(
    ("written", "printed"),
    [
        ("512MB", "512MB"),
        ("80GiB", "80GiB"),
        ("1.5TiB", "1.5TiB"),
        ("1.50TiB", "1.5TiB"),
        ("64Gi", "64Gi"),
        (" 8 GiB ", "8GiB"),
        ("123", "123B"),
    ],
)
def test_bytes_print_back_as_written(written: str, printed: str) -> None:
    assert str(Bytes(written)) == printed
    assert Bytes(str(Bytes(written))) == Bytes(written)


def test_bytes_from_integers_print_in_the_largest_whole_binary_unit() -> None:
    assert str(Bytes(2**30)) == "1GiB"
    assert str(Bytes(1536)) == "1536B"
    assert str(Bytes(0)) == "0B"
    assert repr(Bytes("80GiB")) == "Bytes('80GiB')"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("eighty", "is not a byte quantity"),
        ("1e400GiB", "is not a byte quantity"),
        ("1e3GiB", "is not a byte quantity"),
        ("-1GiB", "is not a byte quantity"),
        ("5XB", "unknown byte unit 'XB'"),
        ("1.5B", "is not a whole number of bytes"),
        ("2ZiB", "unknown byte unit"),
        ("2000000EB", "unknown byte unit"),
        ("9" * 30 + "PiB", "absurdly large"),
        (-1, "is not a whole, non-negative number of bytes"),
        (0.5, "is not a whole, non-negative number of bytes"),
        (float("inf"), "is not a finite byte quantity"),
        (float("nan"), "is not a finite byte quantity"),
        (True, "got a boolean"),
        (None, "got NoneType"),
        ([1], "got list"),
    ],
)
def test_bytes_refusals_name_the_allowed_form(value: object, says: str) -> None:
    with pytest.raises(ContractError) as info:
        Bytes(value)  # type: ignore[arg-type]
    assert says in info.value.message
    assert info.value.allowed == Bytes.ALLOWED
    assert "80GiB" in str(info.value)


# -- Duration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("90s", 90 * 10**9),
        ("200ms", 200 * 10**6),
        ("1h30m", 90 * 60 * 10**9),
        ("1h 30m", 90 * 60 * 10**9),
        ("2d", 2 * 86400 * 10**9),
        ("1w", 7 * 86400 * 10**9),
        ("1.5h", 90 * 60 * 10**9),
        ("0.1s", 10**8),
        ("5min", 300 * 10**9),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("7ns", 7),
        ("PT4H", 4 * 3600 * 10**9),
        ("PT1H30M", 90 * 60 * 10**9),
        ("PT0.5S", 5 * 10**8),
        ("P1D", 86400 * 10**9),
        ("P1DT12H", 36 * 3600 * 10**9),
    ],
)
def test_duration_parse_exactly(text: str, ns: int) -> None:
    assert Duration(text).nanoseconds == ns


def test_duration_iso_and_units_agree() -> None:
    assert Duration("PT4H") == Duration("4h") == Duration("240m")
    assert Duration("P1DT12H") == Duration("36h")
    assert str(Duration("PT4H")) == "PT4H"  # printed back as written, not normalised


def test_duration_arithmetic_and_conversions() -> None:
    assert Duration("1h") + Duration("30m") == Duration("90m")
    assert str(Duration("1h") + Duration("30m")) == "90m"
    assert Duration("1.5s").seconds == 1.5
    assert Duration("90m").timedelta() == dt.timedelta(minutes=90)
    assert Duration(dt.timedelta(minutes=90)) == Duration("1h30m")
    assert str(Duration(dt.timedelta(minutes=90))) == "90m"
    assert Duration.of_seconds(0.1) == Duration("100ms")
    assert not Duration("0s")
    assert Duration("1ns")
    assert Duration("1m") < Duration("61s") < Duration("1h")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("4 hours", "is not a duration"),
        ("", "is not a duration"),
        ("h", "is not a duration"),
        ("4h30", "is not a duration"),
        ("-5m", "cannot be negative"),
        ("0.5ns", "finer than a nanosecond"),
        ("PT", "is not an ISO 8601 duration"),
        ("P1DT", "is not an ISO 8601 duration"),
        ("P1Y", "is not an ISO 8601 duration"),
        ("PT0.0000000001S", "finer than a nanosecond"),
        ("101y", "is not a duration"),
        ("40000d", "longer than a century"),
        (5, "needs a unit: write 5s or 5m"),
        (1.5, "needs a unit"),
        (None, "expected a duration, got NoneType"),
        (True, "expected a duration, got bool"),
        (dt.timedelta(seconds=-1), "cannot be negative"),
    ],
)
def test_duration_refusals_name_the_allowed_form(value: object, says: str) -> None:
    with pytest.raises(ContractError) as info:
        Duration(value)  # type: ignore[arg-type]
    assert says in info.value.message
    assert info.value.allowed == Duration.ALLOWED
    assert "PT4H" in str(info.value)


# -- Rate, Money, Ratio ----------------------------------------------------------------


def test_rate_units_and_comparison() -> None:
    assert Rate("500/s") == Rate("30000/min") == Rate("1800000/h")
    assert Rate("512 tokens/s").unit == "tokens"
    assert Rate("512 tokens/s").per_second == 512.0
    assert Rate("1/min") < Rate("1/s")
    assert str(Rate("512 tokens / s")) == "512 tokens/s"
    # A plain rate orders against a counted one (an objective "500/s" judges
    # "512 tokens/s"), but equality means the same thing counted: it stays transitive
    # and agrees with hashing.
    assert Rate("500/s") <= Rate("500 tokens/s") <= Rate("500/s")
    assert Rate("500/s") != Rate("500 tokens/s")
    assert Rate("500 tokens/s") != Rate("500 req/s")
    assert len({Rate("500/s"), Rate("500 tokens/s"), Rate("30000 tokens/min")}) == 2
    with pytest.raises(TypeError):
        _ = Rate("500 tokens/s") < Rate("600 req/s")


@pytest.mark.parametrize("value", ["fast", "500", "500/fortnight", "-5/s", 500, None])
def test_rate_refusals(value: object) -> None:
    with pytest.raises(ContractError) as info:
        Rate(value)  # type: ignore[arg-type]
    assert info.value.allowed == Rate.ALLOWED


def test_money_is_exact_and_keeps_currencies_apart() -> None:
    assert Money("2.50 USD/h") == Money("2.5 USD/h")
    assert hash(Money("2.50 USD/h")) == hash(Money("2.5 USD/h"))
    assert Money("2.50 USD/h").amount == Decimal("2.50")
    assert Money("2.50 USD/hr").currency == "USD"
    assert str(Money("2.50 USD/hr")) == "2.50 USD/h"
    assert Money.per_hour("30", "EUR") == Money("30 EUR/h")
    assert Money("0.1 USD/h").amount * 3 == Decimal("0.3")  # no float drift
    assert Money("1 USD/h") < Money("2 USD/h")
    # different currencies are never equal and never ordered: no silent FX
    assert Money("1 USD/h") != Money("1 EUR/h")
    with pytest.raises(TypeError):
        _ = Money("1 USD/h") < Money("2 EUR/h")
    with pytest.raises(TypeError):
        _ = Money("1 USD/h") >= Money("2 EUR/h")


@pytest.mark.parametrize(
    "value", ["2.50 usd/h", "2.50 USD", "2.50 USD/day", "$2.50/h", "-1 USD/h", "1e9 USD/h", 2.5]
)
def test_money_refusals(value: object) -> None:
    with pytest.raises(ContractError) as info:
        Money(value)  # type: ignore[arg-type]
    assert info.value.allowed == Money.ALLOWED
    assert "USD/h" in str(info.value)


def test_money_absurd_amount_refused() -> None:
    with pytest.raises(ContractError, match="absurdly large"):
        Money("100000000 USD/h")


def test_ratio_forms_agree() -> None:
    assert Ratio("99.9%") == Ratio(0.999) == Ratio(Decimal("0.999"))
    assert Ratio("100%") == Ratio(1)
    assert Ratio("0%") == Ratio(0)
    assert Ratio("99.9%").fraction == pytest.approx(0.999)
    assert str(Ratio("99.90%")) == "99.9%"
    assert str(Ratio(0.999)) == "0.999"
    assert Ratio("99%") < Ratio("99.9%")


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("101%", "outside 0%..100%"),
        (1.5, "outside 0%..100%"),
        (-0.1, "outside 0%..100%"),
        ("0.999", "is not a percentage"),
        ("abc%", "is not a percentage"),
        (True, "boolean"),
        (float("nan"), "not a finite"),
    ],
)
def test_ratio_bounds(value: object, says: str) -> None:
    with pytest.raises(ContractError) as info:
        Ratio(value)  # type: ignore[arg-type]
    assert says in info.value.message
    assert info.value.allowed == Ratio.ALLOWED


def test_ratio_to_builtin_reads_back_equal() -> None:
    for ratio in [Ratio("99.9%"), Ratio(0.999), Ratio(1), Ratio(Decimal("0." + "1" * 40))]:
        assert Ratio(ratio.to_builtin()) == ratio
        assert parse_target(ratio.to_builtin()) == ratio


def test_parse_target_tells_forms_apart() -> None:
    assert parse_target("200ms") == Duration("200ms")
    assert parse_target("512 tokens/s") == Rate("512 tokens/s")
    assert parse_target("99.9%") == Ratio("99.9%")
    assert parse_target(0.5) == Ratio("50%")
    with pytest.raises(ContractError) as info:
        parse_target(None)
    assert "a latency like 200ms" in str(info.value)


# -- ranges ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "low", "high"),
    [
        ("1..8", 1, 8),
        ("2..", 2, None),
        ("..8", None, 8),
        (">=2", 2, None),
        ("<=8", None, 8),
        (">= 2", 2, None),
        ("8", 8, 8),
        (8, 8, 8),
        ((1, 8), 1, 8),
        ([1, None], 1, None),
        ((None, 8), None, 8),
        (" 1 .. 8 ", 1, 8),
    ],
)
def test_count_range_forms(written: object, low: int | None, high: int | None) -> None:
    rng = CountRange(written)
    assert (rng.min, rng.max) == (low, high)
    assert CountRange(str(rng)) == rng


def test_range_prints_back_as_written() -> None:
    for text in ["1..8", "2..", "..8", ">=2", "<=8", "8"]:
        assert str(CountRange(text)) == text
    for text in ["40GiB..80GiB", "256GiB..", ">=24GiB", "<=80GiB", "80GiB"]:
        assert str(BytesRange(text)) == text
    assert CountRange(8).to_builtin() == 8
    assert CountRange("1..8").to_builtin() == "1..8"
    assert BytesRange("80GiB").to_builtin() == "80GiB"


def test_range_equality_is_by_bounds() -> None:
    assert CountRange(">=2") == CountRange("2..") == CountRange((2, None))
    assert hash(CountRange(">=2")) == hash(CountRange("2.."))
    assert BytesRange("1GiB..2GiB") == BytesRange("1024MiB..2048MiB")
    assert CountRange("1..8") != CountRange("1..9")
    assert CountRange("1") != BytesRange("1B")


def test_range_membership() -> None:
    rng = BytesRange("40GiB..80GiB")
    assert Bytes("40GiB") in rng
    assert Bytes("80GiB") in rng  # inclusive at both ends
    assert Bytes("39GiB") not in rng
    assert Bytes("81GiB") not in rng
    assert Bytes("1PiB") in BytesRange("256GiB..")
    assert Bytes(0) in BytesRange("..8GiB")
    assert 8 in CountRange("8")
    assert 9 not in CountRange("8")
    assert CountRange("8").is_exact
    assert not CountRange("1..8").is_exact
    assert not CountRange("2..").is_exact
    assert CountRange("2..").floor == 2


@pytest.mark.parametrize(
    ("written", "available", "granted"),
    [
        ("1..8", 4, 4),  # as much as there is, up to the maximum
        ("1..8", 10, 8),
        ("1..8", 0, None),  # below the minimum: nothing
        ("8", 8, 8),
        ("8", 7, None),
        ("2..", 100, 2),  # open-ended: take the minimum, not the whole host
        ("..8", 3, 3),
        (">=2", 1, None),
        ("<=8", 16, 8),
    ],
)
def test_count_range_grant(written: str, available: int, granted: int | None) -> None:
    assert CountRange(written).grant(available) == granted


def test_bytes_range_grant() -> None:
    assert BytesRange("256GiB..").grant(Bytes("1TiB")) == Bytes("256GiB")
    assert BytesRange("40GiB..80GiB").grant(Bytes("64GiB")) == Bytes("64GiB")
    assert BytesRange("40GiB..80GiB").grant(Bytes("96GiB")) == Bytes("80GiB")
    assert BytesRange("40GiB..80GiB").grant(Bytes("32GiB")) is None


@pytest.mark.parametrize(
    ("kind", "value", "says"),
    [
        (CountRange, "8..2", "inverted range"),
        (CountRange, "0..-1", "is not a whole number"),
        (CountRange, ">8", "strict bounds are not supported; use >= or <="),
        (CountRange, "<8", "strict bounds"),
        (CountRange, "..", "has no bounds"),
        (CountRange, (None, None), "has no bounds"),
        (CountRange, (1, 2, 3), "exactly two items"),
        (CountRange, 1.5, "is not a whole number"),
        (CountRange, "eight", "is not a whole number"),
        (CountRange, -1, "is negative"),
        (CountRange, True, "boolean"),
        (CountRange, "9999999999999", "absurdly large"),
        (CountRange, 10**10, "absurdly large"),
        (BytesRange, "8GiB..2GiB", "inverted range"),
        (BytesRange, "eighty", "is not a byte quantity"),
        (BytesRange, "1e400GiB", "is not a byte quantity"),
        (BytesRange, CountRange(1), "expected a bytes range, got a count range"),
    ],
)
def test_range_refusals_name_the_allowed_form(kind: type, value: object, says: str) -> None:
    with pytest.raises(ContractError) as info:
        kind(value)
    assert says in info.value.message
    assert info.value.allowed == kind.ALLOWED
    assert "1..8" in str(info.value) or "40GiB..80GiB" in str(info.value)


def test_ranges_are_immutable() -> None:
    rng = CountRange("1..8")
    with pytest.raises(AttributeError):
        rng.min = 2  # type: ignore[misc]


# -- pickling and copying --------------------------------------------------------------

ALL = [
    Bytes("1.5GiB"),
    Bytes(1536),
    Duration("PT4H"),
    Duration("1h 30m"),
    Duration(dt.timedelta(seconds=1)),
    Rate("512 tokens/s"),
    Money("2.50 USD/h"),
    Ratio("99.9%"),
    Ratio(0.999),
    Ratio(Decimal("0." + "1" * 40)),
    CountRange("1..8"),
    CountRange((None, 8)),
    CountRange(8),
    BytesRange(">=24GiB"),
    BytesRange("256GiB.."),
]


@pytest.mark.parametrize("value", ALL, ids=repr)
def test_pickle_and_copy_keep_value_and_text(value: object) -> None:
    for clone in (pickle.loads(pickle.dumps(value)), copy.copy(value), copy.deepcopy(value)):
        assert clone == value
        assert type(clone) is type(value)
        assert str(clone) == str(value)


def test_a_range_open_below_never_grants_nothing() -> None:
    """'<=80GiB' asks for some memory: when none is free the answer is no, not zero."""
    assert BytesRange("<=80GiB").grant(Bytes(0)) is None
    assert BytesRange("<=80GiB").grant(Bytes("16GiB")) == Bytes("16GiB")
    assert CountRange("0..4").grant(0) == 0  # an explicit 0 is the caller's choice
