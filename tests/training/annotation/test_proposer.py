"""The proposer: logistic regression on embeddings, probabilities over the whole label set."""

from __future__ import annotations

import numpy as np
import pytest

from training.annotation import AnnotationError
from training.annotation.proposer import fit, out_of_sample_probabilities


def clusters(n: int, *, n_classes: int = 3, dim: int = 8, spread: float = 0.3, seed: int = 0):
    """Unit-norm points around one random centre per class, and their class ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim))
    y = np.arange(n) % n_classes
    x = centres[y] + spread * rng.normal(size=(n, dim))
    return x / np.linalg.norm(x, axis=1, keepdims=True), y


def test_proposes_the_right_labels_with_probabilities_that_sum_to_one():
    x, y = clusters(300)
    model = fit(x[:150], y[:150], n_classes=3)
    proposals = model.propose(x[150:])
    assert proposals.probabilities.shape == (150, 3)
    np.testing.assert_allclose(proposals.probabilities.sum(axis=1), 1.0)
    assert np.mean(proposals.label_ids == y[150:]) > 0.95
    np.testing.assert_allclose(proposals.confidences, proposals.probabilities.max(axis=1))
    assert proposals.label_ids.dtype == np.int64


def test_a_label_without_examples_gets_probability_zero():
    x, y = clusters(90)
    seen = y < 2
    proposals = fit(x[seen], y[seen], n_classes=3).propose(x)
    assert proposals.probabilities.shape == (90, 3)
    assert np.all(proposals.probabilities[:, 2] == 0.0)
    assert set(proposals.label_ids.tolist()) <= {0, 1}


def test_out_of_sample_probabilities_are_less_sure_of_noisy_labels_than_in_sample():
    x, y = clusters(200, n_classes=2, spread=0.6, seed=3)
    noisy = y.copy()
    noisy[:20] = 1 - noisy[:20]
    oos = out_of_sample_probabilities(x, noisy, n_classes=2, seed=0)
    in_sample = fit(x, noisy, n_classes=2).propose(x).probabilities
    assert oos.shape == (200, 2)
    given_oos = oos[np.arange(20), noisy[:20]].mean()
    given_in = in_sample[np.arange(20), noisy[:20]].mean()
    assert given_oos < given_in
    assert given_oos < 0.5  # the flipped labels look wrong to a model that did not see them


@pytest.mark.parametrize(
    ("labels", "n_classes", "code"),
    [
        ([0, 0, 0, 0], 2, "too_few_labels"),
        ([0, 1, 2, 1], 2, "label_outside_set"),
        ([0, 1, -1, 1], 2, "label_outside_set"),
        ([0, 1, 1], 2, "labels_shape_mismatch"),
        ([0.0, 1.0, 0.0, 1.0], 2, "label_outside_set"),
        ([0, 1, 0, 1], 1, "too_few_classes"),
    ],
)
def test_bad_labels_are_refused_with_a_code(labels, n_classes, code):
    x, _ = clusters(4, n_classes=2)
    with pytest.raises(AnnotationError) as info:
        fit(x, np.asarray(labels), n_classes=n_classes)
    assert info.value.code == code


def test_bad_embeddings_and_too_few_examples_for_cross_validation():
    x, _y = clusters(10, n_classes=2)
    with pytest.raises(AnnotationError) as info:
        fit(np.full((4, 3), np.nan), np.array([0, 1, 0, 1]), n_classes=2)
    assert info.value.code == "bad_embeddings"
    with pytest.raises(AnnotationError) as cv:
        out_of_sample_probabilities(x[:3], np.array([0, 1, 0]), n_classes=2)
    assert cv.value.code == "too_few_labels"
