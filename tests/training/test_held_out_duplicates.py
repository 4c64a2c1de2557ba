"""Held-out rows that duplicate a training row (exactly or nearly): dropped from a member's held-out
split by default, counted, kept under "report", not looked for under "off"."""

from __future__ import annotations

import random
import string

import pytest

from training.config import TEST_DEDUP_MODES, TrainingConfigError, TrainingDataError
from training.data import LabelledTable, deduplicate_test_split, split_train_test
from training.digest import labelled_table_digest

LABELS = ("ham", "spam")

EXACT_TRAIN = "Free entry in 2 a wkly comp to win FA Cup final tkts"
EXACT_TEST = "  free ENTRY in 2 a wkly   comp to win fa cup final TKTS "  # same after normalisation
NEAR_TRAIN = "Sorry, I'll call you later tonight from the meeting, talk to you soon my friend"
NEAR_TEST = "Sorry, I'll call you later tonight from the meeting, talk to you soon my friends!"
TEST_TWINS = "this one is in the held-out side twice but never in training"


def _random_texts(n: int, seed: int) -> list[str]:
    """Texts with no duplicates, exact or near, among them (random letters)."""
    rng = random.Random(seed)
    return ["".join(rng.choices(string.ascii_lowercase + "  ", k=rng.randint(30, 60))) for _ in range(n)]


def _table(texts: list[str], labels: list[str]) -> LabelledTable:
    return LabelledTable.from_lists(texts=texts, labels=labels, label_names=LABELS)


def _planted() -> tuple[LabelledTable, LabelledTable]:
    """A train side and a held-out side of 12 rows, 2 of which (positions 3 and 8) duplicate a
    training row: one exactly (after normalisation), one nearly, with another label."""
    train_texts = _random_texts(30, seed=1)
    train_texts[5], train_texts[17] = EXACT_TRAIN, NEAR_TRAIN
    test_texts = _random_texts(12, seed=2)
    test_texts[3], test_texts[8] = EXACT_TEST, NEAR_TEST
    test_texts[10] = test_texts[11] = TEST_TWINS  # duplicates of each other only: kept
    train = _table(train_texts, ["spam" if i % 3 == 0 else "ham" for i in range(30)])
    test_labels = ["spam" if i % 3 == 0 else "ham" for i in range(12)]
    test_labels[3], test_labels[8] = "ham", "spam"  # the exact copy's label, and another one
    return train, _table(test_texts, test_labels)


def test_the_mode_defaults_to_drop():
    assert TEST_DEDUP_MODES == ("drop", "report", "off")
    train, test = _planted()
    assert deduplicate_test_split(train, test)[1].mode == "drop"


def test_drop_takes_exact_and_near_duplicates_of_training_rows_out_of_the_held_out_side():
    train, test = _planted()
    kept, duplicates = deduplicate_test_split(train, test, mode="drop")
    assert duplicates.indices == (3, 8) and duplicates.found == 2
    assert duplicates.dropped.texts == (EXACT_TEST, NEAR_TEST)
    assert duplicates.dropped.label_counts() == {"ham": 1, "spam": 1}
    assert len(kept) == 10 and kept.texts == tuple(t for i, t in enumerate(test.texts) if i not in (3, 8))
    assert kept.texts.count(TEST_TWINS) == 2  # held-out rows equal to each other are not leaks
    assert kept.label_ids.tolist() == [int(x) for i, x in enumerate(test.label_ids) if i not in (3, 8)]
    # The dropped rows are still the member's rows: the file's digest is that of the three together.
    assert labelled_table_digest(train, kept, duplicates.dropped) == labelled_table_digest(train, test)


def test_report_counts_them_and_keeps_them():
    train, test = _planted()
    kept, duplicates = deduplicate_test_split(train, test, mode="report")
    assert kept is test
    assert duplicates.indices == (3, 8) and duplicates.found == 2 and len(duplicates.dropped) == 0


def test_off_does_not_look():
    train, test = _planted()
    kept, duplicates = deduplicate_test_split(train, test, mode="off")
    assert kept is test
    assert duplicates.indices is None and duplicates.found is None and len(duplicates.dropped) == 0


def test_a_split_without_duplicates_is_left_alone():
    texts = _random_texts(50, seed=3)
    train, test = split_train_test(_table(texts, ["ham", "spam"] * 25), test_fraction=0.2, seed=0)
    kept, duplicates = deduplicate_test_split(train, test)
    assert kept is test and duplicates.found == 0 and len(duplicates.dropped) == 0


def test_the_split_of_a_file_with_copied_rows_evaluates_on_unseen_rows_only():
    """A member's file where every fourth row was copied (one of them with changed case): after
    the split and the drop, no held-out text duplicates a training text, and every row is on one
    side or among the dropped."""
    texts = _random_texts(80, seed=4)
    copies = [t.upper() if i % 8 == 0 else t for i, t in enumerate(texts) if i % 4 == 0]
    table = _table(texts + copies, ["ham", "spam"] * 50)
    train, test = split_train_test(table, test_fraction=0.3, seed=5)
    kept, duplicates = deduplicate_test_split(train, test)
    seen = {t.casefold() for t in train.texts}
    assert duplicates.found and all(t.casefold() in seen for t in duplicates.dropped.texts)
    assert not any(t.casefold() in seen for t in kept.texts)
    assert len(train) + len(kept) + len(duplicates.dropped) == len(table)


def test_dropping_every_held_out_row_is_refused():
    train = _table([EXACT_TRAIN, NEAR_TRAIN, *_random_texts(4, seed=6)], ["ham", "spam"] * 3)
    test = _table([EXACT_TEST, NEAR_TEST], ["ham", "spam"])
    with pytest.raises(TrainingDataError, match="every one of the 2 held-out rows duplicates a training row"):
        deduplicate_test_split(train, test)
    kept, duplicates = deduplicate_test_split(train, test, mode="report")
    assert kept is test and duplicates.found == 2


def test_an_unknown_mode_is_refused():
    train, test = _planted()
    with pytest.raises(TrainingConfigError, match="must be one of \\['drop', 'report', 'off'\\], got 'Drop'"):
        deduplicate_test_split(train, test, mode="Drop")
