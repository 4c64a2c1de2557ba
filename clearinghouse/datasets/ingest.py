"""Reading an upload, checking it against the declared schema, and the data-quality report.

Pure Polars, no Django: the ingestion worker calls it on bytes already held in memory, so no
plaintext ever touches a disk. Every check is a vectorised Polars expression (the throughput target
is tens of MB/s of CSV).

Line numbers in the report count the header as line 1, so the first data row is line 2 (exact for
files without line breaks inside quoted fields).
"""

from __future__ import annotations

import codecs
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import polars as pl

from clearinghouse.dp.schema import Column
from clearinghouse.tabular import COMMON_DELIMITERS, SAMPLE_SIZE, sniff_delimiter
from training.digest import DIGEST_SCHEME, frame_digest

from .schema import DatasetSchema

Repair = Literal["none", "drop", "clamp"]
REPAIRS: tuple[str, ...] = ("none", "drop", "clamp")
FIRST_LINES = 5
_PARQUET_PARSE: dict[str, Any] = {"format": "parquet", "delimiter": None, "quote_char": None}
_UTF8_CHUNK = 1 << 24  # bytes of a non-ASCII upload checked as UTF-8 at a time (see `_utf8_error_offset`)
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
    return read_upload(
        data, fmt=fmt, delimiter=delimiter, column_names=column_names, quote_char=quote_char, schema=schema
    )[0]


def read_upload(
    data: bytes,
    *,
    fmt: Literal["csv", "parquet"],
    delimiter: str | None = None,
    column_names: list[str] | None = None,
    quote_char: str | None = '"',
    schema: DatasetSchema | None = None,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """`read_raw` and `parse_options` together (what the ingestion worker needs), scanning the bytes
    (NUL bytes, UTF-8) once rather than once for each."""
    if not data:
        raise IngestError("The file is empty.", code="empty_file")
    if not isinstance(data, bytes):  # Polars reads bytes in place; any other buffer becomes bytes once
        data = bytes(data)
    if fmt == "parquet":
        return _read_parquet(data), dict(_PARQUET_PARSE)
    options = _csv_options(data, delimiter=delimiter, column_names=column_names, quote_char=quote_char)
    parse = {"format": "csv", "delimiter": options["separator"], "quote_char": options["quote_char"]}
    if schema is not None:
        table = _read_csv_typed(data, options, schema)
        if table is not None and table.height:
            return _headerless_width_checked(table, column_names), parse
    table = _read_csv_text(data, options, column_names)
    if table.height == 0:
        raise IngestError("The file has a header but no rows.", code="empty_file")
    return _headerless_width_checked(table, column_names), parse  # empty fields are already null


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
    invalid = _utf8_error_offset(data)
    if invalid is not None:
        raise IngestError(f"The file is not valid UTF-8 (byte offset {invalid}).", code="invalid_utf8")
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


def _utf8_error_offset(data: bytes) -> int | None:
    """Where `data.decode("utf-8")` would fail (the offset of the first invalid byte), or None when it
    is valid UTF-8 — without holding the whole decoded text: ASCII is valid as it is, anything else is
    decoded a chunk at a time (in incremental mode, so that a character cut by a chunk's end is left
    to the next chunk, exactly as the whole decode reads it)."""
    if data.isascii():
        return None
    view = memoryview(data)
    chunk = max(_UTF8_CHUNK, 4)  # room for any one character: every chunk moves on
    start = 0
    while start < len(view):
        final = start + chunk >= len(view)
        try:
            _, used = codecs.utf_8_decode(view[start : start + chunk], "strict", final)
        except UnicodeDecodeError as exc:
            return start + exc.start
        start += used
    return None


def _read_csv_typed(data: bytes, options: dict[str, Any], schema: DatasetSchema) -> pl.DataFrame | None:
    """The fast path: numeric columns parsed by the reader; None when any value does not parse."""
    numeric = {c.name: _POLARS_TYPES[c.type] for c in schema.columns if c.is_numeric}
    try:
        # The bytes themselves, not a BytesIO over them, which Polars 1.36 copies first (on a busy
        # machine, in isolation, 10M PUMS rows parsed in 1.6 s of CPU against 0.8 s; on a quiet one
        # benchmarks/datasets_ingest.py shows no difference).
        return pl.read_csv(data, schema_overrides=numeric, **options)
    except pl.exceptions.PolarsError:
        return None  # the text read reports precisely what is wrong


def _read_csv_text(data: bytes, options: dict[str, Any], column_names: list[str] | None) -> pl.DataFrame:
    """Every column as text; a reader failure becomes the file's error code."""
    try:
        return pl.read_csv(data, **options)
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


def _lines(count: int, first: list[int]) -> dict[str, Any]:
    """A finding: how many rows, and the first of their line numbers."""
    return {"count": count, "first_lines": first if count else []}


@dataclass
class _Plan:
    """What the checks look for in one column, as expressions over the check frame (`_Frame`), before
    anything runs: each finding's mask over every row by its report key (in the report's order),
    which of them break the schema (`bad`: refused, or dropped by a repair) and which the clamp
    repair fixes (`fixable`, with `fix`), and the value lengths of a text column."""

    column: Column
    masks: dict[str, pl.Expr] = field(default_factory=dict)
    bad: list[str] = field(default_factory=list)
    fixable: list[str] = field(default_factory=list)
    fix: pl.Expr | None = None
    lengths: pl.Expr | None = None


@dataclass(frozen=True)
class _Frame:
    """The names, in the frame the checks run over, of column `index`'s file values (`source`) and
    parsed values (`value`), and of its findings' masks (unique whatever the declared names are)."""

    index: int

    @property
    def source(self) -> pl.Expr:
        return pl.col(f"s{self.index}")

    @property
    def value(self) -> pl.Expr:
        return pl.col(f"v{self.index}")

    def mask(self, key: str) -> str:
        return f"m{self.index}:{key}"


def _plan_parsed(plan: _Plan, frame: _Frame) -> None:
    """Every column: values that do not parse as its type, and nulls where none are allowed."""
    plan.masks["type_errors"] = frame.source.is_not_null() & frame.value.is_null()
    plan.bad.append("type_errors")
    if not plan.column.nullable:
        plan.masks["nulls_not_allowed"] = frame.source.is_null()
        plan.bad.append("nulls_not_allowed")


def _plan_bounds(plan: _Plan, frame: _Frame, repair: Repair) -> None:
    """Integer and float columns: values outside the declared bounds (clamped by the clamp repair)."""
    column, value = plan.column, frame.value
    plan.masks["out_of_bounds"] = value.is_not_null() & ((value < column.lower) | (value > column.upper))
    if repair == "clamp":
        plan.fixable.append("out_of_bounds")
        plan.fix = pl.col(column.name).clip(column.lower, column.upper)
    else:
        plan.bad.append("out_of_bounds")


def _plan_categories(plan: _Plan, frame: _Frame, repair: Repair) -> None:
    """Categorical columns with declared categories: values outside them (never repairable)."""
    if plan.column.categories is None:
        return
    value = frame.value
    plan.masks["unknown_categories"] = value.is_not_null() & ~value.is_in(list(plan.column.categories))
    plan.bad.append("unknown_categories")


def _plan_text(plan: _Plan, frame: _Frame, repair: Repair) -> None:
    """Text columns: the length distribution, and values over `max_length` (cut by the clamp repair)."""
    column, value = plan.column, frame.value
    plan.lengths = value.str.len_chars()
    plan.masks["too_long"] = value.is_not_null() & (value.str.len_chars() > column.max_length)
    if repair == "clamp":
        plan.fixable.append("too_long")
        plan.fix = pl.col(column.name).str.slice(0, column.max_length)
    else:
        plan.bad.append("too_long")


def _kind_plan(column: Column) -> Callable[[_Plan, _Frame, Repair], None] | None:
    """The check of a column's own kind, if it has one (booleans have none beyond parsing)."""
    if column.is_numeric:
        return _plan_bounds
    return {"categorical": _plan_categories, "text": _plan_text}.get(column.type)


def _plan_column(column: Column, frame: _Frame, repair: Repair) -> _Plan:
    """One column's checks: its parse check, then its kind's check."""
    plan = _Plan(column)
    _plan_parsed(plan, frame)
    kind_plan = _kind_plan(column)
    if kind_plan is not None:
        kind_plan(plan, frame, repair)
    return plan


@dataclass
class _Checked:
    """Every column's findings together: the report's `columns`, the number of rows that break the
    schema (`drop_count`) and the mask of them (`drop`, only computed when there are some), the clamp
    repair's expressions and counts."""

    columns: dict[str, Any]
    drop_count: int
    drop: pl.Series | None
    fixes: list[pl.Expr]
    violations: int
    repaired: dict[str, int]


def _any(masks: list[str]) -> pl.Expr:
    return pl.any_horizontal([pl.col(name) for name in masks]) if masks else pl.lit(False)


def _check_columns(
    raw: pl.DataFrame, parsed: pl.DataFrame, schema: DatasetSchema, repair: Repair
) -> _Checked:
    """Runs every column's checks as two `select`s, each of which Polars evaluates in parallel over
    columns and rows: the findings' masks, then every count, first line and length statistic at once
    (rather than one eager pass over the rows per finding)."""
    frames = [_Frame(index) for index in range(len(schema.columns))]
    plans = [
        _plan_column(column, frame, repair) for column, frame in zip(schema.columns, frames, strict=True)
    ]
    values = pl.DataFrame(
        [raw.get_column(c.name).alias(f"s{f.index}") for c, f in zip(schema.columns, frames, strict=True)]
        + [
            parsed.get_column(c.name).alias(f"v{f.index}")
            for c, f in zip(schema.columns, frames, strict=True)
        ]
    )
    masks = values.select(
        [
            expr.fill_null(False).alias(frame.mask(key))
            for plan, frame in zip(plans, frames, strict=True)
            for key, expr in plan.masks.items()
        ]
    )
    every_bad = [frame.mask(key) for plan, frame in zip(plans, frames, strict=True) for key in plan.bad]
    aggregates: list[pl.Expr] = [_any(every_bad).sum().alias("drop")]
    for plan, frame in zip(plans, frames, strict=True):
        aggregates.append(frame.source.null_count().alias(f"{frame.mask('nulls')}"))
        aggregates.append(_any([frame.mask(key) for key in plan.bad]).sum().alias(frame.mask(":bad")))
        aggregates.append(_any([frame.mask(key) for key in plan.fixable]).sum().alias(frame.mask(":fixable")))
        for key in plan.masks:
            mask = pl.col(frame.mask(key))
            aggregates.append(mask.sum().alias(frame.mask(key)))
            aggregates.append(
                (mask.arg_true().head(FIRST_LINES) + 2).implode().alias(frame.mask(f"{key}:lines"))
            )
        if plan.lengths is not None:
            lengths = plan.lengths
            aggregates += [
                lengths.min().alias(frame.mask("length:min")),
                lengths.median().alias(frame.mask("length:median")),
                lengths.quantile(0.9).alias(frame.mask("length:p90")),
                lengths.max().alias(frame.mask("length:max")),
                lengths.mean().alias(frame.mask("length:mean")),
            ]
    stats = pl.concat([values, masks], how="horizontal").select(aggregates).row(0, named=True)

    checked = _Checked(
        columns={},
        drop_count=int(stats["drop"]),
        drop=None,
        fixes=[],
        violations=0,
        repaired={"dropped_rows": 0, "clamped_values": 0, "truncated_values": 0},
    )
    for plan, frame in zip(plans, frames, strict=True):
        column = plan.column
        entry: dict[str, Any] = {"nulls": int(stats[frame.mask("nulls")])}
        for key in plan.masks:
            if key == "too_long" and plan.lengths is not None:
                mean = stats[frame.mask("length:mean")]  # a float, None when every value is null
                entry["text_length"] = {
                    "min": stats[frame.mask("length:min")],
                    "median": stats[frame.mask("length:median")],
                    "p90": stats[frame.mask("length:p90")],
                    "max": stats[frame.mask("length:max")],
                    "mean": round(mean, 2) if raw.height and isinstance(mean, int | float) else None,
                }
            entry[key] = _lines(int(stats[frame.mask(key)]), list(stats[frame.mask(f"{key}:lines")]))
        fixed = int(stats[frame.mask(":fixable")])
        checked.violations += int(stats[frame.mask(":bad")]) + fixed
        if repair == "clamp":
            checked.repaired["clamped_values" if column.is_numeric else "truncated_values"] += fixed
        if plan.fix is not None:
            checked.fixes.append(plan.fix)
        checked.columns[column.name] = entry
    if checked.drop_count:
        checked.drop = masks.select(_any(every_bad).alias("drop")).to_series()
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
            f"{checked.drop_count} rows break the declared schema; fix the file or choose a repair "
            f"(drop bad rows, or clamp to bounds).",
            code="schema_violations",
            report=report,
        )
    table = parsed if checked.drop is None else parsed.filter(~checked.drop)
    if checked.fixes:
        table = table.with_columns(checked.fixes)
    checked.repaired["dropped_rows"] = checked.drop_count
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
        return dict(_PARQUET_PARSE)
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
