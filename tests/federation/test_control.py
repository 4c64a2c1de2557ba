"""Run configs as the Flower CLI reads them: ``config_string`` through Flower's own parser."""

from __future__ import annotations

import json

import pytest
from flwr.common.config import parse_config_args

from federation.flower.control import config_string, toml_value


def test_a_run_config_survives_flowers_parser_json_values_included():
    plans = {
        "acme": {
            "target_epsilon": 3.0,
            "delta": 1e-5,
            "noise_multiplier": 1.234,
            "rows": 90,
            "accountant": "pld",
        },
        "globex": {
            "target_epsilon": 3.0,
            "delta": 1e-5,
            "noise_multiplier": 0.98,
            "rows": 45,
            "accountant": "pld",
        },
    }
    config = {
        "dp-plans": json.dumps(plans, sort_keys=True),
        "participants": "org:acme,org:globex",
        "labels": "ham,spam",
        "output-dir": "/tmp/a dir with spaces/out",
        "job-id": "café \\ 7",
        "num-rounds": 3,
        "learning-rate": 0.001,
        "mixed-precision": False,
    }
    parsed = parse_config_args([config_string(config)])
    assert parsed == config
    assert json.loads(parsed["dp-plans"]) == plans


def test_a_string_holding_both_quote_kinds_is_refused():
    with pytest.raises(ValueError, match="quote"):
        toml_value("""it's "quoted\"""")


def test_the_app_declares_dp_plans_so_flower_accepts_a_private_job():
    # Flower refuses ("Invalid run configuration") a --run-config key its app does not declare.
    import tomllib

    from federation.flower.local import APP_DIR

    with (APP_DIR / "pyproject.toml").open("rb") as handle:
        declared = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    assert declared["dp-plans"] == ""
