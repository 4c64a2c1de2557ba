"""The DP engine: preview (spends nothing) and release, on OpenDP 0.16's Polars integration.

This module is the engine's facade: `preview` and `release`, and the names callers import from it.
All noise, clamping, key release and privacy accounting are OpenDP's. The engine only

1. (`plan`) translates a validated `QuerySpec` into an OpenDP Polars plan: each requested aggregate
   maps to OpenDP plugin expressions ("primitives": `dp.len`, `.dp.count`, `.dp.sum(bounds)`,
   `.dp.quantile(q, candidates)`); a mean is post-processed from its sum and count primitives;
   a group-by joins the schema's public key-set (every key gets a noisy row) or, with δ > 0 and
   no public keys, uses OpenDP's thresholded key release;
2. (`calibrate`) calibrates the noise WITHOUT `Context`'s binary search: `make_private_lazyframe(
   ..., global_scale=s)` gives every primitive a noise scale of `s × its sensitivity`, so the privacy
   map is `c/s` (Laplace, pure DP) or `c/s²` (Gaussian, zCDP). One build at s = 1 reads `c` from
   OpenDP's own map, the closed form gives `s`, and the final measurement's map is checked
   (`m.map(d_in) ≤ asked`, nudging `s` up by a few ulps when float rounding lands just above).
   A key-release threshold is found by a galloping search over OpenDP's map. Calibrated
   measurements are cached per (schema, canonical spec) — measurements hold no data;
3. (`prepared`) hands the data to OpenDP cheaply (`PreparedData`): only the needed columns, cast
   to the declared types and checked, written to a private Arrow IPC file on tmpfs that OpenDP's Rust
   side scans (memory-mapped) — instead of Polars plan serialisation, which copies the whole
   frame through `LazyFrame.__getstate__` (≈0.5 s for 1M rows × 6 columns).

95% intervals (`results`, which also shapes the released rows): count/sum use OpenDP's accuracy
functions for the exact noise distribution (`discrete_laplacian_scale_to_accuracy`, `laplacian_…`,
`discrete_gaussian_…`, `gaussian_…`; for continuous Laplace this is b·ln 20, for a Gaussian
σ·1.96). They cover the *clamped* aggregate. A mean is noisy_sum / noisy_count: each part gets its
97.5% half-width, so with probability ≥ 95% (union bound) both true values lie in their boxes; the
mean's interval is the range of sum/count over that box (count > 0), intersected with the column
bounds — data-dependent, so a preview gives the components and `half_width_95 = None`. Quantiles
(exponential mechanism over a public candidate grid) get no interval.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import polars as pl
from opendp.mod import OpenDPException

from .calibrate import (
    _CACHE_SIZE,
    _calibrate,
    _Calibrated,
    _calibrated,
    _ensure_spec,
    clear_cache,
    for_strings,
)
from .errors import QueryError
from .plan import QUANTILE_GRID, _Plan, _plan, enum_of
from .prepared import PreparedData, prepare
from .results import ALPHA, AggregatePreview, Component, Preview, PrivacyCost, Release, _assemble
from .schema import TableSchema
from .spec import QuerySpec

__all__ = [
    "ALPHA",
    "QUANTILE_GRID",
    "_CACHE_SIZE",
    "AggregatePreview",
    "Component",
    "PreparedData",
    "Preview",
    "PrivacyCost",
    "Release",
    "_Calibrated",
    "_Plan",
    "_calibrate",
    "_calibrated",
    "_plan",
    "clear_cache",
    "prepare",
    "preview",
    "release",
    "warm_up",
]


def warm_up() -> None:
    """OpenDP's first measurement in a process takes ~150 ms: a process that will price queries (a
    web process, a dp worker) pays it at start, not on a query. Best effort."""
    schema = TableSchema.from_dict({"columns": [{"name": "x", "type": "integer", "lower": 0, "upper": 1}]})
    with contextlib.suppress(Exception):
        preview(schema, {"aggregates": [{"type": "count"}], "privacy": {"epsilon": 1.0}})


def preview(schema: TableSchema, spec: QuerySpec | dict[str, Any] | str) -> Preview:
    """Mechanisms, noise scales, 95% half-widths and the exact cost. Reads no data, spends nothing."""
    return _calibrated(schema, _ensure_spec(spec, schema)).preview


def release(
    schema: TableSchema,
    spec: QuerySpec | dict[str, Any] | str,
    data: pl.DataFrame | pl.LazyFrame | PreparedData,
    *,
    spill_dir: str | bool | None = True,
) -> Release:
    """Runs the calibrated OpenDP measurement on the data once. The caller records `release.cost`
    (equal to `preview(...).cost`) against the budget *before* showing the result to anyone."""
    t0 = time.perf_counter()
    spec = _ensure_spec(spec, schema)
    cal = _calibrated(schema, spec)
    t1 = time.perf_counter()
    prepared = (
        data
        if isinstance(data, PreparedData)
        else PreparedData(schema, data, cal.plan.columns, spill_dir=spill_dir)
    )
    try:
        missing = set(cal.plan.columns) - set(prepared.columns)
        if missing:
            raise QueryError(
                "data_does_not_match_schema", f"the prepared data lacks columns {sorted(missing)}"
            )
        t2 = time.perf_counter()
        try:
            # The plan reads public categories as their Enum; data holding other values (staged
            # as strings) gets the same measurement over strings.
            strings = any(prepared.enum_of(c) != enum_of(schema.column(c)) for c in cal.plan.enum_columns)
            measurement = for_strings(schema, spec, cal) if strings else cal.measurement
            frame = measurement(prepared.frame(cal.plan.columns, strings=strings)).collect()
        except OpenDPException as exc:
            raise QueryError(
                "query_not_supported_by_opendp", f"OpenDP could not run the query: {exc.message}"
            ) from None
        t3 = time.perf_counter()
    finally:
        if prepared is not data:  # staged here: ours to close
            prepared.close()
    columns, rows, intervals = _assemble(schema, spec, cal.plan, cal.accuracy, frame)
    t4 = time.perf_counter()
    timings = {
        "calibrate_ms": (t1 - t0) * 1000,
        "prepare_ms": (t2 - t1) * 1000,
        "opendp_ms": (t3 - t2) * 1000,
        "assemble_ms": (t4 - t3) * 1000,
        "total_ms": (t4 - t0) * 1000,
    }
    return Release(preview=cal.preview, columns=columns, rows=rows, intervals=intervals, timings_ms=timings)
