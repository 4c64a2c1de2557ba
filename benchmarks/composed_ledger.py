"""Benchmark: the composed privacy ledger (approximate-DP budgets, docs/privacy-ledger.md).

What composing queries and a DP-SGD training with the accountant saves over adding their ε's, and
what it costs a debit:

- Savings: k queries (ε = 0.05, 0.1 or mixed costs) plus one DP-SGD run of an SMS-benchmark member
  (q = 16/1858, σ from ``training.privacy.DpSgdPlan`` for ε = 3 at δ = 1e-5, 3 rounds x 1 epoch),
  composed at δ = 1e-5: the ledger's charge (the tightest of PLD, RDP, sum) vs the naive sum.
- Cost: a debit composes the new event with the ledger kept in the process (warm) — one PLD
  convolution and reading ε off it — or, after a restart, the whole ledger from its records (cold).

    .venv/bin/python benchmarks/composed_ledger.py [--events 10,50,100,300]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clearinghouse.dp.accounting import (
    ApproxEvent,
    LedgerComposition,
    SubsampledGaussianEvent,
    compose,
)
from training.privacy import DpSgdPlan

DELTA = 1e-5


def _training() -> SubsampledGaussianEvent:
    rows, batch = 1858, 16
    plan = DpSgdPlan.from_job(
        rows=rows,
        batch_size=batch,
        rounds=3,
        target_epsilon=3.0,
        delta=DELTA,
        max_grad_norm=1.0,
        local_epochs=1,
    )
    return SubsampledGaussianEvent(plan.sample_rate, plan.noise_multiplier, plan.steps)


def _queries(k: int, kind: str, rng: random.Random) -> list[ApproxEvent]:
    if kind == "mixed":  # distinct costs: nothing to group, the slowest case
        return [ApproxEvent(round(rng.uniform(0.01, 0.3), 6)) for _ in range(k)]
    return [ApproxEvent(float(kind))] * k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", default="10,50,100,300")
    args = parser.parse_args()
    counts = [int(n) for n in args.events.split(",")]
    rng = random.Random(0)
    training = _training()
    print(
        f"DP-SGD event: q={training.sample_rate:.5f} σ={training.noise_multiplier:.4f} steps={training.steps}"
    )
    print("\nsavings at δ = 1e-5: the ledger's charge vs adding ε's")
    print(
        f"{'queries':>8} {'cost':>6} {'+train':>6} {'charge':>8} {'pld':>8} {'rdp':>8} {'sum':>8} {'saved':>6}"
    )
    for k in counts:
        for kind in ("0.05", "0.1", "mixed"):
            for train in (False, True):
                events = [*_queries(k, kind, rng), *([training] if train else [])]
                c = compose(events, DELTA)
                print(
                    f"{k:>8} {kind:>6} {'yes' if train else 'no':>6} {c.epsilon:>8.3f} {c.epsilon_pld:>8.3f} "
                    f"{c.epsilon_rdp:>8.3f} {c.epsilon_naive:>8.3f} {1 - c.epsilon / c.epsilon_naive:>6.0%}"
                )
    print("\ncost of a debit (mixed query costs, after one training): warm = add one event to the kept")
    print("ledger and read ε; cold = compose the whole ledger from its records (after a restart)")
    print(f"{'events':>8} {'warm p50 ms':>12} {'cold s':>8}")
    for k in counts:
        events = [training, *_queries(k, "mixed", rng)]
        started = time.perf_counter()
        ledger = LedgerComposition(events)
        ledger.epsilon(DELTA)
        cold = time.perf_counter() - started
        warm = []
        for _ in range(5):
            event = ApproxEvent(round(rng.uniform(0.01, 0.3), 6))
            started = time.perf_counter()
            ledger = ledger.add(event)
            ledger.epsilon(DELTA)
            warm.append(time.perf_counter() - started)
        print(f"{k:>8} {statistics.median(warm) * 1000:>12.1f} {cold:>8.2f}")


if __name__ == "__main__":
    main()
