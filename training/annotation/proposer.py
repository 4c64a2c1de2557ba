"""A label proposer: logistic regression on sentence embeddings, retrained as labels accumulate.

Logistic regression fits by log-loss, so its probabilities are close to calibrated without a
separate calibration step (which would need more labels than a young project has); the threshold
for automatic labelling is calibrated anyway on out-of-sample predictions
(:func:`out_of_sample_probabilities`, used by ``auto`` and ``quality``). Fitting a few thousand
384-dimensional rows takes well under a second on one core, so a worker can refit on every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from training.annotation.errors import AnnotationError

__all__ = ["FederatedHead", "Proposals", "Proposer", "federated_head", "fit", "out_of_sample_probabilities"]

#: Inverse L2 strength. Unit-norm embeddings have small coordinates, so the default C=1 underfits.
DEFAULT_C = 10.0


@dataclass(frozen=True)
class Proposals:
    """Per item: the proposed label id, its probability (the confidence), all class probabilities."""

    label_ids: np.ndarray  # int64 (n,)
    confidences: np.ndarray  # float64 (n,)
    probabilities: np.ndarray  # float64 (n, n_classes)


@dataclass(frozen=True, eq=False)
class Proposer:
    """A fitted proposer over ``n_classes`` labels (ids ``0 .. n_classes-1``)."""

    model: LogisticRegression
    n_classes: int

    def propose(self, embeddings: np.ndarray) -> Proposals:
        """Label, confidence and probabilities for every row of ``embeddings``.

        Classes absent from the training labels get probability 0 (never proposed).
        """
        x = _check_embeddings(embeddings)
        probabilities = np.zeros((len(x), self.n_classes), dtype=np.float64)
        if len(x):
            probabilities[:, self.model.classes_] = self.model.predict_proba(x)
        label_ids = probabilities.argmax(axis=1).astype(np.int64)
        confidences = probabilities[np.arange(len(x)), label_ids]
        return Proposals(label_ids=label_ids, confidences=confidences, probabilities=probabilities)


def fit(embeddings: np.ndarray, labels: np.ndarray, *, n_classes: int, c: float = DEFAULT_C) -> Proposer:
    """Fit on the labelled rows; needs at least two distinct labels among them."""
    x = _check_embeddings(embeddings)
    y = _check_labels(labels, n_classes=n_classes, n_rows=len(x))
    if len(np.unique(y)) < 2:
        raise AnnotationError("too_few_labels", "the proposer needs examples of at least two labels")
    model = LogisticRegression(C=c, max_iter=1000)
    model.fit(x, y)
    return Proposer(model=model, n_classes=n_classes)


def out_of_sample_probabilities(
    embeddings: np.ndarray, labels: np.ndarray, *, n_classes: int, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Cross-validated class probabilities: each row predicted by a model that did not see it.

    Stratified ``folds``-fold (fewer when the rarest label has fewer rows; at least two examples of
    every present label are needed). These are what threshold calibration and confident learning
    must use: in-sample probabilities are overconfident.
    """
    x = _check_embeddings(embeddings)
    y = _check_labels(labels, n_classes=n_classes, n_rows=len(x))
    present, counts = np.unique(y, return_counts=True)
    if len(present) < 2 or counts.min() < 2:
        raise AnnotationError(
            "too_few_labels", "out-of-sample predictions need at least two examples of two or more labels"
        )
    splits = max(2, min(folds, int(counts.min())))
    out = np.zeros((len(x), n_classes), dtype=np.float64)
    for train, test in StratifiedKFold(n_splits=splits, shuffle=True, random_state=seed).split(x, y):
        out[test] = fit(x[train], y[train], n_classes=n_classes).propose(x[test]).probabilities
    return out


def _check_embeddings(embeddings: np.ndarray) -> np.ndarray:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise AnnotationError("bad_embeddings", "embeddings must be a finite 2-D array (items x dimensions)")
    return x


def _check_labels(labels: np.ndarray, *, n_classes: int, n_rows: int) -> np.ndarray:
    if n_classes < 2:
        raise AnnotationError("too_few_classes", "a label set has at least two labels")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n_rows:
        raise AnnotationError("labels_shape_mismatch", f"{n_rows} embeddings but {y.size} labels")
    if len(y) and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= n_classes):
        raise AnnotationError("label_outside_set", f"label ids must be integers in [0, {n_classes})")
    return y.astype(np.int64)


@dataclass(frozen=True, eq=False)
class FederatedHead:
    """A federated job's linear head over the mean-pooled sentence vector, in a project's label order.

    A job trained with ``pooling="mean"`` and ``head_only=True`` left its encoder as shipped: its model
    is ``softmax(W · v + b)`` over exactly the L2-normalised mean-pooled vector ``v`` the annotation
    embedder produces with the same encoder, so it proposes labels from the stored embeddings alone.
    """

    weight: np.ndarray  # (n_classes, dimension), rows in the project's label order
    bias: np.ndarray  # (n_classes,)

    def propose(self, embeddings: np.ndarray) -> Proposals:
        x = _check_embeddings(embeddings)
        if x.shape[1] != self.weight.shape[1]:
            raise AnnotationError("model_incompatible", "the model's head does not fit these embeddings")
        logits = x @ self.weight.T + self.bias
        logits -= logits.max(axis=1, keepdims=True)
        probabilities = np.exp(logits)
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        label_ids = probabilities.argmax(axis=1).astype(np.int64)
        confidences = probabilities[np.arange(len(x)), label_ids]
        return Proposals(label_ids=label_ids, confidences=confidences, probabilities=probabilities)


def federated_head(model_file: bytes, *, labels: Sequence[str], base_model: str) -> FederatedHead:
    """The head of a federated job's model file (safetensors, as the ServerApp writes it) for a project
    with ``labels`` whose items were embedded with ``base_model``. ``model_incompatible`` unless the
    job trained a head only, over mean pooling, of that encoder, for the same label set."""
    import json

    from safetensors.numpy import load

    def incompatible(why: str) -> AnnotationError:
        return AnnotationError("model_incompatible", f"the federated model cannot propose here: {why}")

    try:
        header_size = int.from_bytes(model_file[:8], "little")
        header = json.loads(model_file[8 : 8 + header_size])
        config = json.loads(header.get("__metadata__", {}).get("train_config", "{}"))
        state = load(model_file)
    except (ValueError, TypeError, KeyError) as exc:
        raise incompatible(f"unreadable model file ({exc.__class__.__name__})") from None
    if config.get("base_model") != base_model:
        raise incompatible("it fine-tuned another encoder")
    if config.get("pooling") != "mean" or config.get("head_only") is not True:
        raise incompatible("it did not train a head over the mean-pooled vector alone")
    trained = [str(label) for label in config.get("labels", [])]
    if sorted(trained) != sorted(labels) or len(set(trained)) != len(trained):
        raise incompatible("its label set differs")
    weight, bias = state.get("classifier.weight"), state.get("classifier.bias")
    if weight is None or bias is None or weight.shape[0] != len(trained) or bias.shape != (len(trained),):
        raise incompatible("it holds no classification head of the label set's size")
    order = [trained.index(label) for label in labels]
    return FederatedHead(weight=weight[order].astype(np.float64), bias=bias[order].astype(np.float64))
