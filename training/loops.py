"""Train and evaluate loops, shared by federated clients and the centralised baseline.

Kept as plain loops (no ``transformers.Trainer``): a federated round is "set the global trainable
state, run a few local steps, hand back the trainable state", and the FedProx proximal term has to
sit inside the loss, both of which are simpler to get right in forty lines than through a
framework's callbacks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from training.config import TrainConfig, TrainingError
from training.models import autocast, autocast_dtype, make_grad_scaler
from training.params import TrainableStateError, get_trainable_state
from training.seed import seed_everything

__all__ = ["EvalResult", "TrainResult", "classification_metrics", "evaluate", "predict", "train"]


@dataclass(frozen=True)
class TrainResult:
    """What one ``train`` call did. ``loss`` is the mean task (cross-entropy) loss over the
    examples seen, without the proximal term, so FedAvg and FedProx runs compare directly."""

    loss: float
    proximal_loss: float  # mean FedProx term per step (0.0 when not used)
    steps: int
    examples: int
    epochs: int  # complete passes over the data (fewer than local_epochs if max_steps cut it short)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalResult:
    """Metrics on a labelled set. ``per_class_f1`` has every label; a label absent from both the
    truth and the predictions has no defined F1 (None) and is left out of ``macro_f1``, as in
    scikit-learn's default."""

    loss: float
    accuracy: float
    macro_f1: float
    per_class_f1: dict[str, float | None]
    confusion: list[list[int]]  # confusion[true][predicted]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    *,
    config: TrainConfig,
    device: torch.device,
    global_state: Mapping[str, torch.Tensor] | None = None,
    seed: int | None = None,
) -> TrainResult:
    """Train the model's trainable parameters for ``config.local_epochs`` passes over ``loader``
    (or ``config.max_steps`` optimiser steps, whichever comes first), with AdamW.

    - A fresh optimiser per call: in federated learning each round starts from the new global
      weights, and stale moment estimates from the previous round would point elsewhere.
    - Torch's RNG (dropout) is re-seeded with ``seed`` (default ``config.seed``), so a call is
      reproducible on its own; clients should vary ``seed`` by round.
    - FedProx: with ``config.fedprox_mu > 0`` the loss gets ``mu/2 * ||w - w_global||^2`` over the
      trainable parameters, which keeps a member with skewed data from drifting far from the
      global model. ``w_global`` is ``global_state`` if given, else the trainable weights at the
      start of this call (which, in a round, are the global weights just received).
    - On CUDA with ``config.mixed_precision``: autocast in bf16 (or fp16 with a gradient scaler).
    """
    started = time.perf_counter()
    seed_everything(config.seed if seed is None else seed)
    model.to(device)
    model.train()
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise TrainingError("the model has no trainable parameters")
    params = [p for _, p in named]
    optimizer = torch.optim.AdamW(params, lr=config.effective_learning_rate, weight_decay=config.weight_decay)
    amp_dtype = autocast_dtype(device, enabled=config.mixed_precision)
    scaler = make_grad_scaler(device, amp_dtype)

    anchors: list[tuple[torch.Tensor, torch.Tensor]] = []
    mu = float(config.fedprox_mu)
    if mu > 0:
        reference = global_state if global_state is not None else get_trainable_state(model)
        missing = [name for name, _ in named if name not in reference]
        if missing:
            raise TrainableStateError(
                f"global_state lacks {len(missing)} trainable parameter(s), e.g. {missing[0]!r}"
            )
        anchors = [(p, reference[name].to(device=device, dtype=torch.float32)) for name, p in named]

    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    prox_sum = torch.zeros((), device=device, dtype=torch.float64)
    steps = examples = epochs = 0
    done = False
    for _ in range(config.local_epochs):
        for batch in loader:
            batch = _to_device(batch, device)
            with autocast(device, amp_dtype):
                output = model(**batch)
            task_loss = output.loss.float()
            total = task_loss
            if anchors:
                # Computed in fp32 outside autocast: tiny differences squared underflow in half precision.
                prox = 0.5 * mu * sum((p.float() - g).pow(2).sum() for p, g in anchors)
                total = total + prox
                prox_sum += prox.detach().double()
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if config.max_grad_norm is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()

            n = int(batch["labels"].shape[0])
            loss_sum += task_loss.detach().double() * n
            examples += n
            steps += 1
            if config.max_steps is not None and steps >= config.max_steps:
                done = True
                break
        if done:
            break
        epochs += 1
    if steps == 0:
        raise TrainingError("the data loader yielded no batches")
    loss = float(loss_sum.item()) / examples
    if not math.isfinite(loss):
        raise TrainingError("training diverged (loss is not finite); lower the learning rate")
    return TrainResult(
        loss=loss,
        proximal_loss=float(prox_sum.item()) / steps,
        steps=steps,
        examples=examples,
        epochs=epochs,
        seconds=time.perf_counter() - started,
    )


@torch.no_grad()
def _logits_and_labels(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: torch.device,
    mixed_precision: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    model.to(device)
    was_training = model.training
    model.eval()
    amp_dtype = autocast_dtype(device, enabled=mixed_precision)
    all_logits, all_labels = [], []
    try:
        for batch in loader:
            batch = _to_device(batch, device)
            labels = batch.pop("labels", None)
            with autocast(device, amp_dtype):
                logits = model(**batch).logits
            all_logits.append(logits.float().cpu())
            if labels is not None:
                all_labels.append(labels.cpu())
    finally:
        model.train(was_training)
    if not all_logits:
        raise TrainingError("the data loader yielded no batches")
    return torch.cat(all_logits), (torch.cat(all_labels) if all_labels else None)


def evaluate(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    *,
    device: torch.device,
    mixed_precision: bool = True,
) -> EvalResult:
    """Loss (mean cross-entropy), accuracy, macro-F1, per-class F1 and confusion matrix.

    Label names come from the model's ``config.id2label`` (set by ``build_model_and_tokenizer``).
    """
    logits, labels = _logits_and_labels(model, loader, device=device, mixed_precision=mixed_precision)
    if labels is None:
        raise TrainingError("evaluate needs batches with labels")
    loss = float(nn.functional.cross_entropy(logits, labels).item())
    id2label = getattr(model.config, "id2label", None) or {}
    num_labels = logits.shape[1]
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(num_labels)]
    metrics = classification_metrics(labels.numpy(), logits.argmax(dim=1).numpy(), label_names=names)
    return EvalResult(loss=loss, **metrics)


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, *, label_names: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1 (over labels present in truth or predictions), per-class F1, confusion.

    Hand-written (a dozen lines of numpy) rather than a dependency on scikit-learn.
    """
    k = len(label_names)
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    per_class: dict[str, float | None] = {}
    present = []
    for i, name in enumerate(label_names):
        if support[i] == 0 and predicted[i] == 0:
            per_class[name] = None
            continue
        # F1 = 2TP / (2TP + FP + FN) = 2TP / (support + predicted); 0 when it never hits.
        f1 = float(2 * tp[i] / (support[i] + predicted[i]))
        per_class[name] = f1
        present.append(f1)
    n = len(y_true)
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(np.mean(present)) if present else 0.0,
        "per_class_f1": per_class,
        "confusion": confusion.tolist(),
        "n": n,
    }


def predict(
    model: nn.Module,
    *,
    tokenizer: Any,
    texts: Sequence[str],
    config: TrainConfig,
    device: torch.device,
) -> tuple[list[str], np.ndarray]:
    """Predicted label names and class probabilities ``(len(texts), num_labels)`` for raw texts."""
    if not texts:
        return [], np.zeros((0, int(model.config.num_labels)), dtype=np.float32)
    size = config.batch_size * 2  # no gradients: larger batches fit
    batches = (
        dict(
            tokenizer(
                list(texts[i : i + size]),
                padding=True,
                truncation=True,
                max_length=config.max_length,
                return_tensors="pt",
            )
        )
        for i in range(0, len(texts), size)
    )
    logits, _ = _logits_and_labels(model, batches, device=device, mixed_precision=config.mixed_precision)
    probs = torch.softmax(logits, dim=1).numpy()
    id2label = getattr(model.config, "id2label", None) or {}
    names = [str(id2label.get(int(i), id2label.get(str(int(i)), int(i)))) for i in probs.argmax(axis=1)]
    return names, probs
