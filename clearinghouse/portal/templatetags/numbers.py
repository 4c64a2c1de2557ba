"""How the portal shows a number: `{% load numbers %}`, then `{{ value|sig }}` (or `|sig:6`) for any
computed value (budgets, ε/ρ/δ, query answers and intervals, job metrics, row counts) and
`{{ fraction|pct }}` for a share shown as a percentage.

- an integer keeps every digit, grouped in thousands: `1234567` → `1,234,567`;
- a float keeps `digits` significant digits (4 unless told), grouped in thousands:
  `3.3333333333333335` → `3.333`, `0.000123456` → `0.0001235`, `1234.5678` → `1,235`; a float
  whose integer part is longer than that keeps its integer digits (`12345678.9` → `12,345,679`)
  until 10^15, beyond which (and below 10^-4) it is written in scientific notation (`1.235e+20`);
- None and NaN are `—`, the infinities `∞` and `-∞`; a numeric string or Decimal is read as a float;
- anything else is shown as it is. No filter here ever raises: a template must always render.

The API is untouched by these filters: its JSON keeps the raw numbers.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

from django import template

register = template.Library()

MISSING = "—"
DEFAULT_DIGITS = 4
MAX_DIGITS = 17  # a float64 holds at most 17 significant decimal digits
SCIENTIFIC_FROM = 15  # decimal exponent from which a large float is written 1.235e+15


def _digits(arg: Any) -> int:
    try:
        digits = int(arg)
    except (TypeError, ValueError, OverflowError):
        return DEFAULT_DIGITS
    return min(max(digits, 1), MAX_DIGITS)


def _as_number(value: Any) -> int | float | None:
    """The number `value` stands for, or None when it is not one (bools are not numbers here)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, Decimal | str):
        try:
            return float(value)
        except (ValueError, OverflowError):
            return None
    return None


def format_significant(value: float, digits: int = DEFAULT_DIGITS) -> str:
    """`value` to `digits` significant digits with thousands separators (see the module's notes)."""
    if math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "∞" if value > 0 else "-∞"
    if value == 0:
        return "0"  # never "-0"
    # The decimal exponent after rounding to `digits` (9999.7 → 1.000e+04 → 4).
    exponent = int(f"{value:.{digits - 1}e}".rsplit("e", 1)[1])
    if digits <= exponent < SCIENTIFIC_FROM:
        return f"{value:,.0f}"
    return f"{value:,.{digits}g}"


@register.filter
def sig(value: Any, digits: Any = DEFAULT_DIGITS) -> str:
    """`{{ value|sig }}`: an integer with thousands separators, a float to `digits` significant digits."""
    if value is None:
        return MISSING
    number = _as_number(value)
    if number is None:
        return str(value)
    if isinstance(number, int):
        return f"{number:,}"
    return format_significant(number, _digits(digits))


@register.filter
def pct(value: Any, digits: Any = 3) -> str:
    """`{{ fraction|pct }}`: 0.87321 → `87.3%` (`digits` significant digits, 3 unless told)."""
    if value is None:
        return MISSING
    number = _as_number(value)
    if number is None:
        return str(value)
    try:
        percent = float(number) * 100
    except OverflowError:  # an integer too large for a float
        percent = math.inf if number > 0 else -math.inf
    shown = format_significant(percent, _digits(digits))
    return shown if shown == MISSING else f"{shown}%"
