"""Classification metrics from a confusion matrix: the one definition the training loops (a
member's held-out split) and the ServerApp (the members' pooled confusion matrices) both use.

Light on purpose (numpy only): the ServerApp pools metrics without loading torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["classification_metrics", "confusion_metrics"]


def confusion_metrics(confusion: npt.ArrayLike, *, label_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 (over labels present in truth or predictions), per-class F1, the
    confusion matrix (``confusion[true][predicted]``) and the number of examples ``n``.

    A label absent from both the truth and the predictions has no defined F1 (None) and is left
    out of ``macro_f1``, as in scikit-learn's default. Hand-written (a dozen lines of numpy) rather
    than a dependency on scikit-learn.
    """
    matrix = np.asarray(confusion, dtype=np.int64)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    per_class: dict[str, float | None] = {}
    present: list[float] = []
    for i, name in enumerate(label_names):
        if support[i] == 0 and predicted[i] == 0:
            per_class[name] = None
            continue
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); 0 when it never hits.
        f1 = float(2 * tp[i] / (support[i] + predicted[i]))
        per_class[name] = f1
        present.append(f1)
    n = int(matrix.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(np.mean(present)) if present else 0.0,
        "per_class_f1": per_class,
        "confusion": matrix.tolist(),
        "n": n,
    }


def classification_metrics(
    y_true: npt.ArrayLike, y_pred: npt.ArrayLike, *, label_names: Sequence[str]
) -> dict[str, Any]:
    """``confusion_metrics`` of the class ids ``y_true`` (truth) against ``y_pred`` (predictions)."""
    k = len(label_names)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)), 1)
    return confusion_metrics(confusion, label_names=label_names)
