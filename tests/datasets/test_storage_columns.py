"""`storage.read_table(..., columns=)`: projected reads through `SegmentReader` (issue 15)."""

from __future__ import annotations

import os
import weakref

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


# Row group by row group (`iter_row_groups`), and a dp worker's staging from it (issue 15).

SCHEMA = {
    "name": "t",
    "columns": [
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "educ", "type": "categorical", "categories": [str(i) for i in range(1, 17)]},
        {"name": "income", "type": "float", "lower": 0, "upper": 20_000},
    ],
    "privacy_unit": {"kind": "row"},
}


def test_row_groups_one_at_a_time(stored):
    parts = list(storage.iter_row_groups(NAME, CONTEXT, ["income", "educ", "nope"], dictionary=["educ"]))
    assert [part.height for part in parts] == [50_000] * 4
    assert all(part.columns == ["income", "educ"] for part in parts)
    assert parts[0].schema["educ"] == pl.Categorical  # dictionary-encoded text
    whole = pl.concat(parts).with_columns(pl.col("educ").cast(pl.String))
    assert whole.equals(stored.select("income", "educ"))


def test_row_groups_of_an_empty_table(media_root):
    storage.write_table(NAME, CONTEXT, table(0))
    parts = list(storage.iter_row_groups(NAME, CONTEXT, ["age", "educ"], dictionary=["educ"]))
    assert len(parts) == 1 and parts[0].height == 0 and parts[0].columns == ["age", "educ"]


def test_row_groups_fail_on_a_wrong_context(stored):
    with pytest.raises(IntegrityError):
        list(storage.iter_row_groups(NAME, {**CONTEXT, "version": 4}, ["income"]))


def test_staging_by_row_group_equals_staging_the_whole_table(stored, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    from clearinghouse.dp import PreparedData, TableSchema, prepare

    schema = TableSchema.from_dict(SCHEMA)
    alive: set[int] = set()
    most = 0

    def row_groups():
        nonlocal most
        for index, part in enumerate(
            storage.iter_row_groups(NAME, CONTEXT, schema.names, dictionary=["educ"])
        ):
            weakref.finalize(part, alive.discard, index)
            alive.add(index)
            most = max(most, len(alive))
            yield part
            del part

    with (
        PreparedData.from_chunks(schema, row_groups, spill_dir=str(spill)) as chunked,
        prepare(schema, storage.read_table(NAME, CONTEXT, columns=schema.names)) as whole,
    ):
        assert chunked._path is not None and chunked.height == whole.height == 200_000
        assert chunked.frame(schema.names).collect().equals(whole.frame(schema.names).collect())
    assert most == 1  # never more than the row group being staged
    assert os.listdir(spill) == []


def test_max_rows_holds_across_row_groups(stored, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    from clearinghouse.dp import PreparedData, QueryError, TableSchema

    schema = TableSchema.from_dict({**SCHEMA, "policy": {"max_rows": 199_999}})  # each group is 50,000
    with pytest.raises(QueryError) as info:
        PreparedData.from_chunks(
            schema,
            lambda: storage.iter_row_groups(NAME, CONTEXT, schema.names, dictionary=["educ"]),
            spill_dir=str(spill),
        )
    assert info.value.code == "dataset_too_large"
    assert os.listdir(spill) == []


def test_a_type_error_in_the_last_row_group_is_refused(media_root, monkeypatch, tmp_path):
    spill = tmp_path / "spill"
    spill.mkdir()
    from clearinghouse.dp import PreparedData, QueryError, TableSchema

    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 1_000)
    frame = table(4_000).with_columns(pl.col("age").cast(pl.String))
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3_999).then(pl.lit("old")).otherwise(pl.col("age")).alias("age")
    )
    storage.write_table(NAME, CONTEXT, frame)
    schema = TableSchema.from_dict(SCHEMA)
    with pytest.raises(QueryError) as info:
        PreparedData.from_chunks(
            schema,
            lambda: storage.iter_row_groups(NAME, CONTEXT, schema.names, dictionary=["educ"]),
            spill_dir=str(spill),
        )
    assert info.value.code == "data_does_not_match_schema"
    assert os.listdir(spill) == []
