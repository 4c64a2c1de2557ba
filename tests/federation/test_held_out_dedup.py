"""Members drop the held-out rows that duplicate one of their training rows (``test-dedup``) and say
how many in their evaluation; a private member's file still matches the registered rows. On the
in-process grid of ``test_apps`` (tiny BERT)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from federation.flower.client_app import DUPLICATES_DROPPED, DUPLICATES_FOUND
from federation.flower.reporting import MemoryReporter
from tests.federation.test_apps import InProcessGrid, settings_for
from tests.federation.test_dp_apps import TEST_FRACTION, _registered, plans
from tests.training.conftest import make_texts
from training.privacy import train_rows

ROWS, COPIES = 40, 12  # each member's file: 40 rows, then copies of 12 of them (upper case or with a "!")


def write_with_copies(path: Path, seed: int) -> Path:
    texts, labels = make_texts(ROWS, seed=seed)
    for i in range(0, 3 * COPIES, 3):
        texts.append(texts[i].upper() if i % 2 else texts[i] + "!")
        labels.append(labels[i])
    path.write_text(
        "Label\tSMS\n" + "".join(f"{label}\t{text}\n" for text, label in zip(texts, labels, strict=True)),
        encoding="utf-8",
    )
    return path


@pytest.fixture
def copying_nodes(tmp_path):
    return {
        node: {
            "data-path": str(write_with_copies(tmp_path / f"{organisation}.tsv", seed)),
            "text-column": "SMS",
            "label-column": "Label",
            "organisation": organisation,
        }
        for node, organisation, seed in [(101, "acme", 11), (202, "globex", 12)]
    }


def _evaluations(history):
    return [client["evaluate"] for record in history for client in record["clients"]]


@pytest.mark.parametrize("mode", [None, "drop", "report", "off"])
def test_members_drop_held_out_copies_of_training_rows_and_count_them(
    tiny_model_dir, tmp_path, copying_nodes, mode
):
    from federation.flower.server_app import run_job

    overrides = {"test-fraction": TEST_FRACTION, **({"test-dedup": mode} if mode else {})}
    settings = settings_for(tiny_model_dir, tmp_path, **overrides)
    reporter = MemoryReporter()
    _, history = run_job(InProcessGrid(copying_nodes), settings, reporter=reporter)
    held_out = 2 * round((ROWS + COPIES) / 2 * TEST_FRACTION)  # stratified: 5 of each label's 26
    evaluations = _evaluations(history)
    assert len(evaluations) == 4
    for evaluation in evaluations:
        if mode == "off":
            assert DUPLICATES_FOUND not in evaluation and DUPLICATES_DROPPED not in evaluation
            assert evaluation["num-examples"] == held_out
            continue
        found, dropped = evaluation[DUPLICATES_FOUND], evaluation[DUPLICATES_DROPPED]
        assert found > 0
        assert dropped == (0 if mode == "report" else found)
        assert evaluation["num-examples"] == held_out - dropped
    # Each round's record (to the reporter and the report) carries them, per member.
    rounds = [r for r in reporter.records if r["event"] == "round"]
    assert _evaluations(rounds) == evaluations
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["settings"]["test_dedup"] == (mode or "drop")
    assert [{k: v for k, v in e.items() if k != "eval-seconds"} for e in _evaluations(report["rounds"])] == [
        {k: v for k, v in e.items() if k != "eval-seconds"} for e in evaluations
    ]


def test_a_private_member_drops_held_out_copies_and_still_matches_its_registered_rows(
    tiny_model_dir, tmp_path, copying_nodes
):
    """The registered rows are the whole file, copies included: the member's digest check counts
    the held-out rows it dropped, so it trains as planned."""
    from federation.flower.server_app import run_job

    rows = ROWS + COPIES
    priced = json.loads(plans("acme", "globex", rows=train_rows(rows, TEST_FRACTION)))
    by_org = {node["organisation"]: node for node in copying_nodes.values()}
    dp_plans = json.dumps({o: {**plan, "data": _registered(by_org[o])} for o, plan in priced.items()})
    settings = settings_for(
        tiny_model_dir,
        tmp_path,
        participants="org:acme,org:globex",
        **{"dp-plans": dp_plans, "test-fraction": TEST_FRACTION, "num-rounds": 2},
    )
    _, history = run_job(InProcessGrid(copying_nodes), settings)
    held_out = rows - train_rows(rows, TEST_FRACTION)  # a private job's split is unstratified
    for record in history:
        assert record["clients_trained"] == 2 and record["dropouts"] == []
        for client in record["clients"]:
            assert client["train"]["num-examples"] == train_rows(rows, TEST_FRACTION)
            evaluation = client["evaluate"]
            assert evaluation[DUPLICATES_DROPPED] == evaluation[DUPLICATES_FOUND] > 0
            assert evaluation["num-examples"] == held_out - evaluation[DUPLICATES_DROPPED]


def test_preflight_counts_the_held_out_copies(tiny_model_dir, tmp_path, toy_tsv):
    from federation.flower.preflight import preflight

    def run(path):
        return preflight(
            data_path=str(path),
            text_column="SMS",
            label_column="Label",
            labels=["ham", "spam"],
            base_model=str(tiny_model_dir),
            max_length=16,
        )

    report = run(write_with_copies(tmp_path / "copies.tsv", 11))
    found = report["held_out_duplicates"]
    assert 0 < found <= report["held_out_rows"]
    (warning,) = report["warnings"]
    assert warning.startswith(
        f"{found} of the {report['held_out_rows']} held-out rows duplicate a training row"
    )
    clean = run(toy_tsv)
    assert clean["held_out_duplicates"] == 0 and clean["warnings"] == []
