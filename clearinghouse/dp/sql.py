"""A documented SQL subset for analysts, parsed with sqlglot and translated into the JSON spec.

The translator walks sqlglot's syntax tree and accepts only the node types listed in
`SUPPORTED_SQL`; everything else is refused with code `unsupported_sql` and that text. The SQL
is never executed anywhere: it only becomes a `QuerySpec`, which `parse_spec` validates against
the schema exactly as a JSON spec would be.
"""

from __future__ import annotations

from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from .errors import QueryError
from .schema import TableSchema
from .spec import PrivacyLoss, QuerySpec, parse_spec

MAX_SQL_LENGTH = 20_000

SUPPORTED_SQL = """\
Supported SQL: one SELECT over the dataset's table.
  SELECT item, ... FROM table [WHERE condition] [GROUP BY column, ...]
  items: the GROUP BY columns, and aggregates, each optionally AS alias:
    COUNT(*), COUNT(column), SUM(column), AVG(column), MEDIAN(column),
    QUANTILE(column, q) or APPROX_QUANTILE(column, q), PERCENTILE_CONT(q) WITHIN GROUP (ORDER BY column)
  condition: column = | != | <> | < | <= | > | >= literal, column [NOT] IN (literal, ...),
    column BETWEEN literal AND literal, column IS [NOT] NULL, a boolean column, AND, OR, NOT, ( )
Not supported: SELECT *, DISTINCT, joins, subqueries, WITH, window functions (OVER), HAVING,
ORDER BY, LIMIT/OFFSET, UNION, more than one statement, arithmetic or functions on columns."""

_ALLOWED_SELECT_ARGS = {"expressions", "from", "from_", "where", "group"}
_FEATURE_NAMES = {
    "joins": "joins",
    "with": "WITH (common table expressions)",
    "with_": "WITH (common table expressions)",
    "having": "HAVING",
    "order": "ORDER BY",
    "limit": "LIMIT",
    "offset": "OFFSET",
    "distinct": "DISTINCT",
    "windows": "window functions",
    "qualify": "QUALIFY",
    "laterals": "LATERAL",
    "into": "SELECT INTO",
    "sample": "TABLESAMPLE",
    "settings": "SETTINGS",
    "connect": "CONNECT BY",
    "prewhere": "PREWHERE",
    "locks": "FOR UPDATE",
    "pivots": "PIVOT",
    "match": "MATCH_RECOGNIZE",
    "cluster": "CLUSTER BY",
    "distribute": "DISTRIBUTE BY",
    "sort": "SORT BY",
    "kind": "SELECT AS STRUCT/VALUE",
    "operation_modifiers": "operation modifiers",
    "hint": "optimizer hints",
}
_COMPARISONS: dict[type[exp.Expression], str] = {
    exp.EQ: "=",
    exp.NEQ: "!=",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
}
_FLIPPED = {"=": "=", "!=": "!=", ">": "<", ">=": "<=", "<": ">", "<=": ">="}


def _refuse(what: str) -> QueryError:
    return QueryError("unsupported_sql", f"{what}.\n{SUPPORTED_SQL}", details={"supported": SUPPORTED_SQL})


def sql_to_spec(
    sql: str, schema: TableSchema, privacy: dict[str, Any] | PrivacyLoss, *, table: str | None = None
) -> QuerySpec:
    """Translates `sql` into a validated `QuerySpec` with the given privacy loss. If `table` is
    given, FROM must name it (case-insensitive); otherwise any single table name is accepted."""
    data = sql_to_dict(sql, schema, table=table)
    data["privacy"] = privacy.to_dict() if isinstance(privacy, PrivacyLoss) else privacy
    return parse_spec(data, schema)


def sql_to_dict(sql: str, schema: TableSchema, *, table: str | None = None) -> dict[str, Any]:
    """The JSON spec (without `privacy`) for `sql`; validation is left to `parse_spec`."""
    stmt = _select(sql)
    _refuse_features(stmt)
    walker = _Walker(schema, _table_qualifiers(stmt, table))
    group_by = _group_by(stmt, walker)
    aggregates = _aggregates(stmt, walker, group_by)
    out: dict[str, Any] = {"aggregates": aggregates}
    if group_by:
        out["group_by"] = group_by
    where = stmt.args.get("where")
    if where is not None:
        out["where"] = walker.condition(where.this)
    return out


def _select(sql: str) -> exp.Select:
    """The one SELECT statement of `sql`."""
    if not isinstance(sql, str) or not sql.strip():
        raise _refuse("The query is empty")
    if len(sql) > MAX_SQL_LENGTH:
        raise _refuse(f"The query is longer than {MAX_SQL_LENGTH} characters")
    try:
        statements = [s for s in sqlglot.parse(sql) if s is not None]
    except SqlglotError as exc:
        first = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise _refuse(f"The query could not be parsed ({first})") from None
    if len(statements) != 1:
        raise _refuse("Exactly one statement is allowed")
    stmt = statements[0]
    if not isinstance(stmt, exp.Select):
        raise _refuse(f"Only SELECT is supported, not {stmt.key.upper()}")
    return stmt


def _refuse_features(stmt: exp.Select) -> None:
    # Clear messages for the usual suspects, wherever they appear.
    for node in stmt.walk():
        if isinstance(node, exp.Window):
            raise _refuse("Window functions (OVER) are not supported")
        if isinstance(node, exp.Join):
            raise _refuse("Joins are not supported")
        if isinstance(node, (exp.Subquery, exp.Union, exp.Intersect, exp.Except)) or (
            isinstance(node, exp.Select) and node is not stmt
        ):
            raise _refuse("Subqueries and set operations are not supported")
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            raise _refuse("SELECT * is not supported: name the aggregates")
    for key, value in stmt.args.items():
        if key in _ALLOWED_SELECT_ARGS or value is None or value is False or value == [] or value == "":
            continue
        raise _refuse(f"{_FEATURE_NAMES.get(key, key.upper())} is not supported")


def _table_qualifiers(stmt: exp.Select, table: str | None) -> set[str]:
    """The names a column may be qualified with: the FROM table's, and its alias."""
    source = stmt.args.get("from_") or stmt.args.get("from")
    if source is None or not isinstance(source.this, exp.Table):
        raise _refuse("FROM must name the dataset's table")
    tbl = source.this
    if tbl.args.get("db") or tbl.args.get("catalog") or not isinstance(tbl.this, exp.Identifier):
        raise _refuse("FROM must name the dataset's table, without schema or catalog")
    if table is not None and tbl.name.lower() != table.lower():
        raise QueryError("unknown_table", f"unknown table '{tbl.name}'; query '{table}'")
    return {tbl.name.lower()} | ({tbl.alias.lower()} if tbl.alias else set())


def _group_by(stmt: exp.Select, walker: _Walker) -> list[str]:
    group_by: list[str] = []
    group = stmt.args.get("group")
    if group is not None:
        for item in group.expressions:
            if not isinstance(item, exp.Column):
                raise _refuse("GROUP BY takes column names only")
            group_by.append(walker.column(item))
        if any(group.args.get(k) for k in group.args if k != "expressions"):
            raise _refuse("GROUP BY takes column names only (no ROLLUP, CUBE or GROUPING SETS)")
    return group_by


def _aggregates(stmt: exp.Select, walker: _Walker, group_by: list[str]) -> list[dict[str, Any]]:
    aggregates: list[dict[str, Any]] = []
    for item in stmt.expressions:
        alias = None
        if isinstance(item, exp.Alias):
            alias = item.alias
            item = item.this
        if isinstance(item, exp.Column):
            name = walker.column(item)
            if name not in group_by:
                raise _refuse(f"Column '{name}' must appear in GROUP BY or inside an aggregate")
            if alias is not None and alias != name:
                raise _refuse("GROUP BY columns cannot be renamed")
            continue
        agg = walker.aggregate(item)
        if alias is not None:
            agg["alias"] = alias
        aggregates.append(agg)
    if not aggregates:
        raise _refuse("Select at least one aggregate")
    return aggregates


class _Walker:
    def __init__(self, schema: TableSchema, qualifiers: set[str]):
        self.schema = schema
        self.qualifiers = qualifiers

    def column(self, node: exp.Expression) -> str:
        if not isinstance(node, exp.Column):
            raise _refuse(f"Expected a column name, got {node.sql()!r}")
        if node.args.get("db") or node.args.get("catalog"):
            raise _refuse(f"Column {node.sql()!r}: use the plain column name")
        if node.table and node.table.lower() not in self.qualifiers:
            raise QueryError("unknown_column", f"'{node.table}' in {node.sql()!r} is not the queried table")
        ident = node.this
        if not isinstance(ident, exp.Identifier):
            raise _refuse(f"Expected a column name, got {node.sql()!r}")
        name = ident.name
        if ident.quoted:
            return name  # exact; parse_spec reports an unknown one
        return self.schema.resolve_name(name) or name

    def aggregate(self, node: exp.Expression) -> dict[str, Any]:
        if isinstance(node, exp.Count):
            arg = node.this
            if isinstance(arg, exp.Star):
                return {"type": "count"}
            if isinstance(arg, exp.Distinct):
                raise _refuse("COUNT(DISTINCT ...) is not supported")
            return {"type": "count", "column": self.column(arg)}
        if isinstance(node, exp.Sum):
            return {"type": "sum", "column": self.column(node.this)}
        if isinstance(node, exp.Avg):
            return {"type": "mean", "column": self.column(node.this)}
        if isinstance(node, exp.Median):
            return {"type": "median", "column": self.column(node.this)}
        if isinstance(node, (exp.Quantile, exp.ApproxQuantile)):
            return {
                "type": "quantile",
                "column": self.column(node.this),
                "q": self.number(node.args.get("quantile")),
            }
        if isinstance(node, exp.WithinGroup) and isinstance(
            node.this, (exp.PercentileCont, exp.PercentileDisc)
        ):
            order = node.expression
            if not isinstance(order, exp.Order) or len(order.expressions) != 1:
                raise _refuse("PERCENTILE_CONT needs WITHIN GROUP (ORDER BY one column)")
            ordered = order.expressions[0]
            if ordered.args.get("desc"):
                raise _refuse("PERCENTILE_CONT ... ORDER BY column DESC is not supported; use 1 - q")
            return {"type": "quantile", "column": self.column(ordered.this), "q": self.number(node.this.this)}
        raise _refuse(f"{node.sql()!r} is not a supported aggregate")

    def literal(self, node: exp.Expression | None) -> Any:
        if isinstance(node, exp.Paren):
            return self.literal(node.this)
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal) and not node.this.is_string:
            return -self.literal(node.this)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return node.this
            text = node.this
            try:
                return int(text)
            except ValueError:
                try:
                    return float(text)
                except ValueError:
                    raise _refuse(f"{text!r} is not a number") from None
        raise _refuse(f"Expected a literal value, got {node.sql() if node is not None else 'nothing'!r}")

    def number(self, node: exp.Expression | None) -> Any:
        value = self.literal(node)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _refuse("A quantile needs a numeric q between 0 and 1")
        return value

    def condition(self, node: exp.Expression) -> dict[str, Any]:
        if isinstance(node, exp.Paren):
            return self.condition(node.this)
        if isinstance(node, exp.And):
            return {"and": [self.condition(node.this), self.condition(node.expression)]}
        if isinstance(node, exp.Or):
            return {"or": [self.condition(node.this), self.condition(node.expression)]}
        if isinstance(node, exp.Not):
            inner = node.this
            while isinstance(inner, exp.Paren):
                inner = inner.this
            if isinstance(inner, exp.In):
                return {**self.condition(inner), "op": "not_in"}
            if isinstance(inner, exp.Is):
                cond = self.condition(inner)
                return {**cond, "op": "is_not_null" if cond["op"] == "is_null" else "is_null"}
            return {"not": self.condition(inner)}
        if isinstance(node, exp.Column):  # a boolean column used as a predicate
            return {"column": self.column(node), "op": "=", "value": True}
        for kind, op in _COMPARISONS.items():
            if type(node) is kind:
                left, right = node.this, node.expression
                if isinstance(left, exp.Column):
                    return {"column": self.column(left), "op": op, "value": self.literal(right)}
                if isinstance(right, exp.Column):
                    return {"column": self.column(right), "op": _FLIPPED[op], "value": self.literal(left)}
                raise _refuse(f"{node.sql()!r}: compare a column with a literal")
        if isinstance(node, exp.In):
            if node.args.get("query") is not None or node.args.get("unnest") is not None:
                raise _refuse("Subqueries are not supported")
            return {
                "column": self.column(node.this),
                "op": "in",
                "values": [self.literal(v) for v in node.expressions],
            }
        if isinstance(node, exp.Between):
            return {
                "column": self.column(node.this),
                "op": "between",
                "low": self.literal(node.args.get("low")),
                "high": self.literal(node.args.get("high")),
            }
        if isinstance(node, exp.Is):
            if not isinstance(node.expression, exp.Null):
                raise _refuse("IS takes NULL (IS NULL / IS NOT NULL)")
            return {"column": self.column(node.this), "op": "is_null"}
        raise _refuse(f"{node.sql()!r} is not a supported condition")
