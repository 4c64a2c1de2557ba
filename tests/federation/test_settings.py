"""Job settings: strategy selection and validation errors (no Flower process needed)."""

from __future__ import annotations

import pytest

from federation.flower.settings import (
    KNOWN_RUN_KEYS,
    FederationConfigError,
    JobSettings,
    NodeSettings,
    Participants,
)


@pytest.fixture
def base(tiny_model_dir):
    return {"labels": "ham,spam", "base-model": str(tiny_model_dir)}


def test_defaults_and_train_config(base):
    settings = JobSettings.from_run_config({**base, "num-rounds": 2, "learning-rate": 0.01, "max-steps": 0})
    assert settings.strategy == "fedavg" and settings.num_rounds == 2 and settings.min_clients == 2
    config = settings.train_config(text_column="SMS", label_column="Label")
    assert config.labels == ("ham", "spam") and config.text_column == "SMS"
    assert config.learning_rate == 0.01 and config.max_steps is None
    assert settings.participants.open


@pytest.mark.parametrize("mode", ["drop", "report", "off"])
def test_held_out_duplicates_are_dropped_unless_the_job_says_otherwise(base, mode):
    """``test-dedup``: what members do with held-out rows that duplicate a training row."""
    assert JobSettings.from_run_config(base).test_dedup == "drop"
    settings = JobSettings.from_run_config({**base, "test-dedup": mode})
    assert settings.test_dedup == mode and settings.to_public_dict()["test_dedup"] == mode


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam", "FedAdam"])
def test_strategy_selection(base, strategy):
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    from federation.flower.server_app import build_strategy

    settings = JobSettings.from_run_config({**base, "strategy": strategy, "proximal-mu": 0.1})
    built = build_strategy(settings)
    expected = {"fedavg": FedAvg, "fedprox": FedProx, "fedadam": FedAdam}[strategy.lower()]
    assert type(built) is expected
    if expected is FedProx:
        assert built.proximal_mu == 0.1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num-rounds": 0}, "num-rounds must be a positive integer"),
        ({"num-rounds": -3}, "num-rounds must be a positive integer"),
        ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd'"),
        (
            {"min-clients": 3, "participants": "org:acme,org:globex"},
            "min-clients (3) exceeds the number of participants",
        ),
        ({"round-timeout": 0.0}, "round-timeout must be a finite number > 0"),
        ({"strategy": "fedprox", "proximal-mu": 0.0}, "needs proximal-mu > 0"),
        ({"labels": "ham"}, "labels must name at least two classes"),
        ({"batch-size": 0}, "batch_size must be a positive integer"),
        ({"num-round": 3}, "unknown run-config keys ['num-round']"),
        ({"participants": "team:x"}, "expected 'org:<slug>'"),
        ({"callback-url": "ftp://x"}, "callback-url must be an http(s) URL"),
    ],
)
def test_validation_errors(base, overrides, message):
    with pytest.raises(FederationConfigError) as info:
        JobSettings.from_run_config({**base, **overrides})
    assert message in str(info.value)


def test_all_problems_reported_at_once(base):
    with pytest.raises(FederationConfigError) as info:
        JobSettings.from_run_config({**base, "num-rounds": 0, "strategy": "x"})
    assert "num-rounds" in str(info.value) and "unknown strategy" in str(info.value)


def test_unknown_base_model_is_refused():
    with pytest.raises(
        FederationConfigError, match="neither 'minilm-l6' nor an existing local model directory"
    ):
        JobSettings.from_run_config({"labels": "a,b", "base-model": "/nonexistent/model"})


def test_participants_parsing():
    p = Participants.parse("org:acme, globex, node:12, 34 ,*")
    assert p.organisations == {"acme", "globex"} and p.node_ids == {12, 34}
    assert p.admits(12, None) and p.admits(99, "acme") and not p.admits(99, "initech")
    assert Participants.parse("").open and Participants.parse("*").open
    assert p.declared == 4


def test_callback_token_is_masked(base):
    settings = JobSettings.from_run_config(
        {**base, "callback-url": "https://ch.example/cb", "callback-token": "s3cret"}
    )
    assert settings.to_public_dict()["callback_token"] == "***"


def test_node_settings():
    node = NodeSettings.from_node_config(
        {
            "data-path": "/d.tsv",
            "text-column": "SMS",
            "label-column": "Label",
            "organisation": "acme",
            "delimiter": "\\t",
        }
    )
    assert (node.text_column, node.label_column, node.organisation, node.delimiter) == (
        "SMS",
        "Label",
        "acme",
        "\t",
    )
    with pytest.raises(FederationConfigError, match="no 'data-path'"):
        NodeSettings.from_node_config({})


def test_callback_token_from_file(base, tmp_path):
    (tmp_path / "token").write_text("file-token\n")
    settings = JobSettings.from_run_config({**base, "callback-token-file": str(tmp_path / "token")})
    assert settings.resolved_callback_token() == "file-token"
    missing = JobSettings.from_run_config({**base, "callback-token-file": str(tmp_path / "nope")})
    with pytest.raises(FederationConfigError, match="cannot read callback-token-file"):
        missing.resolved_callback_token()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"fedadam-beta-1": 1.0}, "fedadam-beta-1 must be a finite number >= 0 and < 1, got 1.0"),
        ({"test-fraction": 1}, "test-fraction must be a finite number > 0 and < 1, got 1"),
        ({"test-dedup": "skip"}, "test-dedup must be 'drop', 'report' or 'off', got 'skip'"),
        ({"test-dedup": True}, "test-dedup must be 'drop', 'report' or 'off', got True"),
        ({"num-rounds": True}, "num-rounds must be a positive integer, got True"),
        ({"num-rounds": 2.0}, "num-rounds must be a positive integer, got 2.0"),
        ({"output-dir": 5}, "output-dir must be a string, got 5"),
    ],
)
def test_each_rule_is_named_by_its_run_config_key(base, overrides, message):
    with pytest.raises(FederationConfigError) as info:
        JobSettings.from_run_config({**base, **overrides})
    assert str(info.value) == f"invalid federated job: {message}"


def test_run_config_values_keep_their_meaning(base):
    settings = JobSettings.from_run_config(
        {**base, "round-timeout": 5, "strategy": " FedAdam ", "fedadam-eta": 1}
    )
    assert settings.round_timeout == 5.0 and isinstance(settings.round_timeout, float)
    assert settings.strategy == "fedadam" and settings.fedadam["eta"] == 1.0


def test_the_app_declares_every_run_config_key_the_clearinghouse_sets():
    """The SuperLink refuses a run whose config overrides a key the app's pyproject does not declare
    ("Invalid run configuration"): each key the service sets must be there."""
    import tomllib
    from pathlib import Path

    import federation.flower
    from federation.services import SERVICE_KEYS

    app = Path(federation.flower.__file__).parent / "app" / "pyproject.toml"
    declared = tomllib.loads(app.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    assert SERVICE_KEYS - set(declared) == set()


def test_the_app_declares_every_key_an_operator_may_set_with_the_training_defaults():
    """Operators may set any of `KNOWN_RUN_KEYS` on a job (the tunable ones): the SuperLink would
    refuse the run if the app did not declare it. The declared defaults are the training defaults,
    so a job that sets none of them trains as `TrainConfig` says."""
    import tomllib
    from pathlib import Path

    import federation.flower
    from training.config import TrainConfig

    app = Path(federation.flower.__file__).parent / "app" / "pyproject.toml"
    declared = tomllib.loads(app.read_text(encoding="utf-8"))["tool"]["flwr"]["app"]["config"]
    assert KNOWN_RUN_KEYS - set(declared) == set()
    assert declared["test-dedup"] == "drop" == JobSettings.from_run_config(declared).test_dedup
    parsed = JobSettings.from_run_config(declared).train
    defaults = TrainConfig(labels=("ham", "spam")).to_dict()
    for name in ("lora", "lora_r", "lora_alpha", "lora_dropout", "weight_decay", "mixed_precision"):
        assert parsed[name] == defaults[name], name
    assert tuple(parsed["lora_target_modules"]) == tuple(defaults["lora_target_modules"])
