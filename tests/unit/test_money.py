"""The one conversion between dollars and micro-dollars, as every caller uses it."""

from __future__ import annotations

from decimal import Decimal

import pytest

from batcher.money import Amount, fmt_usd, micros_to_usd, parse_usd, usd_to_micros
from batcher.providers.linkmodel_api import _micros as reported_price


@pytest.mark.parametrize(
    ("value", "micros"),
    [
        (Decimal("0.0675"), 67_500),  # a published price
        (Decimal("12.4"), 12_400_000),
        (Decimal("0"), 0),
        ("0.0675", 67_500),  # an amount read from a report
        ("1E+1", 10_000_000),
        (" 2.5 ", 2_500_000),
        (3, 3_000_000),
        (0.1, 100_000),  # the float's shortest repr, not its binary value
        (0.0675, 67_500),
        (1e-7, 0),
        # past the sixth decimal: half to even, whatever the type
        (Decimal("0.0000005"), 0),
        (Decimal("0.0000015"), 2),
        ("0.0000025", 2),
        ("0.00000251", 3),
        (Decimal("-0.0000015"), -2),
        (Decimal("-1.25"), -1_250_000),  # negatives convert: a caller that refuses them checks the sign
    ],
)
def test_usd_to_micros(value: Amount, micros: int) -> None:
    assert usd_to_micros(value) == micros


@pytest.mark.parametrize("value", ["", "abc", "$1", "1,5", "nan", "NaN", "inf", "-Infinity", float("nan"), True, False])
def test_not_an_amount_is_refused(value: Amount) -> None:
    with pytest.raises(ValueError, match="not an amount"):
        usd_to_micros(value)
    with pytest.raises(ValueError, match="not an amount"):
        parse_usd(value)


@pytest.mark.parametrize(
    ("micros", "usd"),
    [(0, "0"), (67_500, "0.0675"), (12_400_000, "12.4"), (1, "0.000001"), (-250_000, "-0.25"),
     (10_000_000, "10"), (1_200_000_000, "1200"), (-30_000_000, "-30")],
)  # fmt: skip
def test_micros_to_usd(micros: int, usd: str) -> None:
    assert str(micros_to_usd(micros)) == usd
    assert usd_to_micros(micros_to_usd(micros)) == micros  # a round trip is exact


@pytest.mark.parametrize(
    ("micros", "text"),
    [(0, "$0.00"), (67_500, "$0.068"), (1_000_000, "$1.00"), (12_400_000, "$12.40"),
     (1_234_567_890, "$1,234.57")],
)  # fmt: skip
def test_fmt_usd(micros: int, text: str) -> None:
    assert fmt_usd(micros) == text


@pytest.mark.parametrize(
    ("price", "micros"),
    [
        (0.0675, 67_500),
        ("0.0675", 67_500),
        (0, 0),
        (None, None),
        (True, None),  # JSON true is no price
        (-0.01, None),
        ("-0.0000001", None),  # negative before rounding: refused, not rounded to 0
        ("free", None),
        ([0.05], None),
        ({"usd": 0.05}, None),
        (float("inf"), None),
    ],
)
def test_reported_price(price: object, micros: int | None) -> None:
    """A create reply's data.price: advisory, so anything that is not a non-negative amount is no price."""
    assert reported_price(price) == micros
