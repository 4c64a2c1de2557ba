"""Preview and release: exact costs from OpenDP's privacy maps, key handling, utility, data checks."""

from __future__ import annotations

import math
import os

import opendp.prelude as dp
import polars as pl
import pytest

from clearinghouse.dp import (
    PreparedData,
    QueryError,
    TableSchema,
    engine,
    parse_spec,
    prepare,
    preview,
    release,
    sql_to_spec,
)

from .conftest import EDUC, pums_schema_dict


def spec_of(sql, schema, **privacy):
    return sql_to_spec(sql, schema, privacy or {"epsilon": 1.0})


def rebuilt_cost(schema, spec):
    """The cost of the calibrated measurement, rebuilt independently from the plan and the
    previewed scale/threshold with OpenDP's own constructor, read from its privacy map."""
    cal = engine._calibrated(schema, spec)
    p = cal.preview
    meas = dp.m.make_private_lazyframe(
        cal.plan.domain,
        cal.plan.metric,
        cal.plan.measure,
        cal.plan.lazyframe,
        global_scale=p.global_scale,
        threshold=p.threshold,
    )
    return meas.map(cal.plan.d_in)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT COUNT(*) FROM pums",
        "SELECT COUNT(*), AVG(income), SUM(income) FROM pums WHERE age >= 30",
        "SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ",
        "SELECT sex, married, MEDIAN(age), QUANTILE(income, 0.9) FROM pums GROUP BY sex, married",
    ],
)
@pytest.mark.parametrize("epsilon", [0.1, 1 / 3, 1.0, 2.5])
def test_preview_cost_is_the_measurements_map_and_within_budget(pums, sql, epsilon):
    spec = spec_of(sql, pums, epsilon=epsilon)
    p = preview(pums, spec)
    assert p.cost.measure == "pure" and p.cost.delta == 0.0
    assert p.cost.epsilon == rebuilt_cost(pums, spec)
    assert p.cost.epsilon <= epsilon
    assert p.cost.epsilon == pytest.approx(epsilon, rel=1e-9)  # and the whole budget is used


def test_preview_spends_nothing_and_release_costs_what_preview_said(pums, pums_df):
    spec = spec_of("SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ", pums)
    p = preview(pums, spec)
    r = release(pums, spec, pums_df)
    assert r.cost == p.cost
    assert r.preview.spec_hash == spec.hash == p.spec_hash
    assert r.preview.schema_fingerprint == pums.fingerprint


def test_preview_describes_each_aggregate(pums):
    spec = spec_of("SELECT COUNT(*), SUM(income), AVG(income), MEDIAN(age) FROM pums", pums, epsilon=1.0)
    count, total, mean, median = preview(pums, spec).aggregates
    # four OpenDP primitives (len, sum, quantile; the mean reuses len and sum): ε/3 each in sensitivity units,
    # the quantile's exponential mechanism counting double → global scale c/ε with c = 1 + 1 + 2 = 4.
    assert count.mechanism == "Integer Laplace" and count.scale == pytest.approx(4.0)
    assert count.half_width_95 == pytest.approx(dp.discrete_laplacian_scale_to_accuracy(count.scale, 0.05))
    assert total.scale == pytest.approx(4.0 * 500_000)
    assert mean.half_width_95 is None and [c.role for c in mean.components] == ["sum", "count"]
    assert mean.components[0].confidence == 0.975
    assert mean.components[0].half_width == pytest.approx(
        dp.discrete_laplacian_scale_to_accuracy(total.scale, 0.025)
    )
    assert median.half_width_95 is None and median.candidates == 101 and median.mechanism == "ExponentialMin"


def test_half_widths_for_continuous_noise(pums_df):
    data = pums_schema_dict()
    data["columns"][4] = {"name": "income", "type": "float", "lower": 0, "upper": 500_000}
    pure = TableSchema.from_dict(data)
    agg = preview(pure, spec_of("SELECT SUM(income) FROM pums", pure)).aggregates[0]
    assert agg.mechanism == "Float Laplace"
    assert agg.half_width_95 == pytest.approx(agg.scale * math.log(20))  # b·ln(1/α)
    data["policy"] = {"measure": "zcdp", "max_rows": 1_000_000}
    zcdp = TableSchema.from_dict(data)
    p = preview(zcdp, sql_to_spec("SELECT SUM(income) FROM pums", zcdp, {"rho": 0.05}))
    assert p.aggregates[0].mechanism == "Float Gaussian"
    assert p.aggregates[0].half_width_95 == pytest.approx(p.aggregates[0].scale * 1.959964, rel=1e-5)
    assert p.cost.rho <= 0.05
    r = release(
        zcdp,
        sql_to_spec("SELECT SUM(income) FROM pums", zcdp, {"rho": 0.05}),
        pums_df.with_columns(pl.col("income").cast(pl.Float64)),
    )
    assert isinstance(r.rows[0]["sum_income"], float)


def test_calibration_is_cached_per_schema_and_spec(pums):
    spec = spec_of("SELECT COUNT(*), AVG(income) FROM pums", pums, epsilon=0.7)
    assert engine._calibrated(pums, spec) is engine._calibrated(pums, spec)
    other = spec_of("SELECT COUNT(*), AVG(income) FROM pums", pums, epsilon=0.8)
    assert engine._calibrated(pums, other) is not engine._calibrated(pums, spec)


def test_matches_the_context_binary_search(pums, pums_df):
    """Same plan, same loss: OpenDP's Context (binary search) and the closed form agree on the scale."""
    context = dp.Context.compositor(
        data=pl.LazyFrame(schema={"age": pl.Int64, "income": pl.Int64}),
        privacy_unit=dp.unit_of(contributions=1),
        privacy_loss=dp.loss_of(epsilon=0.5),
        split_evenly_over=1,
        margins=[dp.polars.Margin(by=[], max_length=1_000_000)],
    )
    query = context.query().select(dp.len(signed=True), pl.col("income").dp.sum((0, 500_000)))
    context_scale = query.summarize()["scale"][0]
    ours = preview(pums, spec_of("SELECT COUNT(*), SUM(income) FROM pums", pums, epsilon=0.5))
    assert ours.aggregates[0].scale == pytest.approx(context_scale, rel=1e-6)


def test_public_keys_give_a_row_for_every_key_even_when_absent(pums, pums_df):
    spec = spec_of("SELECT educ, COUNT(*), AVG(income) FROM pums GROUP BY educ", pums)
    without_16 = pums_df.filter(pl.col("educ") != "16")
    r = release(pums, spec, without_16)
    assert [row["educ"] for row in r.rows] == EDUC  # every public key, in the schema's order
    absent = r.rows[-1]
    assert isinstance(absent["count"], int)  # noise, not a missing value
    assert r.preview.public_groups == 16
    # and values outside the declared categories are simply not released
    r = release(
        pums,
        spec,
        pums_df.with_columns(
            pl.when(pl.col("educ") == "1").then(pl.lit("99")).otherwise(pl.col("educ")).alias("educ")
        ),
    )
    assert [row["educ"] for row in r.rows] == EDUC


def test_boolean_and_multi_column_public_keys(pums, pums_df):
    r = release(pums, spec_of("SELECT married, sex, COUNT(*) FROM pums GROUP BY married, sex", pums), pums_df)
    assert [(row["married"], row["sex"]) for row in r.rows] == [
        (False, "0"),
        (False, "1"),
        (True, "0"),
        (True, "1"),
    ]


def test_private_keys_refused_under_pure_dp_and_thresholded_with_delta(pums, pums_approx, pums_df):
    with pytest.raises(QueryError) as info:
        spec_of("SELECT race, COUNT(*) FROM pums GROUP BY race", pums)
    assert info.value.code == "group_by_requires_public_keys"

    spec = spec_of(
        "SELECT race, COUNT(*), AVG(income) FROM pums GROUP BY race", pums_approx, epsilon=1.0, delta=1e-6
    )
    p = preview(pums_approx, spec)
    assert p.threshold is not None and p.threshold > 1 and p.public_groups is None
    assert p.cost.measure == "approx"
    assert 0 < p.cost.delta <= 1e-6 and p.cost.epsilon <= 1.0
    assert (p.cost.epsilon, p.cost.delta) == rebuilt_cost(pums_approx, spec)
    r = release(pums_approx, spec, pums_df)
    released = [row["race"] for row in r.rows]
    assert set(released) <= set(pums_df["race"].unique().to_list())
    assert "1" in released  # 550 people: far above any threshold
    assert "5" not in released  # 1 person: never released
    assert all(row["count"] >= p.threshold for row in r.rows)
    assert released == sorted(released)


def test_approx_policy_without_key_release_costs_no_delta(pums_approx, pums_df):
    spec = spec_of("SELECT educ, COUNT(*) FROM pums GROUP BY educ", pums_approx, epsilon=1.0, delta=1e-6)
    assert preview(pums_approx, spec).cost.delta == 0.0


def test_zcdp_policy(pums_zcdp, pums_df):
    spec = sql_to_spec("SELECT educ, COUNT(*), AVG(income) FROM pums GROUP BY educ", pums_zcdp, {"rho": 0.1})
    p = preview(pums_zcdp, spec)
    assert p.cost.measure == "zcdp" and p.cost.rho <= 0.1 and p.cost.rho == pytest.approx(0.1)
    assert p.cost.rho == rebuilt_cost(pums_zcdp, spec)
    assert p.aggregates[0].mechanism == "Integer Gaussian"
    assert len(release(pums_zcdp, spec, pums_df).rows) == 16

    spec = sql_to_spec(
        "SELECT race, COUNT(*) FROM pums GROUP BY race", pums_zcdp, {"rho": 0.1, "delta": 1e-6}
    )
    p = preview(pums_zcdp, spec)
    assert p.cost.rho <= 0.1 and 0 < p.cost.delta <= 1e-6 and p.threshold
    assert {row["race"] for row in release(pums_zcdp, spec, pums_df).rows} >= {"1", "3"}


def test_identifier_privacy_unit_scales_the_noise(pums_df):
    data = pums_schema_dict()
    data["columns"].append({"name": "pid", "type": "integer", "lower": 0, "upper": 10**9})
    data["privacy_unit"] = {"kind": "identifier", "column": "pid", "max_rows_per_person": 3}
    schema = TableSchema.from_dict(data)
    row_level = TableSchema.from_dict(pums_schema_dict())
    spec = {"aggregates": [{"type": "count"}], "privacy": {"epsilon": 1.0}}
    p = preview(schema, spec)
    assert p.cost.epsilon <= 1.0
    assert p.aggregates[0].scale == pytest.approx(3 * preview(row_level, spec).aggregates[0].scale)
    # one person with 50 rows counts at most 3 times (truncation before OpenDP)
    frame = pl.concat(
        [
            pums_df.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("pid")),
            pums_df.head(50).with_columns(pl.lit(10**6, dtype=pl.Int64).alias("pid")),
        ]
    )
    with PreparedData(schema, frame, ["age"]) as staged:
        assert staged.height == 1003


def test_filters_run_inside_opendp(pums, pums_df):
    spec = spec_of(
        "SELECT COUNT(*) FROM pums WHERE age >= 30 AND educ IN ('9', '13') AND NOT married",
        pums,
        epsilon=50.0,
    )
    truth = pums_df.filter(
        (pl.col("age") >= 30) & pl.col("educ").is_in(["9", "13"]) & ~pl.col("married")
    ).height
    r = release(pums, spec, pums_df)
    lo, hi = r.intervals[0]["count"]
    assert abs(r.rows[0]["count"] - truth) <= 3 and lo <= truth <= hi


def test_nulls_follow_sql_semantics(pums_df):
    data = pums_schema_dict()
    data["columns"][4]["nullable"] = True
    schema = TableSchema.from_dict(data)
    frame = pums_df.with_columns(
        pl.when(pl.col("age") < 30).then(None).otherwise(pl.col("income")).alias("income")
    )
    spec = parse_spec(
        {
            "aggregates": [
                {"type": "count"},
                {"type": "count", "column": "income"},
                {"type": "mean", "column": "income"},
            ],
            "privacy": {"epsilon": 200.0},
        },
        schema,
    )
    r = release(schema, spec, frame).rows[0]
    non_null = frame["income"].drop_nulls()
    assert abs(r["count"] - 1000) <= 5
    assert abs(r["count_income"] - non_null.len()) <= 5
    assert r["mean_income"] == pytest.approx(non_null.mean(), rel=0.02)


def test_quantiles_come_from_the_public_grid(pums, pums_df):
    r = release(
        pums, spec_of("SELECT MEDIAN(age), QUANTILE(income, 0.5) FROM pums", pums, epsilon=20.0), pums_df
    )
    assert r.rows[0]["median_age"] in range(101)
    assert abs(r.rows[0]["median_age"] - pums_df["age"].median()) <= 3
    assert r.rows[0]["quantile_income_0.5"] % 5000 == 0
    assert r.intervals[0] == {}


def test_releases_hold_aggregates_only(pums, pums_df):
    r = release(pums, spec_of("SELECT COUNT(*), SUM(income) FROM pums", pums), pums_df)
    assert len(r.rows) == 1 and set(r.rows[0]) == {"count", "sum_income"}
    assert r.columns == ("count", "sum_income")
    assert set(r.to_dict()) >= {"rows", "intervals", "cost", "aggregates"}


def test_data_must_match_the_schema(pums, pums_df):
    spec = spec_of("SELECT AVG(income) FROM pums", pums)
    with pytest.raises(QueryError) as info:
        release(pums, spec, pums_df.drop("income"))
    assert info.value.code == "data_does_not_match_schema"
    with pytest.raises(QueryError) as info:
        release(pums, spec, pums_df.with_columns(pl.lit(None, dtype=pl.Int64).alias("income")))
    assert info.value.code == "data_does_not_match_schema"  # nulls in a non-nullable column
    with pytest.raises(QueryError) as info:
        release(pums, spec, pums_df.with_columns(pl.lit("abc").alias("income")))
    assert info.value.code == "data_does_not_match_schema"
    small = TableSchema.from_dict(pums_schema_dict({"measure": "pure", "max_rows": 999}))
    with pytest.raises(QueryError) as info:
        release(small, spec_of("SELECT AVG(income) FROM pums", small), pums_df)
    assert info.value.code == "dataset_too_large"
    # types are cast to the declared ones (OpenDP does not check the data against its domain)
    r = release(
        pums,
        spec_of("SELECT SUM(income) FROM pums", pums, epsilon=100.0),
        pums_df.with_columns(pl.col("income").cast(pl.Int32)),
    )
    assert isinstance(r.rows[0]["sum_income"], int)


def test_spill_file_is_private_and_removed(pums, pums_df):
    specs = [spec_of("SELECT COUNT(*) FROM pums", pums), spec_of("SELECT AVG(income) FROM pums", pums)]
    staged = prepare(pums, pums_df.lazy(), specs)
    path = staged._path
    if path is None:
        pytest.skip("no tmpfs spill directory on this machine")
    assert os.stat(os.path.dirname(path)).st_mode & 0o777 == 0o700
    assert set(staged.columns) == {"income"} or "income" in staged.columns
    results = [release(pums, s, staged) for s in specs]
    assert all(len(r.rows) == 1 for r in results)
    staged.close()
    assert not os.path.exists(os.path.dirname(path))


def test_in_memory_hand_off_gives_the_same_shape(pums, pums_df):
    spec = spec_of("SELECT educ, COUNT(*) FROM pums GROUP BY educ", pums)
    a = release(pums, spec, pums_df, spill_dir=None)
    b = release(pums, spec, pums_df)
    assert a.columns == b.columns and [r["educ"] for r in a.rows] == [r["educ"] for r in b.rows]


def test_counts_land_in_the_previewed_interval_at_the_advertised_rate(pums, pums_df):
    """Utility sanity: 200 releases; the 95% intervals cover the truth about 95% of the time."""
    spec = spec_of("SELECT COUNT(*), AVG(income) FROM pums WHERE age >= 30", pums, epsilon=0.5)
    truth_frame = pums_df.filter(pl.col("age") >= 30)
    n, mean = truth_frame.height, truth_frame["income"].mean()
    half_width = preview(pums, spec).aggregates[0].half_width_95
    runs, count_hits, mean_hits = 200, 0, 0
    with prepare(pums, pums_df, [spec]) as staged:
        for _ in range(runs):
            r = release(pums, spec, staged)
            count_hits += abs(r.rows[0]["count"] - n) < half_width
            lo, hi = r.intervals[0]["mean_income"]
            mean_hits += lo <= mean <= hi
    assert count_hits >= 173  # binomial bound: a correct engine fails with probability < 1e-6 (test_utility)
    assert mean_hits >= 173


def test_utility_on_adult(adult, adult_df):
    spec = sql_to_spec(
        'SELECT "salary-class", COUNT(*), AVG(age) FROM adult GROUP BY "salary-class"',
        adult,
        {"epsilon": 1.0},
    )
    r = release(adult, spec, adult_df)
    truth = {
        row["salary-class"]: row
        for row in adult_df.group_by("salary-class")
        .agg(pl.len().alias("n"), pl.col("age").mean().alias("mean"))
        .to_dicts()
    }
    for row, interval in zip(r.rows, r.intervals, strict=True):
        t = truth[row["salary-class"]]
        assert abs(row["count"] - t["n"]) < 50
        assert abs(row["mean_age"] - t["mean"]) < 2
        assert interval["mean_age"][0] <= row["mean_age"] <= interval["mean_age"][1]
    # private keys (no categories declared) with δ
    spec = sql_to_spec(
        "SELECT occupation, COUNT(*) FROM adult GROUP BY occupation", adult, {"epsilon": 1.0, "delta": 1e-7}
    )
    r = release(adult, spec, adult_df)
    assert 10 <= len(r.rows) <= adult_df["occupation"].n_unique()
