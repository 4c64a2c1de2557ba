"""Handing the data to OpenDP cheaply: only the needed columns, cast to the declared types and
checked, written to a private Arrow IPC file on tmpfs that OpenDP's Rust side scans
(memory-mapped) — instead of Polars plan serialisation, which copies the whole frame through
`LazyFrame.__getstate__` (≈0.5 s for 1M rows × 6 columns).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Self

import polars as pl
import pyarrow.ipc as ipc

from .calibrate import _calibrated, _ensure_spec
from .errors import QueryError
from .plan import _POLARS, enum_of
from .schema import TableSchema
from .spec import QuerySpec


def _default_spill_dir() -> str | None:
    configured = os.environ.get("CLEARINGHOUSE_DP_SPILL_DIR")
    if configured is not None:
        return configured if configured.lower() not in ("", "none", "off") else None
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


# Each staged table's directory holds a lock file its owner keeps locked (shared) while the table
# lives. A process that dies (SIGKILL, the OOM killer: no clean-up runs) loses its lock with it, so a
# directory whose lock can be taken exclusively is a dead owner's. This holds across PID namespaces
# sharing one tmpfs (containers of a pod) and whatever process ids are reused; the name says who made
# it, for people only.
_SPILL_PREFIX = "chdp-"
_LOCK_FILE = ".owner.lock"


def _spill_prefix() -> str:
    host = re.sub(r"[^A-Za-z0-9.-]", "", socket.gethostname())[:64]
    return f"{_SPILL_PREFIX}{os.getpid()}@{host}-"


def _hold_owner_lock(directory: str) -> int:
    """Creates and locks (shared, for as long as the returned descriptor is open) the owner's lock."""
    fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        raise
    return fd


def _owner_is_gone(directory: str) -> bool:
    try:
        fd = os.open(os.path.join(directory, _LOCK_FILE), os.O_RDONLY)
    except OSError:  # no lock file: an older release's directory, or one being made; not ours to judge
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its owner is alive
        return False
    finally:
        os.close(fd)  # releases the exclusive lock too
    return True


def remove_orphaned_spills(directory: str | None = None) -> int:
    """Removes the staged tables (decrypted rows) that dead processes left in the spill directory
    (`directory`, else the default): how many. A dp worker calls it when it starts, so a killed
    worker's plaintext lasts until the next one starts, not until the host reboots. A directory is
    removed only when its owner's lock is free (the owner is gone), never one in use."""
    directory = directory if directory is not None else _default_spill_dir()
    if not directory:
        return 0
    removed = 0
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return 0
    for entry in entries:
        try:
            if not entry.name.startswith(_SPILL_PREFIX) or not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        if _owner_is_gone(entry.path):
            shutil.rmtree(entry.path, ignore_errors=True)
            removed += 1
    return removed


def _missing(schema: TableSchema, available: Iterable[str], columns: tuple[str, ...]) -> None:
    wanted = set(columns) | ({schema.identifier} if schema.identifier else set())
    missing = sorted(wanted - set(available))
    if missing:
        raise QueryError("data_does_not_match_schema", f"the data lacks columns {missing}")


def _cast(
    schema: TableSchema,
    lf: pl.LazyFrame,
    columns: tuple[str, ...],
    enums: dict[str, pl.Enum] | None = None,
) -> pl.DataFrame:
    """`columns` cast (strictly) to the schema's types, NaN turned into null; the `enums` columns
    (categorical) to their Enum instead of strings, a value outside its categories turned into
    null (for the caller to notice)."""
    dtypes = lf.collect_schema() if enums else {}
    exprs = []
    for name in columns:
        column = schema.column(name)
        if enums and name in enums:
            expr = pl.col(name)
            dtype = dtypes[name]
            if not (dtype == pl.String or dtype == pl.Categorical or isinstance(dtype, pl.Enum)):
                expr = expr.cast(pl.String, strict=True)
            expr = expr.cast(enums[name], strict=False)
        else:
            expr = pl.col(name).cast(_POLARS[column.type], strict=True)
        if column.type == "float":
            expr = expr.fill_nan(None)
        exprs.append(expr)
    try:
        return lf.select(exprs).collect()
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise QueryError(
            "data_does_not_match_schema", f"the data does not have the declared types: {exc}"
        ) from None


def _too_large(schema: TableSchema) -> QueryError:
    return QueryError(
        "dataset_too_large",
        f"the table has more rows than the policy's max_rows "
        f"({schema.policy.max_rows}); raise it in the policy",
    )


def _holds_nulls(name: str) -> QueryError:
    return QueryError("data_does_not_match_schema", f"'{name}' is not nullable but holds nulls (or NaN)")


def _outside_categories(source: pl.DataFrame, cast: pl.DataFrame, names: Iterable[str]) -> set[str]:
    """The `names` columns whose (non-strict) cast from `source` to their Enum in `cast` nulled a
    value: they hold a value outside their public categories. The one test of it, on both paths."""
    return {name for name in names if cast[name].null_count() != source[name].null_count()}


def _as_enums(frame: pl.DataFrame, enums: dict[str, pl.Enum]) -> pl.DataFrame:
    """`frame` with each `enums` column as its Enum, but for one holding a value outside its
    categories (kept as strings)."""
    if not enums:
        return frame
    cast = frame.select(frame[name].cast(enum, strict=False) for name, enum in enums.items())
    outside = _outside_categories(frame, cast, enums)
    return frame.with_columns(cast[name] for name in enums if name not in outside)


def _staged_frame(schema: TableSchema, lf: pl.LazyFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """The columns cast to the schema's types and checked, at most k rows per person; public
    categories as their Enum where the column holds no other value."""
    _missing(schema, lf.collect_schema().names(), columns)
    if schema.identifier:
        k = schema.privacy_unit.max_rows_per_person
        lf = lf.filter(pl.int_range(pl.len()).over(schema.identifier) < k)
    frame = _cast(schema, lf, columns)
    if frame.height > schema.policy.max_rows:
        raise _too_large(schema)
    for name in columns:
        if not schema.column(name).nullable and frame[name].null_count():
            raise _holds_nulls(name)
    return _as_enums(frame, _enums(schema, columns))


class _OutsideCategories(Exception):
    """Columns holding values outside their public categories: they cannot be staged as Enum."""

    def __init__(self, columns: set[str]):
        super().__init__(sorted(columns))
        self.columns = columns


def _staged_chunks(
    schema: TableSchema,
    chunks: Iterable[pl.DataFrame],
    columns: tuple[str, ...],
    enums: dict[str, pl.Enum] | None = None,
) -> Iterator[pl.DataFrame]:
    """`_staged_frame` one chunk (row group) at a time, for a schema without an identifier: yields
    each chunk cast and checked, and refuses the table exactly as `_staged_frame` refuses the whole
    (the same codes and messages, in the same order: a type error anywhere first, then more rows
    than `max_rows`, then the first non-nullable column, in column order, holding nulls). Once the
    table is known to be refused, the chunks left are only cast (a type error there still wins),
    never yielded. The `enums` columns are yielded as their Enum; one holding a value outside its
    categories raises `_OutsideCategories`."""
    if schema.identifier:  # pragma: no cover - the caller stages such tables whole
        raise AssertionError("per-person truncation needs the whole table")
    rows = 0
    with_nulls: set[str] = set()
    checked = False
    for chunk in chunks:
        if not checked:
            _missing(schema, chunk.columns, columns)
            checked = True
        frame = _cast(schema, chunk.lazy(), columns, enums)
        outside = _outside_categories(chunk, frame, enums or {})
        if outside:
            raise _OutsideCategories(outside)
        del chunk
        rows += frame.height
        with_nulls.update(
            name for name in columns if not schema.column(name).nullable and frame[name].null_count()
        )
        if rows <= schema.policy.max_rows and not with_nulls:
            yield frame
    if not checked:  # no chunk at all: an empty table
        _missing(schema, (), columns)
        yield pl.DataFrame(
            schema={name: (enums or {}).get(name) or _POLARS[schema.column(name).type] for name in columns}
        )
    if rows > schema.policy.max_rows:
        raise _too_large(schema)
    for name in columns:
        if name in with_nulls:
            raise _holds_nulls(name)


def _as_codes(frame: pl.DataFrame, enums: dict[str, pl.Enum]) -> pl.DataFrame:
    """The frame as the staged file holds it: each Enum column as its codes (its physical integers),
    which `PreparedData.frame` casts back to the Enum. Polars reads an Enum column written as such
    (an Arrow dictionary of strings) by decoding every value against the categories: ~6 ms for 1M
    rows, more than OpenDP's group-by over it; the codes are memory-mapped as they are and cast in
    ~1 ms (issue 15, benchmarks/categorical_staging.py). `enums`: columns of `frame`."""
    return frame.with_columns(pl.col(list(enums)).to_physical()) if enums else frame


class _SpillFailed(Exception):
    """Writing the staged file failed (e.g. a full /dev/shm): stage in memory instead."""


class _Closing:
    """Closes a chunk iterator that can be closed (a generator holding a file open)."""

    def __init__(self, chunks: Iterable[pl.DataFrame]):
        self._chunks = chunks

    def close(self) -> None:
        close = getattr(self._chunks, "close", None)
        if close is not None:
            close()


def _enum_dtypes(frame: pl.DataFrame) -> dict[str, pl.Enum]:
    return {name: dtype for name, dtype in frame.schema.items() if isinstance(dtype, pl.Enum)}


def _enums(schema: TableSchema, columns: Iterable[str]) -> dict[str, pl.Enum]:
    """The Enum of each categorical column with public categories among `columns`."""
    wanted = set(columns)
    found = {c.name: enum_of(c) for c in schema.columns if c.name in wanted}
    return {name: enum for name, enum in found.items() if enum is not None}


class PreparedData:
    """The data of one table, staged for OpenDP. Use as a context manager, or `close()` it.

    Only the given columns are kept, cast to the schema's types (OpenDP does not check the data
    it is handed against the input domain, so the engine must), nulls checked for non-nullable
    columns, NaN turned into null (or refused), rows per person truncated to the privacy unit's
    bound, and the row count checked against the policy's public `max_rows`.

    The result is written to a fresh Arrow IPC file in a private (0700) directory on tmpfs
    (`/dev/shm`, or `$CLEARINGHOUSE_DP_SPILL_DIR`; "none" disables) and removed on close. OpenDP's
    Rust side then memory-maps it. Without a spill directory (or if writing fails, e.g. a full
    /dev/shm) the frame is handed over in memory, which is correct but slow for large tables.
    `from_chunks` stages a table chunk by chunk (a stored table's row groups).
    """

    schema: TableSchema
    columns: tuple[str, ...]
    height: int
    _dir: str | None
    _lock: int | None  # the descriptor holding the owner's lock of `_dir`
    _path: str | None
    _frame: pl.DataFrame | None
    _enums: dict[str, pl.Enum]  # the columns staged as their public categories' Enum

    def __init__(
        self,
        schema: TableSchema,
        data: pl.DataFrame | pl.LazyFrame,
        columns: tuple[str, ...] | list[str] | None = None,
        *,
        spill_dir: str | bool | None = True,
    ):
        self._start(schema, columns)
        lf = data.lazy() if isinstance(data, pl.DataFrame) else data
        if not isinstance(lf, pl.LazyFrame):
            raise TypeError("data must be a polars DataFrame or LazyFrame")
        frame = _staged_frame(schema, lf, self.columns)
        self.height = frame.height
        self._frame = frame
        self._enums = _enum_dtypes(frame)
        directory = _default_spill_dir() if spill_dir is True else (spill_dir or None)
        if directory:
            self._spill(frame, directory)

    @classmethod
    def from_chunks(
        cls,
        schema: TableSchema,
        open_chunks: Callable[[], Iterable[pl.DataFrame]],
        columns: tuple[str, ...] | list[str] | None = None,
        *,
        spill_dir: str | bool | None = True,
    ) -> PreparedData:
        """Stages a table read in chunks (e.g. Parquet row groups) one chunk at a time: each is cast,
        checked and appended to the staged file, so the whole table is never held in memory (only
        one chunk and its cast copy). `open_chunks()` yields the chunks in order (each with at least
        the wanted columns); it is called again, to stage in memory, only if writing to the spill
        directory fails (e.g. a full /dev/shm), and once without a spill directory. The checks and
        their errors are those of the whole-table path (`_staged_chunks`). A schema with an
        identifier (per-person truncation needs all the rows of a person) is staged from the chunks
        concatenated, as the whole-table path does. Categorical columns with public categories are
        staged as their Enum, as on the whole-table path (a column holding a value outside its
        categories as strings: staging starts again without it)."""
        self = cls.__new__(cls)
        self._start(schema, columns)
        directory = _default_spill_dir() if spill_dir is True else (spill_dir or None)
        enums = _enums(schema, self.columns)
        while schema.identifier is None and directory:
            try:
                if not self._spill_chunks(open_chunks(), directory, enums):
                    break
                self._enums = dict(enums)
                return self
            except _OutsideCategories as exc:
                enums = {name: dtype for name, dtype in enums.items() if name not in exc.columns}
        chunks = open_chunks()
        with contextlib.closing(_Closing(chunks)):
            if schema.identifier is None:
                parts = list(_staged_chunks(schema, chunks, self.columns))
            else:
                parts = list(chunks)
        if schema.identifier is None:
            frame = _as_enums(pl.concat(parts, rechunk=False) if len(parts) > 1 else parts[0], enums)
        else:
            whole = pl.concat(parts, rechunk=False) if len(parts) > 1 else (parts or [pl.DataFrame()])[0]
            del parts
            frame = _staged_frame(schema, whole.lazy(), self.columns)
            del whole
        self.height = frame.height
        self._frame = frame
        self._enums = _enum_dtypes(frame)
        if directory and schema.identifier is not None:
            self._spill(frame, directory)
        return self

    def _start(self, schema: TableSchema, columns: tuple[str, ...] | list[str] | None) -> None:
        self.schema = schema
        names = (
            list(columns)
            if columns is not None
            else [c.name for c in schema.columns if c.name != schema.identifier]
        )
        self.columns = tuple(c.name for c in schema.columns if c.name in set(names))
        self.height = 0
        self._dir = None
        self._lock = None
        self._path = None
        self._frame = None
        self._enums = {}

    def _private_file(self, directory: str) -> tuple[str, int]:
        # Made under another name, locked, then renamed: a sweeper never sees it unlocked.
        making = tempfile.mkdtemp(prefix=".chdp-making-", dir=directory)  # mode 0700
        try:
            self._lock = _hold_owner_lock(making)
            self._dir = os.path.join(directory, _spill_prefix() + uuid.uuid4().hex[:12])
            os.rename(making, self._dir)
        except OSError:
            shutil.rmtree(making, ignore_errors=True)
            raise
        path = os.path.join(self._dir, f"{uuid.uuid4().hex}.arrow")
        return path, os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)

    def _spill(self, frame: pl.DataFrame, directory: str) -> None:
        try:
            path, fd = self._private_file(directory)
            with os.fdopen(fd, "wb") as handle:
                _as_codes(frame, self._enums).write_ipc(handle, compression="uncompressed")
            self._path = path
            self._frame = None  # OpenDP reads the file; free the copy
        except OSError:
            self._cleanup_files()

    def _spill_chunks(
        self, chunks: Iterable[pl.DataFrame], directory: str, enums: dict[str, pl.Enum]
    ) -> bool:
        """Appends the staged chunks to one Arrow IPC file, one record batch each: True when done;
        False, with nothing left behind, if writing the file failed (an error reading the chunks
        is raised, as a refused table's `QueryError` is: with nothing left behind either)."""
        height = 0
        try:
            with contextlib.closing(_Closing(chunks)):
                try:
                    path, fd = self._private_file(directory)
                    handle = os.fdopen(fd, "wb")
                except OSError:
                    raise _SpillFailed from None
                with handle:
                    writer: ipc.RecordBatchFileWriter | None = None
                    for frame in _staged_chunks(self.schema, chunks, self.columns, enums):
                        # the file as `write_ipc` writes it (string views: mapped, not copied)
                        table = _as_codes(frame, enums).to_arrow(compat_level=pl.CompatLevel.newest())
                        del frame
                        try:
                            if writer is None:
                                writer = ipc.new_file(handle, table.schema)
                            writer.write_table(table)
                        except OSError:
                            raise _SpillFailed from None
                        height += table.num_rows
                        del table
                    try:
                        if writer is not None:
                            writer.close()
                        handle.flush()
                    except OSError:
                        raise _SpillFailed from None
        except _SpillFailed:
            self._cleanup_files()
            return False
        except BaseException:
            self._cleanup_files()
            raise
        self._path, self.height = path, height
        return True

    @property
    def nbytes(self) -> int:
        """The memory the staged table holds: its file on tmpfs, or its frame."""
        if self._path is not None:
            with contextlib.suppress(OSError):
                return os.path.getsize(self._path)
        return int(self._frame.estimated_size()) if self._frame is not None else 0

    @property
    def enum_columns(self) -> frozenset[str]:
        """The columns staged as their public categories' Enum (what a plan's `enum_columns` needs);
        the other categorical columns (holding a value outside their categories) as strings."""
        return frozenset(self._enums)

    def enum_of(self, name: str) -> pl.Enum | None:
        """The Enum `name` is staged as (None: not an Enum column)."""
        return self._enums.get(name)

    def frame(self, columns: tuple[str, ...], *, strings: bool = False) -> pl.LazyFrame:
        """A LazyFrame with exactly `columns` (in this order) for OpenDP to read; with `strings`,
        the Enum columns read as strings (for a plan over strings)."""
        if self._path is not None:
            lf = pl.scan_ipc(self._path, memory_map=True).select(list(columns))
            codes = [name for name in columns if name in self._enums]
            if codes:  # staged as their codes (`_as_codes`): read as their Enum again
                lf = lf.with_columns(pl.col(name).cast(self._enums[name]) for name in codes)
        elif self._frame is not None:
            lf = self._frame.lazy().select(list(columns))
        else:
            raise RuntimeError("PreparedData is closed")
        decode = [name for name in columns if name in self._enums] if strings else []
        return lf.with_columns(pl.col(decode).cast(pl.String)) if decode else lf

    def _cleanup_files(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)  # after the removal: a sweeper never sees a live table unlocked
        self._dir = self._path = self._lock = None

    def close(self) -> None:
        self._cleanup_files()
        self._frame = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - best effort
        with contextlib.suppress(Exception):
            self._cleanup_files()


def prepare(
    schema: TableSchema,
    data: pl.DataFrame | pl.LazyFrame,
    specs: Iterable[QuerySpec | dict[str, Any] | str] | None = None,
    **kwargs: Any,
) -> PreparedData:
    """Stages data once for several releases: the columns the given specs read (else all)."""
    columns: list[str] | None = None
    if specs is not None:
        columns = []
        for spec in specs:
            columns.extend(_calibrated(schema, _ensure_spec(spec, schema)).plan.columns)
    return PreparedData(schema, data, columns, **kwargs)
