"""Query spec validation: every error code, the canonical form and its hash."""

from __future__ import annotations

import json
import math

import pytest

from clearinghouse.dp import QueryError, QuerySpec, TableSchema, parse_spec

from .conftest import pums_schema_dict

EPS = {"epsilon": 1.0}


def code_of(data, schema) -> str:
    with pytest.raises(QueryError) as info:
        parse_spec(data, schema)
    return info.value.code


def test_a_full_spec_parses(pums):
    spec = parse_spec(
        {
            "aggregates": [
                {"type": "count"},
                {"type": "mean", "column": "income", "alias": "avg_income"},
                {"type": "quantile", "column": "age", "q": 0.9},
                {"type": "median", "column": "age"},
                {"type": "sum", "column": "income"},
                {"type": "count", "column": "income"},
            ],
            "where": {
                "and": [
                    {"column": "age", "op": ">=", "value": 30},
                    {"column": "educ", "op": "in", "values": ["1", 2]},
                    {"not": {"column": "married", "op": "=", "value": True}},
                ]
            },
            "group_by": ["sex"],
            "privacy": EPS,
        },
        pums,
    )
    assert isinstance(spec, QuerySpec)
    assert [a.name for a in spec.aggregates] == [
        "count",
        "avg_income",
        "quantile_age_0.9",
        "median_age",
        "sum_income",
        "count_income",
    ]
    assert spec.group_by == ("sex",)
    assert spec.columns == ("sex", "age", "educ", "married", "income")
    # categorical values are strings, as the schema's categories
    assert spec.where.args[1].values == ("1", "2")


@pytest.mark.parametrize(
    "data",
    [
        [],
        "not json",
        {"aggregates": []},
        {"aggregates": [{"type": "count"}], "privacy": EPS, "limit": 10},
        {"aggregates": "count", "privacy": EPS},
        {
            "aggregates": [{"type": "count", "bounds": [0, 1]}],
            "privacy": EPS,
        },  # bounds come from the schema only
        {"aggregates": [{"type": "count"}], "group_by": 3, "privacy": EPS},
    ],
)
def test_invalid_spec(pums, data):
    assert code_of(data, pums) == "invalid_spec"


def test_unknown_column(pums):
    assert (
        code_of({"aggregates": [{"type": "sum", "column": "salary"}], "privacy": EPS}, pums)
        == "unknown_column"
    )
    assert (
        code_of({"aggregates": [{"type": "count"}], "group_by": ["nope"], "privacy": EPS}, pums)
        == "unknown_column"
    )
    assert (
        code_of(
            {
                "aggregates": [{"type": "count"}],
                "where": {"column": "x", "op": "=", "value": 1},
                "privacy": EPS,
            },
            pums,
        )
        == "unknown_column"
    )


def test_identifier_column_cannot_be_queried():
    data = pums_schema_dict()
    data["columns"].append({"name": "pid", "type": "text"})
    data["privacy_unit"] = {"kind": "identifier", "column": "pid", "max_rows_per_person": 3}
    schema = TableSchema.from_dict(data)
    assert (
        code_of({"aggregates": [{"type": "count", "column": "pid"}], "privacy": EPS}, schema)
        == "identifier_column"
    )
    assert (
        code_of(
            {
                "aggregates": [{"type": "count"}],
                "where": {"column": "pid", "op": "=", "value": "a"},
                "privacy": EPS,
            },
            schema,
        )
        == "identifier_column"
    )


def test_unsupported_aggregate(pums):
    err = code_of({"aggregates": [{"type": "variance", "column": "age"}], "privacy": EPS}, pums)
    assert err == "unsupported_aggregate"


@pytest.mark.parametrize(
    "agg",
    [
        {"type": "sum"},
        {"type": "quantile", "column": "age"},
        {"type": "quantile", "column": "age", "q": 1.5},
        {"type": "quantile", "column": "age", "q": 0},
        {"type": "quantile", "column": "age", "q": float("nan")},
        {"type": "mean", "column": "age", "q": 0.5},
        {"type": "count", "alias": "bad name"},
    ],
)
def test_invalid_aggregate(pums, agg):
    assert code_of({"aggregates": [agg], "privacy": EPS}, pums) == "invalid_aggregate"


def test_histogram_stands_alone_and_normalises_to_a_group_by(pums):
    spec = parse_spec({"aggregates": [{"type": "histogram", "column": "educ"}], "privacy": EPS}, pums)
    same = parse_spec({"aggregates": [{"type": "count"}], "group_by": ["educ"], "privacy": EPS}, pums)
    assert spec == same and spec.hash == same.hash
    assert (
        code_of(
            {"aggregates": [{"type": "histogram", "column": "educ"}, {"type": "count"}], "privacy": EPS}, pums
        )
        == "invalid_aggregate"
    )


@pytest.mark.parametrize(
    "data",
    [
        {"aggregates": [{"type": "sum", "column": "educ"}], "privacy": EPS},
        {"aggregates": [{"type": "median", "column": "married"}], "privacy": EPS},
        {"aggregates": [{"type": "histogram", "column": "age"}], "privacy": EPS},
        {"aggregates": [{"type": "count"}], "group_by": ["age"], "privacy": EPS},
    ],
)
def test_unsupported_column_type(pums, data):
    assert code_of(data, pums) == "unsupported_column_type"


@pytest.mark.parametrize(
    "where",
    [
        {"column": "educ", "op": "<", "value": "3"},  # ordering on a categorical column
        {"column": "age", "op": "=", "value": "thirty"},  # ill-typed value
        {"column": "age", "op": "=", "value": None},  # null comparisons need is_null
        {"column": "age", "op": "like", "value": 3},
        {"column": "age", "op": "in", "values": []},
        {"column": "age", "op": "between", "low": 1},
        {"column": "married", "op": "=", "value": "yes"},
        {"and": []},
        {"and": [{"column": "age", "op": ">", "value": 3}], "or": []},
        {"column": "age", "op": ">", "value": float("inf")},
    ],
)
def test_invalid_filter(pums, where):
    assert (
        code_of({"aggregates": [{"type": "count"}], "where": where, "privacy": EPS}, pums) == "invalid_filter"
    )


def test_duplicate_output_name(pums):
    data = {"aggregates": [{"type": "count"}, {"type": "count"}], "privacy": EPS}
    assert code_of(data, pums) == "duplicate_output_name"
    data = {"aggregates": [{"type": "count", "alias": "educ"}], "group_by": ["educ"], "privacy": EPS}
    assert code_of(data, pums) == "duplicate_output_name"


def test_too_many_aggregates(pums):
    aggs = [{"type": "count", "alias": f"c{i}"} for i in range(21)]
    assert code_of({"aggregates": aggs, "privacy": EPS}, pums) == "too_many_aggregates"


def test_too_many_groups():
    data = pums_schema_dict()
    data["columns"] += [
        {"name": f"k{i}", "type": "categorical", "categories": [str(j) for j in range(100)]} for i in range(2)
    ]
    schema = TableSchema.from_dict(data)
    spec = {"aggregates": [{"type": "count"}], "group_by": ["k0", "k1", "educ"], "privacy": EPS}
    assert code_of(spec, schema) == "too_many_groups"


def test_group_by_requires_public_keys(pums, pums_approx):
    spec = {"aggregates": [{"type": "count"}], "group_by": ["race"], "privacy": EPS}
    with pytest.raises(QueryError) as info:
        parse_spec(spec, pums)
    assert info.value.code == "group_by_requires_public_keys" and "pure" in info.value.message
    # an approximate-DP policy, but no δ asked for
    with pytest.raises(QueryError) as info:
        parse_spec(spec, pums_approx)
    assert info.value.code == "group_by_requires_public_keys" and "δ" in info.value.message
    parse_spec({**spec, "privacy": {"epsilon": 1.0, "delta": 1e-7}}, pums_approx)  # fine


@pytest.mark.parametrize(
    "privacy",
    [
        None,
        {},
        {"epsilon": 0},
        {"epsilon": -1},
        {"epsilon": float("nan")},
        {"epsilon": math.inf},
        {"epsilon": "1"},
        {"epsilon": True},
        {"epsilon": 1, "delta": 1.0},
        {"epsilon": 1, "delta": -1e-9},
        {"epsilon": 1, "rho": 1},
        {"epsilon": 1, "sigma": 1},
        {"delta": 1e-9},
    ],
)
def test_invalid_privacy_loss(pums_approx, privacy):
    data = {"aggregates": [{"type": "count"}]}
    if privacy is not None:
        data["privacy"] = privacy
    assert code_of(data, pums_approx) == "invalid_privacy_loss"


def test_privacy_measure_not_allowed(pums, pums_approx, pums_zcdp):
    agg = {"aggregates": [{"type": "count"}]}
    assert code_of({**agg, "privacy": {"rho": 0.1}}, pums) == "privacy_measure_not_allowed"
    assert code_of({**agg, "privacy": {"epsilon": 1, "delta": 1e-9}}, pums) == "privacy_measure_not_allowed"
    assert (
        code_of({**agg, "privacy": {"epsilon": 1, "delta": 1e-3}}, pums_approx)
        == "privacy_measure_not_allowed"
    )
    assert code_of({**agg, "privacy": {"epsilon": 1}}, pums_zcdp) == "privacy_measure_not_allowed"
    parse_spec({**agg, "privacy": {"rho": 0.1, "delta": 1e-6}}, pums_zcdp)


def test_error_carries_a_stable_code_and_message(pums):
    with pytest.raises(QueryError) as info:
        parse_spec({"aggregates": [{"type": "sum", "column": "salary"}], "privacy": EPS}, pums)
    assert info.value.to_dict()["code"] == "unknown_column"
    assert "salary" in info.value.message


def test_canonical_form_and_hash(pums):
    a = parse_spec(
        {
            "privacy": {"epsilon": 1},
            "aggregates": [{"type": "count"}],
            "where": {
                "and": [
                    {"column": "educ", "op": "in", "values": ["3", "1"]},
                    {"and": [{"column": "age", "op": ">=", "value": 30.0}]},
                ]
            },
        },
        pums,
    )
    b = parse_spec(
        json.dumps(
            {
                "aggregates": [{"type": "count"}],
                "privacy": {"epsilon": 1.0},
                "where": [
                    {"column": "educ", "op": "in", "values": [1, "3"]},
                    {"column": "age", "op": ">=", "value": 30},
                ],
            }
        ),
        pums,
    )
    assert a == b
    assert a.canonical_json() == b.canonical_json()
    assert a.hash == b.hash and len(a.hash) == 64
    # round trip through the canonical JSON
    assert parse_spec(a.canonical_json(), pums) == a
    # the privacy loss is part of the hash
    assert parse_spec({**json.loads(a.canonical_json()), "privacy": {"epsilon": 2}}, pums).hash != a.hash


def test_schema_validation():
    with pytest.raises(QueryError) as info:
        TableSchema.from_dict({"columns": [{"name": "x", "type": "integer"}]})
    assert info.value.code == "invalid_schema"
    with pytest.raises(QueryError):
        TableSchema.from_dict({"columns": [{"name": "x", "type": "float", "lower": 1, "upper": 0}]})
    with pytest.raises(QueryError):
        TableSchema.from_dict(pums_schema_dict({"measure": "pure", "max_delta": 1e-6}))
    schema = TableSchema.from_dict(pums_schema_dict())
    assert schema.column("educ").public_keys[0] == "1"
    assert schema.column("married").public_keys == (False, True)
    assert schema.column("race").public_keys is None
    assert TableSchema.from_dict(schema.to_dict()) == schema
    assert TableSchema.from_dict(schema.to_dict()).fingerprint == schema.fingerprint
