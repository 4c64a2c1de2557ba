"""Planning a query by accuracy before spending (in the spirit of OpenDP's DP Wizard), and the
warnings a preview gives before anything is spent. Data-independent: reads no rows, spends nothing.

Calibration (see `calibrate`) gives every primitive a noise scale of `s × sensitivity` with
`s = c/ε` (Laplace, pure/approximate DP) or `s = √(c/ρ)` (Gaussian, zCDP), so a count's or sum's
95% half-width is proportional to 1/ε, or to 1/√ρ — exactly for continuous noise, only roughly for
OpenDP's discrete (integer) mechanisms, whose half-widths move in steps. Hence:

- `accuracy_curve(schema, spec, levels)`: for each privacy level (ε, or ρ under a zCDP policy: the
  measure the spec's privacy loss is given in), each aggregate's 95% half-width, computed by the
  real calibration at that level (None where the half-width depends on the data: a mean; or where
  there is none: a quantile). A mean gets, instead, its least group size (below).
- `least_privacy_for(schema, spec, target)`: the least level at which every aggregate with a
  data-independent 95% half-width has `half_width_95 ≤ target`. The closed form from the spec's own
  level (ε* = ε₀·max hᵢ/target, or ρ* = ρ₀·max (hᵢ/target)²) is only the first guess: each guess is
  checked with the real calibration, the bracket widened geometrically until one end meets the
  target and the other does not, then bisected (geometrically) to a relative width of
  `SEARCH_TOLERANCE`; the level is rounded *up* to 4 significant digits and verified once more with
  the real, cached `preview` (nudged up if it fails). So the returned level meets the target and
  `level × (1 − PLAN_TOLERANCE)` does not (within `[MIN_LEVEL, MAX_LEVEL]`).

A mean's least group size (conservative; documented in `mean_min_group_size`): with h_s, h_n the
97.5% half-widths of its sum and count (both hold together with probability ≥ 95%), M = max(|L|, |U|)
and R = U − L the column's public bounds, the released interval (the range of sum/count over both
boxes, `results._mean_interval`) is at most 2·(M·h_n + h_s)/(ñ − h_n) wide around a noisy count ñ,
and ñ ≥ n − h_n. It is narrower than R/2 for every group of n true rows with
n > 2·h_n + 4·(M·h_n + h_s)/R, so the least such n is reported.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .calibrate import _components, _ensure_spec, _scale
from .engine import preview
from .errors import QueryError
from .plan import _bounds, _Plan, _plan
from .results import ALPHA, Accuracy, AggregatePreview, Preview
from .schema import U32_MAX, TableSchema, is_finite_number
from .spec import PrivacyLoss, QuerySpec

MIN_LEVEL = 1e-9  # the planner searches ε (or ρ) in [MIN_LEVEL, MAX_LEVEL]
MAX_LEVEL = 1e4
SEARCH_TOLERANCE = 1e-3  # the bisection stops when hi/lo ≤ 1 + SEARCH_TOLERANCE
PLAN_TOLERANCE = 3e-3  # the plan's level × (1 − PLAN_TOLERANCE) misses the target (4-digit rounding)
MAX_CURVE_LEVELS = 20
DEFAULT_LEVELS: dict[str, tuple[float, ...]] = {
    "epsilon": (0.05, 0.1, 0.25, 0.5, 1.0, 2.0),
    "rho": (0.001, 0.005, 0.01, 0.05, 0.1, 0.5),
}
COVERS = 0.5  # warn when a 95% interval would cover at least this share of the public range

__all__ = [
    "COVERS",
    "DEFAULT_LEVELS",
    "MAX_CURVE_LEVELS",
    "MAX_LEVEL",
    "MIN_LEVEL",
    "PLAN_TOLERANCE",
    "SEARCH_TOLERANCE",
    "AccuracyPlan",
    "CurvePoint",
    "PreviewWarning",
    "accuracy_curve",
    "check_levels",
    "check_target",
    "least_privacy_for",
    "level_name",
    "mean_min_group_size",
    "plan_query",
    "preview_warnings",
    "preview_with_warnings",
    "with_level",
]


# --------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class PreviewWarning:
    """Something to know before spending. `code` is stable: `interval_covers_range` (a 95% interval
    would cover at least half of the aggregate's public range) or `group_too_small_for_mean` (groups
    smaller than `details["min_group_size"]` rows get a mean interval wider than half the range)."""

    code: str
    aggregate: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "aggregate": self.aggregate,
            "message": self.message,
            "details": self.details,
        }


@dataclass(frozen=True)
class CurvePoint:
    """One privacy level: each aggregate's 95% half-width (None: data-dependent or none), and a
    mean's least group size (`mean_min_group_size`)."""

    level: float
    half_widths: dict[str, float | None]
    min_group_sizes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "half_widths": dict(self.half_widths),
            "min_group_sizes": dict(self.min_group_sizes),
        }


@dataclass(frozen=True)
class AccuracyPlan:
    """The least level (`measure`: "epsilon" or "rho") meeting `target_half_width`, the preview at
    that level (its exact cost and half-widths), the aggregates that could not be planned (means and
    quantiles, with why), and each mean's least group size at that level."""

    measure: str
    level: float
    target_half_width: float
    preview: Preview
    unplanned: tuple[dict[str, str], ...]
    min_group_sizes: dict[str, int]
    calibrations: int  # real calibrations the search made

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "level": self.level,
            "target_half_width": self.target_half_width,
            "preview": self.preview.to_dict(),
            "unplanned": [dict(u) for u in self.unplanned],
            "min_group_sizes": dict(self.min_group_sizes),
            "calibrations": self.calibrations,
        }


# --------------------------------------------------------------------------------------------
# levels


def level_name(schema: TableSchema) -> str:
    """The privacy level a spec is calibrated to: ρ under a zCDP policy, ε otherwise."""
    return "rho" if schema.policy.measure == "zcdp" else "epsilon"


def with_level(schema: TableSchema, spec: QuerySpec, level: float) -> QuerySpec:
    """The spec at another ε (or ρ), its δ kept."""
    if level_name(schema) == "rho":
        return spec.with_privacy(PrivacyLoss(rho=level, delta=spec.privacy.delta))
    return spec.with_privacy(PrivacyLoss(epsilon=level, delta=spec.privacy.delta))


def _spec_level(schema: TableSchema, spec: QuerySpec) -> float:
    level = spec.privacy.rho if level_name(schema) == "rho" else spec.privacy.epsilon
    if level is None:  # pragma: no cover - parse_spec requires the policy's measure
        raise AssertionError("the spec has no privacy level")
    return float(level)


def _finite(value: Any) -> float | None:
    """`value` as a float when it is a finite JSON number (`is_finite_number`), else None."""
    return float(value) if is_finite_number(value) else None


def _check_level(schema: TableSchema, level: Any) -> float:
    name = "ρ" if level_name(schema) == "rho" else "ε"
    number = _finite(level)
    if number is None or not MIN_LEVEL <= number <= MAX_LEVEL:
        raise QueryError(
            "invalid_privacy_loss", f"each level {name} must be a number in [{MIN_LEVEL:g}, {MAX_LEVEL:g}]"
        )
    return number


# --------------------------------------------------------------------------------------------
# half-widths at a level (the real calibration, without the key-release threshold search: the
# threshold changes δ, never the noise)


def _accuracy_at(schema: TableSchema, plan: _Plan, level: float) -> Accuracy:
    zcdp = level_name(schema) == "rho"
    _, measurement = _scale(plan, level, zcdp, U32_MAX if plan.private_keys else None)
    return _components(plan, measurement)[1]


def _count_or_sum(agg_type: str) -> bool:
    return agg_type in ("count", "sum")


def _min_group_size(lower: float, upper: float, h_sum: float, h_count: float) -> int:
    bound = max(abs(lower), abs(upper))
    size = 2.0 * h_count + 4.0 * (bound * h_count + h_sum) / (upper - lower)
    return math.floor(size) + 1 if math.isfinite(size) else sys.maxsize


def mean_min_group_size(schema: TableSchema, aggregate: AggregatePreview) -> int | None:
    """The least true group size n for which a mean's 95% interval is narrower than half its column's
    public range: n > 2·h_n + 4·(M·h_n + h_s)/R (module docstring). None for other aggregates."""
    if aggregate.type != "mean" or aggregate.column is None or len(aggregate.components) != 2:
        return None
    h_sum, h_count = (c.half_width for c in aggregate.components)
    if h_sum is None or h_count is None:  # pragma: no cover - sums and counts always have one
        return None
    lower, upper = _bounds(schema.column(aggregate.column))
    return _min_group_size(float(lower), float(upper), h_sum, h_count)


def _widths(
    schema: TableSchema, spec: QuerySpec, plan: _Plan, accuracy: Accuracy
) -> tuple[dict[str, float | None], dict[str, int]]:
    half_widths: dict[str, float | None] = {}
    sizes: dict[str, int] = {}
    for agg, used in zip(spec.aggregates, plan.uses, strict=True):
        half_widths[agg.name] = accuracy[used[0]][ALPHA] if _count_or_sum(agg.type) else None
        if agg.type == "mean" and agg.column is not None:
            h_sum, h_count = (accuracy[i][ALPHA / 2] for i in used)
            if h_sum is not None and h_count is not None:
                lower, upper = _bounds(schema.column(agg.column))
                sizes[agg.name] = _min_group_size(float(lower), float(upper), h_sum, h_count)
    return half_widths, sizes


def check_levels(schema: TableSchema, levels: Iterable[Any] | None) -> tuple[float, ...]:
    """The curve's levels, sorted and deduplicated (default `DEFAULT_LEVELS`); refuses (code
    `invalid_privacy_loss`) a level outside [MIN_LEVEL, MAX_LEVEL], and more than MAX_CURVE_LEVELS."""
    asked = list(DEFAULT_LEVELS[level_name(schema)] if levels is None else levels)
    if not asked or len(asked) > MAX_CURVE_LEVELS:
        raise QueryError("invalid_privacy_loss", f"ask for 1 to {MAX_CURVE_LEVELS} privacy levels")
    return tuple(sorted({_check_level(schema, value) for value in asked}))


def accuracy_curve(
    schema: TableSchema, spec: QuerySpec | dict[str, Any] | str, levels: Iterable[float] | None = None
) -> tuple[CurvePoint, ...]:
    """Each aggregate's 95% half-width at each level (ε, or ρ under zCDP); default `DEFAULT_LEVELS`.
    Levels are sorted and deduplicated (`check_levels`); each is calibrated for real."""
    spec = _ensure_spec(spec, schema)
    checked = check_levels(schema, levels)
    plan = _plan(schema, spec)
    points = []
    for level in checked:
        half_widths, sizes = _widths(schema, spec, plan, _accuracy_at(schema, plan, level))
        points.append(CurvePoint(level=level, half_widths=half_widths, min_group_sizes=sizes))
    return tuple(points)


# --------------------------------------------------------------------------------------------
# the least level for a target


def _round_up(value: float) -> float:
    """`value` rounded up to 4 significant digits (a level people can type)."""
    rounded = float(f"{value:.4g}")
    if rounded < value:
        rounded = float(f"{rounded + 10 ** (math.floor(math.log10(rounded)) - 3):.4g}")
    return rounded


def _unplanned(spec: QuerySpec) -> tuple[dict[str, str], ...]:
    reasons = {
        "mean": "a mean's interval depends on the group's size: see its least group size",
        "median": "a median (exponential mechanism) has no interval",
        "quantile": "a quantile (exponential mechanism) has no interval",
    }
    return tuple(
        {"aggregate": agg.name, "type": agg.type, "reason": reasons[agg.type]}
        for agg in spec.aggregates
        if not _count_or_sum(agg.type)
    )


def _search(meets: Callable[[float], bool], guess: float) -> float:
    """The least level in [MIN_LEVEL, MAX_LEVEL] where `meets` (monotone) holds, to a relative
    SEARCH_TOLERANCE: widen a bracket geometrically from `guess`, then bisect it geometrically."""
    guess = min(max(guess, MIN_LEVEL), MAX_LEVEL)
    step = 0.01
    if meets(guess):
        hi, lo = guess, guess
        while lo > MIN_LEVEL:
            lo = max(hi / (1.0 + step), MIN_LEVEL)
            if not meets(lo):
                break
            hi, step = lo, step * 2.0
        else:
            return MIN_LEVEL
    else:
        lo, hi = guess, guess
        while True:
            if lo >= MAX_LEVEL:
                raise QueryError(
                    "accuracy_target_invalid",
                    f"the target half-width is out of reach: it needs a privacy level above {MAX_LEVEL:g}",
                )
            hi = min(lo * (1.0 + step), MAX_LEVEL)
            if meets(hi):
                break
            lo, step = hi, step * 2.0
    while hi / lo > 1.0 + SEARCH_TOLERANCE:
        mid = math.sqrt(lo * hi)
        if meets(mid):
            hi = mid
        else:
            lo = mid
    return hi


def check_target(target: Any) -> float:
    """A target half-width: a finite number above 0 (else `accuracy_target_invalid`)."""
    number = _finite(target)
    if number is None or number <= 0:
        raise QueryError(
            "accuracy_target_invalid",
            f"the target half-width must be a finite number above 0, not {str(target)[:40]!r}",
        )
    return number


def least_privacy_for(
    schema: TableSchema, spec: QuerySpec | dict[str, Any] | str, target_half_width: float
) -> AccuracyPlan:
    """The least ε (or ρ) at which every count and sum of the query has a 95% half-width ≤ the
    target (module docstring: closed form, then verified and refined with the real calibration)."""
    target = check_target(target_half_width)
    spec = _ensure_spec(spec, schema)
    planned = [agg.name for agg in spec.aggregates if _count_or_sum(agg.type)]
    if not planned:
        raise QueryError(
            "accuracy_not_plannable",
            "no aggregate of this query has a data-independent 95% half-width (only counts and sums "
            "do; a mean's depends on the group size, a quantile has none)",
        )
    plan = _plan(schema, spec)
    calibrations = 0

    def worst(level: float) -> float:
        nonlocal calibrations
        calibrations += 1
        half_widths, _ = _widths(schema, spec, plan, _accuracy_at(schema, plan, level))
        return max(_known(half_widths[name]) for name in planned)

    def meets(level: float) -> bool:
        return worst(level) <= target

    reference = _spec_level(schema, spec)
    ratio = worst(reference) / target
    guess = reference * (ratio * ratio if level_name(schema) == "rho" else ratio)
    level = _round_up(_search(meets, guess))
    while True:  # verify with the real (cached) preview; nudge up should it miss
        calibrations += 1
        final = preview(schema, with_level(schema, spec, level))
        if all(_known(a.half_width_95) <= target for a in final.aggregates if a.name in planned):
            break
        if level >= MAX_LEVEL:  # pragma: no cover - the search already checked the bracket
            raise QueryError("accuracy_target_invalid", "the target half-width is out of reach")
        level = _round_up(min(level * (1.0 + SEARCH_TOLERANCE), MAX_LEVEL))
    sizes = {a.name: size for a in final.aggregates if (size := mean_min_group_size(schema, a)) is not None}
    return AccuracyPlan(
        measure=level_name(schema),
        level=level,
        target_half_width=target,
        preview=final,
        unplanned=_unplanned(spec),
        min_group_sizes=sizes,
        calibrations=calibrations,
    )


def _known(width: float | None) -> float:
    if width is None:  # pragma: no cover - counts and sums always have a half-width
        raise AssertionError("a count or sum without a half-width")
    return width


# --------------------------------------------------------------------------------------------
# warnings before spending


def _public_range(schema: TableSchema, aggregate: AggregatePreview) -> float | None:
    """The width of a count's or sum's public range from the stated row bound (`max_rows`)."""
    rows = schema.policy.max_rows
    if aggregate.type == "count":
        return float(rows)
    if aggregate.type == "sum" and aggregate.column is not None:
        lower, upper = _bounds(schema.column(aggregate.column))
        return float(rows) * (max(0.0, float(upper)) - min(0.0, float(lower)))
    return None


def preview_warnings(schema: TableSchema, preview: Preview) -> tuple[PreviewWarning, ...]:
    """What to know before spending on this preview: a count or sum whose 95% interval would cover at
    least half its public range ([0, max_rows] rows; for a sum, max_rows × the column's bounds), and
    for each mean the least group size below which its interval is wider than half the column's
    range (`interval_covers_range` instead when even `max_rows` rows are too few)."""
    warnings: list[PreviewWarning] = []
    for agg in preview.aggregates:
        if _count_or_sum(agg.type) and agg.half_width_95 is not None:
            span = _public_range(schema, agg)
            if span and 2.0 * agg.half_width_95 >= COVERS * span:
                warnings.append(
                    PreviewWarning(
                        code="interval_covers_range",
                        aggregate=agg.name,
                        message=(
                            f"{agg.name}: the 95% interval (±{agg.half_width_95:.4g}) would cover "
                            f"{min(1.0, 2.0 * agg.half_width_95 / span):.0%} of its public range "
                            f"(width {span:.4g}, from the stated row bound {schema.policy.max_rows}); "
                            "the answer would say little: spend more, or ask less"
                        ),
                        details={"half_width_95": agg.half_width_95, "public_range": span},
                    )
                )
        size = mean_min_group_size(schema, agg)
        if size is None or agg.column is None:
            continue
        lower, upper = _bounds(schema.column(agg.column))
        if size > schema.policy.max_rows:
            warnings.append(
                PreviewWarning(
                    code="interval_covers_range",
                    aggregate=agg.name,
                    message=(
                        f"{agg.name}: even a group of all {schema.policy.max_rows:,} rows (the stated row "
                        f"bound) would get a 95% interval wider than half of [{lower:,g}, {upper:,g}]"
                    ),
                    details={"min_group_size": size},
                )
            )
        else:
            warnings.append(
                PreviewWarning(
                    code="group_too_small_for_mean",
                    aggregate=agg.name,
                    message=(
                        f"{agg.name}: groups of fewer than {size:,} rows get a 95% interval wider than "
                        f"half of [{lower:,g}, {upper:,g}]"
                    ),
                    details={"min_group_size": size},
                )
            )
    return tuple(warnings)


def preview_with_warnings(schema: TableSchema, spec: QuerySpec | dict[str, Any] | str) -> dict[str, Any]:
    """`preview(...).to_dict()` plus its `warnings`."""
    answer = preview(schema, spec)
    return {**answer.to_dict(), "warnings": [w.to_dict() for w in preview_warnings(schema, answer)]}


# --------------------------------------------------------------------------------------------
# one call for the service


def plan_query(
    schema: TableSchema,
    spec: QuerySpec | dict[str, Any] | str,
    *,
    target_half_width: float | None = None,
    levels: Sequence[float] | None = None,
    curve: bool = False,
) -> dict[str, Any]:
    """What `POST .../queries/plan` answers: with a target, the least level and the preview (with
    its warnings) at it; with `curve` (or `levels`), the half-widths at each level. Spends nothing."""
    spec = _ensure_spec(spec, schema)
    measure = level_name(schema)
    out: dict[str, Any] = {"measure": measure, "target_half_width": None, "level": None, "preview": None}
    out |= {"unplanned": [dict(u) for u in _unplanned(spec)], "min_group_sizes": {}, "calibrations": None}
    out["curve"] = None
    if target_half_width is not None:
        planned = least_privacy_for(schema, spec, target_half_width)
        out |= planned.to_dict()
        out["preview"]["warnings"] = [w.to_dict() for w in preview_warnings(schema, planned.preview)]
    if curve or levels is not None:
        out["curve"] = [p.to_dict() for p in accuracy_curve(schema, spec, levels)]
    return out
