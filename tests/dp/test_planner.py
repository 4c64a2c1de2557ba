"""The accuracy planner (`clearinghouse.dp.planner`), property-based: the least ε (or ρ) it returns
meets the target with the real calibrated preview and is minimal within its tolerance; the accuracy
curve is monotone; a mean's least group size is conservative; warnings come before spending."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.dp import QueryError, TableSchema, parse_spec, preview
from clearinghouse.dp.planner import (
    DEFAULT_LEVELS,
    PLAN_TOLERANCE,
    accuracy_curve,
    least_privacy_for,
    mean_min_group_size,
    plan_query,
    preview_warnings,
    with_level,
)
from clearinghouse.dp.results import _mean_interval

COLUMNS = [
    {"name": "age", "type": "integer", "lower": 0, "upper": 100},
    {"name": "educ", "type": "categorical", "categories": ["a", "b", "c"]},
    {"name": "score", "type": "float", "lower": 0.0, "upper": 1000.0},
    {"name": "weight", "type": "float", "lower": -50.0, "upper": 50.0},
]
POLICIES = {
    "pure": {"measure": "pure", "max_rows": 10_000},
    "zcdp": {"measure": "zcdp", "max_delta": 1e-6, "max_rows": 10_000},
    "approx": {"measure": "approx", "max_delta": 1e-6, "max_rows": 10_000},
}
SCHEMAS = {
    name: TableSchema.from_dict(
        {"name": "t", "columns": COLUMNS, "privacy_unit": {"kind": "row"}, "policy": p}
    )
    for name, p in POLICIES.items()
}
CONTINUOUS = [{"type": "sum", "column": "score"}, {"type": "sum", "column": "weight"}]
DISCRETE = [{"type": "count"}, {"type": "sum", "column": "age"}, {"type": "count", "column": "score"}]
OTHERS = [{"type": "mean", "column": "age"}, {"type": "median", "column": "score"}]

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


REFERENCE = {"pure": 1.0, "approx": 1.0, "zcdp": 0.5}


def spec_of(schema: TableSchema, aggregates: list[dict], group_by: bool = False) -> object:
    measure = schema.policy.measure
    level = {"rho": REFERENCE[measure]} if measure == "zcdp" else {"epsilon": REFERENCE[measure]}
    body = {"aggregates": [dict(a, alias=f"a{i}") for i, a in enumerate(aggregates)], "privacy": level}
    if group_by:
        body["group_by"] = ["educ"]
    return parse_spec(body, schema)


def worst(schema: TableSchema, spec, level: float) -> float:
    """The widest 95% half-width of the counts and sums, from the real calibrated preview."""
    answer = preview(schema, with_level(schema, spec, level))
    return max(a.half_width_95 for a in answer.aggregates if a.type in ("count", "sum"))


def aggregates(pool: list[dict]) -> st.SearchStrategy[list[dict]]:
    return st.lists(st.sampled_from(pool), min_size=1, max_size=3)


@FAST
@given(
    measure=st.sampled_from(["pure", "zcdp"]),
    chosen=aggregates(CONTINUOUS),
    extra=st.lists(st.sampled_from(OTHERS), max_size=2),
    group_by=st.booleans(),
    factor=st.floats(min_value=0.02, max_value=50.0),
)
def test_continuous_plan_meets_the_target_and_2_percent_less_does_not(
    measure, chosen, extra, group_by, factor
):
    schema = SCHEMAS[measure]
    spec = spec_of(schema, chosen + extra, group_by)
    target = worst(schema, spec, REFERENCE[measure]) * factor
    plan = least_privacy_for(schema, spec, target)
    assert plan.measure == ("rho" if measure == "zcdp" else "epsilon")
    assert worst(schema, spec, plan.level) <= target
    assert max(a.half_width_95 for a in plan.preview.aggregates if a.half_width_95 is not None) <= target
    assert worst(schema, spec, plan.level * 0.98) > target  # continuous noise: the level is tight
    assert worst(schema, spec, plan.level * (1 - PLAN_TOLERANCE)) > target
    cost = plan.preview.cost.rho if measure == "zcdp" else plan.preview.cost.epsilon
    assert cost == pytest.approx(plan.level) and cost <= plan.level
    assert {u["aggregate"] for u in plan.unplanned} == {f"a{len(chosen) + i}" for i in range(len(extra))}
    means = {f"a{len(chosen) + i}" for i, a in enumerate(extra) if a["type"] == "mean"}
    assert set(plan.min_group_sizes) == means


@FAST
@given(
    measure=st.sampled_from(["pure", "zcdp", "approx"]),
    chosen=aggregates(DISCRETE + CONTINUOUS),
    factor=st.floats(min_value=0.05, max_value=20.0),
)
def test_any_plan_meets_the_target_and_is_minimal_within_tolerance(measure, chosen, factor):
    schema = SCHEMAS[measure]
    spec = spec_of(schema, chosen)
    # at least 1.5: an integer Gaussian's 95% half-width never falls below 1
    target = max(worst(schema, spec, REFERENCE[measure]) * factor, 1.5)
    plan = least_privacy_for(schema, spec, target)
    assert worst(schema, spec, plan.level) <= target
    # discrete noise moves in steps: minimal within the search's tolerance
    assert worst(schema, spec, plan.level * (1 - PLAN_TOLERANCE)) > target


@FAST
@given(
    measure=st.sampled_from(["pure", "zcdp", "approx"]),
    chosen=aggregates(DISCRETE + CONTINUOUS + OTHERS),
    levels=st.lists(st.floats(min_value=1e-3, max_value=100.0), min_size=2, max_size=6),
)
def test_the_curve_is_monotone(measure, chosen, levels):
    schema = SCHEMAS[measure]
    spec = spec_of(schema, chosen)
    curve = accuracy_curve(schema, spec, levels)
    assert [p.level for p in curve] == sorted(set(levels))
    for name in curve[0].half_widths:
        widths = [p.half_widths[name] for p in curve]
        if all(w is None for w in widths):
            continue
        assert all(w is not None and w >= 0 for w in widths)
        assert all(a >= b for a, b in itertools.pairwise(widths))
    for name in curve[0].min_group_sizes:
        sizes = [p.min_group_sizes[name] for p in curve]
        assert all(a >= b for a, b in itertools.pairwise(sizes))


@FAST
@given(
    n_extra=st.floats(min_value=0.0, max_value=5.0),
    fraction=st.floats(min_value=0.0, max_value=1.0),
    corner=st.tuples(st.sampled_from([-1.0, 1.0]), st.sampled_from([-1.0, 1.0])),
    column=st.sampled_from(["age", "weight", "score"]),
    epsilon=st.floats(min_value=0.05, max_value=5.0),
)
def test_a_mean_min_group_size_is_conservative(n_extra, fraction, corner, column, epsilon):
    """For any true group of n ≥ min_group_size rows and any noisy sum and count inside their 97.5%
    boxes, the released interval is narrower than half the column's range."""
    schema = SCHEMAS["pure"]
    spec = parse_spec(
        {"aggregates": [{"type": "mean", "column": column}], "privacy": {"epsilon": epsilon}}, schema
    )
    agg = preview(schema, spec).aggregates[0]
    size = mean_min_group_size(schema, agg)
    assert size is not None and size >= 1
    h_sum, h_count = (c.half_width for c in agg.components)
    col = schema.column(column)
    lower, upper = float(col.lower), float(col.upper)
    n = size * (1.0 + n_extra)
    true_sum = n * (lower + fraction * (upper - lower))
    noisy_sum, noisy_count = true_sum + corner[0] * h_sum, n + corner[1] * h_count
    lo, hi = _mean_interval(noisy_sum, noisy_count, h_sum, h_count, lower, upper)
    assert hi - lo < (upper - lower) / 2


@pytest.mark.parametrize("target", [0, -1.0, math.inf, -math.inf, math.nan, "5", None, True])
def test_an_invalid_target_is_refused(target):
    schema = SCHEMAS["pure"]
    with pytest.raises(QueryError) as refused:
        least_privacy_for(schema, spec_of(schema, [{"type": "count"}]), target)
    assert refused.value.code == "accuracy_target_invalid"


def test_an_unreachable_target_is_refused():
    schema = SCHEMAS["pure"]
    with pytest.raises(QueryError) as refused:
        least_privacy_for(schema, spec_of(schema, CONTINUOUS), 1e-9)
    assert refused.value.code == "accuracy_target_invalid" and "out of reach" in refused.value.message


def test_means_and_quantiles_alone_cannot_be_planned():
    schema = SCHEMAS["pure"]
    with pytest.raises(QueryError) as refused:
        least_privacy_for(schema, spec_of(schema, OTHERS), 10.0)
    assert refused.value.code == "accuracy_not_plannable"


def test_closed_form_scaling_and_the_default_curve():
    """Continuous Laplace: half-width ∝ 1/ε, so a target 10× tighter needs 10× the ε; Gaussian under
    zCDP: ∝ 1/√ρ, so 100× the ρ."""
    pure, zcdp = SCHEMAS["pure"], SCHEMAS["zcdp"]
    wide, tight = (least_privacy_for(pure, spec_of(pure, CONTINUOUS[:1]), t).level for t in (5000.0, 500.0))
    assert tight / wide == pytest.approx(10.0, rel=3e-3)
    wide, tight = (least_privacy_for(zcdp, spec_of(zcdp, CONTINUOUS[:1]), t).level for t in (5000.0, 500.0))
    assert tight / wide == pytest.approx(100.0, rel=3e-3)
    curve = accuracy_curve(pure, spec_of(pure, [{"type": "count"}]))
    assert tuple(p.level for p in curve) == DEFAULT_LEVELS["epsilon"]


def test_plan_query_answers_the_level_the_preview_its_warnings_and_the_curve():
    schema = SCHEMAS["pure"]
    spec = spec_of(schema, [{"type": "count"}, {"type": "mean", "column": "age"}], group_by=True)
    answer = plan_query(schema, spec, target_half_width=5.0, levels=[0.1, 1.0])
    assert answer["measure"] == "epsilon" and answer["preview"]["cost"]["epsilon"] <= answer["level"]
    assert answer["preview"]["aggregates"][0]["half_width_95"] <= 5.0
    assert [w["code"] for w in answer["preview"]["warnings"]] == ["group_too_small_for_mean"]
    assert answer["preview"]["warnings"][0]["details"]["min_group_size"] == answer["min_group_sizes"]["a1"]
    assert [p["level"] for p in answer["curve"]] == [0.1, 1.0]
    assert plan_query(schema, spec, levels=[1.0])["level"] is None


def test_warnings_before_spending():
    schema = SCHEMAS["pure"]  # max_rows 10 000
    spec = spec_of(
        schema, [{"type": "count"}, {"type": "sum", "column": "score"}, {"type": "mean", "column": "age"}]
    )
    noisy = preview_warnings(schema, preview(schema, with_level(schema, spec, 1e-4)))
    codes = [(w.code, w.aggregate) for w in noisy]
    assert codes == [
        ("interval_covers_range", "a0"),
        ("interval_covers_range", "a1"),
        ("interval_covers_range", "a2"),
    ]
    assert noisy[0].details["public_range"] == 10_000 and "10000" in noisy[0].message
    calm = preview_warnings(schema, preview(schema, with_level(schema, spec, 1.0)))
    assert [(w.code, w.aggregate) for w in calm] == [("group_too_small_for_mean", "a2")]
    assert f"fewer than {calm[0].details['min_group_size']:,} rows" in calm[0].message
