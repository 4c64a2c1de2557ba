"""Threshold calibration for automatic labelling at a target precision (Clopper-Pearson bound)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from training.annotation import AnnotationError
from training.annotation.auto import calibrate_threshold, clopper_pearson_lower, coverage


def calibrated(n: int, seed: int, low: float = 0.5):
    """Scores that are calibrated by construction: item i is right with probability c_i."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(low, 1.0, size=n)
    return c, rng.uniform(size=n) < c


def test_clopper_pearson_matches_known_values_and_scipy():
    assert clopper_pearson_lower(0, 10) == 0.0
    # All n right: the bound solves p**n = alpha.
    assert clopper_pearson_lower(100, 100) == pytest.approx(0.05 ** (1 / 100))
    # scipy's exact binomial test gives the same one-sided interval.
    expected = binomtest(95, 100, alternative="greater").proportion_ci(0.95, method="exact").low
    assert clopper_pearson_lower(95, 100) == pytest.approx(expected)
    assert clopper_pearson_lower(95, 100, confidence_level=0.99) < clopper_pearson_lower(95, 100)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(min_value=1, max_value=3000),
    st.integers(min_value=0, max_value=2**31),
    st.floats(min_value=0.5, max_value=0.995),
)
def test_the_chosen_threshold_meets_the_target_on_the_calibration_items(n, seed, target):
    conf, right = calibrated(n, seed)
    choice = calibrate_threshold(conf, right, target_precision=target)
    if choice.threshold is None:
        # Then not even the whole set or any top slice passes: check the top slices directly.
        order = np.argsort(-conf)
        hits = np.cumsum(right[order])
        assert all(clopper_pearson_lower(int(hits[i]), i + 1) < target for i in range(n))
        assert coverage(conf, None) == 0.0
        return
    above = conf >= choice.threshold
    k, m = int(right[above].sum()), int(above.sum())
    assert choice.precision_lower_bound == pytest.approx(clopper_pearson_lower(k, m))
    assert clopper_pearson_lower(k, m) >= target
    assert choice.observed_precision == pytest.approx(k / m)
    assert k / m >= choice.precision_lower_bound
    assert choice.calibration_coverage == pytest.approx(coverage(conf, choice.threshold))
    # The lowest such threshold: one step lower (the next distinct score) fails the target.
    lower = conf[conf < choice.threshold]
    if len(lower):
        below = conf >= lower.max()
        assert clopper_pearson_lower(int(right[below].sum()), int(below.sum())) < target


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=50, max_value=2000),
    st.integers(min_value=0, max_value=2**31),
    st.floats(min_value=0.5, max_value=0.99),
    st.floats(min_value=0.5, max_value=0.99),
)
def test_coverage_never_grows_with_the_target(n, seed, t1, t2):
    conf, right = calibrated(n, seed)
    low, high = sorted((t1, t2))
    a = calibrate_threshold(conf, right, target_precision=low)
    b = calibrate_threshold(conf, right, target_precision=high)
    assert a.calibration_coverage >= b.calibration_coverage
    pool = np.random.default_rng(seed + 1).uniform(0.5, 1.0, size=500)
    assert coverage(pool, a.threshold) >= coverage(pool, b.threshold)


def test_the_true_precision_above_the_threshold_reaches_the_target():
    # With calibrated scores, the true precision of the items above t is the mean of their scores.
    misses = 0
    for seed in range(40):
        conf, right = calibrated(3000, seed, low=0.6)
        choice = calibrate_threshold(conf, right, target_precision=0.9)
        assert choice.threshold is not None and 0.0 < choice.calibration_coverage < 1.0
        fresh = np.random.default_rng(1000 + seed).uniform(0.6, 1.0, size=100_000)
        misses += fresh[fresh >= choice.threshold].mean() < 0.9
    assert misses <= 4  # a 95 % lower bound: about 2 misses in 40 expected, scanning adds a little


@pytest.mark.parametrize("target", [0.0, 1.0, -0.1, 1.5, math.nan, math.inf, True, "0.9"])
def test_a_target_outside_the_open_unit_interval_is_refused(target):
    conf, right = calibrated(100, 0)
    with pytest.raises(AnnotationError) as info:
        calibrate_threshold(conf, right, target_precision=target)
    assert info.value.code == "target_precision_out_of_range"
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("conf", "right", "code"),
    [
        ([], [], "no_calibration_items"),
        ([0.9, 0.8], [True], "bad_calibration_data"),
        ([0.9, 0.8], [1, 0], "bad_calibration_data"),
        ([0.9, math.nan], [True, True], "bad_calibration_data"),
    ],
)
def test_bad_calibration_data_is_refused(conf, right, code):
    with pytest.raises(AnnotationError) as info:
        calibrate_threshold(np.asarray(conf, dtype=float), np.asarray(right), target_precision=0.9)
    assert info.value.code == code


def test_bad_confidence_level_and_counts():
    conf, right = calibrated(10, 0)
    with pytest.raises(AnnotationError) as info:
        calibrate_threshold(conf, right, target_precision=0.9, confidence_level=1.0)
    assert info.value.code == "confidence_level_out_of_range"
    with pytest.raises(AnnotationError) as counts:
        clopper_pearson_lower(5, 3)
    assert counts.value.code == "bad_counts"
