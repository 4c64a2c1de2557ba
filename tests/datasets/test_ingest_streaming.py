"""The ingestion path restructured for throughput (issue 15, target 3): one scan of the upload's bytes
(`read_upload`), UTF-8 checked without decoding the whole file at once, every column's checks as two
parallel Polars `select`s, and Parquet written straight through the encryptor. Each is checked
against what it replaces: the same frame, parse options and errors as `read_raw` + `parse_options`,
the same offset as a whole `bytes.decode`, reports that match a row-by-row oracle, and a stored file
that reads back as the table."""

from __future__ import annotations

import io

import polars as pl
import pytest
from django.core.files.storage import default_storage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.core.keys import keyring
from clearinghouse.crypto import decrypt_to_bytes
from clearinghouse.datasets import ingest, storage
from clearinghouse.datasets.ingest import IngestError, check, parse_options, read_raw, read_upload
from clearinghouse.datasets.schema import DatasetSchema

# -- UTF-8: the first invalid byte, found chunk by chunk ----------------------------------------------

_pieces = st.one_of(
    st.binary(max_size=6),  # anything, invalid sequences and stray continuation bytes included
    st.text(max_size=4).map(str.encode),  # valid multi-byte characters, to be cut by chunk ends
)


def _whole_decode_offset(data: bytes) -> int | None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start
    return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_pieces, max_size=12).map(b"".join), st.integers(min_value=1, max_value=9))
def test_utf8_offset_is_the_whole_decodes_at_any_chunk_size(monkeypatch, data, chunk):
    monkeypatch.setattr(ingest, "_UTF8_CHUNK", chunk)
    assert ingest._utf8_error_offset(data) == _whole_decode_offset(data)


def test_invalid_utf8_after_a_chunk_boundary_keeps_its_file_offset(monkeypatch):
    monkeypatch.setattr(ingest, "_UTF8_CHUNK", 8)
    data = b"a,b\n" + "é,ü\n".encode() * 5 + b"x,\xff\n"
    with pytest.raises(IngestError) as info:
        read_raw(data, fmt="csv")
    assert info.value.code == "invalid_utf8"
    offset = data.index(b"\xff")
    assert info.value.message == f"The file is not valid UTF-8 (byte offset {offset})."


# -- read_upload == read_raw + parse_options ----------------------------------------------------------

SCHEMA = DatasetSchema.from_dict(
    {
        "columns": [
            {"name": "age", "type": "integer", "lower": 0, "upper": 100},
            {"name": "sex", "type": "categorical", "categories": ["0", "1"]},
            {"name": "race", "type": "categorical", "nullable": True},
            {"name": "income", "type": "float", "lower": 0, "upper": 500000, "nullable": True},
            {"name": "married", "type": "boolean"},
            {"name": "note", "type": "text", "max_length": 3, "nullable": True},
        ],
        "privacy_unit": {"kind": "row"},
    }
)
_cells = st.one_of(
    st.sampled_from(
        ["", "0", "1", "-5", "101", " 7 ", "2.5", "1e9", "nan", "yes", "No", "été", '"a,b"', '""']
    ),
    st.text(alphabet='01a;,\t "\r\n\x00é', max_size=5),  # quoting, delimiters, CR/LF and NUL inside fields
)


def _outcome(read, *args, **kwargs):
    try:
        return "ok", read(*args, **kwargs)
    except IngestError as exc:
        return "refused", exc.code, exc.message, exc.report


def _same(left, right) -> bool:
    if left[0] != right[0]:
        return False
    if left[0] == "refused":
        return left == right
    (frame_l, parse_l), (frame_r, parse_r) = left[1], right[1]
    return frame_l.equals(frame_r) and frame_l.schema == frame_r.schema and parse_l == parse_r


@settings(max_examples=250, deadline=None)
@given(
    rows=st.lists(st.lists(_cells, min_size=5, max_size=7), max_size=8),
    newline=st.sampled_from([b"\n", b"\r\n"]),
    bom=st.booleans(),
    blank_lines=st.booleans(),
    delimiter=st.sampled_from([None, ",", ";"]),
    quote_char=st.sampled_from(['"', None]),
    typed=st.booleans(),
    header=st.booleans(),
)
def test_read_upload_is_read_raw_and_parse_options(
    rows, newline, bom, blank_lines, delimiter, quote_char, typed, header
):
    separator = (delimiter or ",").encode()
    lines = ([separator.join(c.name.encode() for c in SCHEMA.columns)] if header else []) + [
        separator.join(cell.encode() for cell in row) for row in rows
    ]
    if blank_lines:
        lines = [line for row in lines for line in (row, b"")]
    data = (b"\xef\xbb\xbf" if bom else b"") + newline.join(lines) + newline
    options = {
        "delimiter": delimiter,
        "quote_char": quote_char,
        "column_names": None if header else SCHEMA.names,
        "schema": SCHEMA if typed else None,
    }

    def before(data):  # what the worker did: read_raw, then parse_options on the same bytes
        frame = read_raw(data, fmt="csv", **options)
        return frame, parse_options(data, fmt="csv", delimiter=delimiter, quote_char=quote_char)

    assert _same(_outcome(read_upload, data, fmt="csv", **options), _outcome(before, data))


def test_read_upload_of_parquet():
    buffer = io.BytesIO()
    pl.DataFrame({"age": [30, 40], "sex": ["0", "1"]}).write_parquet(buffer)
    data = buffer.getvalue()
    frame, parse = read_upload(data, fmt="parquet")
    assert frame.equals(read_raw(data, fmt="parquet"))
    assert parse == parse_options(data, fmt="parquet", delimiter=None, quote_char=None)
    parse["delimiter"] = ","  # a caller's copy: the next upload's options are unchanged
    assert read_upload(data, fmt="parquet")[1]["delimiter"] is None


# -- check: every finding against a row-by-row oracle --------------------------------------------------

# Each column's cells with what the checks must make of them: the parsed value, or TYPE_ERROR.
TYPE_ERROR = object()
_AGE = {
    "": None,
    "5": 5,
    " 7 ": 7,
    "0": 0,
    "100": 100,
    "101": 101,
    "-3": -3,
    "x": TYPE_ERROR,
    "2.5": TYPE_ERROR,
}
_SEX = {"": None, "0": "0", "1": "1", "2": "2"}
_RACE = {"": None, "1": "1", "9": "9"}
_INCOME = {
    "": None,
    "1.5": 1.5,
    " 2 ": 2.0,
    "1e9": 1e9,
    "-1": -1.0,
    "500000": 500000.0,
    "500000.5": 500000.5,
    "nan": TYPE_ERROR,
    "inf": TYPE_ERROR,
    "a": TYPE_ERROR,
}
_MARRIED = {"": None, "yes": True, "No": False, "0": False, "maybe": TYPE_ERROR}
_NOTE = {"": None, "ab": "ab", "abcd": "abcd", "été": "été", "étét": "étét"}
CELLS = {"age": _AGE, "sex": _SEX, "race": _RACE, "income": _INCOME, "married": _MARRIED, "note": _NOTE}


def _finding(column, value, repair: str) -> tuple[str | None, bool]:
    """What the checks must find in one cell of `column` whose parsed value is `value`: (report key or
    None, whether the row breaks the schema rather than being fixed by the clamp repair)."""
    if value is TYPE_ERROR:
        return "type_errors", True
    if value is None:
        return (None, False) if column.nullable else ("nulls_not_allowed", True)
    if column.is_numeric and not column.lower <= value <= column.upper:
        return "out_of_bounds", repair != "clamp"
    if column.categories is not None and value not in column.categories:
        return "unknown_categories", True
    if column.type == "text" and len(value) > column.max_length:
        return "too_long", repair != "clamp"
    return None, False


def _oracle(rows: list[dict[str, str]], repair: str) -> tuple[dict, int, int]:
    """(per column: finding -> (count, first lines)), rows breaking the schema, values fixed: row by row."""
    findings: dict[str, dict[str, list[int]]] = {name: {} for name in CELLS}
    bad_rows: set[int] = set()
    violations = 0
    for column in SCHEMA.columns:
        name = column.name
        bad_here, fixed_here = set(), set()
        for index, row in enumerate(rows):
            key, bad = _finding(column, CELLS[name][row[name]], repair)
            if key is not None:
                findings[name].setdefault(key, []).append(index + 2)  # the header is line 1
                (bad_here if bad else fixed_here).add(index)
        violations += len(bad_here) + len(fixed_here)
        bad_rows |= bad_here
    return findings, len(bad_rows), violations


@settings(max_examples=150, deadline=None)
@given(
    rows=st.lists(
        st.fixed_dictionaries({name: st.sampled_from(sorted(cells)) for name, cells in CELLS.items()}),
        min_size=1,
        max_size=14,
    ),
    repair=st.sampled_from(["none", "drop", "clamp"]),
    typed=st.booleans(),
)
def test_check_findings_match_a_row_by_row_oracle(rows, repair, typed):
    header = ",".join(CELLS)
    data = "\n".join([header] + [",".join(row[name] for name in CELLS) for row in rows]).encode() + b"\n"
    expected, bad_rows, violations = _oracle(rows, repair)
    try:
        result = check(read_raw(data, fmt="csv", schema=SCHEMA if typed else None), SCHEMA, repair=repair)
        report = result.report
    except IngestError as exc:
        assert exc.code in {"schema_violations", "no_rows_left"}
        report, result = exc.report, None
        if exc.code == "schema_violations":
            assert repair == "none" and violations
            assert exc.message.startswith(f"{bad_rows} rows break the declared schema;")
    assert report is not None
    assert report["violations"] == violations and report["rows_read"] == len(rows)
    keys = {
        "age": ["type_errors", "nulls_not_allowed", "out_of_bounds"],
        "sex": ["type_errors", "nulls_not_allowed", "unknown_categories"],
        "race": ["type_errors"],
        "income": ["type_errors", "out_of_bounds"],
        "married": ["type_errors", "nulls_not_allowed"],
        "note": ["type_errors", "text_length", "too_long"],
    }
    for name, entry in report["columns"].items():
        assert list(entry) == ["nulls", *keys[name]]  # the report's order, as before
        assert entry["nulls"] == sum(row[name] == "" for row in rows)
        for key in keys[name]:
            if key == "text_length":
                continue
            lines = expected[name].get(key, [])
            assert entry[key] == {"count": len(lines), "first_lines": lines[: ingest.FIRST_LINES]}
    lengths = [len(row["note"]) for row in rows if row["note"]]
    text_length = report["columns"]["note"]["text_length"]
    if lengths:
        assert (text_length["min"], text_length["max"]) == (min(lengths), max(lengths))
        assert text_length["mean"] == round(sum(lengths) / len(lengths), 2)
    else:
        assert text_length == {"min": None, "median": None, "p90": None, "max": None, "mean": None}
    if result is not None:
        assert report["rows_stored"] == len(rows) - bad_rows == result.table.height
        if repair != "none":
            assert report["repaired"]["dropped_rows"] == bad_rows


# -- write_table: Parquet through the encryptor --------------------------------------------------------

CONTEXT = storage.data_context(organisation_id=1, dataset_id=2, number=3)
NAME = "datasets/1/2/v3/data.streamed.parquet.enc"


def test_streamed_parquet_is_the_table(media_root, monkeypatch):
    monkeypatch.setattr(storage, "ROW_GROUP_ROWS", 1_000)
    frame = pl.DataFrame(
        {
            "age": pl.int_range(5_000, eager=True) % 90,
            "note": pl.Series([f"row {i} " * (i % 7) for i in range(5_000)]),
            "married": pl.Series([i % 3 == 0 for i in range(5_000)]),
        }
    )
    info = storage.write_table(NAME, CONTEXT, frame)
    with default_storage.open(NAME, "rb") as src:
        encrypted = src.read()
    assert info.ciphertext_size == len(encrypted)
    plain = decrypt_to_bytes(encrypted, keyring=keyring(), context=CONTEXT)
    assert info.plaintext_size == len(plain) and plain[:4] == b"PAR1"
    assert pl.read_parquet(io.BytesIO(plain)).equals(frame)
    assert storage.read_table(NAME, CONTEXT).equals(frame)


def test_a_failed_write_leaves_no_file(media_root):
    class Unwritable(pl.DataFrame):
        def write_parquet(self, file, **kwargs):
            file.write(b"PAR1 and then the writer fails")
            raise OSError("disk full")

    with pytest.raises(OSError):
        storage.write_table(NAME, CONTEXT, Unwritable({"a": [1]}))
    assert not default_storage.exists(NAME)
