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


def _cli(data_path, model_dir, *extra: str) -> list[str]:
    return [
        "--data-path",
        str(data_path),
        "--text-column",
        "SMS",
        "--label-column",
        "Label",
        "--labels",
        "ham,spam",
        "--base-model",
        str(model_dir),
        "--max-length",
        "16",
        *extra,
    ]


def test_preflight_prints_the_content_digest_and_checks_the_expected_one(
    tiny_model_dir, toy_tsv, tmp_path, capsys
):
    """The digest the preflight prints is the one the ClientApp checks (`training.digest` over the
    loader's table); the expected version matches, a file with one row changed does not (exit 2,
    `data_mismatch`, before the model is built)."""
    from training.data import load_labelled_table
    from training.digest import labelled_table_digest

    expected = labelled_table_digest(
        load_labelled_table(toy_tsv, text_column="SMS", label_column="Label", labels=["ham", "spam"])
    )
    assert main(_cli(toy_tsv, tiny_model_dir, "--json")) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["content"] == {"rows": 40, "digest": expected.digest, "matches": None}

    expect = ["--expect-rows", "40", "--expect-digest", expected.digest]
    assert main(_cli(toy_tsv, tiny_model_dir, *expect)) == 0
    out = capsys.readouterr().out
    assert f"content: 40 rows, digest {expected.digest} (matches the expected version)" in out

    header, first, *rest = toy_tsv.read_text(encoding="utf-8").splitlines(keepends=True)
    changed = tmp_path / "changed.tsv"
    changed.write_text(header + first.replace("\t", "\tnot ", 1) + "".join(rest), encoding="utf-8")
    assert main(_cli(changed, tiny_model_dir, *expect)) == 2
    error = capsys.readouterr().err
    assert "data_mismatch" in error and f"expected {expected.digest}" in error and "40 rows" not in error
    assert main(_cli(toy_tsv, tiny_model_dir, "--expect-rows", "41", "--json")) == 2
    assert "40 rows, expected 41" in json.loads(capsys.readouterr().out)["error"]
