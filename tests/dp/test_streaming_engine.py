"""Releases under Polars' streaming engine (`POLARS_FORCE_NEW_STREAMING=1`, which the dp worker sets,
queries/tasks.py; OpenDP's embedded Polars reads it) give the answers of the in-memory engine
(issue 15). Each engine runs in its own interpreter: the variable is process-wide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys
import polars as pl
from clearinghouse.dp import PreparedData, TableSchema, release, sql_to_spec
from tests.dp.conftest import pums_schema_dict
from tests.shared_data import DATASETS

frame = pl.read_csv(DATASETS / "pums_1000.csv", schema_overrides={"income": pl.Float64}).with_columns(
    pl.col("income").cast(pl.Int64), pl.col("sex", "educ", "race").cast(pl.String),
    pl.col("married").cast(pl.Boolean),
)
schema = TableSchema.from_dict(pums_schema_dict())
queries = [
    "SELECT COUNT(*), SUM(income), AVG(age) FROM pums",
    "SELECT educ, COUNT(*), AVG(income) FROM pums GROUP BY educ",
    "SELECT sex, married, COUNT(*) FROM pums WHERE age >= 30 AND educ IN ('9', '13') GROUP BY sex, married",
    "SELECT MEDIAN(age) FROM pums",
]
chunks = [frame.slice(i, 250) for i in range(0, frame.height, 250)]
with PreparedData.from_chunks(schema, lambda: iter(chunks)) as staged:
    out = [release(schema, sql_to_spec(q, schema, privacy={"epsilon": 1e9}), staged).rows for q in queries]
print(json.dumps(out))
"""


def _answers(streaming: bool) -> list:
    env = {k: v for k, v in os.environ.items() if k != "POLARS_FORCE_NEW_STREAMING"}
    if streaming:
        env["POLARS_FORCE_NEW_STREAMING"] = "1"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_streaming_releases_equal_in_memory_releases():
    in_memory, streaming = _answers(False), _answers(True)
    assert len(in_memory) == len(streaming)
    for rows_a, rows_b in zip(in_memory, streaming, strict=True):
        assert len(rows_a) == len(rows_b) > 0
        for a, b in zip(rows_a, rows_b, strict=True):
            assert a.keys() == b.keys()
            for key in a:
                if isinstance(a[key], str | bool):
                    assert a[key] == b[key]
                else:  # ε = 1e9: the noise is far below these tolerances
                    assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1)
