"""Reading an upload, checking it against the declared schema, and the data-quality report.

Pure Polars, no Django: the ingestion worker calls it on bytes already held in memory, so no
plaintext ever touches a disk. Every check is a vectorised Polars expression (the throughput target
is tens of MB/s of CSV).

Line numbers in the report count the header as line 1, so the first data row is line 2 (exact for
files without line breaks inside quoted fields).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import polars as pl

from clearinghouse.dp.schema import Column
from clearinghouse.tabular import COMMON_DELIMITERS, SAMPLE_SIZE, sniff_delimiter
from training.digest import DIGEST_SCHEME, frame_digest

from .schema import DatasetSchema

Repair = Literal["none", "drop", "clamp"]
REPAIRS: tuple[str, ...] = ("none", "drop", "clamp")
FIRST_LINES = 5
# Uploads come from any tabular export, colon-separated ones included (see clearinghouse.tabular).
UPLOAD_DELIMITERS = COMMON_DELIMITERS + ":"
_TRUE = ["true", "t", "yes", "y", "1"]
_FALSE = ["false", "f", "no", "n", "0"]
# One hash lookup per value (faster than lower-casing and two membership tests).
_BOOLEAN_TEXT = {
    variant: value
    for words, value in ((_TRUE, True), (_FALSE, False))
    for word in words
    for variant in {word, word.upper(), word.capitalize()}
}
_POLARS_TYPES = {
    "integer": pl.Int64,
    "float": pl.Float64,
    "boolean": pl.Boolean,
    "categorical": pl.Utf8,
    "text": pl.Utf8,
}


class IngestError(ValueError):
    def __init__(self, message: str, *, code: str, report: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.report = report


@dataclass
class IngestResult:
    table: pl.DataFrame
    report: dict[str, Any]


def read_raw(
    data: bytes,
    *,
    fmt: Literal["csv", "parquet"],
    delimiter: str | None = None,
    column_names: list[str] | None = None,
    quote_char: str | None = '"',
    schema: DatasetSchema | None = None,
) -> pl.DataFrame:
    """Every column as text (nulls for empty fields), so that type errors are found and located by
    the checks rather than failing the whole parse. `column_names` reads a CSV without a header row
    (its columns in the declared order); `quote_char=None` reads files whose text holds stray quotes.

    With `schema`, numeric columns are first parsed by the CSV reader itself (fast, parallel); if any
    value does not parse, the file is read again as text so that the checks can locate the errors."""
    if not data:
        raise IngestError("The file is empty.", code="empty_file")
    if fmt == "parquet":
        return _read_parquet(data)
    options = _csv_options(data, delimiter=delimiter, column_names=column_names, quote_char=quote_char)
    if schema is not None:
        table = _read_csv_typed(data, options, schema)
        if table is not None and table.height:
            return _headerless_width_checked(table, column_names)
    table = _read_csv_text(data, options, column_names)
    if table.height == 0:
        raise IngestError("The file has a header but no rows.", code="empty_file")
    return _headerless_width_checked(table, column_names)  # empty fields are already null


def _read_parquet(data: bytes) -> pl.DataFrame:
    try:
        table = pl.read_parquet(io.BytesIO(data)).select(pl.all().cast(pl.Utf8))
    except Exception:  # noqa: BLE001 (whatever the reader raises, the file is not readable Parquet)
        raise IngestError("The file is not a readable Parquet file.", code="unreadable_parquet") from None
    _refuse_nul_values(table)
    return table


def _csv_options(
    data: bytes, *, delimiter: str | None, column_names: list[str] | None, quote_char: str | None
) -> dict[str, Any]:
    """The reader's options for a CSV upload, once its bytes are known to be UTF-8 text."""
    _refuse_nul_bytes(data)
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(
            f"The file is not valid UTF-8 (byte offset {exc.start}).", code="invalid_utf8"
        ) from None
    separator = delimiter or sniff_delimiter(
        data[:SAMPLE_SIZE].decode("utf-8", errors="ignore"), candidates=UPLOAD_DELIMITERS
    )
    if len(separator) != 1:
        raise IngestError("The delimiter must be a single character.", code="invalid_delimiter")
    return {
        "separator": separator,
        "infer_schema": False,
        "quote_char": quote_char or None,
        "missing_utf8_is_empty_string": False,
        "raise_if_empty": True,
        "has_header": column_names is None,
        "new_columns": column_names,
    }


def _read_csv_typed(data: bytes, options: dict[str, Any], schema: DatasetSchema) -> pl.DataFrame | None:
    """The fast path: numeric columns parsed by the reader; None when any value does not parse."""
    numeric = {c.name: _POLARS_TYPES[c.type] for c in schema.columns if c.is_numeric}
    try:
        return pl.read_csv(io.BytesIO(data), schema_overrides=numeric, **options)
    except pl.exceptions.PolarsError:
        return None  # the text read reports precisely what is wrong


def _read_csv_text(data: bytes, options: dict[str, Any], column_names: list[str] | None) -> pl.DataFrame:
    """Every column as text; a reader failure becomes the file's error code."""
    try:
        return pl.read_csv(io.BytesIO(data), **options)
    except pl.exceptions.NoDataError:
        raise IngestError("The file has no rows.", code="empty_file") from None
    except pl.exceptions.ShapeError:
        # Polars' own words for a header-less file narrower than the declared columns.
        raise _column_count_error(column_names) from None
    except pl.exceptions.ComputeError as exc:
        text = str(exc)
        if "found more fields" in text or ("expected" in text and "fields" in text):
            raise IngestError(
                "Rows have different numbers of fields (ragged rows); check the delimiter and quoting.",
                code="ragged_rows",
            ) from None
        raise _unparseable_csv() from None
    except pl.exceptions.PolarsError:
        # Any other reader failure is the file's: a clear code, never an unhandled error in the worker.
        raise _unparseable_csv() from None


def _unparseable_csv() -> IngestError:
    return IngestError(
        "The CSV could not be parsed; check the delimiter, quoting and encoding.", code="unparseable_csv"
    )


def _column_count_error(column_names: list[str] | None) -> IngestError:
    return IngestError(
        f"A file without a header row must have exactly the {len(column_names or [])} declared "
        f"columns, in the declared order; check the delimiter (or that the file has a header).",
        code="column_count_mismatch",
    )


def _headerless_width_checked(table: pl.DataFrame, column_names: list[str] | None) -> pl.DataFrame:
    """A header-less file is mapped to the declared columns by position, so any other number of
    fields would silently shift or drop columns: refused."""
    if column_names is not None and table.width != len(column_names):
        raise _column_count_error(column_names)
    return table


def _refuse_nul_bytes(data: bytes) -> None:
    """NUL bytes never belong in CSV/TSV text: they mean binary or corrupt data, or a UTF-16/UTF-32
    export (whose ASCII characters each carry NUL bytes, yet pass as valid UTF-8). Polars would read
    them into values silently, so the file is refused rather than stripped: stripping would turn a
    UTF-16 file into plausible-looking but wrong values and hide corruption."""
    first = data.find(b"\x00")
    if first < 0:
        return
    count = data.count(b"\x00")
    line = data.count(b"\n", 0, first) + 1
    raise IngestError(
        f"The file contains {count} NUL byte{'s' if count != 1 else ''} (the first at byte offset "
        f"{first}, line {line}): it is binary or corrupt, or saved as UTF-16/UTF-32; save it as UTF-8 "
        "text.",
        code="nul_bytes",
        report={"nul_bytes": {"count": count, "first_offset": first, "first_line": line}},
    )


def _refuse_nul_values(table: pl.DataFrame) -> None:
    """The same rule for text values of a Parquet file (its binary layout holds NULs by design)."""
    if not table.width or not table.height:
        return
    hits = table.select(pl.all().str.contains("\x00", literal=True).fill_null(False).sum())
    columns = {name: int(count) for name, count in hits.row(0, named=True).items() if count}
    if columns:
        raise IngestError(
            f"Text values contain NUL characters (columns: {', '.join(list(columns)[:10])}); they are "
            "a sign of binary or corrupt data.",
            code="nul_bytes",
            report={"nul_bytes": {"count": sum(columns.values()), "columns": columns}},
        )


def _parsed(column: Column, dtype: pl.DataType) -> pl.Expr:
    """The column's values in its declared type; null where a value does not parse."""
    raw = pl.col(column.name)
    if column.type == "integer":
        return (
            raw.cast(pl.Int64)
            if dtype.is_integer()
            else raw.cast(pl.Utf8).str.strip_chars().cast(pl.Int64, strict=False)
        )
    if column.type == "float":
        value = (
            raw.cast(pl.Float64)
            if dtype.is_numeric()
            else raw.str.strip_chars().cast(pl.Float64, strict=False)
        )
        return pl.when(value.is_finite()).then(value).otherwise(None)
    if column.type == "boolean":
        return (
            raw.cast(pl.Utf8)
            .str.strip_chars()
            .replace_strict(_BOOLEAN_TEXT, default=None, return_dtype=pl.Boolean)
        )
    return raw.cast(pl.Utf8)


def _lines(mask: pl.Series) -> dict[str, Any]:
    count = int(mask.sum())
    first = (mask.arg_true().head(FIRST_LINES) + 2).to_list() if count else []
    return {"count": count, "first_lines": first}


@dataclass
class _Findings:
    """What the checks found in one column: its report entries, the rows that break the schema
    (refused, or dropped by a repair) and, with the clamp repair, the rows it fixes and how."""

    entry: dict[str, Any]
    bad: pl.Series | None = None
    fixable: pl.Series | None = None
    fix: pl.Expr | None = None


def _check_parsed(column: Column, source: pl.Series, value: pl.Series) -> _Findings:
    """Every column: values that do not parse as its type, and nulls where none are allowed."""
    type_errors = source.is_not_null() & value.is_null()
    entry: dict[str, Any] = {"nulls": int(source.null_count()), "type_errors": _lines(type_errors)}
    if column.nullable:
        return _Findings(entry, bad=type_errors)
    null_rows = source.is_null()
    entry["nulls_not_allowed"] = _lines(null_rows)
    return _Findings(entry, bad=type_errors | null_rows)


def _check_bounds(column: Column, value: pl.Series, repair: Repair) -> _Findings:
    """Integer and float columns: values outside the declared bounds (clamped by the clamp repair)."""
    out = value.is_not_null() & ((value < column.lower) | (value > column.upper))
    entry = {"out_of_bounds": _lines(out)}
    if repair == "clamp":
        return _Findings(entry, fixable=out, fix=pl.col(column.name).clip(column.lower, column.upper))
    return _Findings(entry, bad=out)


def _check_categories(column: Column, value: pl.Series, repair: Repair) -> _Findings:
    """Categorical columns with declared categories: values outside them (never repairable)."""
    if column.categories is None:
        return _Findings({})
    unknown = value.is_not_null() & ~value.is_in(list(column.categories))
    return _Findings({"unknown_categories": _lines(unknown)}, bad=unknown)


def _check_text(column: Column, value: pl.Series, repair: Repair) -> _Findings:
    """Text columns: the length distribution, and values over `max_length` (cut by the clamp repair)."""
    lengths = value.str.len_chars()
    too_long = value.is_not_null() & (lengths > column.max_length)
    mean = lengths.mean()  # a float (lengths are integers), None when every value is null
    entry = {
        "text_length": {
            "min": lengths.min(),
            "median": lengths.median(),
            "p90": lengths.quantile(0.9),
            "max": lengths.max(),
            "mean": round(mean, 2) if lengths.len() and isinstance(mean, int | float) else None,
        },
        "too_long": _lines(too_long),
    }
    if repair == "clamp":
        return _Findings(entry, fixable=too_long, fix=pl.col(column.name).str.slice(0, column.max_length))
    return _Findings(entry, bad=too_long)


def _kind_check(column: Column) -> Callable[[Column, pl.Series, Repair], _Findings] | None:
    """The check of a column's own kind, if it has one (booleans have none beyond parsing)."""
    if column.is_numeric:
        return _check_bounds
    return {"categorical": _check_categories, "text": _check_text}.get(column.type)


def _check_column(column: Column, source: pl.Series, value: pl.Series, repair: Repair) -> _Findings:
    """One column's findings: its parse check, then its kind's check. `bad` and `fixable` are
    masks over every row (no nulls)."""
    found = [_check_parsed(column, source, value)]
    kind_check = _kind_check(column)
    if kind_check is not None:
        found.append(kind_check(column, value, repair))
    bad = fixable = pl.zeros(source.len(), dtype=pl.Boolean, eager=True)
    merged = _Findings({})
    for part in found:
        merged.entry.update(part.entry)
        if part.bad is not None:
            bad = bad | part.bad
        if part.fixable is not None:
            fixable = fixable | part.fixable
        merged.fix = part.fix if part.fix is not None else merged.fix
    merged.bad, merged.fixable = bad.fill_null(False), fixable.fill_null(False)
    return merged


@dataclass
class _Checked:
    """Every column's findings together: the report's `columns`, the rows to drop, the clamp
    repair's expressions and counts."""

    columns: dict[str, Any]
    drop: pl.Series
    fixes: list[pl.Expr]
    violations: int
    repaired: dict[str, int]


def _check_columns(
    raw: pl.DataFrame, parsed: pl.DataFrame, schema: DatasetSchema, repair: Repair
) -> _Checked:
    checked = _Checked(
        columns={},
        drop=pl.zeros(raw.height, dtype=pl.Boolean, eager=True),
        fixes=[],
        violations=0,
        repaired={"dropped_rows": 0, "clamped_values": 0, "truncated_values": 0},
    )
    for column in schema.columns:
        name = column.name
        found = _check_column(column, raw.get_column(name), parsed.get_column(name), repair)
        assert found.bad is not None and found.fixable is not None  # `_check_column` sets both masks
        fixed = int(found.fixable.sum())
        checked.violations += int(found.bad.sum()) + fixed
        if repair == "clamp":
            checked.repaired["clamped_values" if column.is_numeric else "truncated_values"] += fixed
        if found.fix is not None:
            checked.fixes.append(found.fix)
        checked.drop = checked.drop | found.bad
        checked.columns[name] = found.entry
    return checked


def _declared_columns(raw: pl.DataFrame, schema: DatasetSchema) -> list[str]:
    """The file's columns the schema does not declare (ignored); refuses a file lacking one it does."""
    missing = [name for name in schema.names if name not in raw.columns]
    if missing:
        raise IngestError(
            f"The file lacks declared columns: {', '.join(missing)}. Found: {', '.join(raw.columns[:30])}.",
            code="missing_columns",
        )
    return [name for name in raw.columns if name not in schema.names]


def _limit_contributions(table: pl.DataFrame, schema: DatasetSchema, report: dict[str, Any]) -> pl.DataFrame:
    unit = schema.privacy_unit
    if unit.kind != "identifier":
        return table
    # Bound each person's contribution: keep their first rows, drop the rest (what DP's
    # sensitivity assumes). Rows without an identifier cannot be attributed and are dropped.
    assert unit.column is not None  # an identifier unit names its column (`datasets.schema`)
    before = table.height
    table = table.filter(pl.col(unit.column).is_not_null())
    table = table.filter(pl.int_range(pl.len()).over(unit.column) < unit.max_rows_per_person)
    report["contribution_limit"] = {
        "max_rows_per_person": unit.max_rows_per_person,
        "dropped_rows": before - table.height,
    }
    return table


def check(raw: pl.DataFrame, schema: DatasetSchema, *, repair: Repair = "none") -> IngestResult:
    """Checks `raw` (from `read_raw`) against `schema`; returns the normalised typed table and the
    quality report, or raises IngestError(code='schema_violations', report=...) when rows break
    the schema and no repair was chosen."""
    if repair not in REPAIRS:
        raise IngestError(f"repair must be one of {', '.join(REPAIRS)}", code="invalid_repair")
    ignored = _declared_columns(raw, schema)
    raw = raw.select(schema.names)
    parsed = raw.select(
        [_parsed(column, raw.schema[column.name]).alias(column.name) for column in schema.columns]
    )
    checked = _check_columns(raw, parsed, schema, repair)
    report: dict[str, Any] = {
        "rows_read": raw.height,
        # Row hashes (64-bit) count duplicates in one cheap pass; a collision is a 1-in-2^64 event.
        "duplicate_rows": raw.height - raw.hash_rows().n_unique(),
        "ignored_columns": ignored,
        "columns": checked.columns,
        "repair": repair,
        "violations": checked.violations,
    }
    if checked.violations and repair == "none":
        report["rows_stored"] = 0
        raise IngestError(
            f"{int(checked.drop.sum())} rows break the declared schema; fix the file or choose a repair "
            f"(drop bad rows, or clamp to bounds).",
            code="schema_violations",
            report=report,
        )
    table = parsed.filter(~checked.drop).with_columns(checked.fixes)
    checked.repaired["dropped_rows"] = int(checked.drop.sum())
    table = table.select([pl.col(c.name).cast(_POLARS_TYPES[c.type]) for c in schema.columns])
    table = _limit_contributions(table, schema, report)
    report["repaired"] = checked.repaired if repair != "none" else None
    report["rows_stored"] = table.height
    if table.height == 0:
        raise IngestError("No rows are left after the checks.", code="no_rows_left", report=report)
    return IngestResult(table=table, report=report)


# What a federated text classifier may train on: a free-text column, and a label column of these types
# (`training.digest`: the label as its stripped string, an integer in decimal). A free-text column
# is no label (a class per distinct text), so there are T×L pairs, never T×T.
DIGEST_TEXT_TYPES = ("text",)
DIGEST_LABEL_TYPES = ("categorical", "integer")


def parse_options(
    data: bytes, *, fmt: Literal["csv", "parquet"], delimiter: str | None, quote_char: str | None
) -> dict[str, Any]:
    """How `read_raw` parses an upload, for `content_digests` to record: a delimited upload's
    delimiter (the given one, else the sniffed one) and quote character (None: no quoting)."""
    if fmt == "parquet":
        return {"format": "parquet", "delimiter": None, "quote_char": None}
    options = _csv_options(data, delimiter=delimiter, column_names=None, quote_char=quote_char)
    return {"format": "csv", "delimiter": options["separator"], "quote_char": options["quote_char"]}


def content_digests(
    table: pl.DataFrame, schema: DatasetSchema, *, parse: dict[str, Any] | None
) -> dict[str, Any]:
    """The stored table's content digests (`training.digest`), one for every (text column, label
    column) pair a private federated job could train on, so that a member's check of its local file
    is exact and cheap: `{"scheme", "rows", "parse", "pairs": [{"text_column", "label_column",
    "digest"}]}` (no pairs for a table without a text column). `parse` records how the upload was
    parsed (`parse_options`; None when unknown, as for a backfilled version uploaded with a sniffed
    delimiter): the cells digested are the parsed ones, so a member reads its file the same way."""
    texts = [c.name for c in schema.columns if c.type in DIGEST_TEXT_TYPES]
    labels = [c.name for c in schema.columns if c.type in DIGEST_LABEL_TYPES]
    pairs = [
        {
            "text_column": text,
            "label_column": label,
            "digest": frame_digest(table, text_column=text, label_column=label).digest,
        }
        for text in texts
        for label in labels
    ]
    return {"scheme": DIGEST_SCHEME, "rows": table.height, "parse": parse, "pairs": pairs}


def infer_schema(raw: pl.DataFrame, *, categorical_max: int = 50) -> dict[str, Any]:
    """Proposes a schema from a first upload. Bounds are *proposals* taken from the data, marked as
    such: the steward must confirm or replace them, because bounds taken silently from the data leak."""
    columns = []
    for name in raw.columns:
        source = raw.get_column(name)
        non_null = source.drop_nulls()
        proposal: dict[str, Any] = {"name": name, "nullable": source.null_count() > 0}
        as_int = non_null.cast(pl.Int64, strict=False)
        as_float = non_null.cast(pl.Float64, strict=False)
        lowered = non_null.str.to_lowercase()
        # Polars types a min or max as any Python scalar: of a non-empty column without nulls, an
        # Int64 column's are ints and a Float64 column's floats.
        if non_null.len() and as_int.null_count() == 0:
            lowest, highest = as_int.min(), as_int.max()
            assert isinstance(lowest, int) and isinstance(highest, int)
            proposal.update(type="integer", lower=int(lowest), upper=int(highest))
        elif non_null.len() and as_float.null_count() == 0:
            lowest, highest = as_float.min(), as_float.max()
            assert isinstance(lowest, float) and isinstance(highest, float)
            proposal.update(type="float", lower=float(lowest), upper=float(highest))
        elif non_null.len() and lowered.is_in(_TRUE + _FALSE).all():
            proposal.update(type="boolean")
        elif non_null.n_unique() <= categorical_max:
            proposal.update(type="categorical", categories=sorted(non_null.unique().to_list()))
        else:
            longest = non_null.str.len_chars().max()  # an int, None for a column of nulls only
            assert longest is None or isinstance(longest, int)
            proposal.update(type="text", max_length=int(longest or 1))
        if proposal["type"] in {"integer", "float"} and proposal["lower"] == proposal["upper"]:
            proposal["upper"] = proposal["lower"] + 1
        columns.append(proposal)
    return {
        "schema": {"columns": columns, "privacy_unit": {"kind": "row"}},
        "warning": "Bounds and categories were read from the data and are proposals only: confirm them "
        "from public knowledge (not from this data) before the schema is used.",
    }
