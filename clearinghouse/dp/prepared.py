"""Handing the data to OpenDP cheaply: only the needed columns, cast to the declared types and
checked, written to a private Arrow IPC file on tmpfs that OpenDP's Rust side scans
(memory-mapped) — instead of Polars plan serialisation, which copies the whole frame through
`LazyFrame.__getstate__` (≈0.5 s for 1M rows × 6 columns).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from typing import Any, Self

import polars as pl

from .calibrate import _calibrated, _ensure_spec
from .errors import QueryError
from .plan import _POLARS
from .schema import TableSchema
from .spec import QuerySpec


def _default_spill_dir() -> str | None:
    configured = os.environ.get("CLEARINGHOUSE_DP_SPILL_DIR")
    if configured is not None:
        return configured if configured.lower() not in ("", "none", "off") else None
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _staged_frame(schema: TableSchema, lf: pl.LazyFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    """The columns cast to the schema's types and checked, at most k rows per person."""
    available = set(lf.collect_schema().names())
    wanted = set(columns) | ({schema.identifier} if schema.identifier else set())
    missing = sorted(wanted - available)
    if missing:
        raise QueryError("data_does_not_match_schema", f"the data lacks columns {missing}")
    if schema.identifier:
        k = schema.privacy_unit.max_rows_per_person
        lf = lf.filter(pl.int_range(pl.len()).over(schema.identifier) < k)
    exprs = []
    for name in columns:
        column = schema.column(name)
        expr = pl.col(name).cast(_POLARS[column.type], strict=True)
        if column.type == "float":
            expr = expr.fill_nan(None)
        exprs.append(expr)
    try:
        frame = lf.select(exprs).collect()
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise QueryError(
            "data_does_not_match_schema", f"the data does not have the declared types: {exc}"
        ) from None
    if frame.height > schema.policy.max_rows:
        raise QueryError(
            "dataset_too_large",
            f"the table has more rows than the policy's max_rows "
            f"({schema.policy.max_rows}); raise it in the policy",
        )
    for name in columns:
        if not schema.column(name).nullable and frame[name].null_count():
            raise QueryError(
                "data_does_not_match_schema", f"'{name}' is not nullable but holds nulls (or NaN)"
            )
    return frame


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
    """

    def __init__(
        self,
        schema: TableSchema,
        data: pl.DataFrame | pl.LazyFrame,
        columns: tuple[str, ...] | list[str] | None = None,
        *,
        spill_dir: str | bool | None = True,
    ):
        self.schema = schema
        names = (
            list(columns)
            if columns is not None
            else [c.name for c in schema.columns if c.name != schema.identifier]
        )
        self.columns = tuple(c.name for c in schema.columns if c.name in set(names))
        self._dir: str | None = None
        self._path: str | None = None
        lf = data.lazy() if isinstance(data, pl.DataFrame) else data
        if not isinstance(lf, pl.LazyFrame):
            raise TypeError("data must be a polars DataFrame or LazyFrame")
        frame = _staged_frame(schema, lf, self.columns)
        self.height = frame.height
        self._frame: pl.DataFrame | None = frame
        directory = _default_spill_dir() if spill_dir is True else (spill_dir or None)
        if directory:
            self._spill(frame, directory)

    def _spill(self, frame: pl.DataFrame, directory: str) -> None:
        try:
            self._dir = tempfile.mkdtemp(prefix="chdp-", dir=directory)  # mode 0700
            path = os.path.join(self._dir, f"{uuid.uuid4().hex}.arrow")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                frame.write_ipc(handle, compression="uncompressed")
            self._path = path
            self._frame = None  # OpenDP reads the file; free the copy
        except OSError:
            self._cleanup_files()

    def frame(self, columns: tuple[str, ...]) -> pl.LazyFrame:
        """A LazyFrame with exactly `columns` (in this order) for OpenDP to read."""
        if self._path is not None:
            return pl.scan_ipc(self._path, memory_map=True).select(list(columns))
        if self._frame is None:
            raise RuntimeError("PreparedData is closed")
        return self._frame.lazy().select(list(columns))

    def _cleanup_files(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
        self._dir = self._path = None

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
