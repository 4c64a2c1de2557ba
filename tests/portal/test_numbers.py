"""The portal's number filters (`{% load numbers %}`): significant digits, thousands separators, a
dash for what is missing, and never an exception, whatever the float."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest
from django.template import Context, Template
from hypothesis import example, given
from hypothesis import strategies as st

from clearinghouse.portal.templatetags.numbers import MISSING, pct, sig


@pytest.mark.parametrize(
    "value,shown",
    [
        (3.3333333333333335, "3.333"),
        (0.1 + 0.2, "0.3"),
        (0.5, "0.5"),
        (1.0, "1"),
        (-0.0, "0"),
        (0.000123456, "0.0001235"),
        (1234.5678, "1,235"),
        (9999.7, "10,000"),
        (12345678.9, "12,345,679"),
        (-12345678.9, "-12,345,679"),
        (1e20, "1e+20"),
        (1.5e-7, "1.5e-07"),
        (1234567, "1,234,567"),
        (-1000, "-1,000"),
        (0, "0"),
        (10**30, "1,000,000,000,000,000,000,000,000,000,000"),
        (None, MISSING),
        (math.nan, MISSING),
        (math.inf, "∞"),
        (-math.inf, "-∞"),
        (Decimal("2.50000"), "2.5"),
        ("0.25", "0.25"),
        ("not a number", "not a number"),
        (True, "True"),
    ],
)
def test_sig_examples(value, shown):
    assert sig(value) == shown


def test_sig_takes_the_number_of_digits_and_ignores_a_bad_one():
    assert sig(3.3333333333333335, 6) == "3.33333"
    assert sig(3.3333333333333335, "2") == "3.3"
    assert sig(3.3333333333333335, "x") == "3.333"
    assert sig(3.3333333333333335, 0) == "3"  # at least one digit
    assert sig(math.pi, 99) == "3.1415926535897931"  # at most a float's 17


def test_pct():
    assert pct(0.87321) == "87.3%"
    assert pct(1) == "100%"
    assert pct(None) == MISSING and pct(math.nan) == MISSING
    assert pct(10**400).startswith("∞")  # an int too large for a float does not raise


def test_the_filters_in_a_template():
    template = Template("{% load numbers %}{{ a|sig }} {{ b|sig:2 }} {{ c|sig }} {{ d|pct }}")
    assert template.render(Context({"a": 10 / 3, "b": 1.2345, "c": None, "d": 0.5})) == "3.333 1.2 — 50%"


def _parsed(shown: str) -> Decimal:
    return Decimal(shown.replace(",", ""))  # exact: 1.798e+308 would overflow a float


@given(st.floats(allow_nan=False, allow_infinity=False), st.integers(min_value=1, max_value=17))
@example(9999.5, 4)
@example(5e-324, 4)
@example(1.7976931348623157e308, 4)
@example(-0.0, 4)
def test_sig_round_trips_within_its_relative_precision(value, digits):
    shown = sig(value, digits)
    parsed, exact = _parsed(shown), Decimal(value)
    if value == 0:
        assert parsed == 0
        return
    # Rounded to `digits` significant digits: off by at most half a unit in the last kept place.
    assert abs(parsed - exact) <= abs(exact) * Decimal(5) * Decimal(10) ** -digits
    assert (parsed < 0) == (value < 0)


@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-9e14, max_value=9e14))
def test_sig_groups_the_integer_part_in_thousands(value):
    shown = sig(value).lstrip("-")
    if "e" in shown:  # only tiny numbers are in scientific notation below 10^15
        assert abs(value) < 1e-4
        return
    whole = shown.split(".")[0]
    groups = whole.split(",")
    assert 1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])


@given(
    st.one_of(
        st.floats(),
        st.integers(),
        st.decimals(),
        st.text(),
        st.none(),
        st.booleans(),
        st.lists(st.integers()),
    ),
    st.one_of(st.integers(), st.text(), st.none(), st.floats()),
)
def test_the_filters_never_raise(value, digits):
    assert isinstance(sig(value, digits), str)
    assert isinstance(pct(value, digits), str)


@given(st.integers())
def test_sig_keeps_every_digit_of_an_integer(value):
    assert int(sig(value).replace(",", "")) == value
