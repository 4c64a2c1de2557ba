"""`PreparedData.from_chunks` (issue 15): a table staged one chunk (row group) at a time is exactly
the table staged whole, refused with the same code and message, never holds more than the chunk it
is staging, and leaves nothing in the spill directory after `close()` or a refusal."""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Iterator

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.dp import PreparedData, QueryError, TableSchema, release, sql_to_spec

from .conftest import pums_schema_dict


def _schema(*, max_rows: int = 1_000_000, nullable: bool = False, identifier: bool = False) -> TableSchema:
    columns = [
        {"name": "n", "type": "integer", "lower": 0, "upper": 100, "nullable": nullable},
        {"name": "x", "type": "float", "lower": -10, "upper": 10, "nullable": nullable},
        {"name": "c", "type": "categorical", "categories": ["a", "b", "c"], "nullable": nullable},
        {"name": "t", "type": "categorical", "nullable": nullable},
        {"name": "b", "type": "boolean", "nullable": nullable},
    ]
    data: dict = {
        "name": "t",
        "columns": columns,
        "privacy_unit": {"kind": "row"},
        "policy": {"measure": "pure", "max_rows": max_rows},
    }
    if identifier:
        columns.append({"name": "pid", "type": "integer", "lower": 0, "upper": 10})
        data["privacy_unit"] = {"kind": "identifier", "column": "pid", "max_rows_per_person": 2}
    return TableSchema.from_dict(data)


_ROW = st.fixed_dictionaries(
    {
        "n": st.one_of(st.none(), st.integers(0, 100)),
        "x": st.one_of(st.none(), st.just(math.nan), st.floats(-10, 10)),
        "c": st.one_of(st.none(), st.sampled_from(["a", "b", "c"]), st.just("zz")),  # zz: outside
        "t": st.one_of(st.none(), st.sampled_from(["p", "q", "rr", "s" * 20])),
        "b": st.one_of(st.none(), st.booleans()),
        "pid": st.integers(0, 3),
    }
)
_TYPES = {
    "n": pl.Int32,
    "x": pl.Float64,
    "c": pl.String,
    "t": pl.Categorical,
    "b": pl.Boolean,
    "pid": pl.Int64,
}


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=_TYPES)


def _split(frame: pl.DataFrame, sizes: list[int]) -> list[pl.DataFrame]:
    """`frame` cut into chunks of the given sizes (the rest in one last chunk); at least one chunk."""
    chunks, start = [], 0
    for size in sizes:
        if start >= frame.height:
            break
        chunks.append(frame.slice(start, size))
        start += size
    if start < frame.height or not chunks:
        chunks.append(frame.slice(start))
    return chunks


def _staged(prepared: PreparedData) -> pl.DataFrame:
    return prepared.frame(prepared.columns).collect()


def _outcome(make) -> tuple[str, pl.DataFrame | tuple[str, str]]:
    try:
        with make() as prepared:
            return "ok", _staged(prepared)
    except QueryError as exc:
        return "refused", (exc.code, exc.message)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(_ROW, max_size=40),
    sizes=st.lists(st.integers(1, 12), max_size=6),
    max_rows=st.integers(1, 45),
    nullable=st.booleans(),
    identifier=st.booleans(),
    spill=st.booleans(),
    bad=st.one_of(st.none(), st.integers(0, 39)),
)
def test_chunked_staging_is_the_whole_table_staging(
    tmp_path, rows, sizes, max_rows, nullable, identifier, spill, bad
):
    schema = _schema(max_rows=max_rows, nullable=nullable, identifier=identifier)
    frame = _frame(rows)
    if bad is not None and bad < frame.height:  # a value that is not an integer, in some chunk
        frame = frame.with_columns(pl.col("n").cast(pl.String)).with_columns(
            pl.when(pl.int_range(pl.len()) == bad).then(pl.lit("x")).otherwise(pl.col("n")).alias("n")
        )
    chunks = _split(frame, sizes)
    spill_dir = str(tmp_path) if spill else False
    whole = _outcome(lambda: PreparedData(schema, frame, spill_dir=spill_dir))
    chunked = _outcome(lambda: PreparedData.from_chunks(schema, lambda: iter(chunks), spill_dir=spill_dir))
    assert whole[0] == chunked[0]
    if whole[0] == "ok":
        assert isinstance(whole[1], pl.DataFrame) and isinstance(chunked[1], pl.DataFrame)
        assert chunked[1].schema == whole[1].schema
        assert chunked[1].equals(whole[1])
    else:  # the same code; the same message but for Polars' own text on a failed cast
        code, message = whole[1]
        assert chunked[1][0] == code
        if "declared types" in message:
            assert chunked[1][1].split(":")[0] == message.split(":")[0]
        else:
            assert chunked[1][1] == message
    assert os.listdir(tmp_path) == []  # closed or refused: nothing left in the spill directory


def test_max_rows_is_counted_across_chunks(tmp_path):
    schema = _schema(max_rows=10)
    chunk = _frame([{"n": 1, "x": 0.5, "c": "a", "t": "p", "b": True, "pid": 0}] * 4)
    with PreparedData.from_chunks(schema, lambda: iter([chunk, chunk]), spill_dir=str(tmp_path)) as ok:
        assert ok.height == 8
    for spill_dir in (str(tmp_path), False):
        with pytest.raises(QueryError) as info:  # each chunk is under max_rows; the three are not
            PreparedData.from_chunks(schema, lambda: iter([chunk, chunk, chunk]), spill_dir=spill_dir)
        assert info.value.code == "dataset_too_large"
    assert os.listdir(tmp_path) == []


def test_a_type_error_in_the_last_chunk_is_refused_and_leaves_nothing(tmp_path):
    schema = _schema()
    good = _frame([{"n": 1, "x": 0.5, "c": "a", "t": "p", "b": True, "pid": 0}] * 3).with_columns(
        pl.col("n").cast(pl.String)
    )
    bad = good.with_columns(pl.lit("twelve").alias("n"))
    seen = []

    def chunks() -> Iterator[pl.DataFrame]:
        for chunk in (good, good, bad):
            seen.append(os.listdir(tmp_path))  # the staged file exists while chunks are read
            yield chunk

    with pytest.raises(QueryError) as info:
        PreparedData.from_chunks(schema, chunks, spill_dir=str(tmp_path))
    assert info.value.code == "data_does_not_match_schema"
    assert seen[-1] and os.listdir(tmp_path) == []


def test_missing_columns_are_refused(tmp_path):
    schema = _schema()
    chunk = _frame([{"n": 1, "x": 0.5, "c": "a", "t": "p", "b": True, "pid": 0}]).drop("x")
    with pytest.raises(QueryError) as info:
        PreparedData.from_chunks(schema, lambda: iter([chunk]), spill_dir=str(tmp_path))
    assert info.value.code == "data_does_not_match_schema" and "lacks columns ['x']" in info.value.message
    assert os.listdir(tmp_path) == []


def test_no_chunks_lack_the_columns(tmp_path):
    with pytest.raises(QueryError) as info:  # as the whole-table path says of a frame with no columns
        PreparedData.from_chunks(_schema(), lambda: iter([]), spill_dir=str(tmp_path))
    assert info.value.code == "data_does_not_match_schema"
    assert os.listdir(tmp_path) == []


def test_staging_holds_one_chunk_at_a_time(tmp_path):
    """The source's chunks are freed as they are staged: when chunk i+1 is read, no earlier one is
    alive (the whole-table path would hold them all)."""
    schema = _schema()
    alive: set[int] = set()
    most = 0

    def chunks() -> Iterator[pl.DataFrame]:
        nonlocal most
        for index in range(12):
            chunk = _frame([{"n": index, "x": 0.5, "c": "a", "t": "p", "b": True, "pid": 0}] * 50)
            weakref.finalize(chunk, alive.discard, index)
            alive.add(index)
            most = max(most, len(alive))
            yield chunk
            del chunk

    with PreparedData.from_chunks(schema, chunks, spill_dir=str(tmp_path)) as prepared:
        assert prepared.height == 600
        assert _staged(prepared)["n"].to_list() == [i for i in range(12) for _ in range(50)]
    assert most == 1


def test_a_failed_spill_stages_in_memory(tmp_path):
    schema = _schema()
    frame = _frame([{"n": i % 100, "x": 0.5, "c": "a", "t": "p", "b": True, "pid": 0} for i in range(30)])
    calls = []

    def chunks() -> Iterator[pl.DataFrame]:
        calls.append(1)
        return iter(_split(frame, [7, 7, 7]))

    missing = str(tmp_path / "gone")  # not a directory: writing fails (OSError)
    with PreparedData.from_chunks(schema, chunks, spill_dir=missing) as prepared:
        assert prepared._path is None and len(calls) == 2
        with PreparedData(schema, frame, spill_dir=False) as whole:
            assert _staged(prepared).equals(_staged(whole))


def test_releases_over_chunked_staging_match_the_whole_table(tmp_path, pums_df):
    """The same (noiseless, ε huge) answers from the chunked staging as from the whole table."""
    schema = TableSchema.from_dict(pums_schema_dict())
    chunks = _split(pums_df, [300, 300, 300])
    queries = [
        "SELECT COUNT(*) FROM pums",
        "SELECT AVG(income) FROM pums",
        "SELECT educ, COUNT(*) FROM pums GROUP BY educ",
    ]
    with (
        PreparedData.from_chunks(schema, lambda: iter(chunks), spill_dir=str(tmp_path)) as chunked,
        PreparedData(schema, pums_df, spill_dir=str(tmp_path)) as whole,
    ):
        assert chunked._path is not None and chunked.enum_columns == {"sex", "educ"}
        assert _staged(chunked).equals(_staged(whole))
        for sql in queries:
            spec = sql_to_spec(sql, schema, privacy={"epsilon": 1e6})
            a, b = release(schema, spec, chunked), release(schema, spec, whole)
            assert a.columns == b.columns and len(a.rows) == len(b.rows)
            for x, y in zip(a.rows, b.rows, strict=True):
                assert x.keys() == y.keys()
                for key in x:
                    if isinstance(x[key], str):  # a group's key
                        assert x[key] == y[key]
                    else:
                        assert x[key] == pytest.approx(y[key], rel=1e-3, abs=2)


def test_public_categories_are_staged_as_their_enum_on_both_paths(tmp_path):
    import pyarrow as pa
    import pyarrow.ipc as ipc

    schema = _schema()
    frame = _frame([{"n": 1, "x": 0.5, "c": "abc"[i % 3], "t": "p", "b": True, "pid": 0} for i in range(30)])
    with (
        PreparedData.from_chunks(schema, lambda: iter(_split(frame, [10, 10])), spill_dir=str(tmp_path)) as p,
        PreparedData(schema, frame, spill_dir=str(tmp_path)) as whole,
    ):
        for staged in (p, whole):
            stored = ipc.open_file(staged._path).schema
            # its codes, 1 byte a value (not a 16-byte view; not a dictionary, which Polars decodes
            # value by value on every read)
            assert stored.field("c").type == pa.uint8()
            assert stored.field("t").type == pa.string_view()  # no public categories: strings
        assert p.enum_columns == whole.enum_columns == {"c"}
        assert p.frame(("c", "n")).collect_schema() == {"c": pl.Enum(["a", "b", "c"]), "n": pl.Int64}
        assert p.frame(("c", "n"), strings=True).collect_schema() == {"c": pl.String, "n": pl.Int64}
        assert _staged(p).equals(_staged(whole))


def test_a_value_outside_the_categories_stages_the_column_as_strings(tmp_path):
    schema = _schema()
    rows = [{"n": 1, "x": 0.5, "c": "a", "t": "p", "b": True, "pid": 0}] * 20
    frame = _frame([*rows, {**rows[0], "c": "elsewhere"}])  # in the last chunk
    with (
        PreparedData.from_chunks(schema, lambda: iter(_split(frame, [10, 10])), spill_dir=str(tmp_path)) as p,
        PreparedData(schema, frame, spill_dir=False) as whole,
    ):
        assert p._path is not None and not p.enum_columns  # tried as Enum, staged as strings
        assert not whole.enum_columns
        assert _staged(p).equals(_staged(whole))
        assert len(os.listdir(tmp_path)) == 1  # the first try's file is gone


def test_an_error_reading_the_chunks_is_raised_not_staged_around(tmp_path):
    schema = _schema()
    chunk = _frame([{"n": 1, "x": 0.5, "c": "a", "t": "p", "b": True, "pid": 0}] * 5)
    calls = []

    def chunks() -> Iterator[pl.DataFrame]:
        calls.append(1)
        yield chunk
        raise ConnectionError("the store went away")  # an OSError, as a failed read is

    with pytest.raises(ConnectionError):
        PreparedData.from_chunks(schema, chunks, spill_dir=str(tmp_path))
    assert calls == [1] and os.listdir(tmp_path) == []  # not retried in memory; nothing left


def test_an_identifier_schema_without_chunks_lacks_the_columns(tmp_path):
    with pytest.raises(QueryError) as info:
        PreparedData.from_chunks(_schema(identifier=True), lambda: iter([]), spill_dir=str(tmp_path))
    assert info.value.code == "data_does_not_match_schema"
