"""SmartNoise SQL in process on plaintext: the peer `dp_api.py` compares the API against (issue 15).

    <python with smartnoise-sql> benchmarks/smartnoise_sql.py CSV_PATH [--runs 5] [--epsilon 1.0]

Runs under its own interpreter: smartnoise-sql 1.0.10 needs opendp 0.14, the service pins 0.16, so
it cannot share the service's environment (`make smartnoise` makes `.venv-smartnoise`). Reads the
CSV (PUMS resampled, as `dp_api.py` wrote it) into pandas once, outside the timing, then times the
same three aggregates `dp_api.py` sends as its ONE request, with the same public bounds
(`clearinghouse.datasets.reference_schemas.PUMS`). Prints one JSON line: the per-run times of the
three queries together, and what each answered (to show it ran)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import pandas as pd
import snsql

QUERIES = [
    "SELECT COUNT(*) FROM PUMS.PUMS",
    "SELECT AVG(income) FROM PUMS.PUMS",
    "SELECT educ, COUNT(*) FROM PUMS.PUMS GROUP BY educ",
]


def metadata(rows: int) -> dict:
    # The public bounds of reference_schemas.PUMS; `rows` is SmartNoise's public row-count hint.
    return {
        "PUMS": {
            "PUMS": {
                "PUMS": {
                    "row_privacy": True,
                    "rows": rows,
                    "age": {"type": "int", "lower": 0, "upper": 100},
                    "sex": {"type": "string"},
                    "educ": {"type": "string"},
                    "race": {"type": "string"},
                    "income": {"type": "float", "lower": 0.0, "upper": 500000.0},
                    "married": {"type": "string"},
                }
            }
        }
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("csv")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    args = parser.parse_args()
    frame = pd.read_csv(
        args.csv, dtype={"sex": str, "educ": str, "race": str, "married": str, "income": float}
    )
    reader = snsql.from_df(
        frame,
        privacy=snsql.Privacy(epsilon=args.epsilon, delta=args.delta),
        metadata=metadata(len(frame)),
    )
    runs_ms, answers = [], []
    for _ in range(args.runs):
        started = time.perf_counter()
        answers = [reader.execute(sql) for sql in QUERIES]
        runs_ms.append((time.perf_counter() - started) * 1000)
    print(
        json.dumps(
            {
                "rows": len(frame),
                "runs_ms": runs_ms,
                "p50_ms": statistics.median(runs_ms),
                "answers": {
                    "count": answers[0][1][0],
                    "avg_income": answers[1][1][0],
                    "groups": len(answers[2]) - 1,
                },
            },
            default=str,
        )
    )


if __name__ == "__main__":
    main()
