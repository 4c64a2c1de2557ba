"""`storage.read_table(..., columns=)`: projected reads through `SegmentReader` (issue 15)."""

from __future__ import annotations

import os

import polars as pl
import pyarrow.parquet as pq
import pytest
from django.core.files.storage import default_storage

from clearinghouse.crypto import IntegrityError, read_header
from clearinghouse.crypto.seekable import SegmentReader
from clearinghouse.datasets import storage

CONTEXT = storage.data_context(organisation_id=1, dataset_id=2, number=3)
NAME = "datasets/1/2/v3/data.parquet.enc"


def table(rows: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "age": pl.int_range(rows, eager=True) % 90,
            "educ": (pl.int_range(rows, eager=True) % 16 + 1).cast(pl.String),
            "income": pl.Series([float(i % 977) * 13.5 for i in range(rows)]),
            "note": pl.Series([os.urandom(8).hex() for _ in range(rows)]),  # a wide column: not wanted
        }
    )


@pytest.fixture
def stored(media_root, monkeypatch):
    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 50_000)
    frame = table(200_000)
    storage.write_table(NAME, CONTEXT, frame)
    return frame


def test_whole_table_unchanged(stored):
    assert storage.read_table(NAME, CONTEXT).equals(stored)


@pytest.mark.parametrize(
    "columns", [["income"], ["educ", "income"], ["age", "educ", "income", "note"], ["note", "age"]]
)
def test_projected_read_equals_the_selection(stored, columns):
    frame = storage.read_table(NAME, CONTEXT, columns=columns)
    assert frame.select(columns).equals(stored.select(columns))
    assert set(frame.columns) == set(columns)


def test_missing_columns_are_left_out(stored):
    frame = storage.read_table(NAME, CONTEXT, columns=["income", "nope", "income"])
    assert frame.columns == ["income"]


def test_row_groups_are_bounded(stored):
    with (
        default_storage.open(NAME, "rb") as src,
        SegmentReader(src, keyring=storage.keyring(), context=CONTEXT) as reader,
    ):
        assert pq.ParquetFile(reader).metadata.num_row_groups == 4


def test_wrong_context_fails(stored):
    with pytest.raises(IntegrityError):
        storage.read_table(NAME, {**CONTEXT, "version": 4}, columns=["income"])


def test_tampered_segment_fails_when_read(stored):
    path = default_storage.path(NAME)
    blob = bytearray(open(path, "rb").read())
    header = read_header(default_storage.open(NAME, "rb"))
    blob[len(header) + 100] ^= 1  # inside segment 0 (the Parquet magic and the first column chunks)
    with open(path, "wb") as handle:
        handle.write(blob)
    with pytest.raises(IntegrityError):
        storage.read_table(NAME, CONTEXT, columns=["age"])
    with pytest.raises(IntegrityError):
        storage.read_table(NAME, CONTEXT)


@pytest.mark.parametrize(
    ("columns", "row_group_reads"),
    [
        (["income"], 4),
        (["age", "income"], 4),
        (["educ", "income"], 0),
        (["age", "educ", "income", "note"], 0),
    ],
)
def test_pyarrow_reads_narrow_numeric_projections_polars_the_rest(
    stored, monkeypatch, columns, row_group_reads
):
    calls = []
    original = pq.ParquetFile.read_row_group

    def counting(self, *args, **kwargs):
        calls.append(args)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", counting)
    frame = storage.read_table(NAME, CONTEXT, columns=columns)
    assert len(calls) == row_group_reads
    assert frame.select(columns).equals(stored.select(columns))
