"""The one schema model (`clearinghouse.dp.schema`) and the validation predicates it shares with the
query spec and the dataset schema; the calibration cache."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from clearinghouse.dp import Column, TableSchema, engine, sql_to_spec
from clearinghouse.dp.schema import is_category, is_finite_number, is_number, is_whole_number

TEXT = {"name": "note", "type": "text"}
COUNT = {"name": "n", "type": "integer", "lower": 0, "upper": 9}


def test_a_text_columns_max_length_is_part_of_the_model_but_not_of_the_engines_fingerprint():
    column = Column(name="note", type="text", max_length=80)
    assert column.to_dict() == {"name": "note", "type": "text", "nullable": False, "max_length": 80}
    assert "max_length" not in Column(name="note", type="text").to_dict()
    # The engine reads no max_length: declaring one does not change what it prices or replays.
    plain = TableSchema.from_dict({"columns": [COUNT, TEXT]})
    with_length = TableSchema.from_dict({"columns": [COUNT, {**TEXT, "max_length": 80}]})
    assert with_length == plain and with_length.fingerprint == plain.fingerprint


@given(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70))
def test_a_finite_number_is_any_int_or_float_but_nan_and_infinity(value):
    assert is_number(value)
    assert is_finite_number(value) == math.isfinite(value)


@given(st.booleans() | st.none() | st.text(max_size=5) | st.lists(st.integers(), max_size=2))
def test_booleans_and_non_numbers_are_no_numbers(value):
    assert not is_number(value) and not is_finite_number(value) and not is_whole_number(value, -10, 10)


@given(st.integers(-20, 20))
def test_a_whole_number_in_range(value):
    assert is_whole_number(value, -10, 10) == (-10 <= value <= 10)
    assert not is_whole_number(float(value), -10, 10)


def test_categories_are_strings_or_integers_never_booleans():
    assert is_category("a") and is_category(3)
    assert not is_category(True) and not is_category(1.5) and not is_category(None)


def test_the_calibration_cache_is_bounded_and_clears(pums):
    spec = sql_to_spec("SELECT COUNT(*) FROM pums", pums, {"epsilon": 0.9})
    first = engine._calibrated(pums, spec)
    assert engine._calibrated(pums, spec) is first
    engine.clear_cache()
    assert engine._calibrated(pums, spec) is not first
    from clearinghouse.dp import calibrate

    assert calibrate._cache.maxsize == engine._CACHE_SIZE == 512
