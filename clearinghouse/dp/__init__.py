"""Differentially private aggregate queries (pure Python + OpenDP 0.16 / Polars; no Django).

from clearinghouse.dp import TableSchema, parse_spec, sql_to_spec, preview, release

schema = TableSchema.from_dict({...columns, privacy_unit, policy...})
spec = sql_to_spec("SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ",
                   schema, privacy={"epsilon": 1.0})          # or parse_spec({...}, schema)
p = preview(schema, spec)          # mechanisms, scales, 95% half-widths, exact cost; no data read
r = release(schema, spec, frame)   # polars DataFrame/LazyFrame or prepare(...) → noisy aggregates
assert r.cost == p.cost
"""

from .engine import (
    AggregatePreview,
    Component,
    PreparedData,
    Preview,
    PrivacyCost,
    Release,
    clear_cache,
    prepare,
    preview,
    release,
    warm_up,
)
from .errors import QueryError
from .schema import Column, Policy, PrivacyUnit, TableSchema
from .spec import Aggregate, BoolOp, Condition, PrivacyLoss, QuerySpec, parse_privacy, parse_spec
from .sql import SUPPORTED_SQL, sql_to_spec

__all__ = [
    "SUPPORTED_SQL",
    "Aggregate",
    "AggregatePreview",
    "BoolOp",
    "Column",
    "Component",
    "Condition",
    "Policy",
    "PreparedData",
    "Preview",
    "PrivacyCost",
    "PrivacyLoss",
    "PrivacyUnit",
    "QueryError",
    "QuerySpec",
    "Release",
    "TableSchema",
    "clear_cache",
    "parse_privacy",
    "parse_spec",
    "prepare",
    "preview",
    "release",
    "sql_to_spec",
    "warm_up",
]
