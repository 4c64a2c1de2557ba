"""Model and tokenizer factory, LoRA wrapping, device and mixed-precision selection.

Models are only ever loaded from local directories (``local_files_only=True``): the packaged
MiniLM-L6 or a directory the operator put on disk. There is no model hub at run time.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import torch
from torch import nn

from training.config import TrainConfig, TrainingConfigError, resolve_base_model
from training.seed import seed_everything

__all__ = [
    "MeanPooledClassifier",
    "autocast",
    "autocast_dtype",
    "build_model_and_tokenizer",
    "count_parameters",
    "make_grad_scaler",
    "make_optimizer",
    "mean_pooled",
    "resolve_base_model",
    "select_device",
]


def select_device(prefer: str | torch.device | None = None) -> torch.device:
    """CUDA when available, CPU otherwise; ``prefer`` (e.g. ``"cpu"``) overrides.

    Asking for CUDA on a machine without it is an error rather than a silent CPU fallback, since
    the caller presumably sized the job for a GPU.
    """
    if prefer is not None:
        device = torch.device(prefer)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise TrainingConfigError("CUDA was requested but is not available on this machine")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_dtype(device: torch.device, *, enabled: bool = True) -> torch.dtype | None:
    """The autocast dtype for ``device``: bf16 on CUDA when supported, else fp16; None on CPU.

    CPU autocast (bf16) is slower than fp32 on most CPUs and changes numerics, so it is not used.
    """
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast`` when ``dtype`` is set, a no-op otherwise."""
    if dtype is None:
        yield
    else:
        with torch.autocast(device_type=device.type, dtype=dtype):
            yield


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def make_optimizer(
    params: list[nn.Parameter], *, kind: Literal["adamw", "sgd"], learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    """A fresh optimiser over ``params``: AdamW, or plain SGD (``TrainConfig.optimizer``)."""
    if kind == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=learning_rate, weight_decay=weight_decay)


def mean_pooled(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The sentence vector all-MiniLM-L6-v2 was trained to produce: the mean of the token states
    ``(batch, tokens, hidden)`` over ``attention_mask`` (padding left out), L2-normalised."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    pooled = (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(pooled, p=2, dim=1)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    # Loading a base encoder into a *ForSequenceClassification model always reports the new,
    # randomly initialised head; that is expected here and only clutters members' logs.
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bar_was_enabled = hf_logging.is_progress_bar_enabled()
    # transformers' logging helpers carry no annotations.
    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        with warnings.catch_warnings():
            # peft (0.21) calls a transformers API that transformers 5 deprecates; not actionable here.
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            yield
    finally:
        hf_logging.set_verbosity(previous)
        if bar_was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def build_model_and_tokenizer(config: TrainConfig) -> tuple[nn.Module, Any]:
    """Build the classifier and its tokenizer as ``config`` describes, on the CPU.

    - The encoder comes from ``config.base_model``; a fresh classification head with
      ``len(config.labels)`` outputs and ``id2label``/``label2id`` from the label order is added.
    - ``config.pooling == "mean"``: the head reads the mean-pooled sentence vector
      (``MeanPooledClassifier``) instead of the encoder's CLS pooler.
    - ``config.head_only``: only the classifier head trains (no adapters, encoder frozen).
    - Else under LoRA, ``peft`` wraps the model: adapters on ``config.lora_target_modules``, the
      classifier head trainable (peft's ``modules_to_save``), everything else frozen. Without
      LoRA every parameter trains.
    - Torch is seeded with ``config.seed`` first, so the head (and adapters) start identically on
      every party that builds the same configuration.

    Move the model to a device with ``model.to(select_device())``.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_base_model(config.base_model)
    seed_everything(config.seed)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise TrainingConfigError(f"cannot load a tokenizer from {str(path)!r}: {exc}") from exc
    try:
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(
                str(path),
                local_files_only=True,
                num_labels=len(config.labels),
                id2label=config.id2label,
                label2id=config.label2id,
                problem_type="single_label_classification",
                # A directory holding an already fine-tuned classifier with another label count
                # still loads: its head is replaced by a fresh one of the right shape.
                ignore_mismatched_sizes=True,
            )
    except (OSError, ValueError) as exc:
        raise TrainingConfigError(
            f"cannot load a sequence-classification model from {str(path)!r}: {exc}"
        ) from exc

    if config.pooling == "mean":
        model = MeanPooledClassifier(model)
    if config.head_only:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name.startswith("classifier."))
    elif config.lora:
        with _quiet_transformers():
            model = _wrap_lora(model, config)
    else:
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    return model, tokenizer


class MeanPooledClassifier(nn.Module):
    """A linear head over the mean of the encoder's token states (attention mask applied),
    L2-normalised: the sentence vector all-MiniLM-L6-v2 was trained to produce, where the CLS
    pooler of ``*ForSequenceClassification`` reads a token that model was never trained to fill.

    Built from a loaded ``*ForSequenceClassification`` model: its encoder (``base_model``) and a
    fresh linear head of the right shape (its own head, pooler and dropout are not used); answers
    like it (``.loss`` when ``labels`` are given, ``.logits``), and its ``config`` is the encoder's,
    so ``id2label`` and ``num_labels`` stay where callers look for them.
    """

    def __init__(self, classifier_model: nn.Module) -> None:
        super().__init__()
        hf_model: Any = classifier_model
        self.config = hf_model.config
        self.encoder = hf_model.base_model
        self.classifier = nn.Linear(int(self.config.hidden_size), int(self.config.num_labels))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        **encoder_inputs: Any,
    ) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        states = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, **encoder_inputs
        ).last_hidden_state
        logits = self.classifier(mean_pooled(states, attention_mask))
        loss = None if labels is None else nn.functional.cross_entropy(logits.float(), labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def _wrap_lora(model: nn.Module, config: TrainConfig) -> nn.Module:
    from peft import LoraConfig, TaskType, get_peft_model

    lora_config = LoraConfig(
        task_type=TaskType.SEQ_CLS,  # makes the classifier head trainable and saved (modules_to_save)
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
    )
    try:
        return get_peft_model(model, lora_config)
    except ValueError as exc:
        linear_names = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, nn.Linear)
            }
        )
        raise TrainingConfigError(
            f"LoRA target modules {list(config.lora_target_modules)!r} do not match this model "
            f"(its linear layers are named {linear_names!r}): {exc}"
        ) from exc
