"""Calibrating the noise to the privacy loss asked for, and pricing the release exactly.

No `Context` binary search: `make_private_lazyframe(..., global_scale=s)` gives every primitive a
noise scale of `s × its sensitivity`, so the privacy map is `c/s` (Laplace, pure DP) or `c/s²`
(Gaussian, zCDP). One build at s = 1 reads `c` from OpenDP's own map, the closed form gives `s`,
and the final measurement's map is checked (`m.map(d_in) ≤ asked`, nudging `s` up by a few ulps
when float rounding lands just above). A key-release threshold is found by a galloping search over
OpenDP's map. Calibrated measurements are cached per (schema, canonical spec), and the plan and
`c` per (schema, canonical spec but its level): neither holds data.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp
from cachetools import LRUCache
from opendp.accuracy import (
    discrete_gaussian_scale_to_accuracy,
    discrete_laplacian_scale_to_accuracy,
    gaussian_scale_to_accuracy,
    laplacian_scale_to_accuracy,
)
from opendp.mod import Measurement, OpenDPException

from .errors import QueryError
from .plan import _alias, _Plan, _plan
from .results import ALPHA, Accuracy, Component, Preview, PrivacyCost, _aggregate_preview
from .schema import U32_MAX, TableSchema
from .spec import PrivacyLoss, QuerySpec, parse_spec

_CACHE_SIZE = 512

_ACCURACY: dict[str, Callable[[float, float], float]] = {
    "Integer Laplace": discrete_laplacian_scale_to_accuracy,
    "Float Laplace": laplacian_scale_to_accuracy,
    "Integer Gaussian": discrete_gaussian_scale_to_accuracy,
    "Float Gaussian": gaussian_scale_to_accuracy,
}


@dataclass
class _Calibrated:
    plan: _Plan
    measurement: Measurement
    preview: Preview
    accuracy: Accuracy  # primitive → {alpha: half-width}
    timings_ms: dict[str, float]
    strings: Measurement | None = None  # the same measurement over strings (`for_strings`), once built


def _build(plan: _Plan, scale: float, threshold: int | None) -> Measurement:
    try:
        return dp.m.make_private_lazyframe(
            plan.domain, plan.metric, plan.measure, plan.lazyframe, global_scale=scale, threshold=threshold
        )
    except OpenDPException as exc:
        raise QueryError(
            "query_not_supported_by_opendp", f"OpenDP cannot build this query: {exc.message}"
        ) from None


def _privacy_loss(meas: Measurement, d_in: Any) -> Any:
    """OpenDP's privacy map at `d_in`: a number, or a pair (ε or ρ, δ) when keys are released."""
    return meas.map(d_in)  # type: ignore[no-untyped-call]  # OpenDP leaves Measurement.map unannotated


def _primary(loss: Any) -> float:
    return float(loss[0] if isinstance(loss, tuple) else loss)


def _scale(
    plan: _Plan, target: float, zcdp: bool, threshold: int | None, reference: float | None = None
) -> tuple[float, Measurement]:
    """The noise scale for `target`: closed form from OpenDP's own map, loss(s) = c/s (Laplace) or
    c/s² (Gaussian) with c the loss at s = 1 (`reference`, when the caller has it: `_reference`),
    then checked against the map of the measurement itself."""
    if reference is None:
        reference = _primary(_privacy_loss(_build(plan, 1.0, threshold), plan.d_in))
    scale = math.sqrt(reference / target) if zcdp else reference / target
    meas = _build(plan, scale, threshold)
    loss = _primary(_privacy_loss(meas, plan.d_in))
    bump = 2.0**-45
    while loss > target:  # float rounding in the map: nudge the scale up by a few ulps
        scale *= 1.0 + bump
        bump *= 2.0
        meas = _build(plan, scale, threshold)
        loss = _primary(_privacy_loss(meas, plan.d_in))
    return scale, meas


def _threshold(plan: _Plan, scale: float, delta: float) -> int:
    """Key release: the smallest threshold whose δ (from OpenDP's map) fits, by galloping search."""

    def delta_at(t: int) -> float:
        return float(_privacy_loss(_build(plan, scale, t), plan.d_in)[1])

    lo, hi = 1, 2  # OpenDP wants a threshold above 1; invariant: delta_at(lo) > δ (or lo == 1)
    while delta_at(hi) > delta:
        if hi >= U32_MAX:
            raise QueryError("invalid_privacy_loss", f"δ = {delta:g} is too small to release group keys")
        lo, hi = hi, min(hi * 2, U32_MAX)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if delta_at(mid) <= delta:
            hi = mid
        else:
            lo = mid
    return hi


def _cost(
    schema: TableSchema, plan: _Plan, meas: Measurement, privacy: PrivacyLoss, target: float
) -> PrivacyCost:
    """The exact cost, from the final measurement's privacy map — and the guarantee."""
    cost_raw = _privacy_loss(meas, plan.d_in)
    if isinstance(cost_raw, tuple):
        main, delta = float(cost_raw[0]), float(cost_raw[1])
    else:
        main, delta = float(cost_raw), 0.0
    if main > target or delta > privacy.delta:  # pragma: no cover - would be a bug
        raise AssertionError(f"calibration exceeded the requested loss: {cost_raw} > {privacy}")
    if schema.policy.measure == "zcdp":
        return PrivacyCost(measure="zcdp", rho=main, delta=delta)
    return PrivacyCost(measure=schema.policy.measure, epsilon=main, delta=delta)


def _accuracy(fn: Callable[[float, float], float], scale: float, alpha: float) -> float | None:
    """OpenDP's half-width at 1 - alpha. Its discrete-Laplace formula overflows to -inf at tiny scales
    (below ~0.0014, i.e. a very large ε): the noise is then 0 with probability above 1 - alpha, so the
    half-width is 0. NaN (never seen) is no interval rather than an answer JSON cannot carry."""
    width = float(fn(scale, alpha))
    if math.isnan(width):
        return None
    return max(width, 0.0)


def _components(plan: _Plan, meas: Measurement) -> tuple[dict[int, Component], Accuracy]:
    """Each primitive's noise (OpenDP's summary) and its half-widths at 95% and 97.5%."""
    summary = dp.summarize_polars_measurement(meas)
    by_alias = {row["column"]: row for row in summary.iter_rows(named=True)}
    accuracy: Accuracy = {}
    components: dict[int, Component] = {}
    for index, prim in enumerate(plan.primitives):
        row = by_alias[_alias(index)]
        fn = _ACCURACY.get(row["distribution"])
        accuracy[index] = {a: (_accuracy(fn, row["scale"], a) if fn else None) for a in (ALPHA, ALPHA / 2)}
        components[index] = Component(
            role=prim.kind if prim.kind != "len" else "count",
            mechanism=row["distribution"],
            scale=float(row["scale"]),
            half_width=accuracy[index][ALPHA],
            confidence=1 - ALPHA if fn else None,
        )
    return components, accuracy


@dataclass(frozen=True)
class _Reference:
    """What calibration needs that does not depend on the level (ε or ρ) asked for: the plan (the
    Polars plan over an empty frame of the schema's columns, the public key-set, the domain and
    metric) and the loss `c` of the measurement at noise scale 1. Holds no data."""

    plan: _Plan
    loss: float


# References by (schema fingerprint, the spec's canonical hash with its level set to 1): a query asked
# again at another ε or ρ builds one measurement instead of two.
_references: LRUCache[tuple[str, str], _Reference] = LRUCache(maxsize=_CACHE_SIZE)
_cache_lock = threading.Lock()  # both caches'


def _shape(spec: QuerySpec) -> str:
    """The canonical hash of `spec` with its level (ε or ρ) set to 1; its δ and everything else kept."""
    privacy = spec.privacy
    level = PrivacyLoss(
        epsilon=None if privacy.epsilon is None else 1.0,
        rho=None if privacy.rho is None else 1.0,
        delta=privacy.delta,
    )
    return spec.with_privacy(level).hash


def _reference(schema: TableSchema, spec: QuerySpec, *, use_cache: bool = True) -> _Reference:
    key = (schema.fingerprint, _shape(spec))
    if use_cache:
        with _cache_lock:
            hit = _references.get(key)
        if hit is not None:
            return hit
    plan = _plan(schema, spec)
    threshold = U32_MAX if plan.private_keys else None
    value = _Reference(plan=plan, loss=_primary(_privacy_loss(_build(plan, 1.0, threshold), plan.d_in)))
    if use_cache:
        with _cache_lock:
            _references[key] = value
    return value


def _calibrate(schema: TableSchema, spec: QuerySpec, *, use_cache: bool = True) -> _Calibrated:
    started = time.perf_counter()
    reference = _reference(schema, spec, use_cache=use_cache)
    plan = reference.plan
    privacy = spec.privacy
    zcdp = schema.policy.measure == "zcdp"
    target = privacy.rho if zcdp else privacy.epsilon
    assert target is not None
    scale, meas = _scale(plan, target, zcdp, U32_MAX if plan.private_keys else None, reference.loss)
    calibrated_ms = (time.perf_counter() - started) * 1000
    threshold = None
    if plan.private_keys:
        threshold = _threshold(plan, scale, privacy.delta)
        meas = _build(plan, scale, threshold)
    cost = _cost(schema, plan, meas, privacy, target)
    components, accuracy = _components(plan, meas)
    preview = Preview(
        spec_hash=spec.hash,
        schema_fingerprint=schema.fingerprint,
        cost=cost,
        aggregates=tuple(
            _aggregate_preview(schema, agg, used, components, accuracy, plan)
            for agg, used in zip(spec.aggregates, plan.uses, strict=True)
        ),
        group_by=spec.group_by,
        public_groups=plan.keys.height if plan.keys is not None else (None if spec.group_by else 1),
        threshold=threshold,
        global_scale=scale,
    )
    timings = {"calibrate_ms": calibrated_ms, "plan_and_calibrate_ms": (time.perf_counter() - started) * 1000}
    return _Calibrated(plan=plan, measurement=meas, preview=preview, accuracy=accuracy, timings_ms=timings)


# Calibrated measurements by (schema fingerprint, spec hash); they hold no data.
_cache: LRUCache[tuple[str, str], _Calibrated] = LRUCache(maxsize=_CACHE_SIZE)


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()
        _references.clear()


def _calibrated(schema: TableSchema, spec: QuerySpec, *, use_cache: bool = True) -> _Calibrated:
    key = (schema.fingerprint, spec.hash)
    if use_cache:
        with _cache_lock:
            hit = _cache.get(key)
        if hit is not None:
            return hit
    value = _calibrate(schema, spec, use_cache=use_cache)
    if use_cache:
        with _cache_lock:
            _cache[key] = value
    return value


def for_strings(schema: TableSchema, spec: QuerySpec, cal: _Calibrated) -> Measurement:
    """`cal.measurement` for data whose public categories are staged as strings, not as their Enum
    (data holding a value outside its categories: `PreparedData.enum_columns`): the same plan over
    string columns, with the same noise scale and threshold, checked to have the same privacy loss.
    Built once per calibrated measurement."""
    if not cal.plan.enum_columns:
        return cal.measurement
    if cal.strings is None:
        plan = _plan(schema, spec, enums=False)
        strings = _build(plan, cal.preview.global_scale, cal.preview.threshold)
        if _privacy_loss(strings, plan.d_in) != _privacy_loss(cal.measurement, cal.plan.d_in):
            raise QueryError(  # pragma: no cover - OpenDP's map reads no dtype; never seen
                "query_not_supported_by_opendp", "the plan over strings has another privacy loss"
            )
        cal.strings = strings
    return cal.strings


def _ensure_spec(spec: QuerySpec | dict[str, Any] | str, schema: TableSchema) -> QuerySpec:
    if isinstance(spec, QuerySpec):
        return spec
    return parse_spec(spec, schema)
