"""Exact and near-duplicate texts, conflicting labels among duplicates, and train/test leakage.

- **Exact**: equal after normalisation (Unicode NFKC, case-folded, runs of whitespace collapsed,
  trimmed), so "Ok lar" and " ok  LAR" are the same text.
- **Near**: character ``shingle_size``-gram sets (of the normalised text) with Jaccard similarity
  >= ``threshold``. Candidates come from MinHash LSH (datasketch, 128 permutations); every candidate
  pair is then checked with the exact Jaccard similarity, so LSH can miss pairs but never adds false
  ones. Texts shorter than a shingle are only ever exact duplicates.
Groups are the connected components of the duplicate pairs (union-find).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

from training.annotation.errors import AnnotationError

__all__ = [
    "DuplicateReport",
    "conflicting_groups",
    "find_duplicates",
    "jaccard",
    "leaked_test_rows",
    "normalise",
    "shingles",
]

_SPACE = re.compile(r"\s+")
NUM_PERM = 128


def normalise(text: str) -> str:
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str, size: int) -> frozenset[str]:
    """Character ``size``-grams of the normalised text (empty when it is shorter than ``size``)."""
    t = normalise(text)
    return frozenset(t[i : i + size] for i in range(len(t) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


@dataclass(frozen=True)
class DuplicateReport:
    """``exact_pairs``/``near_pairs``: (i, j) with i < j; near pairs exclude exact ones.

    ``groups``: each a sorted tuple of indices of mutually (transitively) duplicate texts, size >= 2.
    """

    exact_pairs: tuple[tuple[int, int], ...]
    near_pairs: tuple[tuple[int, int, float], ...]  # (i, j, jaccard)
    groups: tuple[tuple[int, ...], ...]

    def items_in_groups(self) -> int:
        return sum(len(g) for g in self.groups)


def find_duplicates(
    texts: Sequence[str], *, threshold: float = 0.8, shingle_size: int = 5, seed: int = 1
) -> DuplicateReport:
    """Exact and near-duplicate pairs among ``texts`` and the groups they form."""
    if not 0.0 < threshold <= 1.0:
        raise AnnotationError("threshold_out_of_range", "the Jaccard threshold must lie in (0, 1]")
    if shingle_size < 1:
        raise AnnotationError("bad_shingle_size", "shingle_size must be at least 1")
    if any(not isinstance(t, str) for t in texts):
        raise AnnotationError("text_not_a_string", "every text must be a string")
    keys = [normalise(t) for t in texts]
    exact: list[tuple[int, int]] = []
    first: dict[str, int] = {}
    representative: list[int] = []  # near-duplicate search runs on one text per exact group
    for i, key in enumerate(keys):
        if key in first:
            exact.append((first[key], i))
        else:
            first[key] = i
            representative.append(i)
    sets = {i: shingles(texts[i], shingle_size) for i in representative}
    # LSH only proposes candidates, each checked exactly, so its bands are tuned against missed pairs
    # (weights: false positives 0.1, false negatives 0.9); above 0.95 datasketch has too few bands.
    lsh = MinHashLSH(threshold=min(threshold, 0.95), num_perm=NUM_PERM, weights=(0.1, 0.9))
    near: list[tuple[int, int, float]] = []
    # The permutations depend only on (num_perm, seed): drawn once, shared by every signature (drawing
    # them per text was a third of the time on the SMS collection).
    template = MinHash(num_perm=NUM_PERM, seed=seed)
    permutations, scheme = template.permutations, template.scheme
    for i in representative:
        if not sets[i]:
            continue
        signature = MinHash(num_perm=NUM_PERM, seed=seed, permutations=permutations, scheme=scheme)
        signature.update_batch([s.encode("utf-8") for s in sets[i]])
        for j in lsh.query(signature):
            similarity = jaccard(sets[i], sets[int(j)])
            if similarity >= threshold:
                near.append((int(j), i, similarity))
        lsh.insert(i, signature)
    near.sort()
    groups = _components(len(texts), [(a, b) for a, b in exact] + [(a, b) for a, b, _ in near])
    return DuplicateReport(exact_pairs=tuple(exact), near_pairs=tuple(near), groups=groups)


def conflicting_groups(report: DuplicateReport, labels: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The duplicate groups whose members carry more than one distinct label (-1 = unlabelled, ignored)."""
    y = np.asarray(labels)
    out = []
    for group in report.groups:
        seen = {int(y[i]) for i in group if y[i] >= 0}
        if len(seen) > 1:
            out.append(group)
    return tuple(out)


def leaked_test_rows(
    train_texts: Sequence[str], test_texts: Sequence[str], *, threshold: float = 0.8, shingle_size: int = 5
) -> tuple[int, ...]:
    """Indices (into ``test_texts``) of test rows that duplicate, exactly or nearly, a training row."""
    report = find_duplicates([*train_texts, *test_texts], threshold=threshold, shingle_size=shingle_size)
    n = len(train_texts)
    leaked: set[int] = set()
    for group in report.groups:
        if group[0] < n:  # groups are sorted: a training row is in it
            leaked.update(i - n for i in group if i >= n)
    return tuple(sorted(leaked))


def _components(n: int, pairs: list[tuple[int, int]]) -> tuple[tuple[int, ...], ...]:
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    members: dict[int, list[int]] = {}
    for i in {x for pair in pairs for x in pair}:
        members.setdefault(root(i), []).append(i)
    return tuple(sorted(tuple(sorted(m)) for m in members.values() if len(m) > 1))
