"""The content digest of a labelled table (`training.digest`): independent of row order, changed by
any row added, dropped or changed, the same from a Polars table and from the training loader, and the
plan's `data` that carries it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.config import TrainingConfigError
from training.data import LabelledTable, load_labelled_table
from training.digest import (
    DataExpectation,
    content_digest,
    frame_digest,
    is_digest,
    labelled_table_digest,
)
from training.privacy import DpSgdError, DpSgdPlan

texts = st.text(st.characters(codec="utf-8"), max_size=20)
labels = st.sampled_from(["ham", "spam", "0", "1"])
rows = st.lists(st.tuples(texts, labels), min_size=1, max_size=30)


def _digest(pairs):
    return content_digest([t for t, _ in pairs], [label for _, label in pairs])


@settings(max_examples=200, deadline=None)
@given(rows, st.randoms(use_true_random=False))
def test_the_digest_does_not_depend_on_row_order(pairs, rng):
    shuffled = list(pairs)
    rng.shuffle(shuffled)
    assert _digest(shuffled) == _digest(pairs)
    assert is_digest(_digest(pairs).digest) and _digest(pairs).rows == len(pairs)


@settings(max_examples=200, deadline=None)
@given(rows, st.data())
def test_changing_adding_or_dropping_any_one_row_changes_the_digest(pairs, data):
    before = _digest(pairs)
    index = data.draw(st.integers(0, len(pairs) - 1))
    text, label = pairs[index]
    new_text = data.draw(texts.filter(lambda t: t != text))
    new_label = data.draw(labels.filter(lambda lab: lab != label))
    for changed in ((new_text, label), (text, new_label)):
        assert _digest([*pairs[:index], changed, *pairs[index + 1 :]]).digest != before.digest
    assert _digest([*pairs, pairs[index]]).digest != before.digest  # a duplicate counts
    assert _digest(pairs[:index] + pairs[index + 1 :]).digest != before.digest


def test_fields_are_delimited_so_text_and_label_cannot_trade_characters():
    assert _digest([("ab", "c")]).digest != _digest([("a", "bc")]).digest
    assert content_digest([None], ["a"]).digest != content_digest([""], ["a"]).digest


def test_the_digest_is_the_documented_canonical_form():
    """Recomputed here from the module docstring's words; changing the form needs a new scheme name."""

    def field(value: str) -> bytes:
        data = value.encode()
        return b"\x01" + len(data).to_bytes(8, "big") + data

    rows = [("Go until jurong point", "ham"), ("Free entry", "spam")]
    hashes = sorted(hashlib.sha256(field(t) + field(label)).digest() for t, label in rows)
    expected = hashlib.sha256(b"rows-sha256-v1\x00" + (2).to_bytes(8, "big") + b"".join(hashes)).hexdigest()
    assert _digest(rows).digest == f"sha256:{expected}"
    assert expected == "4ec59f3e4a56775584b9b8c8fca4b703e42ce4eb5eadc29cddbe737fbf5a3c0e"


def test_polars_table_and_training_loader_agree(tmp_path: Path):
    """The registered side (a typed Polars table: labels stripped, integers in decimal) and the
    member's side (the training loader) give one digest for one set of rows."""
    path = tmp_path / "data.csv"
    path.write_text('label,text\n 1 ,"hello, world"\n0,  spaced  \n1,"a ""quoted"" one"\n', encoding="utf-8")
    table = load_labelled_table(path, text_column="text", label_column="label", labels=["0", "1"])
    frame = pl.DataFrame(
        {"text": ["  spaced  ", 'a "quoted" one', "hello, world"], "label": [0, 1, 1]},
        schema={"text": pl.String, "label": pl.Int64},
    )
    assert frame_digest(frame, text_column="text", label_column="label") == labelled_table_digest(table)
    # Texts are not trimmed: a changed space is a changed row.
    other = frame.with_columns(pl.col("text").str.strip_chars())
    assert frame_digest(other, text_column="text", label_column="label") != labelled_table_digest(table)


def test_a_split_digests_as_the_whole_table():
    table = LabelledTable.from_lists(
        texts=["a", "b", "c", "d"], labels=["ham", "spam", "ham", "ham"], label_names=["ham", "spam"]
    )
    assert labelled_table_digest(table.subset([3, 1]), table.subset([0, 2])) == labelled_table_digest(table)


def _plan(**overrides) -> DpSgdPlan:
    return DpSgdPlan.from_job(
        rows=80, batch_size=8, rounds=1, target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0, local_steps=2
    ).with_data(overrides or None)


DATA = {"rows": 100, "digest": "sha256:" + "ab" * 32, "text_column": "SMS", "label_column": "Label"}


def test_a_plan_carries_its_data_through_json_and_keeps_it_out_of_its_price():
    plan = _plan(**DATA)
    assert plan.data == DataExpectation(**DATA)
    again = DpSgdPlan(**json.loads(json.dumps(plan.to_dict())))
    assert again == plan and again.data is not None and again.data.digest == DATA["digest"]
    assert "data" not in plan.priced_dict() and plan.priced_dict()["rows"] == 80
    assert DpSgdPlan(**plan.priced_dict()).data is None


@pytest.mark.parametrize(
    "bad",
    [
        {**DATA, "digest": "ab" * 32},
        {**DATA, "digest": "sha256:" + "AB" * 32},
        {**DATA, "rows": 0},
        {**DATA, "rows": True},
        {**DATA, "text_column": ""},
        {**DATA, "scheme": "md5"},
        {**DATA, "extra": 1},
        {**DATA, "delimiter": "\t\t"},
        {**DATA, "delimiter": ",", "quote_char": ""},
        {**DATA, "quote_char": '"'},  # a quote character without a delimiter
    ],
)
def test_a_malformed_data_expectation_is_refused(bad):
    with pytest.raises(DpSgdError) as caught:
        DpSgdPlan(**{**_plan().to_dict(), "data": bad})
    assert caught.value.code == "invalid_data_expectation"
    with pytest.raises(TrainingConfigError):
        DataExpectation.coerce(bad)
