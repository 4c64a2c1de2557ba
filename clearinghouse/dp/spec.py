"""The JSON query spec: dataclasses, validation against a `TableSchema`, canonical form and hash.

    {
      "aggregates": [
        {"type": "count"},                                 # COUNT(*)
        {"type": "count", "column": "income"},             # non-null values of income
        {"type": "sum", "column": "income"},
        {"type": "mean", "column": "income", "alias": "avg_income"},
        {"type": "median", "column": "age"},
        {"type": "quantile", "column": "age", "q": 0.9},
        {"type": "histogram", "column": "educ"}            # alone: = group_by [educ] + count
      ],
      "where": {"and": [{"column": "age", "op": ">=", "value": 30},
                        {"column": "educ", "op": "in", "values": ["1", "2"]},
                        {"not": {"column": "married", "op": "=", "value": true}}]},
      "group_by": ["educ"],
      "privacy": {"epsilon": 1.0}          # or {"epsilon": 1.0, "delta": 1e-7}, {"rho": 0.05}, ...
    }

Semantics follow SQL: COUNT(col), SUM, AVG and quantiles ignore nulls; a `where` condition that is
null (a comparison with a null value) drops the row. Numeric values are clamped to the schema's
public bounds before aggregation; quantile/median candidates are a public grid over those bounds.
Bounds and categories always come from the schema: a spec cannot carry them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from dataclasses import dataclass
from typing import Any

from .errors import QueryError
from .schema import Column, TableSchema

AGGREGATE_TYPES = ("count", "sum", "mean", "median", "quantile", "histogram")
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
OPERATORS = COMPARISONS + ("in", "not_in", "between", "is_null", "is_not_null")
ORDERED_OPERATORS = frozenset({"<", "<=", ">", ">=", "between"})
GROUPABLE_TYPES = frozenset({"categorical", "boolean"})
NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

MAX_AGGREGATES = 20
MAX_GROUP_BY = 3
MAX_GROUPS = 10_000  # rows a public key-set may produce (product of the categories)
MAX_FILTER_NODES = 100
MAX_IN_VALUES = 1_000


@dataclass(frozen=True)
class Aggregate:
    type: str  # count | sum | mean | median | quantile   (histogram is normalised away)
    column: str | None = None
    q: float | None = None
    alias: str | None = None

    @property
    def name(self) -> str:
        if self.alias:
            return self.alias
        if self.type == "count":
            return "count" if self.column is None else f"count_{self.column}"
        if self.type == "quantile":
            return f"quantile_{self.column}_{self.q:g}"
        return f"{self.type}_{self.column}"

    @property
    def quantile(self) -> float | None:
        return 0.5 if self.type == "median" else self.q

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type}
        if self.column is not None:
            out["column"] = self.column
        if self.q is not None:
            out["q"] = self.q
        if self.alias is not None:
            out["alias"] = self.alias
        return out


@dataclass(frozen=True)
class Condition:
    """One test on one column. `value` for comparisons, `values` for in/not_in, `low`/`high` for
    between; nothing for is_null/is_not_null. Values are typed for the column (see `_literal`)."""

    column: str
    op: str
    value: Any = None
    values: tuple[Any, ...] = ()
    low: Any = None
    high: Any = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"column": self.column, "op": self.op}
        if self.op in COMPARISONS:
            out["value"] = self.value
        elif self.op in ("in", "not_in"):
            out["values"] = list(self.values)
        elif self.op == "between":
            out["low"], out["high"] = self.low, self.high
        return out


@dataclass(frozen=True)
class BoolOp:
    op: str  # and | or | not
    args: tuple[Where, ...]

    def to_dict(self) -> dict[str, Any]:
        if self.op == "not":
            return {"not": self.args[0].to_dict()}
        return {self.op: [a.to_dict() for a in self.args]}


Where = Condition | BoolOp


@dataclass(frozen=True)
class PrivacyLoss:
    epsilon: float | None = None
    delta: float = 0.0
    rho: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.epsilon is not None:
            out["epsilon"] = self.epsilon
        if self.rho is not None:
            out["rho"] = self.rho
        if self.delta:
            out["delta"] = self.delta
        return out


@dataclass(frozen=True)
class QuerySpec:
    aggregates: tuple[Aggregate, ...]
    privacy: PrivacyLoss
    group_by: tuple[str, ...] = ()
    where: Where | None = None

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column the query reads (group keys, filters, aggregates), first use first."""
        seen: dict[str, None] = {}
        for name in self.group_by:
            seen[name] = None
        if self.where is not None:
            for name in _where_columns(self.where):
                seen[name] = None
        for agg in self.aggregates:
            if agg.column is not None:
                seen[agg.column] = None
        return tuple(seen)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "aggregates": [a.to_dict() for a in self.aggregates],
            "privacy": self.privacy.to_dict(),
        }
        if self.group_by:
            out["group_by"] = list(self.group_by)
        if self.where is not None:
            out["where"] = self.where.to_dict()
        return out

    def canonical_json(self) -> str:
        """Stable text of the normalised spec: equal queries give equal text (replay, caching)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def with_privacy(self, privacy: PrivacyLoss) -> QuerySpec:
        return QuerySpec(
            aggregates=self.aggregates, privacy=privacy, group_by=self.group_by, where=self.where
        )


def _where_columns(node: Where) -> list[str]:
    if isinstance(node, Condition):
        return [node.column]
    return [name for arg in node.args for name in _where_columns(arg)]


# --------------------------------------------------------------------------------------------
# parsing and validation


def parse_spec(data: Any, schema: TableSchema) -> QuerySpec:
    """Validates a JSON spec (a dict or its text) against the schema and its policy."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError:
            raise QueryError("invalid_spec", "the query spec is not valid JSON") from None
    if not isinstance(data, dict):
        raise QueryError("invalid_spec", "a query spec is a JSON object")
    unknown = set(data) - {"aggregates", "where", "group_by", "privacy"}
    if unknown:
        raise QueryError(
            "invalid_spec", f"unknown keys {sorted(unknown)}; allowed: aggregates, where, group_by, privacy"
        )

    raw_aggs = data.get("aggregates")
    if not isinstance(raw_aggs, list) or not raw_aggs:
        raise QueryError("invalid_spec", "'aggregates' must be a non-empty list")
    if len(raw_aggs) > MAX_AGGREGATES:
        raise QueryError("too_many_aggregates", f"at most {MAX_AGGREGATES} aggregates per query")
    aggregates = [_aggregate(raw, i, schema) for i, raw in enumerate(raw_aggs)]

    raw_group = data.get("group_by", [])
    if isinstance(raw_group, str):
        raw_group = [raw_group]
    if not isinstance(raw_group, list) or not all(isinstance(g, str) for g in raw_group):
        raise QueryError("invalid_spec", "'group_by' must be a list of column names")
    group_by = [_column_ref(name, schema, "group_by").name for name in raw_group]
    if len(set(group_by)) != len(group_by):
        raise QueryError("invalid_spec", "'group_by' names a column twice")

    histograms = [a for a in aggregates if a.type == "histogram"]
    if histograms:
        if len(aggregates) > 1 or group_by:
            raise QueryError(
                "invalid_aggregate", "a histogram stands alone; for counts per group use group_by with count"
            )
        hist = histograms[0]
        group_by = [hist.column]  # type: ignore[list-item]
        aggregates = [Aggregate(type="count", alias=hist.alias)]

    if len(group_by) > MAX_GROUP_BY:
        raise QueryError("invalid_spec", f"group by at most {MAX_GROUP_BY} columns")
    for name in group_by:
        column = schema.column(name)
        if column.type not in GROUPABLE_TYPES:
            raise QueryError(
                "unsupported_column_type",
                f"cannot group by '{name}' ({column.type}); group by categorical or boolean columns",
            )

    where = None
    if data.get("where") is not None:
        counter = [0]
        where = _where(data["where"], schema, counter)

    privacy = _privacy(data.get("privacy"), schema)

    # Output names must be distinct (group keys come first in a release's rows).
    names = list(group_by)
    for agg in aggregates:
        if agg.name in names:
            raise QueryError("duplicate_output_name", f"two outputs are named '{agg.name}'; use an alias")
        names.append(agg.name)

    private = [g for g in group_by if schema.column(g).public_keys is None]
    if private:
        if schema.policy.measure == "pure":
            raise QueryError(
                "group_by_requires_public_keys",
                f"'{', '.join(private)}' has no public categories in the schema; under this dataset's "
                "pure-DP policy only columns with public categories (or booleans) can be grouped on",
            )
        if privacy.delta <= 0:
            raise QueryError(
                "group_by_requires_public_keys",
                f"'{', '.join(private)}' has no public categories in the schema: releasing which groups "
                "exist needs δ > 0 (add 'delta' to the privacy loss), or group on a column with categories",
            )
    else:
        groups = 1
        for g in group_by:
            groups *= len(schema.column(g).public_keys or ())
        if groups > MAX_GROUPS:
            raise QueryError(
                "too_many_groups", f"the group-by would produce {groups} groups; at most {MAX_GROUPS}"
            )

    return QuerySpec(aggregates=tuple(aggregates), privacy=privacy, group_by=tuple(group_by), where=where)


def _column_ref(name: Any, schema: TableSchema, where: str) -> Column:
    if not isinstance(name, str) or not schema.has_column(name):
        raise QueryError(
            "unknown_column", f"{where}: unknown column {name!r}; columns: {', '.join(schema.names)}"
        )
    if name == schema.identifier:
        raise QueryError("identifier_column", f"{where}: '{name}' identifies people and cannot be queried")
    return schema.column(name)


def _aggregate(raw: Any, index: int, schema: TableSchema) -> Aggregate:
    where = f"aggregates[{index}]"
    if not isinstance(raw, dict):
        raise QueryError("invalid_spec", f"{where} must be an object")
    unknown = set(raw) - {"type", "column", "q", "alias"}
    if unknown:
        raise QueryError("invalid_spec", f"{where}: unknown keys {sorted(unknown)}")
    kind = raw.get("type")
    if kind not in AGGREGATE_TYPES:
        raise QueryError(
            "unsupported_aggregate",
            f"{where}: {kind!r} is not supported; use one of {', '.join(AGGREGATE_TYPES)}",
        )
    alias = raw.get("alias")
    if alias is not None and (not isinstance(alias, str) or not NAME.match(alias)):
        raise QueryError("invalid_aggregate", f"{where}: alias must be letters, digits and '_' (at most 63)")
    column_name = raw.get("column")
    if column_name is None:
        if kind != "count":
            raise QueryError("invalid_aggregate", f"{where}: {kind} needs a column")
        if raw.get("q") is not None:
            raise QueryError("invalid_aggregate", f"{where}: only quantile takes q")
        return Aggregate(type="count", alias=alias)
    column = _column_ref(column_name, schema, where)
    if kind in ("sum", "mean", "median", "quantile") and not column.is_numeric:
        raise QueryError(
            "unsupported_column_type",
            f"{where}: {kind} needs an integer or float column; '{column.name}' is {column.type}",
        )
    if kind == "histogram" and column.type not in GROUPABLE_TYPES:
        raise QueryError(
            "unsupported_column_type",
            f"{where}: a histogram needs a categorical or boolean column; '{column.name}' is {column.type}",
        )
    q = raw.get("q")
    if kind == "quantile":
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not math.isfinite(q) or not 0 < q < 1:
            raise QueryError("invalid_aggregate", f"{where}: quantile needs q strictly between 0 and 1")
        q = float(q)
    elif q is not None:
        raise QueryError("invalid_aggregate", f"{where}: only quantile takes q")
    return Aggregate(type=kind, column=column.name, q=q, alias=alias)


def _literal(value: Any, column: Column, where: str) -> Any:
    """A filter value typed for its column; categories are strings (as in the schema)."""
    kind = column.type
    if kind in ("integer", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise QueryError(
                "invalid_filter", f"{where}: '{column.name}' is numeric; {value!r} is not a finite number"
            )
        if isinstance(value, float) and value.is_integer() and kind == "integer":
            return int(value)
        return float(value) if kind == "float" else value
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise QueryError(
            "invalid_filter", f"{where}: '{column.name}' is boolean; {value!r} is not true or false"
        )
    # categorical, text
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise QueryError("invalid_filter", f"{where}: '{column.name}' holds text; {value!r} is not a string")
    return str(value)


def _where(raw: Any, schema: TableSchema, counter: list[int], where: str = "where") -> Where:
    counter[0] += 1
    if counter[0] > MAX_FILTER_NODES:
        raise QueryError("invalid_filter", f"at most {MAX_FILTER_NODES} conditions")
    if isinstance(raw, list):  # a list is an implicit AND
        raw = {"and": raw}
    if not isinstance(raw, dict):
        raise QueryError("invalid_filter", f"{where} must be an object")
    for op in ("and", "or"):
        if op in raw:
            if set(raw) != {op} or not isinstance(raw[op], list) or not raw[op]:
                raise QueryError("invalid_filter", f"{where}: '{op}' takes a non-empty list and nothing else")
            args: list[Where] = []
            for i, item in enumerate(raw[op]):
                node = _where(item, schema, counter, f"{where}.{op}[{i}]")
                # flatten nested and/and, or/or for a canonical form
                args.extend(node.args if isinstance(node, BoolOp) and node.op == op else (node,))
            return args[0] if len(args) == 1 else BoolOp(op=op, args=tuple(args))
    if "not" in raw:
        if set(raw) != {"not"}:
            raise QueryError("invalid_filter", f"{where}: 'not' takes one condition and nothing else")
        return BoolOp(op="not", args=(_where(raw["not"], schema, counter, f"{where}.not"),))

    unknown = set(raw) - {"column", "op", "value", "values", "low", "high"}
    if unknown:
        raise QueryError("invalid_filter", f"{where}: unknown keys {sorted(unknown)}")
    op = raw.get("op")
    if op == "==":
        op = "="
    if op == "<>":
        op = "!="
    if op not in OPERATORS:
        raise QueryError("invalid_filter", f"{where}: op must be one of {', '.join(OPERATORS)}")
    column = _column_ref(raw.get("column"), schema, where)
    if op in ORDERED_OPERATORS and not column.is_numeric:
        raise QueryError(
            "invalid_filter", f"{where}: '{op}' needs a numeric column; '{column.name}' is {column.type}"
        )
    expected = (
        {"value"}
        if op in COMPARISONS
        else {"values"}
        if op in ("in", "not_in")
        else ({"low", "high"} if op == "between" else set())
    )
    present = {k for k in ("value", "values", "low", "high") if k in raw}
    if present != expected:
        need = ", ".join(sorted(expected)) or "no value"
        raise QueryError("invalid_filter", f"{where}: '{op}' takes {need}")
    if op in COMPARISONS:
        if raw["value"] is None:
            raise QueryError("invalid_filter", f"{where}: compare with null using is_null / is_not_null")
        return Condition(column=column.name, op=op, value=_literal(raw["value"], column, where))
    if op in ("in", "not_in"):
        values = raw["values"]
        if not isinstance(values, list) or not values or len(values) > MAX_IN_VALUES:
            raise QueryError("invalid_filter", f"{where}: '{op}' takes a list of 1 to {MAX_IN_VALUES} values")
        typed = sorted({_literal(v, column, where) for v in values}, key=lambda v: (str(type(v)), v))
        return Condition(column=column.name, op=op, values=tuple(typed))
    if op == "between":
        low, high = _literal(raw["low"], column, where), _literal(raw["high"], column, where)
        return Condition(column=column.name, op=op, low=low, high=high)
    return Condition(column=column.name, op=op)


def _positive(value: Any, name: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise QueryError("invalid_privacy_loss", f"{name} must be a finite number above 0, not {value!r}")
    if value < sys.float_info.min:  # subnormal: no noise scale can be computed from it
        raise QueryError("invalid_privacy_loss", f"{name} is too small to calibrate noise for: {value!r}")
    return float(value)


def parse_privacy(raw: Any, schema: TableSchema) -> PrivacyLoss:
    return _privacy(raw, schema)


def _privacy(raw: Any, schema: TableSchema) -> PrivacyLoss:
    if isinstance(raw, PrivacyLoss):
        raw = raw.to_dict()
    if not isinstance(raw, dict) or not raw:
        raise QueryError("invalid_privacy_loss", "'privacy' must be an object such as {\"epsilon\": 1.0}")
    unknown = set(raw) - {"epsilon", "delta", "rho"}
    if unknown:
        raise QueryError("invalid_privacy_loss", f"unknown keys {sorted(unknown)}; use epsilon, delta, rho")
    epsilon = _positive(raw["epsilon"], "epsilon") if raw.get("epsilon") is not None else None
    rho = _positive(raw["rho"], "rho") if raw.get("rho") is not None else None
    delta = raw.get("delta", 0.0)
    if delta is None:
        delta = 0.0
    if (
        isinstance(delta, bool)
        or not isinstance(delta, (int, float))
        or not math.isfinite(delta)
        or not 0 <= delta < 1
    ):
        raise QueryError("invalid_privacy_loss", f"delta must be a number in [0, 1), not {delta!r}")
    delta = float(delta)
    if 0 < delta < sys.float_info.min:
        raise QueryError("invalid_privacy_loss", f"delta is too small to calibrate for: {delta!r}")
    if epsilon is not None and rho is not None:
        raise QueryError("invalid_privacy_loss", "give epsilon or rho, not both")
    if epsilon is None and rho is None:
        raise QueryError(
            "invalid_privacy_loss", "the privacy loss needs epsilon (or rho under a zCDP policy)"
        )

    policy = schema.policy
    if policy.measure == "zcdp":
        if rho is None:
            raise QueryError(
                "privacy_measure_not_allowed", "this dataset's policy is zero-concentrated DP: give rho"
            )
    else:
        if rho is not None:
            raise QueryError(
                "privacy_measure_not_allowed",
                f"this dataset's policy is {'pure' if policy.measure == 'pure' else 'approximate'} DP: give epsilon, not rho",
            )
    if delta > 0:
        if policy.measure == "pure":
            raise QueryError("privacy_measure_not_allowed", "this dataset's policy is pure ε-DP: δ must be 0")
        if delta > policy.max_delta:
            raise QueryError(
                "privacy_measure_not_allowed", f"this dataset's policy allows δ ≤ {policy.max_delta:g}"
            )
    return PrivacyLoss(epsilon=epsilon, delta=delta, rho=rho)
