"""Members' preflight: what it reports and how it fails."""

from __future__ import annotations

import json

from federation.flower.preflight import main, preflight


def test_preflight_reports_data_and_model(tiny_model_dir, toy_tsv):
    report = preflight(
        data_path=str(toy_tsv),
        text_column="SMS",
        label_column="Label",
        labels=["ham", "spam"],
        base_model=str(tiny_model_dir),
        max_length=16,
    )
    assert report["rows"] == 40 and report["label_counts"] == {"ham": 20, "spam": 20}
    assert report["train_rows"] + report["held_out_rows"] == 40
    assert 0 < report["trainable_parameters"] < report["total_parameters"]
    assert report["device"] == "cpu" and report["warnings"] == []


def test_preflight_cli_json(tiny_model_dir, toy_tsv, capsys):
    rc = main(
        [
            "--data-path",
            str(toy_tsv),
            "--text-column",
            "SMS",
            "--label-column",
            "Label",
            "--labels",
            "ham,spam",
            "--base-model",
            str(tiny_model_dir),
            "--max-length",
            "16",
            "--json",
        ]
    )
    assert rc == 0 and json.loads(capsys.readouterr().out)["rows"] == 40


def test_preflight_cli_clear_errors(tiny_model_dir, toy_tsv, tmp_path, capsys):
    rc = main(
        [
            "--data-path",
            str(toy_tsv),
            "--text-column",
            "text",
            "--label-column",
            "Label",
            "--labels",
            "ham,spam",
            "--base-model",
            str(tiny_model_dir),
        ]
    )
    assert rc == 2 and "has no column 'text'; available columns: ['Label', 'SMS']" in capsys.readouterr().err
    rc = main(
        [
            "--data-path",
            str(toy_tsv),
            "--text-column",
            "SMS",
            "--label-column",
            "Label",
            "--labels",
            "ham,junk",
            "--base-model",
            str(tiny_model_dir),
        ]
    )
    assert rc == 2 and "not one of the declared labels" in capsys.readouterr().err
    rc = main(
        [
            "--data-path",
            str(tmp_path / "missing.csv"),
            "--text-column",
            "SMS",
            "--label-column",
            "Label",
            "--labels",
            "ham,spam",
            "--base-model",
            str(tiny_model_dir),
        ]
    )
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(
        [
            "--data-path",
            str(toy_tsv),
            "--text-column",
            "SMS",
            "--label-column",
            "Label",
            "--labels",
            "ham,spam",
            "--base-model",
            str(tmp_path / "no-model"),
        ]
    )
    assert rc == 2 and "neither 'minilm-l6' nor an existing local model directory" in capsys.readouterr().err
