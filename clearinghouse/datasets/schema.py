"""A dataset's declared schema: its columns and the public facts differential privacy needs.

Pure Python (no Django): the web service validates and stores it, the ingestion worker checks data
against it, and the DP engine reads bounds and public categories from it — never from the data.
The model (`Column`, `PrivacyUnit`) is the DP engine's (`clearinghouse.dp.schema`); this module
parses and validates an uploaded schema document into it, with the stricter rules of an upload
(plain column names, size limits, a `max_length` for text, error paths).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from clearinghouse.dp.schema import (
    COLUMN_TYPES,
    MAX_ROWS_PER_PERSON,
    NUMERIC_TYPES,
    Column,
    PrivacyUnit,
    is_category,
    is_number,
    is_whole_number,
)

# Column names double as SQL identifiers for analysts, so keep them plain (a hyphen needs quoting).
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
MAX_COLUMNS = 500
MAX_CATEGORIES = 10_000
MAX_TEXT_LENGTH = 1_000_000


class SchemaError(ValueError):
    """A schema that cannot be accepted; `path` says where (e.g. `columns[2].lower`)."""

    def __init__(self, message: str, *, path: str = "", code: str = "invalid_schema"):
        super().__init__(f"{path}: {message}" if path else message)
        self.message = str(self)
        self.path = path
        self.code = code


@dataclass(frozen=True)
class DatasetSchema:
    columns: tuple[Column, ...]
    privacy_unit: PrivacyUnit = field(default_factory=PrivacyUnit)

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def to_dict(self) -> dict[str, Any]:
        return {"columns": [c.to_dict() for c in self.columns], "privacy_unit": self.privacy_unit.to_dict()}

    @classmethod
    def from_dict(cls, data: Any) -> DatasetSchema:
        if not isinstance(data, dict):
            raise SchemaError("a schema is an object with 'columns' and 'privacy_unit'")
        unknown = set(data) - {"columns", "privacy_unit"}
        if unknown:
            raise SchemaError(f"unknown keys {sorted(unknown)}")
        raw_columns = data.get("columns")
        if not isinstance(raw_columns, list) or not raw_columns:
            raise SchemaError("at least one column is required", path="columns")
        if len(raw_columns) > MAX_COLUMNS:
            raise SchemaError(f"at most {MAX_COLUMNS} columns", path="columns")
        columns = tuple(_column(raw, f"columns[{index}]") for index, raw in enumerate(raw_columns))
        seen: set[str] = set()
        for index, column in enumerate(columns):
            if column.name.lower() in seen:
                raise SchemaError(f"duplicate column name '{column.name}'", path=f"columns[{index}].name")
            seen.add(column.name.lower())
        unit = _privacy_unit(data.get("privacy_unit", {"kind": "row"}), columns)
        return cls(columns=columns, privacy_unit=unit)

    @classmethod
    def parse(cls, text: str) -> DatasetSchema:
        """JSON or YAML text (YAML is a superset of JSON, so one parser reads both)."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise SchemaError(f"not valid JSON or YAML ({exc.__class__.__name__})") from None
        return cls.from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


def _number(value: Any, path: str, *, integer: bool) -> float | int:
    if not is_number(value):
        raise SchemaError("must be a number", path=path)
    if not math.isfinite(value):
        raise SchemaError("must be finite", path=path)
    if integer and not float(value).is_integer():
        raise SchemaError("must be a whole number for an integer column", path=path)
    return int(value) if integer else float(value)


def _column(raw: Any, path: str) -> Column:
    if not isinstance(raw, dict):
        raise SchemaError("each column is an object", path=path)
    allowed = {"name", "type", "nullable", "lower", "upper", "categories", "max_length"}
    unknown = set(raw) - allowed
    if unknown:
        raise SchemaError(f"unknown keys {sorted(unknown)}", path=path)
    name = raw.get("name")
    if not isinstance(name, str) or not COLUMN_NAME.match(name):
        raise SchemaError(
            "use letters, digits, '_' and '-' (starting with a letter or '_'), at most 63",
            path=f"{path}.name",
        )
    kind = raw.get("type")
    if kind not in COLUMN_TYPES:
        raise SchemaError(f"type must be one of {', '.join(COLUMN_TYPES)}", path=f"{path}.type")
    nullable = raw.get("nullable", False)
    if not isinstance(nullable, bool):
        raise SchemaError("must be true or false", path=f"{path}.nullable")
    lower = upper = None
    categories = None
    max_length = None
    if kind in NUMERIC_TYPES:
        if "lower" not in raw or "upper" not in raw:
            raise SchemaError(
                "numeric columns need public 'lower' and 'upper' bounds", path=path, code="bounds_required"
            )
        lower = _number(raw["lower"], f"{path}.lower", integer=kind == "integer")
        upper = _number(raw["upper"], f"{path}.upper", integer=kind == "integer")
        if lower >= upper:
            raise SchemaError(
                f"lower ({lower}) must be below upper ({upper})", path=f"{path}.lower", code="invalid_bounds"
            )
    elif "lower" in raw or "upper" in raw:
        raise SchemaError("only numeric columns have bounds", path=path)
    if kind == "categorical" and raw.get("categories") is not None:
        values = raw["categories"]
        if not isinstance(values, list) or not values or len(values) > MAX_CATEGORIES:
            raise SchemaError(
                f"a non-empty list of at most {MAX_CATEGORIES} values", path=f"{path}.categories"
            )
        if not all(is_category(v) for v in values):
            raise SchemaError("categories are strings", path=f"{path}.categories")
        categories = tuple(str(v) for v in values)
        if len(set(categories)) != len(categories):
            raise SchemaError("categories must be distinct", path=f"{path}.categories")
    elif raw.get("categories") is not None:
        raise SchemaError("only categorical columns have categories", path=path)
    if kind == "text":
        max_length = raw.get("max_length", 1000)
        if not is_whole_number(max_length, 1, MAX_TEXT_LENGTH):
            raise SchemaError(f"a whole number from 1 to {MAX_TEXT_LENGTH}", path=f"{path}.max_length")
    elif raw.get("max_length") is not None:
        raise SchemaError("only text columns have max_length", path=path)
    return Column(
        name=name,
        type=kind,
        nullable=nullable,
        lower=lower,
        upper=upper,
        categories=categories,
        max_length=max_length,
    )


def _privacy_unit(raw: Any, columns: tuple[Column, ...]) -> PrivacyUnit:
    path = "privacy_unit"
    if not isinstance(raw, dict) or raw.get("kind") not in {"row", "identifier"}:
        raise SchemaError("kind must be 'row' or 'identifier'", path=path)
    if raw["kind"] == "row":
        if set(raw) - {"kind"}:
            raise SchemaError("a row privacy unit takes no other keys", path=path)
        return PrivacyUnit()
    column = raw.get("column")
    if column not in {c.name for c in columns}:
        raise SchemaError("must name a declared column", path=f"{path}.column")
    bound = raw.get("max_rows_per_person")
    if not is_whole_number(bound, 1, MAX_ROWS_PER_PERSON):
        raise SchemaError(
            f"a whole number from 1 to {MAX_ROWS_PER_PERSON}", path=f"{path}.max_rows_per_person"
        )
    return PrivacyUnit(kind="identifier", column=column, max_rows_per_person=bound)
