import pytest

from clearinghouse.datasets.schema import DatasetSchema, SchemaError

PUMS_YAML = """
columns:
  - {name: age, type: integer, lower: 0, upper: 100}
  - {name: sex, type: categorical, categories: ["0", "1"]}
  - name: educ
    type: categorical
    categories: ["1","2","3","4","5","6","7","8","9","10","11","12","13","14","15","16"]
  - {name: race, type: categorical}
  - {name: income, type: float, lower: 0, upper: 500000}
  - {name: married, type: boolean}
privacy_unit: {kind: row}
"""


def test_yaml_and_json_give_the_same_schema():
    from_yaml = DatasetSchema.parse(PUMS_YAML)
    from_json = DatasetSchema.parse(from_yaml.to_json())
    assert from_yaml == from_json
    assert from_yaml.column("income").upper == 500000.0 and from_yaml.column("age").lower == 0
    assert from_yaml.column("race").categories is None


@pytest.mark.parametrize(
    "columns,code,path",
    [
        ([{"name": "age", "type": "integer", "lower": 10, "upper": 5}], "invalid_bounds", "columns[0].lower"),
        ([{"name": "age", "type": "integer", "lower": 5, "upper": 5}], "invalid_bounds", "columns[0].lower"),
        ([{"name": "age", "type": "integer"}], "bounds_required", "columns[0]"),
        (
            [{"name": "age", "type": "float", "lower": 0, "upper": float("inf")}],
            "invalid_schema",
            "columns[0].upper",
        ),
        (
            [{"name": "age", "type": "float", "lower": float("nan"), "upper": 1}],
            "invalid_schema",
            "columns[0].lower",
        ),
        (
            [{"name": "age", "type": "integer", "lower": 0.5, "upper": 3}],
            "invalid_schema",
            "columns[0].lower",
        ),
        (
            [{"name": "age", "type": "integer", "lower": True, "upper": 3}],
            "invalid_schema",
            "columns[0].lower",
        ),
        ([{"name": "1age", "type": "boolean"}], "invalid_schema", "columns[0].name"),
        ([{"name": "a; DROP TABLE x", "type": "boolean"}], "invalid_schema", "columns[0].name"),
        (
            [{"name": "a", "type": "boolean"}, {"name": "A", "type": "boolean"}],
            "invalid_schema",
            "columns[1].name",
        ),
        ([{"name": "a", "type": "money"}], "invalid_schema", "columns[0].type"),
        ([{"name": "a", "type": "categorical", "categories": []}], "invalid_schema", "columns[0].categories"),
        (
            [{"name": "a", "type": "categorical", "categories": ["x", "x"]}],
            "invalid_schema",
            "columns[0].categories",
        ),
        ([{"name": "a", "type": "text", "max_length": 0}], "invalid_schema", "columns[0].max_length"),
        ([{"name": "a", "type": "boolean", "lower": 0, "upper": 1}], "invalid_schema", "columns[0]"),
        ([{"name": "a", "type": "boolean", "secret": 1}], "invalid_schema", "columns[0]"),
        ([], "invalid_schema", "columns"),
    ],
)
def test_bad_schemas_are_refused_with_their_place(columns, code, path):
    with pytest.raises(SchemaError) as info:
        DatasetSchema.from_dict({"columns": columns})
    assert info.value.code == code
    assert info.value.path == path


@pytest.mark.parametrize(
    "unit,path",
    [
        ({"kind": "person"}, "privacy_unit"),
        ({"kind": "identifier", "column": "nope", "max_rows_per_person": 2}, "privacy_unit.column"),
        (
            {"kind": "identifier", "column": "pid", "max_rows_per_person": 0},
            "privacy_unit.max_rows_per_person",
        ),
    ],
)
def test_bad_privacy_units(unit, path):
    with pytest.raises(SchemaError) as info:
        DatasetSchema.from_dict({"columns": [{"name": "pid", "type": "text"}], "privacy_unit": unit})
    assert info.value.path == path


def test_identifier_privacy_unit_round_trips():
    schema = DatasetSchema.from_dict(
        {
            "columns": [{"name": "pid", "type": "text"}],
            "privacy_unit": {"kind": "identifier", "column": "pid", "max_rows_per_person": 3},
        }
    )
    assert DatasetSchema.from_dict(schema.to_dict()) == schema


def test_garbage_text_is_refused():
    with pytest.raises(SchemaError, match="not valid JSON or YAML"):
        DatasetSchema.parse("columns: [unclosed")
