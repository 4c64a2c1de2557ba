"""Which unlabelled items to ask people about next (active learning by uncertainty sampling).

Default strategy: **margin** (the gap between the two most probable labels; smallest first), which
equals least-confidence for two labels and is more robust than entropy with many. Until every label
has at least one human example the model cannot be trusted to rank, so the order is a seeded random
permutation instead.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from training.annotation.errors import AnnotationError

__all__ = ["STRATEGIES", "Strategy", "labelling_order", "uncertainty"]

Strategy = Literal["margin", "least_confidence", "entropy"]
STRATEGIES: tuple[Strategy, ...] = ("margin", "least_confidence", "entropy")


def uncertainty(probabilities: np.ndarray, *, strategy: Strategy = "margin") -> np.ndarray:
    """Per row, a score that is larger the less sure the model is."""
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2 or not np.isfinite(p).all():
        raise AnnotationError("bad_probabilities", "probabilities must be a finite items x labels array")
    if strategy == "margin":
        top2 = np.sort(p, axis=1)[:, -2:]
        return np.asarray(1.0 - (top2[:, 1] - top2[:, 0]))
    if strategy == "least_confidence":
        return np.asarray(1.0 - p.max(axis=1))
    if strategy == "entropy":
        q = np.clip(p, 1e-12, 1.0)
        return np.asarray(-(q * np.log(q)).sum(axis=1))
    raise AnnotationError("unknown_strategy", f"strategy must be one of {list(STRATEGIES)}")


def labelling_order(
    *,
    labels: np.ndarray,
    n_classes: int,
    probabilities: np.ndarray | None,
    strategy: Strategy = "margin",
    seed: int = 0,
) -> np.ndarray:
    """Indices of the unlabelled items, the one to ask about first first.

    ``labels`` holds a label id per item, or -1 where no person has labelled it yet.
    ``probabilities`` are the proposer's (items x labels), or None when there is no model yet.
    Uncertainty order when every label has an example and probabilities are given; otherwise a
    random permutation seeded with ``seed``. Ties keep a stable, seeded order.
    """
    y = np.asarray(labels)
    if y.ndim != 1 or (len(y) and (not np.issubdtype(y.dtype, np.integer) or y.max() >= n_classes)):
        raise AnnotationError("label_outside_set", f"labels must be integer ids in [0, {n_classes}) or -1")
    if len(y) and y.min() < -1:
        raise AnnotationError("label_outside_set", "unlabelled items are marked -1")
    unlabelled = np.flatnonzero(y == -1)
    rng = np.random.default_rng(seed)
    shuffled = unlabelled[rng.permutation(len(unlabelled))]
    every_label_seen = len(np.unique(y[y >= 0])) == n_classes
    if probabilities is None or not every_label_seen:
        return shuffled
    p = np.asarray(probabilities)
    if p.shape != (len(y), n_classes):
        raise AnnotationError("bad_probabilities", f"probabilities must have shape ({len(y)}, {n_classes})")
    scores = uncertainty(p[shuffled], strategy=strategy)
    return shuffled[np.argsort(-scores, kind="stable")]
