"""Active learning order: seeded random until every label has an example, then most uncertain first."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.annotation import AnnotationError
from training.annotation.active import STRATEGIES, labelling_order, uncertainty


def test_random_until_every_label_has_an_example_then_uncertainty():
    labels = np.array([0, -1, -1, 0, -1, -1])
    probabilities = np.array([[0.9, 0.1], [0.55, 0.45], [0.99, 0.01], [0.8, 0.2], [0.3, 0.7], [0.5, 0.5]])
    first = labelling_order(labels=labels, n_classes=2, probabilities=probabilities, seed=7)
    assert sorted(first.tolist()) == [1, 2, 4, 5]
    assert first.tolist() == labelling_order(labels=labels, n_classes=2, probabilities=None, seed=7).tolist()
    assert first.tolist() == labelling_order(labels=labels, n_classes=2, probabilities=None, seed=7).tolist()
    labels[3] = 1  # now both labels have an example
    ordered = labelling_order(labels=labels, n_classes=2, probabilities=probabilities, seed=7)
    assert ordered.tolist() == [5, 1, 4, 2]


def test_strategies_agree_for_two_labels_and_differ_with_three():
    p2 = np.array([[0.6, 0.4], [0.9, 0.1], [0.51, 0.49]])
    orders = {s: np.argsort(-uncertainty(p2, strategy=s)).tolist() for s in STRATEGIES}
    assert orders == {key: [2, 0, 1] for key in STRATEGIES}
    p3 = np.array([[0.5, 0.5, 0.0], [0.4, 0.3, 0.3]])
    margin = uncertainty(p3, strategy="margin")
    least = uncertainty(p3, strategy="least_confidence")
    assert margin[0] > margin[1] and least[1] > least[0]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=-1, max_value=2), min_size=1, max_size=40),
    st.integers(min_value=0, max_value=2**31),
    st.sampled_from(STRATEGIES),
)
def test_the_order_is_a_permutation_of_the_unlabelled_items(labels, seed, strategy):
    y = np.asarray(labels, dtype=np.int64)
    p = np.random.default_rng(seed).dirichlet(np.ones(3), size=len(y))
    order = labelling_order(labels=y, n_classes=3, probabilities=p, strategy=strategy, seed=seed)
    assert sorted(order.tolist()) == np.flatnonzero(y == -1).tolist()
    if set(y[y >= 0].tolist()) == {0, 1, 2} and len(order) > 1:
        scores = uncertainty(p[order], strategy=strategy)
        assert np.all(np.diff(scores) <= 1e-12)  # most uncertain first


@pytest.mark.parametrize(
    ("labels", "probabilities", "code"),
    [
        ([0, 2, -1], None, "label_outside_set"),
        ([0, -2, -1], None, "label_outside_set"),
        ([0, 1, -1], [[0.5, 0.5]], "bad_probabilities"),
    ],
)
def test_bad_input_is_refused_with_a_code(labels, probabilities, code):
    with pytest.raises(AnnotationError) as info:
        labelling_order(
            labels=np.asarray(labels),
            n_classes=2,
            probabilities=None if probabilities is None else np.asarray(probabilities),
        )
    assert info.value.code == code


def test_no_items_no_order():
    assert labelling_order(labels=np.array([]), n_classes=2, probabilities=None).tolist() == []


def test_unknown_strategy():
    with pytest.raises(AnnotationError) as info:
        uncertainty(np.array([[0.5, 0.5]]), strategy="random")  # type: ignore[arg-type]
    assert info.value.code == "unknown_strategy"
