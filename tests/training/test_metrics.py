"""Classification metrics: one definition, from a confusion matrix, for a split and for pooled splits."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from training.metrics import classification_metrics, confusion_metrics


@given(
    pairs=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2)), min_size=1, max_size=60),
    cut=st.integers(0, 60),
)
def test_pooled_confusions_give_the_metrics_of_the_union(pairs, cut):
    labels = ["a", "b", "c"]
    y_true = np.array([t for t, _ in pairs])
    y_pred = np.array([p for _, p in pairs])
    whole = classification_metrics(y_true, y_pred, label_names=labels)
    first = classification_metrics(y_true[:cut], y_pred[:cut], label_names=labels)
    second = classification_metrics(y_true[cut:], y_pred[cut:], label_names=labels)
    pooled = confusion_metrics(
        np.array(first["confusion"]) + np.array(second["confusion"]), label_names=labels
    )
    assert pooled == whole
    assert whole["n"] == len(pairs) and sum(map(sum, whole["confusion"])) == len(pairs)


def test_empty_confusion_is_zero_not_an_error():
    metrics = confusion_metrics(np.zeros((2, 2), dtype=np.int64), label_names=["a", "b"])
    assert metrics == {
        "accuracy": 0.0,
        "macro_f1": 0.0,
        "per_class_f1": {"a": None, "b": None},
        "confusion": [[0, 0], [0, 0]],
        "n": 0,
    }


def test_the_server_pools_with_the_same_function():
    from federation.flower.server_app import pooled_metrics

    members = [[[3, 1], [0, 4]], [[1, 0], [1, 1]]]
    assert pooled_metrics(members, ["a", "b"]) == confusion_metrics([[4, 1], [1, 5]], label_names=["a", "b"])
    assert pooled_metrics([], ["a", "b"]) == {}
