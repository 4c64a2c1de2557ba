"""Loading a member's labelled text file, splitting it, and feeding it to torch.

A member points the job at a local CSV, TSV or Parquet file and names the text and label columns;
the job declares the label set. Everything that can be wrong with that file (missing column,
labels outside the declared set, no rows, unparsable lines) is reported as ``TrainingDataError``
with a message that says what to fix, because the person reading it is a data steward, not the
author of this code.

Texts and labels are held in a ``LabelledTable`` (texts + integer class ids in the order of the
declared labels). Splitting and partitioning are seeded and stratified, so benchmarks are
reproducible. ``deduplicate_test_split`` finds the held-out rows that duplicate a training row
(exactly or nearly) and by default drops them: a held-out score counting copies of training rows
overstates what the model learnt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset

from clearinghouse.tabular import SAMPLE_SIZE, sniff_delimiter
from training.annotation.dedup import leaked_test_rows
from training.config import TEST_DEDUP_MODES, TrainConfig, TrainingConfigError, TrainingDataError

__all__ = [
    "HeldOutDuplicates",
    "LabelledTable",
    "TextClassificationDataset",
    "TokenizingCollator",
    "deduplicate_test_split",
    "load_labelled_table",
    "load_table_for_config",
    "make_loader",
    "partition",
    "split_train_test",
]

PARQUET_SUFFIXES = {".parquet", ".pq"}
TAB_SUFFIXES = {".tsv", ".tab"}
#: ``quote_char``'s default: the loader's own choice (no quoting for tab-separated text, ``"`` otherwise).
LOADER_QUOTE = "loader-default"
_MISSING = "<missing>"


@dataclass(frozen=True, eq=False)
class LabelledTable:
    """Texts with integer class ids; ``labels[label_ids[i]]`` is the label of ``texts[i]``."""

    texts: tuple[str, ...]
    label_ids: np.ndarray  # int64, shape (n,), read-only
    labels: tuple[str, ...]
    source: str | None = None  # where it came from, for messages and reports

    def __post_init__(self) -> None:
        ids = np.array(self.label_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(self.texts):
            raise TrainingDataError(f"{len(self.texts)} texts but {len(ids)} labels")
        if len(ids) and (ids.min() < 0 or ids.max() >= len(self.labels)):
            raise TrainingDataError(f"label ids must lie in [0, {len(self.labels)})")
        ids.setflags(write=False)
        object.__setattr__(self, "texts", tuple(self.texts))
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "label_ids", ids)

    @classmethod
    def from_lists(
        cls,
        *,
        texts: Sequence[str],
        labels: Sequence[str],
        label_names: Sequence[str],
        source: str | None = None,
    ) -> LabelledTable:
        """Build from parallel lists of texts and label *names* (handy in tests and demos)."""
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({label for label in labels if label not in index})
        if unknown:
            raise TrainingDataError(f"labels not among {list(label_names)!r}: {unknown[:5]!r}")
        return cls(
            texts=tuple(texts),
            label_ids=np.array([index[label] for label in labels], dtype=np.int64),
            labels=tuple(label_names),
            source=source,
        )

    def __len__(self) -> int:
        return len(self.texts)

    def label_counts(self) -> dict[str, int]:
        """Rows per declared label (zeros included), in label order."""
        counts = np.bincount(self.label_ids, minlength=len(self.labels))
        return {label: int(c) for label, c in zip(self.labels, counts, strict=False)}

    def subset(self, indices: Sequence[int] | np.ndarray, *, source: str | None = None) -> LabelledTable:
        """The rows at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return LabelledTable(
            texts=tuple(self.texts[i] for i in idx),
            label_ids=self.label_ids[idx],
            labels=self.labels,
            source=source if source is not None else self.source,
        )


# ---------------------------------------------------------------------------- loading
def load_labelled_table(
    path: str | Path,
    *,
    text_column: str,
    label_column: str,
    labels: Sequence[str],
    delimiter: str | None = None,
    has_header: bool = True,
    column_names: Sequence[str] | None = None,
    quote_char: str | None = LOADER_QUOTE,
) -> LabelledTable:
    """Load a labelled text table from a CSV, TSV or Parquet file.

    - Parquet: by suffix ``.parquet``/``.pq``. Any column types; both columns are read as strings
      (so integer labels 0/1 match declared labels ``("0", "1")``).
    - Delimited text (anything else): the delimiter is ``delimiter`` if given, a tab for
      ``.tsv``/``.tab``, otherwise sniffed among ``, ; TAB |``. Tab-separated files are read
      without quote handling (TSV has none; real files such as the UCI SMS Spam Collection contain
      unbalanced ``"`` in messages); other delimiters honour ``"`` quoting. Every column is read as
      text, in UTF-8 (invalid bytes replaced). ``quote_char`` overrides that choice (a character,
      or None for no quote handling): a private job's member reads its file as the registered
      upload was parsed (``training.digest.DataExpectation``), so that its digest can match.
    - ``has_header=False`` for files whose first line is data; name the columns with
      ``column_names`` (otherwise they are ``column_1``, ``column_2``, ...). With a header,
      ``column_names`` renames the columns.

    Labels are compared after stripping surrounding whitespace; any other mismatch (case,
    spelling, empty cell) is an error listing the offending values and their counts.
    """
    path = Path(path)
    where = path.name
    _check_data_file(path)
    label_names = _label_names(labels)
    frame = _read_frame(
        path, delimiter=delimiter, has_header=has_header, column_names=column_names, quote_char=quote_char
    )
    _check_columns(frame, text_column, label_column, has_header=has_header, where=where)
    texts = frame.get_column(text_column).cast(pl.String)
    raw_labels = frame.get_column(label_column).cast(pl.String).str.strip_chars()
    _check_texts(texts, text_column, where)
    ids = _label_ids(raw_labels, label_column, label_names, has_header=has_header, where=where)
    return LabelledTable(texts=tuple(texts.to_list()), label_ids=ids, labels=label_names, source=str(path))


def _check_data_file(path: Path) -> None:
    if not path.is_file():
        raise TrainingDataError(f"data file {str(path)!r} does not exist or is not a file")
    if path.stat().st_size == 0:
        raise TrainingDataError(f"data file {path.name!r} is empty")


def _label_names(labels: Sequence[str]) -> tuple[str, ...]:
    label_names = tuple(labels)
    if len(label_names) < 2 or len(set(label_names)) != len(label_names):
        raise TrainingDataError(f"labels must be at least two distinct names, got {list(label_names)!r}")
    return label_names


def _read_frame(
    path: Path,
    *,
    delimiter: str | None,
    has_header: bool,
    column_names: Sequence[str] | None,
    quote_char: str | None = LOADER_QUOTE,
) -> pl.DataFrame:
    """The file's table: Parquet by suffix, delimited text otherwise."""
    if path.suffix.lower() not in PARQUET_SUFFIXES:
        return _read_delimited(
            path, delimiter=delimiter, has_header=has_header, column_names=column_names, quote_char=quote_char
        )
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:  # polars/pyarrow raise many types for a corrupt file
        raise TrainingDataError(f"cannot read {path.name!r} as Parquet: {exc}") from exc
    if column_names is not None:
        frame = _rename(frame, column_names, path.name)
    return frame


def _check_columns(
    frame: pl.DataFrame, text_column: str, label_column: str, *, has_header: bool, where: str
) -> None:
    missing = [c for c in (text_column, label_column) if c not in frame.columns]
    if missing:
        hint = "" if has_header else " (the file was read without a header; name columns with column_names)"
        raise TrainingDataError(
            f"{where!r} has no column {' or '.join(repr(c) for c in missing)}; "
            f"available columns: {frame.columns!r}{hint}"
        )
    if frame.height == 0:
        raise TrainingDataError(f"{where!r} has no data rows")


def _check_texts(texts: pl.Series, text_column: str, where: str) -> None:
    null_texts = int(texts.null_count())
    if null_texts:
        first = int(texts.is_null().arg_true()[0]) + 1
        raise TrainingDataError(
            f"text column {text_column!r} of {where!r} has {null_texts} empty or missing value(s) "
            f"(first at data row {first})"
        )


def _label_ids(
    raw_labels: pl.Series,
    label_column: str,
    label_names: tuple[str, ...],
    *,
    has_header: bool,
    where: str,
) -> np.ndarray:
    """The class id of every row's (stripped) label; refuses any label not declared."""
    index = {name: i for i, name in enumerate(label_names)}
    known = raw_labels.is_in(list(label_names)).fill_null(False)
    if not bool(known.all()):
        raise _unknown_labels_error(
            raw_labels, known, label_column, label_names, has_header=has_header, where=where
        )
    return np.fromiter((index[v] for v in raw_labels.to_list()), dtype=np.int64, count=len(raw_labels))


def _unknown_labels_error(
    raw_labels: pl.Series,
    known: pl.Series,
    label_column: str,
    label_names: tuple[str, ...],
    *,
    has_header: bool,
    where: str,
) -> TrainingDataError:
    """The offending label values and their counts (the five commonest), with a hint when only
    the first line is off (a header read as data)."""
    bad = (
        raw_labels.filter(~known)
        .fill_null(_MISSING)
        .value_counts(name="n")
        .sort(["n", label_column], descending=[True, False])  # stable message: by count, then value
    )
    shown = ", ".join(f"{value!r} ({n} row{'s' if n != 1 else ''})" for value, n in bad.head(5).iter_rows())
    more = f" and {bad.height - 5} more value(s)" if bad.height > 5 else ""
    hint = ""
    if not has_header and not bool(known[0]) and bool(known[1:].all()):
        hint = " (only the first line is off: it looks like a header, so read with has_header=True)"
    return TrainingDataError(
        f"label column {label_column!r} of {where!r} has {int((~known).sum())} row(s) whose label is not "
        f"one of the declared labels {list(label_names)!r}: {shown}{more}{hint}"
    )


def load_table_for_config(path: str | Path, config: TrainConfig, **options: Any) -> LabelledTable:
    """``load_labelled_table`` with the columns and labels of ``config`` (options as there)."""
    return load_labelled_table(
        path,
        text_column=config.text_column,
        label_column=config.label_column,
        labels=config.labels,
        **options,
    )


def _read_delimited(
    path: Path,
    *,
    delimiter: str | None,
    has_header: bool,
    column_names: Sequence[str] | None,
    quote_char: str | None = LOADER_QUOTE,
) -> pl.DataFrame:
    where = path.name
    if delimiter is None:
        delimiter = "\t" if path.suffix.lower() in TAB_SUFFIXES else _sniff_delimiter(path)
    if len(delimiter) != 1:
        raise TrainingDataError(f"delimiter must be a single character, got {delimiter!r}")
    if quote_char == LOADER_QUOTE:
        quote_char = None if delimiter == "\t" else '"'
    elif quote_char is not None and len(quote_char) != 1:
        raise TrainingDataError(f"quote_char must be a single character or None, got {quote_char!r}")
    try:
        frame = pl.read_csv(
            path,
            separator=delimiter,
            has_header=has_header,
            quote_char=quote_char,
            infer_schema=False,  # all strings: labels like "01" or "1.0" stay as written
            encoding="utf8-lossy",
        )
    except pl.exceptions.NoDataError as exc:
        raise TrainingDataError(f"data file {where!r} is empty") from exc
    except Exception as exc:  # ComputeError for ragged/unparsable lines, etc.
        raise TrainingDataError(
            f"cannot parse {where!r} as {_delimiter_name(delimiter)}-separated text: {exc}"
        ) from exc
    if column_names is not None:
        frame = _rename(frame, column_names, where)
    return frame


def _sniff_delimiter(path: Path) -> str:
    with path.open("r", encoding="utf-8", errors="replace", newline="") as handle:
        sample = handle.read(SAMPLE_SIZE)
    if not sample.strip():
        raise TrainingDataError(f"data file {path.name!r} is empty")
    return sniff_delimiter(sample)  # among , ; TAB | (no colon: text columns are full of them)


def _rename(frame: pl.DataFrame, column_names: Sequence[str], where: str) -> pl.DataFrame:
    if len(column_names) != frame.width:
        raise TrainingDataError(
            f"{where!r} has {frame.width} columns but {len(column_names)} column names were given"
        )
    return frame.rename(dict(zip(frame.columns, column_names, strict=True)))


def _delimiter_name(delimiter: str) -> str:
    return {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}.get(delimiter, repr(delimiter))


# ---------------------------------------------------------------------------- splitting
def split_train_test(
    table: LabelledTable, *, test_fraction: float, seed: int, stratify: bool = True
) -> tuple[LabelledTable, LabelledTable]:
    """Seeded train/test split; stratified by label by default (each label split in proportion).

    Every label with at least two rows gets at least one row on each side when stratified.
    """
    if not 0.0 < test_fraction < 1.0:
        raise TrainingDataError(f"test_fraction must be strictly between 0 and 1, got {test_fraction!r}")
    if len(table) < 2:
        raise TrainingDataError(f"cannot split {len(table)} row(s) into train and test")
    rng = np.random.default_rng(seed)
    groups = (
        [np.flatnonzero(table.label_ids == k) for k in range(len(table.labels))]
        if stratify
        else [np.arange(len(table))]
    )
    train_idx: list[np.ndarray] = []
    test_idx: list[np.ndarray] = []
    for group in groups:
        if len(group) == 0:
            continue
        shuffled = rng.permutation(group)
        n_test = round(len(group) * test_fraction)
        if len(group) >= 2:
            n_test = min(max(n_test, 1), len(group) - 1)
        test_idx.append(shuffled[:n_test])
        train_idx.append(shuffled[n_test:])
    train = rng.permutation(np.concatenate(train_idx))
    test = rng.permutation(np.concatenate(test_idx))
    if len(train) == 0 or len(test) == 0:
        raise TrainingDataError("the split left the train or the test side empty; use more data")
    return table.subset(train), table.subset(test)


@dataclass(frozen=True, eq=False)
class HeldOutDuplicates:
    """The held-out rows of a split that duplicate a training row (``deduplicate_test_split``).

    ``indices``: their positions in the held-out side as split, or None when nothing was checked
    (mode ``"off"``, or no texts to compare). ``dropped``: the rows taken out of the held-out side
    (mode ``"drop"``; empty otherwise), kept because they are still rows of the member's file (its
    content digest counts them).
    """

    mode: str
    indices: tuple[int, ...] | None
    dropped: LabelledTable

    @property
    def found(self) -> int | None:
        """How many held-out rows duplicate a training row (None: not checked)."""
        return None if self.indices is None else len(self.indices)


def deduplicate_test_split(
    train: LabelledTable,
    test: LabelledTable,
    *,
    mode: str = "drop",
    threshold: float = 0.8,
    shingle_size: int = 5,
) -> tuple[LabelledTable, HeldOutDuplicates]:
    """The held-out side to evaluate on, and its rows that duplicate a training row.

    A held-out row duplicates a training row when their texts are equal after normalisation (case,
    Unicode form, runs of whitespace) or near duplicates: character ``shingle_size``-gram Jaccard
    similarity >= ``threshold`` (``training.annotation.dedup.leaked_test_rows``; labels are not
    compared). ``mode``: ``"drop"`` takes them out of the held-out side, ``"report"`` only counts
    them, ``"off"`` checks nothing. Tables without texts are not checked. Refuses
    (``TrainingDataError``) to drop every held-out row: nothing would be left to evaluate on.
    """
    if mode not in TEST_DEDUP_MODES:
        raise TrainingConfigError(
            f"the held-out deduplication mode must be one of {list(TEST_DEDUP_MODES)!r}, got {mode!r}"
        )
    nothing = test.subset([])
    if mode == "off" or not train.texts or not test.texts:
        return test, HeldOutDuplicates(mode=mode, indices=None, dropped=nothing)
    leaked = leaked_test_rows(train.texts, test.texts, threshold=threshold, shingle_size=shingle_size)
    if mode == "report" or not leaked:
        return test, HeldOutDuplicates(mode=mode, indices=leaked, dropped=nothing)
    if len(leaked) == len(test):
        raise TrainingDataError(
            f"every one of the {len(test)} held-out rows duplicates a training row (exactly or nearly), "
            "so none would be left to evaluate on; remove the duplicates from the file (or keep them "
            "with test-dedup 'report', for an overstated held-out score)"
        )
    gone = set(leaked)
    kept = test.subset([i for i in range(len(test)) if i not in gone])
    return kept, HeldOutDuplicates(mode=mode, indices=leaked, dropped=test.subset(list(leaked)))


def partition(
    table: LabelledTable,
    *,
    n_parts: int,
    seed: int,
    label_skew: Mapping[str, Sequence[float]] | None = None,
) -> list[LabelledTable]:
    """Split ``table`` into ``n_parts`` disjoint parts (one per simulated member), seeded.

    Without ``label_skew`` the split is IID: every label is spread evenly over the parts.
    ``label_skew`` maps a label to per-part weights (normalised), e.g. with three members
    ``{"spam": [0.8, 0.1, 0.1]}`` gives member 0 80 % of the spam; labels not named are spread
    evenly. Counts are allocated by largest remainder, so every row lands in exactly one part.
    """
    if isinstance(n_parts, bool) or not isinstance(n_parts, int) or n_parts < 1:
        raise TrainingDataError(f"n_parts must be a positive integer, got {n_parts!r}")
    skew = dict(label_skew or {})
    unknown = sorted(set(skew) - set(table.labels))
    if unknown:
        raise TrainingDataError(
            f"label_skew names unknown labels {unknown!r} (labels: {list(table.labels)!r})"
        )
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(n_parts)]
    for k, label in enumerate(table.labels):
        weights = np.asarray(skew.get(label, [1.0] * n_parts), dtype=np.float64)
        if (
            weights.shape != (n_parts,)
            or not np.all(np.isfinite(weights))
            or weights.min() < 0
            or weights.sum() <= 0
        ):
            raise TrainingDataError(
                f"label_skew[{label!r}] must be {n_parts} non-negative weights with a positive sum, "
                f"got {list(skew.get(label, []))!r}"
            )
        group = rng.permutation(np.flatnonzero(table.label_ids == k))
        counts = _largest_remainder(len(group), weights / weights.sum())
        for i, chunk in enumerate(np.split(group, np.cumsum(counts)[:-1])):
            parts[i].append(chunk)
    out = []
    for i, chunks in enumerate(parts):
        idx = rng.permutation(np.concatenate(chunks)) if chunks else np.array([], dtype=np.int64)
        if len(idx) == 0:
            raise TrainingDataError(f"part {i} of {n_parts} would be empty; use fewer parts or more data")
        source = f"{table.source or 'table'}[part {i + 1}/{n_parts}]"
        out.append(table.subset(idx, source=source))
    return out


def _largest_remainder(total: int, shares: np.ndarray) -> np.ndarray:
    exact = shares * total
    counts: np.ndarray = np.floor(exact).astype(np.int64)
    # Ties go to the lower index (stable sort), so the allocation is deterministic.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


# ---------------------------------------------------------------------------- torch feeding
class TextClassificationDataset(Dataset[tuple[str, int]]):
    """``(text, class id)`` pairs; tokenisation happens per batch in ``TokenizingCollator``."""

    def __init__(self, table: LabelledTable) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[str, int]:
        return self.table.texts[i], int(self.table.label_ids[i])


class TokenizingCollator:
    """Tokenise a batch at once (fast tokenizers are much quicker on batches), padded to the
    longest text in the batch rather than to ``max_length``, which saves most of the compute on
    short texts such as SMS messages."""

    def __init__(self, tokenizer: Any, *, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length

    def __call__(self, batch: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
        texts = [text for text, _ in batch]
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = dict(encoded)
        out["labels"] = torch.tensor([label for _, label in batch], dtype=torch.long)
        return out


def make_loader(
    table: LabelledTable,
    *,
    tokenizer: Any,
    config: TrainConfig,
    shuffle: bool,
    seed: int | None = None,
    batch_size: int | None = None,
) -> DataLoader[tuple[str, int]]:
    """A DataLoader of tokenised batches.

    Shuffling uses its own generator seeded with ``seed`` (default ``config.seed``), so the batch
    order is reproducible and independent of whatever else consumed torch's global RNG. Federated
    clients should pass a seed that varies with the round, or every round sees the same order.
    """
    if len(table) == 0:
        raise TrainingDataError("cannot make a data loader from an empty table")
    generator = None
    if shuffle:
        generator = torch.Generator()
        generator.manual_seed(config.seed if seed is None else seed)
    return DataLoader(
        TextClassificationDataset(table),
        batch_size=batch_size or config.batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=TokenizingCollator(tokenizer, max_length=config.max_length),
        num_workers=0,  # tokenising in-process is fast enough and keeps seeding simple
    )
