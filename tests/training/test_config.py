"""TrainConfig: validation with clear messages, JSON transport."""

from __future__ import annotations

import json

import pytest

from training.config import (
    DEFAULT_LR_FULL,
    DEFAULT_LR_LORA,
    TrainConfig,
    TrainingConfigError,
    resolve_base_model,
)


def test_defaults_use_the_packaged_minilm():
    config = TrainConfig(labels=("ham", "spam"))
    assert config.base_model == "minilm-l6"
    assert (resolve_base_model("minilm-l6") / "config.json").is_file()
    assert config.lora and config.lora_r == 8 and config.lora_alpha == 16
    assert config.lora_target_modules == ("query", "value")
    assert config.effective_learning_rate == DEFAULT_LR_LORA
    assert config.replace(lora=False).effective_learning_rate == DEFAULT_LR_FULL
    assert config.replace(learning_rate=1e-3).effective_learning_rate == 1e-3
    assert config.label2id == {"ham": 0, "spam": 1} and config.id2label == {0: "ham", 1: "spam"}


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"labels": ()}, "at least two classes"),
        ({"labels": ("spam",)}, "at least two classes"),
        ({"labels": ("ham", "spam", "ham")}, "duplicated: ['ham']"),
        ({"labels": ("ham", "")}, "non-empty strings"),
        ({"labels": "ham,spam"}, "labels must be a list"),
        ({"local_epochs": 0}, "local_epochs must be a positive integer"),
        ({"batch_size": -1}, "batch_size must be a positive integer"),
        ({"lora_r": 0}, "lora_r must be a positive integer"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0.0"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"fedprox_mu": -0.1}, "fedprox_mu must be a finite number >= 0.0"),
        ({"lora_dropout": 1.0}, "lora_dropout"),
        ({"seed": -1}, "seed must be an integer"),
        ({"lora": "yes"}, "lora must be true or false"),
        ({"lora_target_modules": ()}, "lora_target_modules must be a non-empty list"),
        ({"text_column": "x", "label_column": "x"}, "must differ"),
    ],
)
def test_invalid_values_are_refused_with_a_clear_message(changes, fragment):
    values = {"labels": ("ham", "spam"), **changes}
    with pytest.raises(TrainingConfigError) as info:
        TrainConfig(**values)
    assert fragment in str(info.value)


def test_several_problems_are_reported_together():
    with pytest.raises(TrainingConfigError) as info:
        TrainConfig(labels=("a",), batch_size=0, local_epochs=0)
    message = str(info.value)
    assert "labels" in message and "batch_size" in message and "local_epochs" in message


def test_unknown_base_model_is_refused(tmp_path):
    with pytest.raises(TrainingConfigError, match="no hub at run time"):
        TrainConfig(labels=("a", "b"), base_model="bert-base-uncased")
    with pytest.raises(
        TrainingConfigError, match="neither 'minilm-l6' nor an existing local model directory"
    ):
        TrainConfig(labels=("a", "b"), base_model=str(tmp_path / "missing"))
    with pytest.raises(TrainingConfigError, match=r"no config\.json"):
        TrainConfig(labels=("a", "b"), base_model=str(tmp_path))
    with pytest.raises(TrainingConfigError):
        TrainConfig(labels=("a", "b"), base_model="")


def test_local_model_directory_is_accepted(tiny_model_dir):
    config = TrainConfig(labels=("a", "b"), base_model=str(tiny_model_dir))
    assert resolve_base_model(config.base_model) == tiny_model_dir.resolve()


def test_json_round_trip():
    config = TrainConfig(labels=("ham", "spam"), lora_r=4, fedprox_mu=0.01, max_steps=10, learning_rate=2e-4)
    data = json.loads(json.dumps(config.to_dict()))
    assert data["labels"] == ["ham", "spam"]
    again = TrainConfig.from_dict(data)
    assert again == config
    assert isinstance(again.labels, tuple) and isinstance(again.lora_target_modules, tuple)


def test_from_dict_refuses_unknown_keys_and_missing_labels():
    with pytest.raises(TrainingConfigError, match=r"unknown training configuration keys: \['lora_rank'\]"):
        TrainConfig.from_dict({"labels": ["a", "b"], "lora_rank": 4})
    with pytest.raises(TrainingConfigError, match="needs 'labels'"):
        TrainConfig.from_dict({})
    with pytest.raises(TrainingConfigError, match="must be an object"):
        TrainConfig.from_dict(["a", "b"])


def test_config_is_frozen():
    config = TrainConfig(labels=("a", "b"))
    with pytest.raises(AttributeError):
        config.lora_r = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"max_length": 5000}, "max_length must be a positive integer (at most 4096), got 5000"),
        ({"weight_decay": True}, "weight_decay must be a finite number >= 0.0 and <= 1.0, got True"),
        ({"batch_size": "16"}, "batch_size must be a positive integer, got '16'"),
        (
            {"learning_rate": float("inf")},
            "learning_rate must be a finite number > 0.0 and <= 100.0, got inf",
        ),
        ({"pooling": "max"}, "pooling must be 'cls' or 'mean', got 'max'"),
        ({"optimizer": "adam"}, "optimizer must be 'adamw' or 'sgd', got 'adam'"),
        ({"head_only": "yes"}, "head_only must be true or false, got 'yes'"),
        (
            {"lora_target_modules": ("query", "")},
            "lora_target_modules must be a non-empty list of module names",
        ),
    ],
)
def test_each_rule_is_one_readable_sentence(changes, message):
    with pytest.raises(TrainingConfigError) as info:
        TrainConfig(**{"labels": ("ham", "spam"), **changes})
    assert message in str(info.value)
    assert str(info.value).count(message.split(" must")[0] + " must") == 1  # one sentence per rule
