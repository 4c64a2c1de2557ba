"""Likely label errors by confident learning (cleanlab), ranked for a review queue.

Give it the labels people (or the model) assigned and *out-of-sample* class probabilities
(``proposer.out_of_sample_probabilities``): in-sample probabilities have memorised the labels and
hide their errors. cleanlab's confident joint (``prune_by_noise_rate``) decides which items are
flagged; the flagged items are ordered by the self-confidence label quality score (the predicted
probability of the given label), the least plausible label first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from training.annotation.errors import AnnotationError

__all__ = ["LabelIssues", "find_label_errors"]


@dataclass(frozen=True)
class LabelIssues:
    """``ranked``: indices of flagged items, worst first; ``quality``: per-item score in [0, 1]."""

    ranked: np.ndarray  # int64 (n_flagged,)
    quality: np.ndarray  # float64 (n,), lower = label less likely right


def find_label_errors(labels: np.ndarray, probabilities: np.ndarray) -> LabelIssues:
    """Flag and rank likely label errors; every label id must occur at least once."""
    y = np.asarray(labels)
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or y.ndim != 1 or len(y) != len(p) or not np.isfinite(p).all():
        raise AnnotationError("bad_probabilities", "need one row of class probabilities per label")
    if len(y) == 0:
        raise AnnotationError("no_labels", "there are no labelled items to check")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= p.shape[1]:
        raise AnnotationError("label_outside_set", f"label ids must be integers in [0, {p.shape[1]})")
    if len(np.unique(y)) < p.shape[1]:
        raise AnnotationError("label_without_examples", "every label must have at least one example")
    p = p / p.sum(axis=1, keepdims=True).clip(min=1e-12)
    y = y.astype(np.int64)
    ranked = find_label_issues(y, p, return_indices_ranked_by="self_confidence", n_jobs=1)
    quality = get_label_quality_scores(y, p, method="self_confidence")
    return LabelIssues(
        ranked=np.asarray(ranked, dtype=np.int64), quality=np.asarray(quality, dtype=np.float64)
    )
