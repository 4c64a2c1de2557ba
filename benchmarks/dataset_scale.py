"""Scale of one dataset (issue 15): how a dp worker loads one large stored table, and what it costs.

PUMS (../shared/datasets/pums_1000.csv) checked against the PUMS schema, resampled with a fixed seed
to N rows and written through `storage.write_table` (Parquet, encrypted) under a fresh dev keyring in
a temporary directory. Then, in a fresh subprocess per size and path, the worker's load is measured:

* old: `read_table(name, context)`: decrypt the whole file into memory, Polars reads every column;
* new: `read_table(name, context, columns=...)`: through `SegmentReader` (decrypts only the segments a
  read touches), the columns `staged_data` asks for (the schema's).

Each child reports the load time and its peak RSS (ru_maxrss) right after loading; the new-path child
then stages the table (`prepare`) and times the 3-aggregate release (count, mean(income), count by
educ; benchmarks/dp_api.py QUERIES) over --runs runs: p50 per release of all three, and the peak RSS
after that.

    python benchmarks/dataset_scale.py [--rows 1000000,10000000] [--runs 5]   # 50000000 optionally
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("CLEARINGHOUSE_VAR_DIR", tempfile.mkdtemp(prefix="clearinghouse-scale-"))
os.environ["DJANGO_SETTINGS_MODULE"] = "clearinghouse.settings.dev"
os.environ.pop("DATABASE_URL", None)
os.environ.pop("KEYRING_JSON", None)
os.environ["DEBUG"] = "0"

import django  # noqa: E402

django.setup()

import polars as pl  # noqa: E402

from clearinghouse.datasets import storage  # noqa: E402
from clearinghouse.datasets.reference_schemas import PUMS  # noqa: E402

SHARED = ROOT.parent / "shared" / "datasets"
QUERIES = [
    "SELECT COUNT(*) FROM pums",
    "SELECT AVG(income) FROM pums",
    "SELECT educ, COUNT(*) FROM pums GROUP BY educ",
]
SEED = 20261125


def context(rows: int) -> dict:
    return storage.data_context(organisation_id=1, dataset_id=rows, number=1)


def file_name(rows: int) -> str:
    return storage.data_file_name(organisation_id=1, dataset_id=rows, number=1)


def peak_rss_mb() -> float:
    """Peak RSS since the last `reset_peak()` (VmHWM), else since the start (ru_maxrss)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS:"))


def reset_peak() -> None:
    """Resets the peak RSS to the current RSS (Linux >= 4.0), so imports do not mask the load's peak."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def write(rows: int) -> tuple[float, float]:
    """Writes the stored file for `rows`; (CSV MB, stored MB).

    The 1,000 PUMS rows are checked against the schema once, then resampled (fixed seed) to `rows`:
    the same table as ingesting the resampled CSV (the checks are per row), without holding 50M rows
    of text. The CSV's size is that of the resampled rows' lines."""
    from clearinghouse.datasets.ingest import check, read_raw
    from clearinghouse.datasets.schema import DatasetSchema

    text = (SHARED / "pums_1000.csv").read_bytes()
    header, *lines = text.decode().splitlines()
    raw = read_raw(text, fmt="csv")
    assert raw.height == len(lines)
    typed = check(raw, DatasetSchema.from_dict(PUMS)).table.with_columns(
        pl.Series("_line_bytes", [len(line) + 1 for line in lines])
    )
    table = typed.sample(rows, with_replacement=True, seed=SEED)
    csv_mb = (len(header) + 1 + table["_line_bytes"].sum()) / 1e6
    info = storage.write_table(file_name(rows), context(rows), table.drop("_line_bytes"))
    return csv_mb, info.ciphertext_size / 1e6


def child(rows: int, path: str, runs: int) -> dict:
    from clearinghouse.dp import TableSchema, prepare, release, sql_to_spec

    schema = TableSchema.from_dict({**PUMS, "name": "pums", "policy": {"max_rows": 1_000_000_000}})
    import pyarrow.parquet  # noqa: F401 - imported before measuring, as a worker has it loaded

    reset_peak()
    base = rss_mb()  # the interpreter with Django, Polars, pyarrow and OpenDP imported
    started = time.perf_counter()
    if path == "old":
        table = storage.read_table(file_name(rows), context(rows))
    elif path == "new":
        table = storage.read_table(file_name(rows), context(rows), columns=schema.names)
    else:  # the release's own columns: what per-query staging would read
        table = storage.read_table(file_name(rows), context(rows), columns=["income", "educ"])
    out: dict = {
        "load_s": time.perf_counter() - started,
        "base_rss_mb": base,
        "load_rss_mb": peak_rss_mb(),
        "height": table.height,
    }
    if runs:
        specs = [sql_to_spec(q, schema, privacy={"epsilon": 1.0}) for q in QUERIES]
        started = time.perf_counter()
        with prepare(schema, table) as prepared:
            out["prepare_s"] = time.perf_counter() - started
            del table
            for spec in specs:  # warm-up: OpenDP builds and caches the measurements
                release(schema, spec, prepared)
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                for spec in specs:
                    release(schema, spec, prepared)
                times.append((time.perf_counter() - started) * 1000)
        out["release_p50_ms"] = statistics.median(times)
        out["release_rss_mb"] = peak_rss_mb()
    return out


def run_child(rows: int, path: str, runs: int) -> dict:
    result = subprocess.run(
        [sys.executable, __file__, "--child", path, "--rows", str(rows), "--runs", str(runs)],
        check=True,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", default="1000000,10000000", help="comma-separated sizes (50000000 optional)"
    )
    parser.add_argument("--runs", type=int, default=5, help="timed 3-aggregate releases per size")
    parser.add_argument("--child", choices=["old", "new", "two"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    if args.child:
        print(json.dumps(child(sizes[0], args.child, args.runs)))
        return
    print(
        "load: old = whole file, all columns; new = SegmentReader, the schema's 6 columns (what\n"
        "staged_data reads); 2col = SegmentReader, income+educ only (the release's columns).\n"
        "RSS: the child's peak while loading (VmHWM reset before), less its RSS before (imports);\n"
        "+release: the absolute peak through prepare and the releases."
    )
    print(
        f"{'rows':>11} {'CSV MB':>7} {'stored MB':>9} {'load s old/new/2col':>20} "
        f"{'load RSS MB old/new/2col':>25} {'base MB':>7} {'peak+release MB':>15} {'p50 ms/3-agg':>12}"
    )
    for rows in sizes:
        csv_mb, stored_mb = write(rows)
        old = run_child(rows, "old", 0)
        new = run_child(rows, "new", args.runs)
        two = run_child(rows, "two", 0)
        assert old["height"] == new["height"] == two["height"] == rows
        load = "/".join(f"{r['load_s']:.2f}" for r in (old, new, two))
        rss = "/".join(f"{r['load_rss_mb'] - r['base_rss_mb']:.0f}" for r in (old, new, two))
        print(
            f"{rows:>11,} {csv_mb:>7.0f} {stored_mb:>9.1f} {load:>20} {rss:>25} {new['base_rss_mb']:>7.0f} "
            f"{new['release_rss_mb']:>15.0f} {new['release_p50_ms']:>12.0f}",
            flush=True,
        )
        storage.default_storage.delete(file_name(rows))


if __name__ == "__main__":
    main()
