"""Confident learning flags flipped labels, worst first."""

from __future__ import annotations

import numpy as np
import pytest

from tests.training.annotation.test_proposer import clusters
from training.annotation import AnnotationError
from training.annotation.proposer import out_of_sample_probabilities
from training.annotation.quality import find_label_errors


def test_flipped_labels_are_flagged_and_ranked_first():
    x, y = clusters(400, n_classes=3, spread=0.4, seed=5)
    rng = np.random.default_rng(0)
    flipped = rng.choice(400, size=20, replace=False)
    noisy = y.copy()
    noisy[flipped] = (noisy[flipped] + 1) % 3
    issues = find_label_errors(noisy, out_of_sample_probabilities(x, noisy, n_classes=3))
    top = issues.ranked[:20]
    assert len(np.intersect1d(top, flipped)) >= 16  # recall@k of at least 80 %
    assert issues.quality.shape == (400,)
    # Ranked by the quality score, lowest first.
    assert np.all(np.diff(issues.quality[issues.ranked]) >= 0)
    # Clean labels are mostly left alone.
    assert len(np.setdiff1d(issues.ranked, flipped)) <= 10


def test_clean_separable_labels_flag_nothing():
    x, y = clusters(200, n_classes=2, spread=0.1, seed=2)
    issues = find_label_errors(y, out_of_sample_probabilities(x, y, n_classes=2))
    assert len(issues.ranked) == 0


@pytest.mark.parametrize(
    ("labels", "probabilities", "code"),
    [
        ([], np.zeros((0, 2)), "no_labels"),
        ([0, 2], [[0.5, 0.5], [0.5, 0.5]], "label_outside_set"),
        ([0, 0], [[0.5, 0.5], [0.5, 0.5]], "label_without_examples"),
        ([0, 1, 1], [[0.5, 0.5], [0.5, 0.5]], "bad_probabilities"),
    ],
)
def test_bad_input_is_refused_with_a_code(labels, probabilities, code):
    with pytest.raises(AnnotationError) as info:
        find_label_errors(np.asarray(labels, dtype=np.int64), np.asarray(probabilities, dtype=float))
    assert info.value.code == code
