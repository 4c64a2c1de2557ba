"""Utility: over 200 releases of a count and a mean, the exact answer falls inside the previewed 95%
interval often enough. The pass mark comes from the binomial distribution, so that a correct engine
(coverage >= 95%) fails this test with probability below one in a million."""

from __future__ import annotations

from math import comb

import polars as pl
import pytest

from clearinghouse.dp import prepare, preview, release, sql_to_spec

RUNS = 200
COVERAGE = 0.95
FAILURE_PROBABILITY = 1e-6


def min_hits(runs: int = RUNS, p: float = COVERAGE, alpha: float = FAILURE_PROBABILITY) -> int:
    """The largest k with P(Binomial(runs, p) < k) < alpha."""
    cdf = 0.0
    for k in range(runs + 1):
        pk = comb(runs, k) * p**k * (1 - p) ** (runs - k)
        if cdf + pk >= alpha:
            return k
        cdf += pk
    return runs


def test_threshold_is_what_the_binomial_says():
    k = min_hits()
    below = sum(comb(RUNS, i) * COVERAGE**i * (1 - COVERAGE) ** (RUNS - i) for i in range(k))
    assert below < FAILURE_PROBABILITY <= below + comb(RUNS, k) * COVERAGE**k * (1 - COVERAGE) ** (RUNS - k)
    assert k == 173


@pytest.mark.parametrize("dataset", ["pums", "adult"])
def test_count_and_mean_cover_the_truth(dataset, request):
    schema = request.getfixturevalue(dataset)
    frame = request.getfixturevalue(f"{dataset}_df")
    column, where = (
        ("income", pl.col("age") >= 30) if dataset == "pums" else ("age", pl.col("sex") == "Female")
    )
    condition = "age >= 30" if dataset == "pums" else "sex = 'Female'"
    spec = sql_to_spec(
        f"SELECT COUNT(*), AVG({column}) FROM {dataset} WHERE {condition}", schema, {"epsilon": 0.5}
    )
    truth = frame.filter(where)
    exact_count, exact_mean = truth.height, truth[column].mean()
    planned = preview(schema, spec)
    count_name = planned.aggregates[0].name
    mean_name = planned.aggregates[1].name
    count_hits = mean_hits = 0
    with prepare(schema, frame, [spec]) as staged:
        for _ in range(RUNS):
            result = release(schema, spec, staged)
            lo, hi = result.intervals[0][count_name]
            count_hits += lo <= exact_count <= hi
            lo, hi = result.intervals[0][mean_name]
            mean_hits += lo <= exact_mean <= hi
    assert count_hits >= min_hits(), f"count covered {count_hits}/{RUNS}"
    assert mean_hits >= min_hits(), f"mean covered {mean_hits}/{RUNS}"
    assert planned.aggregates[0].half_width_95 > 0
