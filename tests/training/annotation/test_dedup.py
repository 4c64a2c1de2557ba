"""Exact and near-duplicate texts, conflicting labels, leakage of test rows into training rows."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from training.annotation import AnnotationError
from training.annotation.dedup import (
    conflicting_groups,
    find_duplicates,
    jaccard,
    leaked_test_rows,
    normalise,
    shingles,
)

TEXTS = [
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2005",  # 0
    "free  entry in 2 a WKLY comp to win FA Cup final tkts 21st May 2005 ",  # 1 exact of 0
    "Free entry in 2 a wkly comp to win FA Cup final tkts 21st May 2006",  # 2 near of 0
    "Are we still meeting for lunch tomorrow at the usual place?",  # 3
    "I'll call you later, I'm on the bus home now",  # 4
    "ok",  # 5 shorter than a shingle
    "OK",  # 6 exact of 5
]


def test_exact_near_and_groups():
    report = find_duplicates(TEXTS)
    assert report.exact_pairs == ((0, 1), (5, 6))
    assert [(a, b) for a, b, _ in report.near_pairs] == [(0, 2)]
    assert report.near_pairs[0][2] == pytest.approx(jaccard(shingles(TEXTS[0], 5), shingles(TEXTS[2], 5)))
    assert report.groups == ((0, 1, 2), (5, 6))
    assert report.items_in_groups() == 5
    assert normalise(TEXTS[1]) == normalise(TEXTS[0])


def test_conflicting_labels_and_unlabelled_items():
    report = find_duplicates(TEXTS)
    assert conflicting_groups(report, np.array([1, 1, 0, 0, 0, 0, 0])) == ((0, 1, 2),)
    assert conflicting_groups(report, np.array([1, 1, -1, 0, 0, 0, 0])) == ()


def test_test_rows_that_duplicate_training_rows():
    train = TEXTS[:1] + TEXTS[3:5]
    test = [TEXTS[2], "Something else entirely, nothing like the others", TEXTS[4].upper()]
    assert leaked_test_rows(train, test) == (0, 2)
    assert leaked_test_rows(train, test, threshold=1.0) == (2,)


def mutate(text: str, rng: random.Random, edits: int) -> str:
    chars = list(text)
    for _ in range(edits):
        chars[rng.randrange(len(chars))] = rng.choice("xyz")
    return "".join(chars)


@settings(max_examples=25, deadline=None)
@given(st.integers(min_value=0, max_value=2**31), st.floats(min_value=0.5, max_value=0.95))
def test_every_reported_pair_is_a_true_near_duplicate_and_lsh_finds_the_close_ones(seed, threshold):
    rng = random.Random(seed)
    words = ["cash", "prize", "lunch", "home", "later", "call", "now", "free", "mum", "bus", "win", "txt"]
    base = [" ".join(rng.choices(words, k=12)) for _ in range(15)]
    texts = base + [mutate(rng.choice(base), rng, rng.randint(0, 3)) for _ in range(15)]
    report = find_duplicates(texts, threshold=threshold)
    sets = [shingles(t, 5) for t in texts]
    found = {(a, b) for a, b in report.exact_pairs} | {(a, b) for a, b, _ in report.near_pairs}
    for a, b, similarity in report.near_pairs:
        assert a < b and similarity == pytest.approx(jaccard(sets[a], sets[b])) and similarity >= threshold
    in_group = {i for g in report.groups for i in g}
    for a, b in itertools.combinations(range(len(texts)), 2):
        if jaccard(sets[a], sets[b]) >= min(0.99, threshold + 0.2):  # clearly above: LSH must not miss it
            assert a in in_group and b in in_group
        if (a, b) in found:
            assert jaccard(sets[a], sets[b]) >= threshold or normalise(texts[a]) == normalise(texts[b])


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"threshold": 0.0}, "threshold_out_of_range"),
        ({"threshold": 1.2}, "threshold_out_of_range"),
        ({"shingle_size": 0}, "bad_shingle_size"),
    ],
)
def test_bad_arguments(kwargs, code):
    with pytest.raises(AnnotationError) as info:
        find_duplicates(TEXTS, **kwargs)
    assert info.value.code == code
    with pytest.raises(AnnotationError) as not_text:
        find_duplicates(["a", None])  # type: ignore[list-item]
    assert not_text.value.code == "text_not_a_string"
