"""SQL subset → spec, and refusals of everything outside it."""

from __future__ import annotations

import pytest

from clearinghouse.dp import SUPPORTED_SQL, QueryError, parse_spec, sql_to_spec
from clearinghouse.dp.sql import sql_to_dict

EPS = {"epsilon": 1.0}


def translate(sql, schema):
    return sql_to_dict(sql, schema)


def test_the_issue_example(pums):
    spec = sql_to_spec(
        "SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ", pums, EPS
    )
    expected = parse_spec(
        {
            "aggregates": [{"type": "count"}, {"type": "mean", "column": "income"}],
            "where": {"column": "age", "op": ">=", "value": 30},
            "group_by": ["educ"],
            "privacy": EPS,
        },
        pums,
    )
    assert spec == expected


@pytest.mark.parametrize(
    "sql, aggregates",
    [
        ("SELECT COUNT(*) FROM t", [{"type": "count"}]),
        (
            "select count(income) as n, sum(income) total from t",
            [
                {"type": "count", "column": "income", "alias": "n"},
                {"type": "sum", "column": "income", "alias": "total"},
            ],
        ),
        ("SELECT MEDIAN(age) FROM t", [{"type": "median", "column": "age"}]),
        (
            "SELECT QUANTILE(age, 0.25), APPROX_QUANTILE(income, 0.9) FROM t",
            [
                {"type": "quantile", "column": "age", "q": 0.25},
                {"type": "quantile", "column": "income", "q": 0.9},
            ],
        ),
        (
            "SELECT PERCENTILE_CONT(0.75) WITHIN GROUP (ORDER BY income) AS p75 FROM t",
            [{"type": "quantile", "column": "income", "q": 0.75, "alias": "p75"}],
        ),
        ("SELECT AVG(p.income) FROM pums AS p", [{"type": "mean", "column": "income"}]),
        (
            "SELECT AVG(INCOME) FROM t",
            [{"type": "mean", "column": "income"}],
        ),  # unquoted names are case-insensitive
    ],
)
def test_aggregates(pums, sql, aggregates):
    assert translate(sql, pums)["aggregates"] == aggregates


@pytest.mark.parametrize(
    "condition, where",
    [
        ("age >= 30", {"column": "age", "op": ">=", "value": 30}),
        ("30 < age", {"column": "age", "op": ">", "value": 30}),
        ("age <> 3", {"column": "age", "op": "!=", "value": 3}),
        ("age = -3.5", {"column": "age", "op": "=", "value": -3.5}),
        ("educ IN ('1', '2')", {"column": "educ", "op": "in", "values": ["1", "2"]}),
        ("educ NOT IN ('1')", {"column": "educ", "op": "not_in", "values": ["1"]}),
        ("age BETWEEN 20 AND 40", {"column": "age", "op": "between", "low": 20, "high": 40}),
        ("income IS NULL", {"column": "income", "op": "is_null"}),
        ("income IS NOT NULL", {"column": "income", "op": "is_not_null"}),
        ("married", {"column": "married", "op": "=", "value": True}),
        ("married = FALSE", {"column": "married", "op": "=", "value": False}),
        ("NOT married", {"not": {"column": "married", "op": "=", "value": True}}),
        (
            "(age > 1 OR age < 0) AND sex = '1'",
            {
                "and": [
                    {
                        "or": [
                            {"column": "age", "op": ">", "value": 1},
                            {"column": "age", "op": "<", "value": 0},
                        ]
                    },
                    {"column": "sex", "op": "=", "value": "1"},
                ]
            },
        ),
    ],
)
def test_conditions(pums, condition, where):
    data = translate(f"SELECT COUNT(*) FROM t WHERE {condition}", pums)
    assert data["where"] == where
    parse_spec({**data, "privacy": EPS}, pums)  # and the schema accepts it


def test_quoted_identifiers(adult):
    spec = sql_to_spec(
        'SELECT "salary-class", COUNT(*) FROM adult WHERE "marital-status" = \'Divorced\' '
        'GROUP BY "salary-class"',
        adult,
        EPS,
    )
    assert spec.group_by == ("salary-class",)
    assert spec.where.column == "marital-status"


def test_injection_looking_literal_stays_a_literal(pums):
    spec = sql_to_spec("SELECT COUNT(*) FROM pums WHERE educ = '1; DROP TABLE x'", pums, EPS)
    assert spec.where.value == "1; DROP TABLE x"


def refused(sql, schema) -> QueryError:
    with pytest.raises(QueryError) as info:
        sql_to_spec(sql, schema, EPS)
    assert info.value.code == "unsupported_sql", info.value
    assert "Supported SQL" in info.value.message
    return info.value


@pytest.mark.parametrize(
    "sql, says",
    [
        ("SELECT COUNT(*) FROM pums JOIN other ON pums.age = other.age", "Joins"),
        ("SELECT COUNT(*) FROM pums, other", "Joins"),
        ("SELECT COUNT(*) FROM (SELECT * FROM pums)", "Subqueries"),
        ("SELECT COUNT(*) FROM pums WHERE age IN (SELECT age FROM pums)", "Subqueries"),
        ("SELECT educ, COUNT(*) OVER (PARTITION BY educ) FROM pums", "Window"),
        ("SELECT *, COUNT(*) FROM pums", "SELECT *"),
        ("SELECT * FROM pums", "SELECT *"),
        ("SELECT COUNT(*) FROM pums; DROP TABLE x", "one statement"),
        ("1; DROP TABLE x", "one statement"),
        ("DROP TABLE pums", "Only SELECT"),
        ("DELETE FROM pums", "Only SELECT"),
        ("SELECT COUNT(DISTINCT educ) FROM pums", "DISTINCT"),
        ("SELECT DISTINCT educ FROM pums", "DISTINCT"),
        ("SELECT educ, COUNT(*) FROM pums GROUP BY educ HAVING COUNT(*) > 5", "HAVING"),
        ("SELECT educ, COUNT(*) FROM pums GROUP BY educ ORDER BY educ", "ORDER BY"),
        ("SELECT COUNT(*) FROM pums LIMIT 1", "LIMIT"),
        ("WITH x AS (SELECT age FROM pums) SELECT COUNT(*) FROM x", "WITH"),
        ("SELECT COUNT(*) FROM pums UNION SELECT COUNT(*) FROM pums", "Only SELECT"),
        ("SELECT SUM(income * 2) FROM pums", "Expected a column"),
        ("SELECT age FROM pums", "GROUP BY"),
        ("SELECT educ FROM pums GROUP BY educ", "at least one aggregate"),
        ("SELECT COUNT(*) FROM pums WHERE age + 1 > 3", "compare a column"),
        ("SELECT COUNT(*) FROM pums WHERE UPPER(sex) = 'M'", "compare a column"),
        ("SELECT MAX(age) FROM pums", "not a supported aggregate"),
        ("SELECT COUNT(*) FROM other_db.pums", "without schema"),
        ("SELECT COUNT(*) FROM pums GROUP BY 1", "column names only"),
        ("SELEKT COUNT(*) FROM pums", ""),
        ("", "empty"),
    ],
)
def test_refusals(pums, sql, says):
    error = refused(sql, pums)
    assert says in error.message
    assert error.details["supported"] == SUPPORTED_SQL


def test_unknown_table_and_column(pums):
    with pytest.raises(QueryError) as info:
        sql_to_spec("SELECT COUNT(*) FROM other", pums, EPS, table="pums")
    assert info.value.code == "unknown_table"
    with pytest.raises(QueryError) as info:
        sql_to_spec("SELECT SUM(salary) FROM pums", pums, EPS)
    assert info.value.code == "unknown_column"


def test_schema_errors_surface_with_their_codes(pums):
    with pytest.raises(QueryError) as info:
        sql_to_spec("SELECT race, COUNT(*) FROM pums GROUP BY race", pums, EPS)
    assert info.value.code == "group_by_requires_public_keys"
    with pytest.raises(QueryError) as info:
        sql_to_spec("SELECT SUM(educ) FROM pums", pums, EPS)
    assert info.value.code == "unsupported_column_type"
    with pytest.raises(QueryError) as info:
        sql_to_spec("SELECT COUNT(*) FROM pums", pums, {"epsilon": -1})
    assert info.value.code == "invalid_privacy_loss"
