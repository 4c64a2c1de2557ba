"""How a staged table holds its public categories, and what OpenDP's scan of it costs.

The dp worker stages a table as an Arrow IPC file on tmpfs that OpenDP scans memory-mapped
(`clearinghouse.dp.prepared`). A categorical column with public categories can be written

* as its Enum (an Arrow dictionary of strings, what `write_ipc` makes of a Polars Enum): Polars then
  decodes every value against the categories on every scan;
* as the Enum's codes (its physical integers, what `PreparedData` writes), cast back to the Enum in
  the scan's plan (`PreparedData.frame`).

On PUMS resampled (fixed seed) to --rows rows, this times the release of queries that read `educ`
(a count by it; a mean filtered on it) over both files, interleaved, with the same calibrated
measurement: median ms per release.

    python benchmarks/categorical_staging.py [--rows 1000000] [--runs 60]

The dp worker runs Polars' streaming engine (`POLARS_FORCE_NEW_STREAMING=1`, set by this script
unless already set, as `queries.tasks._worker_starts` does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("POLARS_FORCE_NEW_STREAMING", "1")

import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dp_engine import EDUC, SCHEMA, load

from clearinghouse.dp import prepare, sql_to_spec
from clearinghouse.dp.calibrate import _calibrated

QUERIES = [
    "SELECT educ, COUNT(*) FROM pums GROUP BY educ",
    "SELECT AVG(income) FROM pums WHERE educ = '9'",
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=60)
    args = parser.parse_args()
    specs = [sql_to_spec(q, SCHEMA, {"epsilon": 0.5}) for q in QUERIES]
    frame = load(args.rows)
    print(f"PUMS resampled to {args.rows:,} rows; median of {args.runs} releases each, interleaved")
    with prepare(SCHEMA, frame, specs) as staged, tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        as_enum = os.path.join(tmp, "as_enum.arrow")
        pl.read_ipc(staged._path).with_columns(pl.col("educ").cast(pl.Enum(EDUC))).write_ipc(
            as_enum, compression="uncompressed"
        )
        for sql, spec in zip(QUERIES, specs, strict=True):
            cal = _calibrated(SCHEMA, spec)
            columns = list(cal.plan.columns)
            readers = {
                "as its Enum (dictionary)": lambda columns=columns: pl.scan_ipc(
                    as_enum, memory_map=True
                ).select(columns),
                "as its codes (staged now)": lambda cal=cal: staged.frame(cal.plan.columns),
            }
            times: dict[str, list[float]] = {name: [] for name in readers}
            for run in range(args.runs):
                order = list(readers) if run % 2 else list(reversed(readers))
                for name in order:
                    started = time.perf_counter()
                    cal.measurement(readers[name]()).collect()
                    times[name].append((time.perf_counter() - started) * 1000)
            print(sql)
            for name, values in times.items():
                print(f"  {name:28s} {statistics.median(values):8.2f} ms")


if __name__ == "__main__":
    main()
