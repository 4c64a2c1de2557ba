"""A dataset's declared schema is made of the DP engine's schema model: one `Column`, one
`PrivacyUnit`, and the stored document converts into the engine's `TableSchema` unchanged."""

from __future__ import annotations

from clearinghouse.datasets.schema import DatasetSchema
from clearinghouse.dp import TableSchema
from clearinghouse.dp.schema import Column, PrivacyUnit

DOCUMENT = {
    "columns": [
        {"name": "pid", "type": "integer", "lower": 0, "upper": 10_000},
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "educ", "type": "categorical", "categories": ["1", "2"]},
        {"name": "note", "type": "text", "max_length": 80, "nullable": True},
    ],
    "privacy_unit": {"kind": "identifier", "column": "pid", "max_rows_per_person": 3},
}


def test_a_dataset_schema_is_made_of_the_engines_model():
    schema = DatasetSchema.from_dict(DOCUMENT)
    assert all(type(c) is Column for c in schema.columns)
    assert type(schema.privacy_unit) is PrivacyUnit and schema.privacy_unit.contributions == 3
    assert schema.column("note").max_length == 80 and schema.column("educ").public_keys == ("1", "2")


def test_the_stored_document_round_trips_and_converts_for_the_engine():
    schema = DatasetSchema.from_dict(DOCUMENT)
    stored = schema.to_dict()
    assert stored["columns"][3] == {"name": "note", "type": "text", "nullable": True, "max_length": 80}
    assert DatasetSchema.from_dict(stored) == schema
    table = TableSchema.from_dict(stored)
    assert table.privacy_unit == schema.privacy_unit
    assert [c.name for c in table.columns] == schema.names
    # the engine keeps everything but the text length (it reads no text), so its fingerprint is stable
    assert table.column("age") == schema.column("age") and table.column("note").max_length is None
