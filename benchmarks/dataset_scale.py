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

* chunked: what `staged_data` does now: `PreparedData.from_chunks` over `storage.iter_row_groups`
  (one row group at a time, categorical columns dictionary-encoded; public categories staged as
  their Enum's codes, read back as the Enum, which OpenDP's plans read), then the same releases.

For the "whole" (read_table + prepare) and "chunked" stagings the child also reports the size of the
staged Arrow file on /dev/shm and, sampled every 5 ms by a thread, the peak of its private memory
(RssAnon) and of its mapped tmpfs pages (RssShmem). tmpfs pages count against a container's memory
cap, so the figure to keep under a 4 GB cap is peak RssAnon + the staged file (peak VmHWM + the file,
also printed, counts the mapped pages of the file twice).

    python benchmarks/dataset_scale.py [--rows 1000000,10000000] [--runs 5]   # 50000000 optionally
        [--no-loads] [--no-whole]   # only the chunked staging (what staged_data does)
        [--streaming]               # Polars' streaming engine, as the dp worker runs (tasks._worker_starts)
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


class Sampler:
    """Peak RssAnon and RssShmem (MB) of this process, sampled every `interval` s by a thread."""

    def __init__(self, interval: float = 0.005):
        import threading

        self.anon = self.shmem = 0.0
        self._stop = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self._interval)

    def sample(self) -> None:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("RssAnon:"):
                    self.anon = max(self.anon, int(line.split()[1]) / 1024)
                elif line.startswith("RssShmem:"):
                    self.shmem = max(self.shmem, int(line.split()[1]) / 1024)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


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
    from clearinghouse.dp import PreparedData, TableSchema, prepare, release, sql_to_spec

    schema = TableSchema.from_dict({**PUMS, "name": "pums", "policy": {"max_rows": 1_000_000_000}})
    import pyarrow.parquet  # noqa: F401 - imported before measuring, as a worker has it loaded

    reset_peak()
    base = rss_mb()  # the interpreter with Django, Polars, pyarrow and OpenDP imported
    sampler = Sampler()  # through loading and staging
    started = time.perf_counter()
    table = None
    if path == "old":
        table = storage.read_table(file_name(rows), context(rows))
    elif path == "new":
        table = storage.read_table(file_name(rows), context(rows), columns=schema.names)
    elif path == "two":  # the release's own columns: what per-query staging would read
        table = storage.read_table(file_name(rows), context(rows), columns=["income", "educ"])
    out: dict = {"base_rss_mb": base}
    if table is not None:
        out.update(load_s=time.perf_counter() - started, load_rss_mb=peak_rss_mb(), height=table.height)
    if runs:
        specs = [sql_to_spec(q, schema, privacy={"epsilon": 1.0}) for q in QUERIES]
        started = time.perf_counter()
        if path == "chunked":  # what `staged_data` does
            text = [c.name for c in schema.columns if c.type == "categorical"]
            prepared = PreparedData.from_chunks(
                schema,
                lambda: storage.iter_row_groups(
                    file_name(rows), context(rows), schema.names, dictionary=text
                ),
            )
            out.update(height=prepared.height, load_s=time.perf_counter() - started)
        else:
            assert table is not None
            prepared = prepare(schema, table)
        with prepared:
            out["prepare_s"] = time.perf_counter() - started
            out["stage_rss_mb"] = peak_rss_mb()
            out["staged_mb"] = os.path.getsize(prepared._path) / 2**20 if prepared._path else 0.0
            del table
            sampler.stop()
            out["stage_anon_mb"] = sampler.anon
            sampler = Sampler()  # through the releases
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
    sampler.stop()
    out["peak_anon_mb"], out["peak_shmem_mb"] = sampler.anon, sampler.shmem
    out["peak_anon_mb"] = max(out["peak_anon_mb"], out.get("stage_anon_mb", 0.0))
    out["release_anon_mb"] = sampler.anon
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
    parser.add_argument(
        "--no-loads", dest="loads", action="store_false", help="skip the old/2col load-only children"
    )
    parser.add_argument(
        "--no-whole", dest="whole", action="store_false", help="skip the whole-table staging (before)"
    )
    parser.add_argument(
        "--streaming",
        action="store_true",
        help="run the children with POLARS_FORCE_NEW_STREAMING=1 (Polars' streaming engine, also "
        "inside OpenDP)",
    )
    parser.add_argument("--child", choices=["old", "new", "two", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(r) for r in args.rows.split(",")]
    if args.streaming:
        os.environ["POLARS_FORCE_NEW_STREAMING"] = "1"
    if args.child:
        print(json.dumps(child(sizes[0], args.child, args.runs)))
        return
    print(
        "load: old = whole file, all columns; new = SegmentReader, the schema's 6 columns (read whole,\n"
        "then prepare: the staging before issue 15 target 3); 2col = SegmentReader, income+educ only;\n"
        "chunked = PreparedData.from_chunks over iter_row_groups (what staged_data does now).\n"
        "load RSS: the child's peak while loading (VmHWM reset before), less its RSS before (imports).\n"
        "Per staging (whole = new, chunked): s to staged; staged file MB on /dev/shm; peak VmHWM through\n"
        "staging and the releases; peak RssAnon (sampled) while staging / while releasing; cap = peak\n"
        "RssAnon + staged file (what a memory cgroup charges); VmHWM+file (counts the mapped file twice);\n"
        "p50 of the 3-aggregate release. Polars engine of OpenDP's plan: "
        + ("streaming (POLARS_FORCE_NEW_STREAMING=1)" if args.streaming else "in-memory (default)")
    )
    print(
        f"{'rows':>11} {'CSV MB':>7} {'stored MB':>9} {'load s old/new/2col':>20} "
        f"{'load RSS MB old/new/2col':>25} {'base MB':>7}"
    )
    stagings = []
    for rows in sizes:
        csv_mb, stored_mb = write(rows)
        old = run_child(rows, "old", 0) if args.loads else None
        new = run_child(rows, "new", args.runs) if args.whole else None
        two = run_child(rows, "two", 0) if args.loads else None
        chunked = run_child(rows, "chunked", args.runs)
        assert chunked["height"] == rows
        if old and two:
            load = "/".join(f"{r['load_s']:.2f}" for r in (old, new or old, two))
            rss = "/".join(f"{r['load_rss_mb'] - r['base_rss_mb']:.0f}" for r in (old, new or old, two))
            print(
                f"{rows:>11,} {csv_mb:>7.0f} {stored_mb:>9.1f} {load:>20} {rss:>25} "
                f"{chunked['base_rss_mb']:>7.0f}",
                flush=True,
            )
        for name, r in (("whole", new), ("chunked", chunked)):
            if r is not None:
                stagings.append((rows, name, r))
                print(_staging_line(rows, name, r), flush=True)
        storage.default_storage.delete(file_name(rows))
    print()
    print(_staging_header())
    for rows, name, r in stagings:
        print(_staging_line(rows, name, r))


def _staging_header() -> str:
    return (
        f"{'rows':>11} {'staging':>8} {'staged s':>8} {'file MB':>8} {'VmHWM MB':>8} "
        f"{'anon stage/release MB':>21} {'cap MB':>7} {'HWM+file':>8} {'p50 ms/3-agg':>12}"
    )


def _staging_line(rows: int, name: str, r: dict) -> str:
    anon = f"{r['stage_anon_mb']:.0f}/{r['release_anon_mb']:.0f}"
    return (
        f"{rows:>11,} {name:>8} {r['prepare_s']:>8.2f} {r['staged_mb']:>8.0f} {r['release_rss_mb']:>8.0f} "
        f"{anon:>21} {r['peak_anon_mb'] + r['staged_mb']:>7.0f} "
        f"{r['release_rss_mb'] + r['staged_mb']:>8.0f} {r['release_p50_ms']:>12.0f}"
    )


if __name__ == "__main__":
    main()
