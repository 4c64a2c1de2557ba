"""The query spec's input step (a pydantic model): codes, messages naming the field's path, no
pydantic text reaching a user, numbers at their edges, and a canonical form that replays."""

from __future__ import annotations

import json
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clearinghouse.dp import PrivacyLoss, QueryError, TableSchema, parse_privacy, parse_spec

from .conftest import pums_schema_dict

EPS = {"epsilon": 1.0}
COUNT = [{"type": "count"}]

# Pure ε-DP, approximate and zCDP policies (module-level: hypothesis tests take no fixtures).
PURE = TableSchema.from_dict(pums_schema_dict())
APPROX = TableSchema.from_dict(pums_schema_dict({"measure": "approx", "max_delta": 1e-5, "max_rows": 10**6}))
ZCDP = TableSchema.from_dict(pums_schema_dict({"measure": "zcdp", "max_delta": 1e-5, "max_rows": 10**6}))

# What pydantic writes (its own messages, its documentation links): never shown to a user.
PYDANTIC_WORDS = ("Input should", "Field required", "pydantic", "validation error", "Value error", "[type=")


def error_of(data, schema=PURE) -> QueryError:
    with pytest.raises(QueryError) as info:
        parse_spec(data, schema)
    assert not any(words in info.value.message for words in PYDANTIC_WORDS), info.value.message
    return info.value


def test_the_canonical_form_and_hash_are_pinned():
    """Replays and the calibration cache key on the hash: the same input keeps the same bytes."""
    spec = parse_spec(
        {
            "aggregates": [
                {"type": "count"},
                {"type": "mean", "column": "income", "alias": "avg_income"},
                {"type": "quantile", "column": "age", "q": 0.9},
            ],
            "where": {
                "and": [
                    {"column": "age", "op": ">=", "value": 30},
                    {"column": "educ", "op": "in", "values": ["3", 1]},
                    {"not": {"column": "married", "op": "=", "value": True}},
                    {
                        "or": [
                            {"column": "income", "op": "between", "low": 0, "high": 5e4},
                            {"column": "race", "op": "is_null"},
                        ]
                    },
                ]
            },
            "group_by": ["sex"],
            "privacy": {"epsilon": 1},
        },
        PURE,
    )
    assert spec.canonical_json() == (
        '{"aggregates":[{"type":"count"},{"alias":"avg_income","column":"income","type":"mean"},'
        '{"column":"age","q":0.9,"type":"quantile"}],"group_by":["sex"],"privacy":{"epsilon":1.0},'
        '"where":{"and":[{"column":"age","op":">=","value":30},{"column":"educ","op":"in","values":["1","3"]},'
        '{"not":{"column":"married","op":"=","value":true}},{"or":[{"column":"income","high":50000,'
        '"low":0,"op":"between"},{"column":"race","op":"is_null"}]}]}}'
    )
    assert spec.hash == "a7af143f760d1a2ea57d021304111f910dda20f011d16386e870dd28c29cd801"
    assert type(spec.privacy.epsilon) is float and type(spec.where.args[3].args[0].high) is int


@pytest.mark.parametrize(
    ("data", "code", "message"),
    [
        ([], "invalid_spec", "a query spec is a JSON object"),
        ({"privacy": EPS}, "invalid_spec", "'aggregates' must be a non-empty list"),
        (
            {"aggregates": COUNT, "privacy": EPS, "limit": 1, "order": 2},
            "invalid_spec",
            "unknown keys ['limit', 'order']; allowed: aggregates, where, group_by, privacy",
        ),
        ({"aggregates": [COUNT[0], 3], "privacy": EPS}, "invalid_spec", "aggregates[1] must be an object"),
        (
            {"aggregates": [{"type": "count", "bounds": [0, 1]}], "privacy": EPS},
            "invalid_spec",
            "aggregates[0]: unknown keys ['bounds']",
        ),
        (
            {"aggregates": [COUNT[0], {"type": "variance"}], "privacy": EPS},
            "unsupported_aggregate",
            "aggregates[1]: 'variance' is not supported; use one of count, sum, mean, median, quantile, histogram",
        ),
        (
            {"aggregates": [{"type": "count", "alias": "bad name"}], "privacy": EPS},
            "invalid_aggregate",
            "aggregates[0]: alias must be letters, digits and '_' (at most 63)",
        ),
        (
            {"aggregates": [{"type": "sum"}], "privacy": EPS},
            "invalid_aggregate",
            "aggregates[0]: sum needs a column",
        ),
        (
            {"aggregates": [{"type": "mean", "column": "age", "q": 0.5}], "privacy": EPS},
            "invalid_aggregate",
            "aggregates[0]: only quantile takes q",
        ),
        (
            {"aggregates": [{"type": "count", "column": 3}], "privacy": EPS},
            "unknown_column",
            "aggregates[0]: column must name a column (a string), not 3",
        ),
        (
            {"aggregates": COUNT, "group_by": ["sex", 1], "privacy": EPS},
            "invalid_spec",
            "'group_by' must be a list of column names",
        ),
        (
            {"aggregates": COUNT, "group_by": ["sex", "sex"], "privacy": EPS},
            "invalid_spec",
            "'group_by' names a column twice",
        ),
        (
            {"aggregates": COUNT, "group_by": ["sex", "educ", "married", "race"], "privacy": EPS},
            "invalid_spec",
            "group by at most 3 columns",
        ),
        ({"aggregates": COUNT, "where": 3, "privacy": EPS}, "invalid_filter", "where must be an object"),
        (
            {"aggregates": COUNT, "where": [{"column": "age", "op": "is_null"}, "x"], "privacy": EPS},
            "invalid_filter",
            "where.and[1] must be an object",
        ),
        (
            {"aggregates": COUNT, "where": {"not": 3}, "privacy": EPS},
            "invalid_filter",
            "where.not must be an object",
        ),
        (
            {"aggregates": COUNT, "where": {"or": [], "x": 1}, "privacy": EPS},
            "invalid_filter",
            "where: 'or' takes a non-empty list and nothing else",
        ),
        (
            {"aggregates": COUNT, "where": {"not": {"or": []}}, "privacy": EPS},
            "invalid_filter",
            "where.not: 'or' takes a non-empty list and nothing else",
        ),
        (
            {"aggregates": COUNT, "where": {"and": [{"column": "age", "op": "like"}]}, "privacy": EPS},
            "invalid_filter",
            "where.and[0]: op must be one of =, !=, <, <=, >, >=, in, not_in, between, is_null, is_not_null",
        ),
        (
            {"aggregates": COUNT, "where": {"column": "age", "op": "between", "low": 1}, "privacy": EPS},
            "invalid_filter",
            "where: 'between' takes high, low",
        ),
        (
            {"aggregates": COUNT, "where": {"column": "age", "op": "in", "values": "1"}, "privacy": EPS},
            "invalid_filter",
            "where: values must be a list of 1 to 1000 values",
        ),
        (
            {"aggregates": COUNT, "where": {"column": "age", "op": "is_null", "value": 1}, "privacy": EPS},
            "invalid_filter",
            "where: 'is_null' takes no value",
        ),
        (
            {"aggregates": COUNT},
            "invalid_privacy_loss",
            "'privacy' must be an object such as {\"epsilon\": 1.0}",
        ),
        (
            {"aggregates": COUNT, "privacy": {"epsilon": 1, "sigma": 1}},
            "invalid_privacy_loss",
            "unknown keys ['sigma']; use epsilon, delta, rho",
        ),
        (
            {"aggregates": COUNT, "privacy": {"epsilon": "1"}},
            "invalid_privacy_loss",
            "privacy: epsilon must be a finite number above 0, not '1'",
        ),
        (
            {"aggregates": COUNT, "privacy": {"epsilon": 1, "delta": 1}},
            "invalid_privacy_loss",
            "privacy: delta must be a number in [0, 1), not 1",
        ),
        (
            {"aggregates": COUNT, "privacy": {"epsilon": 5e-324}},
            "invalid_privacy_loss",
            "privacy: epsilon is too small to calibrate noise for: 5e-324",
        ),
        (
            {"aggregates": COUNT, "privacy": {"epsilon": 1, "rho": 1}},
            "invalid_privacy_loss",
            "give epsilon or rho, not both",
        ),
    ],
)
def test_input_errors_have_our_code_and_name_the_field(data, code, message):
    error = error_of(data)
    assert (error.code, error.message) == (code, message)


def test_a_bad_literal_is_shown_shortened():
    error = error_of(
        {"aggregates": COUNT, "where": {"column": "sex", "op": "=", "value": [0] * 1000}, "privacy": EPS}
    )
    assert error.code == "invalid_filter" and "..." in error.message and len(error.message) < 200


def test_an_alias_is_a_whole_name():
    """A trailing newline is not part of a name (Python's `$` would have let it through)."""
    for alias in ("avg\n", "a" * 64, "1a", "a-b", ""):
        assert (
            error_of({"aggregates": [{"type": "count", "alias": alias}], "privacy": EPS}).code
            == "invalid_aggregate"
        )
    assert parse_spec({"aggregates": [{"type": "count", "alias": "_" * 63}], "privacy": EPS}, PURE)


def test_the_first_problem_is_reported_in_order():
    # unknown top-level keys before anything else
    assert error_of({"aggregates": [], "where": 3, "privacy": {}, "limit": 1}).code == "invalid_spec"
    # the count of aggregates before any of them
    aggs = [{"type": "variance"}] * 21
    assert error_of({"aggregates": aggs, "privacy": EPS}).code == "too_many_aggregates"
    # an aggregate's unknown keys before its other fields; the first aggregate first
    assert error_of({"aggregates": [{"type": "variance", "x": 1}], "privacy": EPS}).code == "invalid_spec"
    error = error_of({"aggregates": [{"type": "sum"}, {"type": "variance"}], "privacy": EPS})
    assert error.message.startswith("aggregates[0]")
    # aggregates, then group_by, then where, then privacy
    error = error_of({"aggregates": COUNT, "group_by": 3, "where": 3, "privacy": None})
    assert error.code == "invalid_spec"
    assert error_of({"aggregates": COUNT, "where": 3, "privacy": None}).code == "invalid_filter"
    # within privacy: epsilon before delta before the measure
    error = error_of({"aggregates": COUNT, "privacy": {"epsilon": 0, "delta": 2, "rho": 1}})
    assert "epsilon" in error.message


def test_where_size_and_depth_are_bounded():
    node: dict = {"column": "age", "op": "is_null"}
    for _ in range(99):  # 100 nodes: allowed
        node = {"not": node}
    assert parse_spec({"aggregates": COUNT, "where": node, "privacy": EPS}, PURE).where is not None
    error = error_of({"aggregates": COUNT, "where": {"not": node}, "privacy": EPS})
    assert (error.code, error.message) == ("invalid_filter", "at most 100 conditions")
    deep: dict = {"column": "age", "op": "is_null"}
    for _ in range(50_000):  # far deeper than any recursion limit: refused, never a RecursionError
        deep = {"not": deep}
    assert error_of({"aggregates": COUNT, "where": deep, "privacy": EPS}).code == "invalid_filter"
    wide = [{"column": "age", "op": "is_null"}] * 100_000
    assert error_of({"aggregates": COUNT, "where": wide, "privacy": EPS}).code == "invalid_filter"


def test_parse_privacy_takes_a_dict_or_a_privacy_loss():
    loss = parse_privacy({"epsilon": 2, "delta": 1e-6}, APPROX)
    assert loss == PrivacyLoss(epsilon=2.0, delta=1e-6) and parse_privacy(loss, APPROX) == loss
    with pytest.raises(QueryError) as info:
        parse_privacy({"epsilon": 0}, APPROX)
    assert (info.value.code, info.value.message) == (
        "invalid_privacy_loss",
        "epsilon must be a finite number above 0, not 0",
    )
    with pytest.raises(QueryError) as info:
        parse_privacy(None, APPROX)
    assert info.value.code == "invalid_privacy_loss"
    spec = parse_spec({"aggregates": COUNT, "privacy": loss}, APPROX)
    assert spec.privacy == loss


def test_text_and_bytes_parse_like_the_object():
    data = {"aggregates": COUNT, "where": {"column": "age", "op": "==", "value": 3}, "privacy": EPS}
    expected = parse_spec(data, PURE)
    assert parse_spec(json.dumps(data), PURE) == expected == parse_spec(json.dumps(data).encode(), PURE)
    assert expected.where.op == "="
    assert error_of("{").code == "invalid_spec"
    assert error_of("[" * 100_000).code == "invalid_spec"  # too deep to decode: refused, not a crash


# --- numbers (hypothesis) ---------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),  # beyond a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e-300),  # subnormals and near them
    st.booleans(),
    st.sampled_from(["1", None, [1]]),
)


def _usable(value) -> bool:
    """The rule the input step enforces for ε and ρ: a finite number (not a bool) above 0 that is a
    normal float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    return math.isfinite(number) and number >= sys.float_info.min


@settings(max_examples=300, deadline=None)
@given(epsilon=NUMBERS)
def test_epsilon_is_accepted_exactly_when_usable(epsilon):
    try:
        spec = parse_spec({"aggregates": COUNT, "privacy": {"epsilon": epsilon}}, PURE)
    except QueryError as exc:
        assert exc.code == "invalid_privacy_loss" and not _usable(epsilon)
        assert not any(words in exc.message for words in PYDANTIC_WORDS)
    else:
        assert _usable(epsilon) and spec.privacy.epsilon == float(epsilon)
        assert type(spec.privacy.epsilon) is float


@settings(max_examples=300, deadline=None)
@given(rho=NUMBERS, delta=NUMBERS)
def test_rho_and_delta_under_zcdp(rho, delta):
    try:
        spec = parse_spec({"aggregates": COUNT, "privacy": {"rho": rho, "delta": delta}}, ZCDP)
    except QueryError as exc:
        assert exc.code in ("invalid_privacy_loss", "privacy_measure_not_allowed")
    else:
        assert _usable(rho) and spec.privacy.rho == float(rho)
        assert delta is None or (not isinstance(delta, bool) and 0 <= delta <= 1e-5)
        assert type(spec.privacy.delta) is float
        assert spec.privacy.delta == 0 or spec.privacy.delta >= sys.float_info.min


@settings(max_examples=300, deadline=None)
@given(q=NUMBERS)
def test_quantile_q_is_strictly_between_0_and_1(q):
    try:
        spec = parse_spec(
            {"aggregates": [{"type": "quantile", "column": "age", "q": q}], "privacy": EPS}, PURE
        )
    except QueryError as exc:
        assert exc.code == "invalid_aggregate"
        assert not (not isinstance(q, bool) and isinstance(q, (int, float)) and 0 < q < 1)
    else:
        assert 0 < spec.aggregates[0].q < 1 and spec.aggregates[0].q == q


@settings(max_examples=300, deadline=None)
@given(
    value=NUMBERS,
    column=st.sampled_from(["age", "income", "married", "sex"]),
    op=st.sampled_from(["=", "<", "in"]),
)
def test_a_filter_value_is_typed_or_refused_never_a_crash(value, column, op):
    condition = {"column": column, "op": op, **({"values": [value]} if op == "in" else {"value": value})}
    try:
        spec = parse_spec({"aggregates": COUNT, "where": condition, "privacy": EPS}, PURE)
    except QueryError as exc:
        assert exc.code == "invalid_filter"
    else:
        typed = spec.where.values[0] if op == "in" else spec.where.value
        if column in ("age", "income"):
            assert isinstance(typed, (int, float)) and not isinstance(typed, bool) and math.isfinite(typed)
        elif column == "married":
            assert isinstance(typed, bool)
        else:
            assert isinstance(typed, str)
        assert json.loads(spec.canonical_json())  # canonical JSON (no NaN) always renders
