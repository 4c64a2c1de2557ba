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

`parse_spec` validates in two explicit steps. First the input: a pydantic model (`_SpecIn`) checks
the shape, the types, the ranges and the enumerations, each rule declared once on its field with the
error code it answers with (`_Rule`); a `ValidationError` becomes a `QueryError` with that code and a
message naming the field's path (pydantic's own text never reaches a user). Then the schema: column
references, column types, filter values typed for their column, and the dataset's privacy policy.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from .errors import CODES, QueryError
from .schema import Column, TableSchema, is_category, is_finite_number

AggregateType = Literal["count", "sum", "mean", "median", "quantile", "histogram"]
Operator = Literal["=", "!=", "<", "<=", ">", ">=", "in", "not_in", "between", "is_null", "is_not_null"]
AGGREGATE_TYPES: tuple[str, ...] = get_args(AggregateType)
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
OPERATORS: tuple[str, ...] = get_args(Operator)
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
# step 1, the input: shape, types, ranges and enumerations (pydantic)


@dataclass(frozen=True)
class _Rule:
    """The rule of a field, in words, and the code a broken rule answers with. `words` may name the
    offending value as `{input}`; `by_type` overrides both for one pydantic error type."""

    code: str
    words: str
    by_type: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def answer(self, error_type: str) -> tuple[str, str]:
        return self.by_type.get(error_type, (self.code, self.words))


def _fail(code: str, message: str) -> PydanticCustomError:
    """A broken rule with our code and message, as written (raise it from a validator)."""
    return PydanticCustomError(code, "{message}", {"message": message})


class _Input(BaseModel):
    """Strict (no "1" for 1, no true for 1), frozen; a key an object does not take is refused
    before its fields are looked at, all such keys in one message."""

    model_config = ConfigDict(strict=True, frozen=True, extra="forbid")

    keys_code: ClassVar[str]
    keys_message: ClassVar[str] = "unknown keys {unknown}"

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = set(data) - _keys(cls)
            if unknown:
                raise _fail(cls.keys_code, cls.keys_message.format(unknown=sorted(unknown, key=str)))
        return data


def _to_list(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _distinct(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise _fail("invalid_spec", "'group_by' names a column twice")
    return names


def _op_alias(value: Any) -> Any:
    return {"==": "=", "<>": "!="}.get(value, value) if isinstance(value, str) else value


def _calibratable(value: float, info: ValidationInfo) -> float:
    """ε, ρ and δ > 0 must be normal floats: no noise scale can be computed from a subnormal one."""
    if 0 < value < sys.float_info.min:
        raise _fail(
            "invalid_privacy_loss", f"{info.field_name} is too small to calibrate noise for: {value!r}"
        )
    return value


def _node_kind(raw: Any) -> str | None:
    """The kind of a `where` node (a list is an implicit AND); None: not a node at all."""
    if isinstance(raw, list):
        return "and"
    if not isinstance(raw, dict):
        return None
    for op in ("and", "or", "not"):
        if op in raw:
            return op
    return "condition"


def _implicit_and(raw: Any) -> Any:
    return {"and": raw} if isinstance(raw, list) else raw


def _at_most_nodes(raw: Any) -> Any:
    """Refuses a `where` of more than MAX_FILTER_NODES nodes before it is validated (so its depth,
    too, is bounded)."""
    count, stack = 0, [raw]
    while stack:
        node = stack.pop()
        count += 1
        if count > MAX_FILTER_NODES:
            raise _fail("invalid_filter", f"at most {MAX_FILTER_NODES} conditions")
        kind = _node_kind(node)
        children = node if isinstance(node, list) else node[kind] if kind in ("and", "or", "not") else None
        if kind == "not":
            stack.append(children)
        elif isinstance(children, list):  # (anything else is for the model to refuse)
            stack.extend(children[: MAX_FILTER_NODES + 1])
    return raw


_OPERATOR_WORDS = f"op must be one of {', '.join(OPERATORS)}"
_COLUMN = _Rule("unknown_column", "column must name a column (a string), not {input}")


class _AggregateIn(_Input):
    keys_code = "invalid_spec"

    type: Annotated[
        AggregateType,
        _Rule(
            "unsupported_aggregate", f"{{input}} is not supported; use one of {', '.join(AGGREGATE_TYPES)}"
        ),
    ]
    alias: Annotated[
        Annotated[str, Field(pattern=NAME.pattern)] | None,
        _Rule("invalid_aggregate", "alias must be letters, digits and '_' (at most 63)"),
    ] = None
    column: Annotated[str | None, _COLUMN] = None
    q: Annotated[
        Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] | None,
        _Rule("invalid_aggregate", "quantile needs q strictly between 0 and 1"),
    ] = None

    @model_validator(mode="after")
    def _takes(self) -> Self:
        if self.column is None and self.type != "count":
            raise _fail("invalid_aggregate", f"{self.type} needs a column")
        if self.type == "quantile" and self.q is None:
            raise _fail("invalid_aggregate", "quantile needs q strictly between 0 and 1")
        if self.type != "quantile" and self.q is not None:
            raise _fail("invalid_aggregate", "only quantile takes q")
        return self


class _ConditionIn(_Input):
    """One test on one column; its value(s) are typed for the column in step 2."""

    keys_code = "invalid_filter"

    op: Annotated[Operator, BeforeValidator(_op_alias), _Rule("invalid_filter", _OPERATOR_WORDS)]
    column: Annotated[str, _COLUMN]
    value: Any = None
    values: Annotated[
        list[Any],
        Field(min_length=1, max_length=MAX_IN_VALUES),
        _Rule("invalid_filter", f"values must be a list of 1 to {MAX_IN_VALUES} values"),
    ] = Field(default_factory=list)
    low: Any = None
    high: Any = None

    @model_validator(mode="after")
    def _operands(self) -> Self:
        op = self.op
        expected = (
            {"value"}
            if op in COMPARISONS
            else {"values"}
            if op in ("in", "not_in")
            else ({"low", "high"} if op == "between" else set())
        )
        if self.model_fields_set & {"value", "values", "low", "high"} != expected:
            raise _fail("invalid_filter", f"'{op}' takes {', '.join(sorted(expected)) or 'no value'}")
        if op in COMPARISONS and self.value is None:
            raise _fail("invalid_filter", "compare with null using is_null / is_not_null")
        return self


class _AndIn(_Input):
    keys_code = "invalid_filter"
    keys_message = "'and' takes a non-empty list and nothing else"

    and_: Annotated[list[_Where], Field(alias="and", min_length=1), _Rule("invalid_filter", keys_message)]

    @property
    def args(self) -> list[_Where]:
        return self.and_


class _OrIn(_Input):
    keys_code = "invalid_filter"
    keys_message = "'or' takes a non-empty list and nothing else"

    or_: Annotated[list[_Where], Field(alias="or", min_length=1), _Rule("invalid_filter", keys_message)]

    @property
    def args(self) -> list[_Where]:
        return self.or_


class _NotIn(_Input):
    keys_code = "invalid_filter"
    keys_message = "'not' takes one condition and nothing else"

    not_: _Where = Field(alias="not")


_NODES: dict[str, type[_Input]] = {"and": _AndIn, "or": _OrIn, "not": _NotIn, "condition": _ConditionIn}

_Where = Annotated[
    Annotated[_AndIn, Tag("and")]
    | Annotated[_OrIn, Tag("or")]
    | Annotated[_NotIn, Tag("not")]
    | Annotated[_ConditionIn, Tag("condition")],
    Discriminator(_node_kind),
    BeforeValidator(_implicit_and),  # outside the union: a list is an implicit AND
]

_Positive = Annotated[float, Field(gt=0, allow_inf_nan=False), AfterValidator(_calibratable)]


def _privacy_dict(raw: Any) -> Any:
    return raw.to_dict() if isinstance(raw, PrivacyLoss) else raw


class _PrivacyIn(_Input):
    rule: ClassVar[_Rule] = _Rule(
        "invalid_privacy_loss", "'privacy' must be an object such as {{\"epsilon\": 1.0}}"
    )
    keys_code = "invalid_privacy_loss"
    keys_message = "unknown keys {unknown}; use epsilon, delta, rho"

    epsilon: Annotated[
        _Positive | None,
        _Rule("invalid_privacy_loss", "epsilon must be a finite number above 0, not {input}"),
    ] = None
    rho: Annotated[
        _Positive | None, _Rule("invalid_privacy_loss", "rho must be a finite number above 0, not {input}")
    ] = None
    delta: Annotated[
        Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False), AfterValidator(_calibratable)] | None,
        _Rule("invalid_privacy_loss", "delta must be a number in [0, 1), not {input}"),
    ] = None

    @model_validator(mode="after")
    def _one_measure(self) -> Self:
        if self.epsilon is not None and self.rho is not None:
            raise _fail("invalid_privacy_loss", "give epsilon or rho, not both")
        if self.epsilon is None and self.rho is None:
            raise _fail("invalid_privacy_loss", "the privacy loss needs epsilon (or rho under a zCDP policy)")
        return self


class _SpecIn(_Input):
    rule: ClassVar[_Rule] = _Rule("invalid_spec", "a query spec is a JSON object")
    keys_code = "invalid_spec"
    keys_message = "unknown keys {unknown}; allowed: aggregates, where, group_by, privacy"

    aggregates: Annotated[
        list[_AggregateIn],
        Field(min_length=1, max_length=MAX_AGGREGATES),
        _Rule(
            "invalid_spec",
            "'aggregates' must be a non-empty list",
            by_type={"too_long": ("too_many_aggregates", f"at most {MAX_AGGREGATES} aggregates per query")},
        ),
    ]
    group_by: Annotated[
        list[str],
        BeforeValidator(_to_list),
        Field(max_length=MAX_GROUP_BY),
        AfterValidator(_distinct),
        _Rule(
            "invalid_spec",
            "'group_by' must be a list of column names",
            by_type={"too_long": ("invalid_spec", f"group by at most {MAX_GROUP_BY} columns")},
        ),
    ] = Field(default_factory=list)
    where: Annotated[
        _Where | None, BeforeValidator(_at_most_nodes), _Rule("invalid_filter", "where must be an object")
    ] = None
    privacy: Annotated[_PrivacyIn, BeforeValidator(_privacy_dict), _PrivacyIn.rule]


for _model in (_AndIn, _OrIn, _NotIn, _SpecIn):
    _model.model_rebuild()

_M = TypeVar("_M", _SpecIn, _PrivacyIn)


@functools.cache
def _fields(model: type[BaseModel]) -> dict[str, FieldInfo]:
    """A model's fields by the key the user writes (the alias where there is one)."""
    return {info.alias or name: info for name, info in model.model_fields.items()}


@functools.cache
def _keys(model: type[BaseModel]) -> frozenset[str]:
    return frozenset(_fields(model))


def _rule_of(info: FieldInfo) -> _Rule | None:
    return next((m for m in info.metadata if isinstance(m, _Rule)), None)


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The one model inside a field's type (`list[M]`, `M | None`); None for a union of models
    (the next part of an error's location is then the tag of one of them)."""
    found: set[type[BaseModel]] = set()
    todo = [annotation]
    while todo:
        tp = todo.pop()
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            found.add(tp)
        todo.extend(get_args(tp))
    return found.pop() if len(found) == 1 else None


_OBJECT_ERRORS = frozenset({"model_type", "model_attributes_type", "dict_type", "union_tag_not_found"})


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _query_error(exc: ValidationError, model: type[_SpecIn | _PrivacyIn]) -> QueryError:
    """The first broken rule as a `QueryError`: the code of the rule on the field where it broke
    (or of the nearest field above it), and a message naming the field's path."""
    error = exc.errors(include_url=False)[0]
    rule: _Rule = model.rule
    path = owner = rule_owner = ""
    at_field = own = True  # the error is at a field (the root counts as one); that field has a rule
    current: type[BaseModel] | None = model
    for part in error["loc"]:
        if isinstance(part, int):
            path, at_field, own = f"{path}[{part}]", False, False
        elif current is None:  # the tag of a union's member
            current, at_field, own = _NODES.get(part), False, False
            if current is None:
                break  # (not expected) the rule found so far answers
        else:
            info = _fields(current).get(part)
            if info is None:
                break  # (not expected) the rule found so far answers
            owner, path, at_field = path, f"{path}.{part}" if path else part, True
            found = _rule_of(info)
            if own := found is not None:
                rule, rule_owner = found, owner
            current = _model_in(info.annotation)
    kind = error["type"]
    if kind in CODES and "message" in error.get("ctx", {}):  # ours, from a validator
        code, text, prefix = kind, str(error["ctx"]["message"]), owner if at_field else path
    elif kind in _OBJECT_ERRORS and not own:
        return QueryError(rule.code, f"{path} must be an object")
    else:
        code, words = rule.answer(kind)
        text = words.format(input=_shown(None if kind == "missing" else error.get("input")))
        prefix = rule_owner
    return QueryError(code, f"{prefix}: {text}" if prefix else text)


def _validated(model: type[_M], data: Any) -> _M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _query_error(exc, model) from None


# --------------------------------------------------------------------------------------------
# step 2, against the schema: columns, column types, typed values, the privacy policy


def parse_spec(data: Any, schema: TableSchema) -> QuerySpec:
    """Validates a JSON spec (a dict or its text) against the schema and its policy."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply to decode
            raise QueryError("invalid_spec", "the query spec is not valid JSON") from None
    spec = _validated(_SpecIn, data)
    aggregates = [_aggregate(agg, i, schema) for i, agg in enumerate(spec.aggregates)]
    group_by = [_column_ref(name, schema, "group_by").name for name in spec.group_by]
    histograms = [a for a in aggregates if a.type == "histogram"]
    if histograms:
        if len(aggregates) > 1 or group_by:
            raise QueryError(
                "invalid_aggregate", "a histogram stands alone; for counts per group use group_by with count"
            )
        hist = histograms[0]
        group_by = [hist.column] if hist.column is not None else []
        aggregates = [Aggregate(type="count", alias=hist.alias)]
    _check_groupable(group_by, schema)

    where = _where(spec.where, schema, "where") if spec.where is not None else None
    privacy = _privacy(spec.privacy, schema)

    # Output names must be distinct (group keys come first in a release's rows).
    names = list(group_by)
    for agg in aggregates:
        if agg.name in names:
            raise QueryError("duplicate_output_name", f"two outputs are named '{agg.name}'; use an alias")
        names.append(agg.name)

    _check_group_keys(group_by, privacy, schema)
    return QuerySpec(aggregates=tuple(aggregates), privacy=privacy, group_by=tuple(group_by), where=where)


def parse_privacy(raw: Any, schema: TableSchema) -> PrivacyLoss:
    """Validates a privacy loss (a dict or a `PrivacyLoss`) against the schema's policy."""
    return _privacy(_validated(_PrivacyIn, _privacy_dict(raw)), schema)


def _check_groupable(group_by: list[str], schema: TableSchema) -> None:
    for name in group_by:
        column = schema.column(name)
        if column.type not in GROUPABLE_TYPES:
            raise QueryError(
                "unsupported_column_type",
                f"cannot group by '{name}' ({column.type}); group by categorical or boolean columns",
            )


def _check_group_keys(group_by: list[str], privacy: PrivacyLoss, schema: TableSchema) -> None:
    """Private keys need δ > 0 (and not a pure policy); public keys a key-set of bounded size."""
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


def _column_ref(name: str, schema: TableSchema, where: str) -> Column:
    if not schema.has_column(name):
        raise QueryError(
            "unknown_column", f"{where}: unknown column {name!r}; columns: {', '.join(schema.names)}"
        )
    if name == schema.identifier:
        raise QueryError("identifier_column", f"{where}: '{name}' identifies people and cannot be queried")
    return schema.column(name)


def _aggregate(agg: _AggregateIn, index: int, schema: TableSchema) -> Aggregate:
    if agg.column is None:  # COUNT(*): the input step allows no other aggregate without a column
        return Aggregate(type="count", alias=agg.alias)
    where = f"aggregates[{index}]"
    kind = agg.type
    column = _column_ref(agg.column, schema, where)
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
    return Aggregate(type=kind, column=column.name, q=agg.q, alias=agg.alias)


def _literal(value: Any, column: Column, where: str) -> Any:
    """A filter value typed for its column; categories are strings (as in the schema)."""
    kind = column.type
    if kind in ("integer", "float"):
        if not is_finite_number(value):
            raise QueryError(
                "invalid_filter",
                f"{where}: '{column.name}' is numeric; {_shown(value)} is not a finite number",
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
            "invalid_filter", f"{where}: '{column.name}' is boolean; {_shown(value)} is not true or false"
        )
    # categorical, text
    if not is_category(value):
        raise QueryError(
            "invalid_filter", f"{where}: '{column.name}' holds text; {_shown(value)} is not a string"
        )
    return str(value)


def _where(node: _Where, schema: TableSchema, where: str) -> Where:
    if isinstance(node, _ConditionIn):
        return _condition(node, schema, where)
    if isinstance(node, _NotIn):
        return BoolOp(op="not", args=(_where(node.not_, schema, f"{where}.not"),))
    op = "and" if isinstance(node, _AndIn) else "or"
    args: list[Where] = []
    for i, item in enumerate(node.args):
        child = _where(item, schema, f"{where}.{op}[{i}]")
        # flatten nested and/and, or/or for a canonical form
        args.extend(child.args if isinstance(child, BoolOp) and child.op == op else (child,))
    return args[0] if len(args) == 1 else BoolOp(op=op, args=tuple(args))


def _condition(cond: _ConditionIn, schema: TableSchema, where: str) -> Condition:
    """One test on one column (a leaf of the `where` tree)."""
    op = cond.op
    column = _column_ref(cond.column, schema, where)
    if op in ORDERED_OPERATORS and not column.is_numeric:
        raise QueryError(
            "invalid_filter", f"{where}: '{op}' needs a numeric column; '{column.name}' is {column.type}"
        )
    if op in COMPARISONS:
        return Condition(column=column.name, op=op, value=_literal(cond.value, column, where))
    if op in ("in", "not_in"):
        typed = {_literal(v, column, where) for v in cond.values}
        return Condition(
            column=column.name, op=op, values=tuple(sorted(typed, key=lambda v: (str(type(v)), v)))
        )
    if op == "between":
        low, high = _literal(cond.low, column, where), _literal(cond.high, column, where)
        return Condition(column=column.name, op=op, low=low, high=high)
    return Condition(column=column.name, op=op)


def _privacy(privacy: _PrivacyIn, schema: TableSchema) -> PrivacyLoss:
    """The validated privacy loss, checked against the dataset's policy."""
    epsilon, rho = privacy.epsilon, privacy.rho
    delta = 0.0 if privacy.delta is None else privacy.delta
    policy = schema.policy
    if policy.measure == "zcdp":
        if rho is None:
            raise QueryError(
                "privacy_measure_not_allowed", "this dataset's policy is zero-concentrated DP: give rho"
            )
    elif rho is not None:
        kind = "pure" if policy.measure == "pure" else "approximate"
        raise QueryError(
            "privacy_measure_not_allowed", f"this dataset's policy is {kind} DP: give epsilon, not rho"
        )
    if delta > 0:
        if policy.measure == "pure":
            raise QueryError("privacy_measure_not_allowed", "this dataset's policy is pure ε-DP: δ must be 0")
        if delta > policy.max_delta:
            raise QueryError(
                "privacy_measure_not_allowed", f"this dataset's policy allows δ ≤ {policy.max_delta:g}"
            )
    return PrivacyLoss(epsilon=epsilon, delta=delta, rho=rho)
