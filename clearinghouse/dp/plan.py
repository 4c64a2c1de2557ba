"""Turning a validated `QuerySpec` into an OpenDP Polars plan (data-independent).

Each requested aggregate maps to OpenDP plugin expressions ("primitives": `dp.len`, `.dp.count`,
`.dp.sum(bounds)`, `.dp.quantile(q, candidates)`); a mean is post-processed from its sum and count
primitives; a group-by joins the schema's public key-set (every key gets a noisy row) or, with
δ > 0 and no public keys, uses OpenDP's thresholded key release.
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Any

import opendp.prelude as dp
import polars as pl
from opendp.extras.polars import Bound, DPExpr, Margin, dp_len
from opendp.mod import Domain, Measure, Metric

from .schema import Column, TableSchema
from .spec import BoolOp, QuerySpec, Where

# Every module that builds OpenDP objects imports this one.
dp.enable_features("contrib")

QUANTILE_GRID = 100  # intervals in the public candidate grid over a column's bounds

_POLARS: dict[str, type[pl.DataType]] = {
    "integer": pl.Int64,
    "float": pl.Float64,
    "boolean": pl.Boolean,
    "categorical": pl.String,
    "text": pl.String,
}
_OPENDP = {"integer": "i64", "float": "f64", "boolean": "bool", "categorical": "String", "text": "String"}


@dataclass(frozen=True)
class _Primitive:
    kind: str  # len | count | sum | quantile
    column: str | None = None
    q: float | None = None

    @property
    def column_name(self) -> str:
        """The column of a count, sum or quantile (a `len` reads none)."""
        if self.column is None:  # pragma: no cover - programming error
            raise AssertionError(f"a {self.kind} primitive has no column")
        return self.column


@dataclass
class _Plan:
    columns: tuple[str, ...]  # the input domain's columns, in schema order
    primitives: tuple[_Primitive, ...]
    uses: tuple[tuple[int, ...], ...]  # per aggregate: indexes of its primitives
    keys: pl.DataFrame | None  # the public key-set of a group-by
    private_keys: bool  # group-by keys released by OpenDP's thresholding
    lazyframe: pl.LazyFrame
    domain: Domain
    metric: Metric
    d_in: Any  # an int (rows one person adds or removes) or a frame bound
    measure: Measure
    candidates: dict[int, list[Any]]  # primitive index → quantile candidates
    enum_columns: frozenset[str]  # input columns typed as their public categories' Enum


def _alias(index: int) -> str:
    return f"__p{index}"


def _bounds(column: Column) -> tuple[float, float]:
    """The public bounds of a numeric column (the schema requires them)."""
    if column.lower is None or column.upper is None:  # pragma: no cover - the schema enforces bounds
        raise AssertionError(f"numeric column {column.name!r} has no bounds")
    return column.lower, column.upper


def _candidates(column: Column) -> list[Any]:
    lower, upper = _bounds(column)
    if column.type == "integer":
        if upper - lower <= QUANTILE_GRID:
            return list(range(int(lower), int(upper) + 1))
        step = (upper - lower) / QUANTILE_GRID
        return sorted({round(lower + i * step) for i in range(QUANTILE_GRID + 1)})
    # 12 significant digits: 5.2, not 5.200000000000001 (the grid is public; only its looks change)
    return [float(f"{lower + (upper - lower) * i / QUANTILE_GRID:.12g}") for i in range(QUANTILE_GRID + 1)]


def _dp(expr: pl.Expr) -> DPExpr:
    """OpenDP's `dp` namespace of a Polars expression: what `expr.dp` is at run time."""
    return DPExpr(expr)  # type: ignore[no-untyped-call]  # OpenDP leaves DPExpr.__init__ unannotated


def _primitive_expr(prim: _Primitive, schema: TableSchema, candidates: list[Any] | None) -> pl.Expr:
    expr: pl.Expr
    if prim.kind == "len":
        expr = dp_len(signed=True)
        return expr
    column = schema.column(prim.column_name)
    col = pl.col(column.name)
    if prim.kind == "count":
        expr = _dp(col).count(signed=True)
        return expr
    if column.nullable:
        col = col.drop_nulls()  # SQL semantics: SUM / AVG / quantiles ignore nulls
    if prim.kind == "sum":
        expr = _dp(col).sum(_bounds(column))
        return expr
    if prim.q is None or candidates is None:  # pragma: no cover - _plan gives every quantile both
        raise AssertionError("a quantile primitive needs q and its candidates")
    expr = _dp(col).median(candidates) if prim.q == 0.5 else _dp(col).quantile(prim.q, candidates)
    return expr


def _where_expr(node: Where) -> pl.Expr:
    if isinstance(node, BoolOp):
        parts = [_where_expr(a) for a in node.args]
        if node.op == "not":
            return ~parts[0]
        return functools.reduce((lambda a, b: a & b) if node.op == "and" else (lambda a, b: a | b), parts)
    col = pl.col(node.column)
    op = node.op
    if op == "is_null":
        return col.is_null()
    if op == "is_not_null":
        return col.is_not_null()
    if op == "between":
        return (col >= pl.lit(node.low)) & (col <= pl.lit(node.high))
    # OpenDP 0.16 does not support `is_in`: IN becomes a chain of equalities.
    if op == "in":
        return functools.reduce(lambda a, b: a | b, [col == pl.lit(v) for v in node.values])
    if op == "not_in":
        return functools.reduce(lambda a, b: a & b, [col != pl.lit(v) for v in node.values])
    value = pl.lit(node.value)
    return {
        "=": col == value,
        "!=": col != value,
        "<": col < value,
        "<=": col <= value,
        ">": col > value,
        ">=": col >= value,
    }[op]


def _primitives(schema: TableSchema, spec: QuerySpec) -> tuple[list[_Primitive], list[tuple[int, ...]], bool]:
    """The primitives the aggregates need (shared where they coincide), each aggregate's indexes
    into them, and whether the group keys are released privately."""
    primitives: list[_Primitive] = []

    def use(prim: _Primitive) -> int:
        if prim not in primitives:
            primitives.append(prim)
        return primitives.index(prim)

    def count_of(column: str | None) -> int:
        # COUNT(col) of a non-nullable column is the row count: share the primitive.
        if column is None or not schema.column(column).nullable:
            return use(_Primitive("len"))
        return use(_Primitive("count", column))

    uses: list[tuple[int, ...]] = []
    for agg in spec.aggregates:
        if agg.type == "count":
            uses.append((count_of(agg.column),))
        elif agg.type == "sum":
            uses.append((use(_Primitive("sum", agg.column)),))
        elif agg.type == "mean":
            uses.append((use(_Primitive("sum", agg.column)), count_of(agg.column)))
        else:  # median, quantile
            uses.append((use(_Primitive("quantile", agg.column, agg.quantile)),))

    private_keys = any(schema.column(g).public_keys is None for g in spec.group_by)
    if private_keys:
        use(_Primitive("len"))  # OpenDP's key release thresholds the noisy group length
    return primitives, uses, private_keys


def _input_columns(schema: TableSchema, spec: QuerySpec) -> tuple[str, ...]:
    needed = set(spec.columns)
    if not needed:  # COUNT(*) alone still needs a column to carry the rows
        candidates_ = [c for c in schema.columns if c.name != schema.identifier] or list(schema.columns)
        needed = {
            min(candidates_, key=lambda c: (c.type != "boolean", c.type in ("categorical", "text"))).name
        }
    return tuple(c.name for c in schema.columns if c.name in needed)


def enum_of(column: Column) -> pl.Enum | None:
    """The Enum of a categorical column's public categories (None for any other column). Data
    staged as it holds one byte a value, and OpenDP groups and filters it ~25% faster than strings;
    its comparisons are only equality and nulls (ordering operators need numbers), which mean
    the same on an Enum as on its strings."""
    return pl.Enum(list(column.categories)) if column.type == "categorical" and column.categories else None


def _dtype(column: Column, enums: frozenset[str]) -> pl.DataType | type[pl.DataType]:
    enum = enum_of(column) if column.name in enums else None
    return enum if enum is not None else _POLARS[column.type]


def _input_domain(schema: TableSchema, columns: tuple[str, ...], enums: frozenset[str]) -> Domain:
    series = []
    for name in columns:
        column = schema.column(name)
        if name in enums:
            atom = dp.enum_domain(pl.Series(column.categories, dtype=pl.String))
        elif column.type == "float":
            atom = dp.atom_domain(T=_OPENDP[column.type], nan=False)
        else:
            atom = dp.atom_domain(T=_OPENDP[column.type])
        series.append(dp.series_domain(name, dp.option_domain(atom) if column.nullable else atom))
    return dp.with_margin(dp.lazyframe_domain(series), Margin(by=[], max_length=schema.policy.max_rows))


def _accounting(schema: TableSchema, private_keys: bool) -> tuple[Metric, Any, Measure]:
    """The input metric, the distance d_in one person makes, and the output measure."""
    k = schema.privacy_unit.contributions
    measure_name = schema.policy.measure
    measure = dp.zero_concentrated_divergence() if measure_name == "zcdp" else dp.max_divergence()
    metric: Metric = dp.symmetric_distance()
    d_in: Any = k
    if private_keys:
        measure = dp.approximate(measure)
        if measure_name == "zcdp":
            # zCDP key release over SymmetricDistance wants a bound on groups; a frame bound says the
            # same thing OpenDP can use: one person contributes at most k rows in all.
            metric, d_in = dp.unit_of(contributions=[Bound(by=[], per_group=k)])
    return metric, d_in, measure


def _plan_lazyframe(
    schema: TableSchema,
    spec: QuerySpec,
    columns: tuple[str, ...],
    exprs: list[pl.Expr],
    private_keys: bool,
    enums: frozenset[str],
) -> tuple[pl.LazyFrame, pl.DataFrame | None]:
    """The Polars plan OpenDP makes private, and the public key-set of a group-by (if any)."""
    lf = pl.LazyFrame(schema={name: _dtype(schema.column(name), enums) for name in columns})
    if spec.where is not None:
        lf = lf.filter(_where_expr(spec.where))
    if not spec.group_by:
        return lf.select(exprs), None
    grouped = lf.group_by(list(spec.group_by)).agg(exprs)
    if private_keys:
        return grouped, None
    group_columns = [schema.column(g) for g in spec.group_by]
    rows = list(itertools.product(*(c.public_keys or () for c in group_columns)))
    keys = pl.DataFrame(rows, schema={c.name: _dtype(c, enums) for c in group_columns}, orient="row")
    # the shape of OpenDP's `with_keys`: every public key gets a (noisy) row
    return keys.lazy().join(grouped, on=list(spec.group_by), how="left", nulls_equal=True), keys


def _plan(schema: TableSchema, spec: QuerySpec, *, enums: bool = True) -> _Plan:
    """The plan of `spec`; with `enums`, categorical columns with public categories typed as their
    Enum (the data must then be staged so: `PreparedData.enum_columns`), else as strings."""
    primitives, uses, private_keys = _primitives(schema, spec)
    columns = _input_columns(schema, spec)
    enum_columns = frozenset(c for c in columns if enums and enum_of(schema.column(c)) is not None)
    metric, d_in, measure = _accounting(schema, private_keys)
    candidates: dict[int, list[Any]] = {}
    exprs = []
    for index, prim in enumerate(primitives):
        if prim.kind == "quantile":
            candidates[index] = _candidates(schema.column(prim.column_name))
        exprs.append(_primitive_expr(prim, schema, candidates.get(index)).alias(_alias(index)))
    lazyframe, keys = _plan_lazyframe(schema, spec, columns, exprs, private_keys, enum_columns)
    return _Plan(
        columns=columns,
        primitives=tuple(primitives),
        uses=tuple(uses),
        keys=keys,
        private_keys=private_keys,
        lazyframe=lazyframe,
        domain=_input_domain(schema, columns, enum_columns),
        metric=metric,
        d_in=d_in,
        measure=measure,
        candidates=candidates,
        enum_columns=enum_columns,
    )
