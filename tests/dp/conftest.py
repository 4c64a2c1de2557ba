"""Fixtures for the DP engine's tests (no Django): the shared PUMS and Adult extracts and schemas."""

from __future__ import annotations

import polars as pl
import pytest

from clearinghouse.dp import TableSchema
from tests.shared_data import DATASETS

EDUC = [str(i) for i in range(1, 17)]


def pums_schema_dict(policy: dict | None = None) -> dict:
    return {
        "name": "pums",
        "columns": [
            {"name": "age", "type": "integer", "lower": 0, "upper": 100},
            {"name": "sex", "type": "categorical", "categories": ["0", "1"]},
            {"name": "educ", "type": "categorical", "categories": EDUC},
            {"name": "race", "type": "categorical"},  # no public categories
            {"name": "income", "type": "integer", "lower": 0, "upper": 500_000},
            {"name": "married", "type": "boolean"},
        ],
        "privacy_unit": {"kind": "row"},
        "policy": policy or {"measure": "pure", "max_rows": 1_000_000},
    }


@pytest.fixture(scope="session")
def pums_df() -> pl.DataFrame:
    # income is written as e.g. 1e+05 in a few rows: read as float, store as the declared integer.
    return pl.read_csv(DATASETS / "pums_1000.csv", schema_overrides={"income": pl.Float64}).with_columns(
        pl.col("income").cast(pl.Int64),
        pl.col("sex").cast(pl.String),
        pl.col("educ").cast(pl.String),
        pl.col("race").cast(pl.String),
        pl.col("married").cast(pl.Boolean),
    )


@pytest.fixture(scope="session")
def pums() -> TableSchema:
    """Pure ε-DP policy."""
    return TableSchema.from_dict(pums_schema_dict())


@pytest.fixture(scope="session")
def pums_approx() -> TableSchema:
    return TableSchema.from_dict(
        pums_schema_dict({"measure": "approx", "max_delta": 1e-5, "max_rows": 1_000_000})
    )


@pytest.fixture(scope="session")
def pums_zcdp() -> TableSchema:
    return TableSchema.from_dict(
        pums_schema_dict({"measure": "zcdp", "max_delta": 1e-5, "max_rows": 1_000_000})
    )


@pytest.fixture(scope="session")
def adult_df() -> pl.DataFrame:
    return pl.read_csv(DATASETS / "adult.csv", separator=";", infer_schema_length=0).with_columns(
        pl.col("age").cast(pl.Int64)
    )


@pytest.fixture(scope="session")
def adult() -> TableSchema:
    return TableSchema.from_dict(
        {
            "name": "adult",
            "columns": [
                {"name": "sex", "type": "categorical", "categories": ["Female", "Male"]},
                {"name": "age", "type": "integer", "lower": 0, "upper": 100},
                {
                    "name": "race",
                    "type": "categorical",
                    "categories": ["Amer-Indian-Eskimo", "Asian-Pac-Islander", "Black", "Other", "White"],
                },
                {"name": "marital-status", "type": "categorical"},
                {"name": "education", "type": "categorical"},
                {"name": "native-country", "type": "categorical"},
                {"name": "workclass", "type": "categorical"},
                {"name": "occupation", "type": "categorical"},
                {"name": "salary-class", "type": "categorical", "categories": ["<=50K", ">50K"]},
            ],
            "policy": {"measure": "approx", "max_delta": 1e-6, "max_rows": 100_000},
        }
    )
