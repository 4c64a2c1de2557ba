"""Automatic labelling at a target precision: the confidence threshold, calibrated on people's labels.

Calibration data: for human-labelled items, the model's *out-of-sample* confidence (from
``proposer.out_of_sample_probabilities``) and whether its proposed label equals the person's. For a
threshold ``t`` the items with confidence >= t have ``n`` members of which ``k`` are right; the
estimate of the precision of automatic labels above ``t`` is the one-sided **Clopper-Pearson**
lower bound on ``k/n`` at ``confidence_level`` (exact binomial, conservative). The chosen
threshold is the lowest at which that bound reaches the target (largest coverage). A higher target
never gives a lower threshold. The scan over thresholds is not corrected for multiplicity; the
conservative bound absorbs most of it, and the benchmark measures the precision on unseen items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta

from training.annotation.errors import AnnotationError

__all__ = ["ThresholdChoice", "calibrate_threshold", "clopper_pearson_lower", "coverage"]


@dataclass(frozen=True)
class ThresholdChoice:
    """The calibrated threshold and what it promises on the calibration items.

    ``threshold`` is None when no threshold reaches the target (then nothing is auto-labelled).
    """

    threshold: float | None
    target_precision: float
    confidence_level: float
    precision_lower_bound: float  # Clopper-Pearson bound at the threshold (0.0 when None)
    observed_precision: float  # k / n above the threshold (nan when None)
    calibration_coverage: float  # share of calibration items at or above the threshold
    calibration_items: int


def clopper_pearson_lower(correct: int, total: int, *, confidence_level: float = 0.95) -> float:
    """One-sided Clopper-Pearson lower bound on a binomial proportion (0.0 when nothing is right)."""
    if total <= 0 or not 0 <= correct <= total:
        raise AnnotationError("bad_counts", "need 0 <= correct <= total and total > 0")
    if correct == 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence_level, correct, total - correct + 1))


def calibrate_threshold(
    confidences: np.ndarray,
    correct: np.ndarray,
    *,
    target_precision: float,
    confidence_level: float = 0.95,
) -> ThresholdChoice:
    """The lowest confidence threshold whose Clopper-Pearson precision bound is >= the target."""
    _check_fraction(target_precision, "target_precision_out_of_range", "target precision")
    _check_fraction(confidence_level, "confidence_level_out_of_range", "confidence level")
    conf = np.asarray(confidences, dtype=np.float64)
    ok = np.asarray(correct)
    if conf.ndim != 1 or ok.shape != conf.shape or not np.isfinite(conf).all():
        raise AnnotationError(
            "bad_calibration_data", "confidences and correct must be equal-length 1-D arrays"
        )
    if len(conf) == 0:
        raise AnnotationError("no_calibration_items", "calibration needs human-labelled items")
    if ok.dtype != np.bool_:
        raise AnnotationError("bad_calibration_data", "correct must be booleans")
    order = np.argsort(-conf, kind="stable")
    sorted_conf = conf[order]
    hits = np.cumsum(ok[order])
    # Candidates: the last position of each distinct confidence (items tied with t are all above t).
    last = np.flatnonzero(np.r_[sorted_conf[1:] != sorted_conf[:-1], True])
    k, n = hits[last], last + 1
    with np.errstate(invalid="ignore"):
        bounds = np.where(k > 0, beta.ppf(1.0 - confidence_level, np.maximum(k, 1), n - k + 1), 0.0)
    passing = np.flatnonzero(bounds >= target_precision)
    if len(passing) == 0:
        return ThresholdChoice(
            threshold=None,
            target_precision=target_precision,
            confidence_level=confidence_level,
            precision_lower_bound=0.0,
            observed_precision=math.nan,
            calibration_coverage=0.0,
            calibration_items=len(conf),
        )
    best = int(last[passing[-1]])  # the lowest passing threshold: the largest set
    bound = float(bounds[passing[-1]])
    return ThresholdChoice(
        threshold=float(sorted_conf[best]),
        target_precision=target_precision,
        confidence_level=confidence_level,
        precision_lower_bound=bound,
        observed_precision=float(hits[best]) / (best + 1),
        calibration_coverage=(best + 1) / len(conf),
        calibration_items=len(conf),
    )


def coverage(confidences: np.ndarray, threshold: float | None) -> float:
    """Share of items whose confidence is at or above ``threshold`` (0.0 for None or no items)."""
    conf = np.asarray(confidences, dtype=np.float64)
    if threshold is None or conf.size == 0:
        return 0.0
    return float(np.mean(conf >= threshold))


def _check_fraction(value: float, code: str, what: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 < float(value) < 1.0:
        raise AnnotationError(code, f"the {what} must be a number strictly between 0 and 1")
