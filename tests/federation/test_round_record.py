"""The round record: one typed model the ServerApp produces and the clearinghouse reads back."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.flower.reporting import ClientRecord, DropoutRecord, RoundEvaluation, RoundRecord

# A round event as the ServerApp sends it (keys, nesting and types as `_Job._record` writes them).
EVENT = {
    "event": "round",
    "round": 2,
    "strategy": "fedprox",
    "participants": 3,
    "clients_trained": 2,
    "dropouts": [
        {"node_id": 303, "organisation": "initech", "reason": "no reply within round-timeout (30 s)"}
    ],
    "train": {"num-examples": 64, "train-loss": 0.41},
    "evaluate": {
        "loss": 0.35,
        "mean_client_accuracy": 0.81,
        "mean_client_macro_f1": 0.8,
        "clients": 2,
        "accuracy": 0.8125,
        "macro_f1": 0.8,
        "per_class_f1": {"ham": 0.85, "spam": None},
        "confusion": [[10, 2], [1, 3]],
        "n": 16,
    },
    "clients": [
        {
            "node_id": 101,
            "organisation": "acme",
            "train": {"train-loss": 0.4},
            "evaluate": {"eval-accuracy": 0.9},
        },
        {"node_id": 202, "organisation": "globex", "train": {"train-loss": 0.5}, "evaluate_error": "boom"},
    ],
    "bytes_sent": 4096,
    "bytes_received": 2048,
    "trainable_bytes": 1000,
    "round_seconds": 3.5,
    "train_phase_seconds": 2.5,
    "evaluate_phase_seconds": 0.5,
    "slowest_client_train_seconds": 2.0,
    "flower_overhead_seconds": 0.5,
}


def test_a_servers_event_reads_back_as_it_was_sent():
    record = RoundRecord.parse(json.loads(json.dumps(EVENT)))
    assert record.to_event() == EVENT
    assert record.round == 2 and record.evaluate.accuracy == 0.8125 and record.clients_trained == 2
    assert [c.label for c in record.clients] == ["acme", "globex"]
    assert [c.evaluate_accuracy for c in record.clients] == [0.9, None]
    assert [d.label for d in record.dropouts] == ["initech: no reply within round-timeout (30 s)"]


def test_the_server_builds_the_same_event():
    record = RoundRecord(
        round=2,
        strategy="fedprox",
        participants=3,
        clients_trained=2,
        dropouts=[DropoutRecord(**EVENT["dropouts"][0])],
        train=EVENT["train"],
        evaluate=RoundEvaluation(**EVENT["evaluate"]),
        clients=[ClientRecord(**c) for c in EVENT["clients"]],
        **{k: EVENT[k] for k in ("bytes_sent", "bytes_received", "trainable_bytes", "round_seconds")},
        **{
            k: EVENT[k]
            for k in (
                "train_phase_seconds",
                "evaluate_phase_seconds",
                "slowest_client_train_seconds",
                "flower_overhead_seconds",
            )
        },
    )
    assert record.to_event() == EVENT


def test_older_and_partial_rows_read_with_defaults_and_keep_unknown_keys():
    stored = {
        "clients": [{"organisation": "org-a", "loss": 0.3}, "junk", {"node_id": 7}],
        "dropouts": [{"node_id": 9, "reason": "gone"}],
        "extra": {"kept": True},
    }
    record = RoundRecord.parse(stored)
    assert record.round is None and record.clients_trained == 0 and record.flower_overhead_seconds is None
    assert [c.to_json() for c in record.clients] == [{"organisation": "org-a", "loss": 0.3}, {"node_id": 7}]
    assert record.clients[1].label == "node 7"
    assert [d.label for d in record.dropouts] == ["node 9: gone"]
    assert record.to_event()["extra"] == {"kept": True}


@pytest.mark.parametrize("junk", [None, [], "x", 3, {"evaluate": []}])
def test_junk_never_fails_to_read(junk):
    record = RoundRecord.parse(junk)
    assert record.evaluate.accuracy is None and record.clients == [] and record.dropouts == []


@given(
    value=st.one_of(
        st.none(),
        st.booleans(),
        st.text(max_size=5),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.lists(st.integers(), max_size=2),
    )
)
def test_a_metric_is_a_finite_float_or_none(value):
    record = RoundRecord.parse(
        {
            "evaluate": {"accuracy": value},
            "flower_overhead_seconds": value,
            "clients": [{"organisation": "a", "evaluate": {"eval-accuracy": value}}],
        }
    )
    for metric in (
        record.evaluate.accuracy,
        record.flower_overhead_seconds,
        record.clients[0].evaluate_accuracy,
    ):
        assert metric is None or (isinstance(metric, float) and abs(metric) < float("inf"))
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if is_number and abs(value) < 1e300:
        assert record.evaluate.accuracy == float(value)
