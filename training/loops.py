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
from training.metrics import classification_metrics
from training.models import autocast, autocast_dtype, make_grad_scaler, make_optimizer
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


def _trainable_named(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise TrainingError("the model has no trainable parameters")
    return named


def _fedprox_anchors(
    model: nn.Module,
    named: Sequence[tuple[str, nn.Parameter]],
    *,
    mu: float,
    global_state: Mapping[str, torch.Tensor] | None,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(parameter, its global value in fp32) for FedProx's term; none when ``mu`` is 0."""
    if mu <= 0:
        return []
    reference = global_state if global_state is not None else get_trainable_state(model)
    missing = [name for name, _ in named if name not in reference]
    if missing:
        raise TrainableStateError(
            f"global_state lacks {len(missing)} trainable parameter(s), e.g. {missing[0]!r}"
        )
    return [(p, reference[name].to(device=device, dtype=torch.float32)) for name, p in named]


@dataclass
class _Stepper:
    """One call's optimiser, gradient scaler and FedProx anchors; ``prox_sum`` adds up the
    proximal term of every step."""

    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler
    anchors: list[tuple[torch.Tensor, torch.Tensor]]
    mu: float
    max_grad_norm: float | None
    device: torch.device
    prox_sum: torch.Tensor

    def step(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One optimiser step on ``batch`` (already on the device); the task loss in fp32."""
        with autocast(self.device, self.amp_dtype):
            output = model(**batch)
        task_loss: torch.Tensor = output.loss.float()
        total = task_loss
        if self.anchors:
            # Computed in fp32 outside autocast: tiny differences squared underflow in half precision.
            zero = torch.zeros((), device=self.device, dtype=torch.float32)
            prox = 0.5 * self.mu * sum(((p.float() - g).pow(2).sum() for p, g in self.anchors), zero)
            total = total + prox
            self.prox_sum += prox.detach().double()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()  # type: ignore[no-untyped-call]  # Tensor.backward is unannotated
        if self.max_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return task_loss


def _stepper(
    model: nn.Module,
    *,
    config: TrainConfig,
    device: torch.device,
    global_state: Mapping[str, torch.Tensor] | None,
) -> _Stepper:
    named = _trainable_named(model)
    params = [p for _, p in named]
    optimizer = make_optimizer(
        params,
        kind=config.optimizer,
        learning_rate=config.effective_learning_rate,
        weight_decay=config.weight_decay,
    )
    amp_dtype = autocast_dtype(device, enabled=config.mixed_precision)
    scaler = make_grad_scaler(device, amp_dtype)
    mu = float(config.fedprox_mu)
    anchors = _fedprox_anchors(model, named, mu=mu, global_state=global_state, device=device)
    return _Stepper(
        params=params,
        optimizer=optimizer,
        amp_dtype=amp_dtype,
        scaler=scaler,
        anchors=anchors,
        mu=mu,
        max_grad_norm=config.max_grad_norm,
        device=device,
        prox_sum=torch.zeros((), device=device, dtype=torch.float64),
    )


@dataclass
class _Progress:
    loss_sum: torch.Tensor  # task loss × examples, in fp64
    steps: int = 0
    examples: int = 0
    epochs: int = 0


def _run_epochs(
    model: nn.Module,
    loader: Iterable[Mapping[str, torch.Tensor]],
    stepper: _Stepper,
    *,
    config: TrainConfig,
    device: torch.device,
) -> _Progress:
    """``config.local_epochs`` passes over ``loader``, cut short after ``config.max_steps`` steps
    (a pass cut short is not counted in ``epochs``)."""
    progress = _Progress(loss_sum=torch.zeros((), device=device, dtype=torch.float64))
    for _ in range(config.local_epochs):
        for batch in loader:
            batch = _to_device(batch, device)
            task_loss = stepper.step(model, batch)
            n = int(batch["labels"].shape[0])
            progress.loss_sum += task_loss.detach().double() * n
            progress.examples += n
            progress.steps += 1
            if config.max_steps is not None and progress.steps >= config.max_steps:
                return progress
        progress.epochs += 1
    return progress


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
    (or ``config.max_steps`` optimiser steps, whichever comes first), with ``config.optimizer`` (AdamW or SGD).

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
    stepper = _stepper(model, config=config, device=device, global_state=global_state)
    progress = _run_epochs(model, loader, stepper, config=config, device=device)
    if progress.steps == 0:
        raise TrainingError("the data loader yielded no batches")
    loss = float(progress.loss_sum.item()) / progress.examples
    if not math.isfinite(loss):
        raise TrainingError("training diverged (loss is not finite); lower the learning rate")
    return TrainResult(
        loss=loss,
        proximal_loss=float(stepper.prox_sum.item()) / progress.steps,
        steps=progress.steps,
        examples=progress.examples,
        epochs=progress.epochs,
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
        hf_config: Any = model.config  # the transformers model's configuration
        return [], np.zeros((0, int(hf_config.num_labels)), dtype=np.float32)
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
