"""Plans read categorical columns with public categories as their Enum (issue 15: one byte a value,
and OpenDP groups and filters it faster than strings). The privacy loss, the calibration and the
answers are those of the same plan over strings; data holding a value outside its categories is
staged as strings and released by the same measurement over strings."""

from __future__ import annotations

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearinghouse.dp import PreparedData, TableSchema, release, sql_to_spec
from clearinghouse.dp.calibrate import _build, _calibrate, _privacy_loss, for_strings
from clearinghouse.dp.plan import _plan
from clearinghouse.dp.schema import U32_MAX

from .conftest import EDUC, pums_schema_dict

QUERIES = [
    "SELECT COUNT(*) FROM pums",
    "SELECT educ, COUNT(*) FROM pums GROUP BY educ",
    "SELECT educ, sex, COUNT(*), AVG(income) FROM pums GROUP BY educ, sex",
    "SELECT COUNT(*) FROM pums WHERE educ = '9'",
    "SELECT SUM(income) FROM pums WHERE educ IN ('9', '13') AND sex != '1'",
    "SELECT sex, MEDIAN(age) FROM pums WHERE educ NOT IN ('1') GROUP BY sex",
    "SELECT race, educ, COUNT(*) FROM pums GROUP BY race, educ",  # race: keys released under δ
]
POLICIES = {
    "pure": {"measure": "pure", "max_rows": 1_000_000},
    "approx": {"measure": "approx", "max_delta": 1e-5, "max_rows": 1_000_000},
    "zcdp": {"measure": "zcdp", "max_delta": 1e-5, "max_rows": 1_000_000},
}


def _spec(sql: str, schema: TableSchema, level: float):
    if "race" in sql and schema.policy.measure == "pure":
        sql = sql.replace("race, ", "")
    privacy: dict = {"rho": level} if schema.policy.measure == "zcdp" else {"epsilon": level}
    if "race" in sql:
        privacy["delta"] = 1e-6
    return sql_to_spec(sql, schema, privacy)


def test_public_categories_are_enums_in_the_plan_and_others_strings():
    schema = TableSchema.from_dict(pums_schema_dict(POLICIES["approx"]))
    plan = _plan(
        schema,
        _spec("SELECT race, educ, COUNT(*) FROM pums WHERE sex = '1' GROUP BY race, educ", schema, 1.0),
    )
    assert plan.enum_columns == {"educ", "sex"}
    assert plan.lazyframe.collect_schema()["educ"] == pl.Enum(EDUC)
    assert plan.lazyframe.collect_schema()["race"] == pl.String  # no public categories
    assert (
        _plan(
            schema, _spec("SELECT COUNT(*) FROM pums WHERE sex = '1'", schema, 1.0), enums=False
        ).enum_columns
        == set()
    )


@settings(max_examples=40, deadline=None)
@given(
    sql=st.sampled_from(QUERIES),
    policy=st.sampled_from(sorted(POLICIES)),
    level=st.floats(0.01, 5.0),
)
def test_the_plan_over_strings_has_the_same_privacy_loss(sql, policy, level):
    schema = TableSchema.from_dict(pums_schema_dict(POLICIES[policy]))
    spec = _spec(sql, schema, level)
    cal = _calibrate(schema, spec, use_cache=False)
    if not cal.plan.enum_columns:  # COUNT(*) alone reads no categorical column
        assert sql == QUERIES[0] and for_strings(schema, spec, cal) is cal.measurement
        return
    strings = _plan(schema, spec, enums=False)
    # the same loss at the calibrated scale (for_strings checks it too) and at a scale of 1
    twin = for_strings(schema, spec, cal)
    assert _privacy_loss(twin, strings.d_in) == _privacy_loss(cal.measurement, cal.plan.d_in)
    threshold = U32_MAX if cal.plan.private_keys else None
    assert _privacy_loss(_build(strings, 1.0, threshold), strings.d_in) == _privacy_loss(
        _build(cal.plan, 1.0, threshold), cal.plan.d_in
    )
    assert for_strings(schema, spec, cal) is twin  # built once


def _close(a, b):
    assert a.columns == b.columns and len(a.rows) == len(b.rows)
    for x, y in zip(a.rows, b.rows, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], str) or x[key] is None:
                assert x[key] == y[key]
            else:
                assert x[key] == pytest.approx(y[key], rel=1e-3, abs=2)


@pytest.mark.parametrize("sql", [q for q in QUERIES if "race" not in q and "MEDIAN" not in q])
def test_enum_staged_and_string_staged_data_give_the_same_answers(tmp_path, pums, pums_df, sql):
    """ε huge: both answers are the exact ones, to within a little noise."""
    spec = sql_to_spec(sql, pums, {"epsilon": 1e7})
    # and one more row, of another category: educ is staged as strings, and released over strings
    other = pl.concat([pums_df, pums_df.head(1).with_columns(educ=pl.lit("99"))])
    with (
        PreparedData(pums, pums_df, spill_dir=str(tmp_path)) as enums,
        PreparedData(pums, other, spill_dir=str(tmp_path)) as strings,
    ):
        assert enums.enum_columns == {"sex", "educ"} and strings.enum_columns == {"sex"}
        _close(release(pums, spec, enums), release(pums, spec, strings))


def test_a_filter_on_a_value_outside_the_categories_matches_no_row(tmp_path, pums, pums_df):
    spec = sql_to_spec("SELECT COUNT(*) FROM pums WHERE educ = 'none of these'", pums, {"epsilon": 1e7})
    with PreparedData(pums, pums_df, spill_dir=str(tmp_path)) as staged:
        assert "educ" in staged.enum_columns
        assert release(pums, spec, staged).rows[0]["count"] == pytest.approx(0, abs=2)


def test_nullable_public_categories(tmp_path):
    schema = TableSchema.from_dict(
        {
            "name": "t",
            "columns": [
                {"name": "c", "type": "categorical", "categories": ["a", "b"], "nullable": True},
                {"name": "n", "type": "integer", "lower": 0, "upper": 10},
            ],
            "policy": {"measure": "pure", "max_rows": 10_000},
        }
    )
    frame = pl.DataFrame({"c": ["a", "b", None, "a"] * 500, "n": [1, 2, 3, 4] * 500})
    with PreparedData(schema, frame, spill_dir=str(tmp_path)) as staged:
        assert staged.enum_columns == {"c"}
        for sql, expected in [
            ("SELECT COUNT(c) FROM t", 1500),
            ("SELECT COUNT(*) FROM t WHERE c IS NULL", 500),
            ("SELECT SUM(n) FROM t WHERE c = 'a'", 2500),
        ]:
            row = release(schema, sql_to_spec(sql, schema, {"epsilon": 1e7}), staged).rows[0]
            assert next(iter(row.values())) == pytest.approx(expected, abs=2), sql
        grouped = release(
            schema, sql_to_spec("SELECT c, COUNT(*) FROM t GROUP BY c", schema, {"epsilon": 1e7}), staged
        )
        assert {row["c"]: row["count"] for row in grouped.rows} == {
            "a": pytest.approx(1000, abs=2),
            "b": pytest.approx(500, abs=2),
        }


def test_data_staged_under_other_categories_is_read_as_strings(tmp_path, pums, pums_df):
    """A table staged for a schema whose categories differ (here educ's in another order) holds
    another Enum than the plan's: it is released over strings, with the same answers."""
    other = TableSchema.from_dict(
        {
            **pums_schema_dict(),
            "columns": [
                {**c, "categories": list(reversed(EDUC))} if c["name"] == "educ" else c
                for c in pums_schema_dict()["columns"]
            ],
        }
    )
    spec = sql_to_spec("SELECT educ, COUNT(*) FROM pums GROUP BY educ", pums, {"epsilon": 1e7})
    with (
        PreparedData(other, pums_df, spill_dir=str(tmp_path)) as reordered,
        PreparedData(pums, pums_df, spill_dir=str(tmp_path)) as own,
    ):
        assert reordered.enum_of("educ") == pl.Enum(list(reversed(EDUC))) != own.enum_of("educ")
        _close(release(pums, spec, reordered), release(pums, spec, own))
