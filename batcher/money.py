"""Money: amounts are kept as whole micro-dollars (1 USD = 1_000_000) so sums are exact; this is the one place
that converts between them and dollars. Imports nothing of the package: every layer may use it."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

MICROS_PER_USD = 1_000_000
_MICRO = Decimal("0.000001")

Amount = Decimal | str | int | float


def parse_usd(value: Amount) -> Decimal:
    """A finite amount in USD, exactly as written. A float goes through its shortest repr (0.1 is 0.1, not
    0.1000000000000000055…). Raises ValueError for a bool, text that is no number, NaN or an infinity."""
    if isinstance(value, bool):  # an int to Python, never an amount
        raise ValueError(f"{value!r} is not an amount in USD")
    try:
        amount = value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{value!r} is not an amount in USD") from None
    if not amount.is_finite():
        raise ValueError(f"{value!r} is not an amount in USD")
    return amount


def usd_to_micros(value: Amount) -> int:
    """Whole micro-dollars, rounding half to even past the sixth decimal. Negative amounts convert too (a
    caller that refuses them checks the sign); invalid ones raise ValueError, as `parse_usd`."""
    return round(parse_usd(value) * MICROS_PER_USD)


def micros_to_usd(micros: int) -> Decimal:
    """Dollars, exact, without trailing zeros: 67_500 is 0.0675, 12_400_000 is 12.4, 10_000_000 is 10."""
    amount = (Decimal(micros) / MICROS_PER_USD).quantize(_MICRO).normalize()
    # normalize() alone writes whole tens in exponent form (10 is "1E+1"): keep a plain number for reports
    exponent = amount.as_tuple().exponent
    return amount.quantize(Decimal(1)) if isinstance(exponent, int) and exponent > 0 else amount


def fmt_usd(micros: int) -> str:
    """$0.067 for small sums, $12.40 for larger ones."""
    value = Decimal(micros) / MICROS_PER_USD
    return f"${value:,.2f}" if value >= 1 or value == 0 else f"${value:.3f}"
