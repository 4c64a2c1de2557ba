"""What the DP engine needs to know about a table: a pure description, no Django, no data.

This is the one schema model: `Column` and `PrivacyUnit` are also what a dataset's declared schema
(`clearinghouse.datasets.schema.DatasetSchema`, which validates uploaded schema documents more
strictly) is made of; the validation predicates below serve both, and the query spec.

Everything here is *public*: it is declared by the data steward (bounds, categories, the privacy
unit, the policy), never read from the data. The JSON shape of `columns` and `privacy_unit` is the
one `clearinghouse.datasets.schema.DatasetSchema.to_dict()` writes, so a dataset's stored schema
converts with `TableSchema.from_dict(dataset_schema.to_dict(), policy=...)`.

    {
      "name": "pums",
      "columns": [
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "educ", "type": "categorical", "categories": ["1", "2", ...]},
        {"name": "income", "type": "float", "nullable": true, "lower": 0, "upper": 500000},
        {"name": "married", "type": "boolean"},
        {"name": "note", "type": "text"}
      ],
      "privacy_unit": {"kind": "row"}                       # one row per person, or
      "privacy_unit": {"kind": "identifier", "column": "pid", "max_rows_per_person": 5},
      "policy": {"measure": "pure" | "approx" | "zcdp", "max_delta": 1e-6, "max_rows": 10000000}
    }
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeGuard

from .errors import QueryError

ColumnType = Literal["integer", "float", "boolean", "categorical", "text"]
COLUMN_TYPES = ("integer", "float", "boolean", "categorical", "text")
NUMERIC_TYPES = frozenset({"integer", "float"})
MEASURES = ("pure", "approx", "zcdp")
# OpenDP's margins hold max_length as u32.
U32_MAX = 2**32 - 1
DEFAULT_MAX_ROWS = 10_000_000
MAX_ROWS_PER_PERSON = 10_000


def is_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number: an int or a float, not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, float))


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """A JSON number that is neither infinite nor NaN, nor an int too large for a float (JSON
    integers are unbounded)."""
    try:
        return is_number(value) and math.isfinite(value)
    except OverflowError:
        return False


def is_whole_number(value: Any, low: int, high: int) -> TypeGuard[int]:
    """An int (not a bool) from `low` to `high`."""
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def is_category(value: Any) -> bool:
    """A category value as a schema document may write it: a string, or an int (kept as its text)."""
    return not isinstance(value, bool) and isinstance(value, (str, int))


@dataclass(frozen=True)
class Column:
    name: str
    type: ColumnType
    nullable: bool = False
    lower: float | int | None = None
    upper: float | int | None = None
    categories: tuple[str, ...] | None = None  # public key-set of a categorical column
    max_length: int | None = None  # text: the longest value ingestion keeps (the engine reads none)

    @property
    def is_numeric(self) -> bool:
        return self.type in NUMERIC_TYPES

    @property
    def public_keys(self) -> tuple[Any, ...] | None:
        """The values a group-by on this column may release without spending δ, or None."""
        if self.type == "boolean":
            return (False, True)
        if self.type == "categorical" and self.categories:
            return self.categories
        return None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "nullable": self.nullable}
        if self.lower is not None:
            out["lower"], out["upper"] = self.lower, self.upper
        if self.categories is not None:
            out["categories"] = list(self.categories)
        if self.max_length is not None:
            out["max_length"] = self.max_length
        return out


@dataclass(frozen=True)
class PrivacyUnit:
    """Who is protected: each row is one person (`row`), or rows sharing `column` are one person who
    contributes at most `max_rows_per_person` rows (ingestion drops extra rows; the engine truncates
    again)."""

    kind: Literal["row", "identifier"] = "row"
    column: str | None = None
    max_rows_per_person: int = 1

    @property
    def contributions(self) -> int:
        """How many rows one person can add or remove: the d_in of the symmetric distance."""
        return 1 if self.kind == "row" else self.max_rows_per_person

    def to_dict(self) -> dict[str, Any]:
        if self.kind == "row":
            return {"kind": "row"}
        return {"kind": "identifier", "column": self.column, "max_rows_per_person": self.max_rows_per_person}


@dataclass(frozen=True)
class Policy:
    """The dataset's privacy policy.

    - `pure`: ε-DP only (Laplace noise); group-by needs public categories.
    - `approx`: (ε, δ)-DP; δ ≤ `max_delta`; δ > 0 lets a group-by release private keys (thresholding).
    - `zcdp`: ρ-zCDP (Gaussian noise); releasing private keys additionally costs δ ≤ `max_delta`.

    `max_rows` is a public upper bound on the table's row count (OpenDP's `max_length` margin): it
    bounds float-sum rounding error, so keep it reasonably tight; releases on more rows are refused.
    """

    measure: Literal["pure", "approx", "zcdp"] = "pure"
    max_delta: float = 0.0
    max_rows: int = DEFAULT_MAX_ROWS

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "max_delta": self.max_delta, "max_rows": self.max_rows}


@dataclass(frozen=True)
class TableSchema:
    columns: tuple[Column, ...]
    privacy_unit: PrivacyUnit = field(default_factory=PrivacyUnit)
    policy: Policy = field(default_factory=Policy)
    name: str = "data"

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    def has_column(self, name: str) -> bool:
        return any(c.name == name for c in self.columns)

    def resolve_name(self, name: str) -> str | None:
        """Exact name, else the one case-insensitive match (SQL identifiers), else None."""
        if self.has_column(name):
            return name
        matches = [c.name for c in self.columns if c.name.lower() == name.lower()]
        return matches[0] if len(matches) == 1 else None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def identifier(self) -> str | None:
        return self.privacy_unit.column if self.privacy_unit.kind == "identifier" else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": [c.to_dict() for c in self.columns],
            "privacy_unit": self.privacy_unit.to_dict(),
            "policy": self.policy.to_dict(),
        }

    @property
    def fingerprint(self) -> str:
        """Hash of everything the engine reads from the schema (cache key, replay records)."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:
            text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
            cached = hashlib.sha256(text.encode()).hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    @classmethod
    def from_dict(
        cls, data: Any, *, policy: Policy | dict[str, Any] | None = None, name: str | None = None
    ) -> TableSchema:
        if not isinstance(data, dict):
            raise QueryError("invalid_schema", "a schema is an object with 'columns'")
        unknown = set(data) - {"name", "columns", "privacy_unit", "policy"}
        if unknown:
            raise QueryError("invalid_schema", f"unknown keys {sorted(unknown)}")
        raw_columns = data.get("columns")
        if not isinstance(raw_columns, list) or not raw_columns:
            raise QueryError("invalid_schema", "at least one column is required")
        columns = tuple(_column(raw, i) for i, raw in enumerate(raw_columns))
        if len({c.name for c in columns}) != len(columns):
            raise QueryError("invalid_schema", "column names must be distinct")
        unit = _privacy_unit(data.get("privacy_unit") or {"kind": "row"}, columns)
        raw_policy = policy if policy is not None else data.get("policy")
        pol = raw_policy if isinstance(raw_policy, Policy) else _policy(raw_policy or {})
        table_name = name if name is not None else data.get("name", "data")
        if not isinstance(table_name, str) or not table_name:
            raise QueryError("invalid_schema", "name must be a non-empty string")
        return cls(columns=columns, privacy_unit=unit, policy=pol, name=table_name)


def _finite_number(value: Any, where: str) -> float | int:
    if not is_finite_number(value):
        raise QueryError("invalid_schema", f"{where} must be a finite number")
    return value


def _column(raw: Any, index: int) -> Column:
    where = f"columns[{index}]"
    if not isinstance(raw, dict):
        raise QueryError("invalid_schema", f"{where} must be an object")
    # `max_length` (text) is accepted for compatibility with the dataset schema and ignored.
    unknown = set(raw) - {"name", "type", "nullable", "lower", "upper", "categories", "max_length"}
    if unknown:
        raise QueryError("invalid_schema", f"{where}: unknown keys {sorted(unknown)}")
    name, kind = raw.get("name"), raw.get("type")
    if not isinstance(name, str) or not name:
        raise QueryError("invalid_schema", f"{where}.name must be a non-empty string")
    if kind not in COLUMN_TYPES:
        raise QueryError("invalid_schema", f"{where}.type must be one of {', '.join(COLUMN_TYPES)}")
    nullable = raw.get("nullable", False)
    if not isinstance(nullable, bool):
        raise QueryError("invalid_schema", f"{where}.nullable must be true or false")
    lower = upper = None
    if kind in NUMERIC_TYPES:
        if raw.get("lower") is None or raw.get("upper") is None:
            raise QueryError(
                "invalid_schema", f"{where}: numeric column '{name}' needs public lower and upper bounds"
            )
        lower = _finite_number(raw["lower"], f"{where}.lower")
        upper = _finite_number(raw["upper"], f"{where}.upper")
        if kind == "integer":
            if not (float(lower).is_integer() and float(upper).is_integer()):
                raise QueryError("invalid_schema", f"{where}: integer bounds must be whole numbers")
            lower, upper = int(lower), int(upper)
        else:
            lower, upper = float(lower), float(upper)
        if lower >= upper:
            raise QueryError("invalid_schema", f"{where}: lower must be below upper")
    categories = None
    if raw.get("categories") is not None:
        if kind != "categorical":
            raise QueryError("invalid_schema", f"{where}: only categorical columns have categories")
        values = raw["categories"]
        if not isinstance(values, list) or not values or not all(is_category(v) for v in values):
            raise QueryError("invalid_schema", f"{where}.categories must be a non-empty list of strings")
        categories = tuple(str(v) for v in values)
        if len(set(categories)) != len(categories):
            raise QueryError("invalid_schema", f"{where}.categories must be distinct")
    return Column(name=name, type=kind, nullable=nullable, lower=lower, upper=upper, categories=categories)


def _privacy_unit(raw: Any, columns: tuple[Column, ...]) -> PrivacyUnit:
    if isinstance(raw, PrivacyUnit):
        return raw
    if not isinstance(raw, dict) or raw.get("kind") not in {"row", "identifier"}:
        raise QueryError("invalid_schema", "privacy_unit.kind must be 'row' or 'identifier'")
    if raw["kind"] == "row":
        return PrivacyUnit()
    column = raw.get("column")
    if column not in {c.name for c in columns}:
        raise QueryError("invalid_schema", "privacy_unit.column must name a declared column")
    bound = raw.get("max_rows_per_person")
    if not is_whole_number(bound, 1, MAX_ROWS_PER_PERSON):
        raise QueryError(
            "invalid_schema",
            f"privacy_unit.max_rows_per_person must be a whole number from 1 to {MAX_ROWS_PER_PERSON}",
        )
    return PrivacyUnit(kind="identifier", column=column, max_rows_per_person=bound)


def _policy(raw: Any) -> Policy:
    if not isinstance(raw, dict):
        raise QueryError("invalid_schema", "policy must be an object")
    unknown = set(raw) - {"measure", "max_delta", "max_rows"}
    if unknown:
        raise QueryError("invalid_schema", f"policy: unknown keys {sorted(unknown)}")
    measure = raw.get("measure", "pure")
    if measure not in MEASURES:
        raise QueryError("invalid_schema", f"policy.measure must be one of {', '.join(MEASURES)}")
    max_delta = raw.get("max_delta", 0.0)
    if not is_number(max_delta) or not 0 <= max_delta < 1:
        raise QueryError("invalid_schema", "policy.max_delta must be a number in [0, 1)")
    if measure == "pure" and max_delta:
        raise QueryError("invalid_schema", "a pure-DP policy has max_delta 0")
    max_rows = raw.get("max_rows", DEFAULT_MAX_ROWS)
    if not is_whole_number(max_rows, 1, U32_MAX):
        raise QueryError("invalid_schema", f"policy.max_rows must be a whole number from 1 to {U32_MAX}")
    return Policy(measure=measure, max_delta=float(max_delta), max_rows=max_rows)
