"""What a preview and a release say: the cost, each aggregate's mechanism and noise, the rows.

95% intervals: count/sum use OpenDP's accuracy functions for the exact noise distribution
(`discrete_laplacian_scale_to_accuracy`, `laplacian_…`, `discrete_gaussian_…`, `gaussian_…`;
for continuous Laplace this is b·ln 20, for a Gaussian σ·1.96). They cover the *clamped* aggregate.
A mean is noisy_sum / noisy_count: each part gets its 97.5% half-width, so with probability
≥ 95% (union bound) both true values lie in their boxes; the mean's interval is the range of
sum/count over that box (count > 0), intersected with the column bounds — data-dependent, so a
preview gives the components and `half_width_95 = None`. Quantiles (exponential mechanism over a
public candidate grid) get no interval.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from .plan import _alias, _bounds, _Plan
from .schema import TableSchema
from .spec import Aggregate, QuerySpec

ALPHA = 0.05

# per primitive index: {alpha: the half-width of its noise at 1 - alpha}, None where not applicable
Accuracy = dict[int, dict[float, float | None]]


@dataclass(frozen=True)
class PrivacyCost:
    """What a release costs, read from the measurement's privacy map. `measure` is the policy's:
    pure → ε (δ = 0); approx → (ε, δ); zcdp → ρ, plus δ when private keys were released."""

    measure: str
    epsilon: float | None = None
    delta: float = 0.0
    rho: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "epsilon": self.epsilon, "delta": self.delta, "rho": self.rho}


@dataclass(frozen=True)
class Component:
    """One OpenDP noise primitive behind an aggregate (a mean has a sum and a count)."""

    role: str  # count | sum | quantile
    mechanism: str  # OpenDP's distribution name, e.g. "Integer Laplace", "Float Gaussian", "ExponentialMin"
    scale: float
    half_width: float | None  # at `confidence`
    confidence: float | None


@dataclass(frozen=True)
class AggregatePreview:
    name: str
    type: str
    column: str | None
    mechanism: str
    scale: float | None  # the noise scale (None for a mean: see components)
    half_width_95: float | None  # None when data-dependent (mean) or not applicable (quantile)
    components: tuple[Component, ...]
    note: str = ""
    q: float | None = None
    candidates: int | None = None  # quantiles: size of the public candidate grid

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type,
            "column": self.column,
            "q": self.q,
            "mechanism": self.mechanism,
            "scale": self.scale,
            "half_width_95": self.half_width_95,
            "components": [c.__dict__.copy() for c in self.components],
            "note": self.note,
            "candidates": self.candidates,
        }


@dataclass(frozen=True)
class Preview:
    spec_hash: str
    schema_fingerprint: str
    cost: PrivacyCost
    aggregates: tuple[AggregatePreview, ...]
    group_by: tuple[str, ...]
    public_groups: int | None  # rows a public-key group-by returns (None: keys released privately)
    threshold: int | None  # OpenDP's key-release threshold on the noisy count
    global_scale: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec_hash": self.spec_hash,
            "schema_fingerprint": self.schema_fingerprint,
            "cost": self.cost.to_dict(),
            "aggregates": [a.to_dict() for a in self.aggregates],
            "group_by": list(self.group_by),
            "public_groups": self.public_groups,
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Release:
    """Noisy aggregates only: one row per group (group keys + one value per aggregate)."""

    preview: Preview
    columns: tuple[str, ...]
    rows: tuple[dict[str, Any], ...]
    intervals: tuple[dict[str, tuple[float, float]], ...]  # per row: aggregate name → 95% interval
    timings_ms: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def cost(self) -> PrivacyCost:
        return self.preview.cost

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.preview.to_dict(),
            "columns": list(self.columns),
            "rows": [dict(r) for r in self.rows],
            "intervals": [{k: list(v) for k, v in r.items()} for r in self.intervals],
        }


# --------------------------------------------------------------------------------------------
# the preview of each aggregate (data-independent)


def _mean_preview(
    schema: TableSchema,
    agg: Aggregate,
    used: tuple[int, ...],
    components: dict[int, Component],
    accuracy: Accuracy,
) -> AggregatePreview:
    s, n = used
    parts = tuple(
        Component(
            role=components[i].role,
            mechanism=components[i].mechanism,
            scale=components[i].scale,
            half_width=accuracy[i][ALPHA / 2],
            confidence=1 - ALPHA / 2,
        )
        for i in (s, n)
    )
    column = schema.column(_aggregate_column(agg))
    return AggregatePreview(
        name=agg.name,
        type=agg.type,
        column=agg.column,
        scale=None,
        half_width_95=None,
        components=parts,
        mechanism=f"noisy sum ({parts[0].mechanism}) / noisy count ({parts[1].mechanism})",
        note=(
            "95% interval is data-dependent: sum and count each get a 97.5% half-width, and the "
            "release reports the range of sum/count over both boxes, "
            f"within [{column.lower}, {column.upper}]; roughly (h_sum + |mean|·h_count) / count"
        ),
    )


def _quantile_preview(
    schema: TableSchema, agg: Aggregate, comp: Component, candidates: int
) -> AggregatePreview:
    column = schema.column(_aggregate_column(agg))
    return AggregatePreview(
        name=agg.name,
        type=agg.type,
        column=agg.column,
        q=agg.quantile,
        mechanism=comp.mechanism,
        scale=comp.scale,
        half_width_95=None,
        components=(comp,),
        candidates=candidates,
        note=(
            f"selects one of {candidates} public candidates between {column.lower} and "
            f"{column.upper} (OpenDP's exponential mechanism); no interval"
        ),
    )


def _aggregate_preview(
    schema: TableSchema,
    agg: Aggregate,
    used: tuple[int, ...],
    components: dict[int, Component],
    accuracy: Accuracy,
    plan: _Plan,
) -> AggregatePreview:
    if agg.type == "mean":
        return _mean_preview(schema, agg, used, components, accuracy)
    (i,) = used
    comp = components[i]
    if agg.type in ("median", "quantile"):
        return _quantile_preview(schema, agg, comp, len(plan.candidates[i]))
    if agg.type == "count":
        note = "counts the rows after filtering" if agg.column is None else "counts non-null values"
    else:
        column = schema.column(_aggregate_column(agg))
        note = f"sum of values clamped to [{column.lower}, {column.upper}]"
    return AggregatePreview(
        name=agg.name,
        type=agg.type,
        column=agg.column,
        mechanism=comp.mechanism,
        scale=comp.scale,
        half_width_95=comp.half_width,
        components=(comp,),
        note=note,
    )


def _aggregate_column(agg: Aggregate) -> str:
    if agg.column is None:  # pragma: no cover - only COUNT(*) has no column
        raise AssertionError(f"a {agg.type} aggregate has no column")
    return agg.column


# --------------------------------------------------------------------------------------------
# shaping the released answer


def _clip(value: float, lower: float, upper: float) -> float:
    return min(max(value, lower), upper)


def _mean_interval(
    s: float, n: float, hs: float, hn: float, lower: float, upper: float
) -> tuple[float, float]:
    if n - hn <= 0:
        return (float(lower), float(upper))
    ratios = [(s + a) / (n + b) for a in (-hs, hs) for b in (-hn, hn)]
    return (_clip(min(ratios), lower, upper), _clip(max(ratios), lower, upper))


def _half_width(accuracy: Accuracy, index: int, alpha: float) -> float:
    """The half-width of a count or sum primitive (OpenDP gives one for every Laplace/Gaussian)."""
    width = accuracy[index][alpha]
    if width is None:  # pragma: no cover - counts and sums always have an accuracy function
        raise AssertionError(f"primitive {index} has no accuracy")
    return width


def _sorted_records(plan: _Plan, group_by: list[str], frame: pl.DataFrame) -> list[dict[str, Any]]:
    records = frame.to_dicts()
    if group_by:
        if plan.keys is not None:
            order = {tuple(r): i for i, r in enumerate(plan.keys.iter_rows())}
            records.sort(key=lambda r: order.get(tuple(r[g] for g in group_by), len(order)))
        else:  # released keys: sort by value so that row order says nothing
            records.sort(key=lambda r: tuple((r[g] is None, str(r[g])) for g in group_by))
    return records


def _shape_row(
    schema: TableSchema, spec: QuerySpec, plan: _Plan, accuracy: Accuracy, record: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, tuple[float, float]]]:
    """One released row (group keys + one value per aggregate) and its 95% intervals."""
    row: dict[str, Any] = {g: record[g] for g in spec.group_by}
    interval: dict[str, tuple[float, float]] = {}
    for agg, used in zip(spec.aggregates, plan.uses, strict=True):
        values = [record[_alias(i)] for i in used]
        if agg.type == "mean":
            s, n = values
            lower, upper = _bounds(schema.column(_aggregate_column(agg)))
            if s is None or n is None:
                row[agg.name] = None
                continue
            row[agg.name] = _clip(s / n, lower, upper) if n > 0 else None
            hs, hn = (_half_width(accuracy, i, ALPHA / 2) for i in used)
            interval[agg.name] = _mean_interval(float(s), float(n), hs, hn, lower, upper)
        else:
            (value,) = values
            row[agg.name] = value
            hw = accuracy[used[0]][ALPHA]
            if hw is not None and value is not None:
                interval[agg.name] = (value - hw, value + hw)
    return row, interval


def _assemble(
    schema: TableSchema, spec: QuerySpec, plan: _Plan, accuracy: Accuracy, frame: pl.DataFrame
) -> tuple[tuple[str, ...], tuple[dict[str, Any], ...], tuple[dict[str, tuple[float, float]], ...]]:
    group_by = list(spec.group_by)
    columns = tuple(group_by) + tuple(a.name for a in spec.aggregates)
    rows, intervals = [], []
    for record in _sorted_records(plan, group_by, frame):
        row, interval = _shape_row(schema, spec, plan, accuracy, record)
        rows.append(row)
        intervals.append(interval)
    return columns, tuple(rows), tuple(intervals)
