"""Benchmark: a DP-SGD step (Opacus) vs a plain step, MiniLM-L6 + LoRA (r=8 on query/value), CPU;
and the noise DP-SGD needs for ε ∈ {1, 3, 8} on one SMS-benchmark member.

- Data: the first ``--rows`` (1858) messages of ``shared/datasets/sms_spam.tsv`` (synthetic texts
  when the file is absent), max_length 64, batch 16.
- Plain: forward + backward + AdamW on fixed batches of 16 (what ``training.loops.train`` does,
  without clipping). DP-SGD: Opacus' per-example gradients (hooks), flat clipping, noise, on
  Poisson-sampled batches of 16 on average (q = 1/⌈rows/16⌉). Both after ``--warmup`` steps.
- σ: ``training.privacy.noise_multiplier_for`` at δ = 1e-5, q = 16/rows, steps = 3 rounds x 1
  local epoch (3 x ⌈rows/16⌉), by PLD (dp_accounting), PRV (Opacus) and RDP, with the time it took.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/dp_sgd_step.py [--steps 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.config import TrainConfig  # noqa: E402
from training.data import LabelledTable, make_loader  # noqa: E402
from training.dp_sgd import make_private  # noqa: E402
from training.models import build_model_and_tokenizer, count_parameters  # noqa: E402
from training.privacy import epsilon_for, noise_multiplier_for  # noqa: E402

SMS = ROOT.parent / "shared" / "datasets" / "sms_spam.tsv"
LABELS = ("ham", "spam")


def load_rows(rows: int) -> LabelledTable:
    texts: list[str] = []
    labels: list[str] = []
    if SMS.is_file():
        with SMS.open(encoding="utf-8", newline="") as handle:
            for record in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                texts.append(record["SMS"])
                labels.append(record["Label"])
                if len(texts) == rows:
                    break
    while len(texts) < rows:  # synthetic filler
        texts.append(f"message number {len(texts)} about lunch later or a free prize to claim now")
        labels.append(LABELS[len(texts) % 2])
    return LabelledTable.from_lists(texts=texts, labels=labels, label_names=LABELS)


def time_plain(model: torch.nn.Module, loader, steps: int, warmup: int) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    model.train()
    times: list[float] = []
    batches = iter(loader)
    for i in range(warmup + steps):
        batch = next(batches)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    return times


def time_private(model: torch.nn.Module, loader, steps: int, warmup: int) -> tuple[list[float], list[int]]:
    params = [p for p in model.parameters() if p.requires_grad]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private = make_private(
            model,
            torch.optim.AdamW(params, lr=1e-3),
            loader,
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            rng_seed=0,
        )
        private.module.train()
        times: list[float] = []
        sizes: list[int] = []
        sampler = iter(private.loader.batch_sampler)
        try:
            for i in range(warmup + steps):
                indices = next(sampler)
                batch = private.loader.collate_fn([private.loader.dataset[j] for j in indices])
                started = time.perf_counter()
                private.optimizer.zero_grad(set_to_none=True)
                private.module(**batch).loss.backward()
                private.optimizer.step()
                if i >= warmup:
                    times.append(time.perf_counter() - started)
                    sizes.append(len(indices))
        finally:
            private.close()
    return times, sizes


def summary(times: list[float]) -> str:
    return f"min {min(times) * 1000:7.1f} ms, median {statistics.median(times) * 1000:7.1f} ms"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1858)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--skip-steps", action="store_true", help="only the noise calibration")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)
    if not args.skip_steps:
        config = TrainConfig(
            labels=LABELS,
            batch_size=args.batch_size,
            max_length=args.max_length,
            lora_r=8,
            lora_target_modules=("query", "value"),
            lora_dropout=0.0,
            mixed_precision=False,
        )
        table = load_rows(args.rows)
        model, tokenizer = build_model_and_tokenizer(config)
        trainable, total = count_parameters(model)
        print(f"MiniLM-L6 + LoRA r=8 q/v: {trainable:,} trainable of {total:,} parameters", flush=True)
        loader = make_loader(table, tokenizer=tokenizer, config=config, shuffle=True, seed=0)
        # Alternated (plain, DP, plain, DP) so that a noisy neighbour on the machine hits both alike.
        plain: list[float] = []
        private: list[float] = []
        sizes: list[int] = []
        for _ in range(2):
            plain += time_plain(model, loader, args.steps, args.warmup)
            times, drawn = time_private(model, loader, args.steps, args.warmup)
            private += times
            sizes += drawn
        print(f"plain step   (batch {args.batch_size}):                 {summary(plain)}", flush=True)
        print(
            f"DP-SGD step  (Poisson, mean batch {statistics.fmean(sizes):.1f}): {summary(private)}"
            f"  -> {statistics.median(private) / statistics.median(plain):.2f}x the plain step (medians)",
            flush=True,
        )

    q = args.batch_size / args.rows
    steps = args.rounds * math.ceil(args.rows / args.batch_size)
    print(f"\nσ at δ = 1e-5, q = {args.batch_size}/{args.rows} = {q:.5f}, steps = {steps}:", flush=True)
    for target in (1.0, 3.0, 8.0):
        row = [f"ε = {target:g}:"]
        sigmas: dict[str, float] = {}
        for accountant in ("pld", "prv", "rdp"):
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sigmas[accountant] = noise_multiplier_for(target, 1e-5, q, steps, accountant)  # type: ignore[arg-type]
            row.append(f"{accountant} σ = {sigmas[accountant]:.4f} ({time.perf_counter() - started:4.1f} s)")
        check = epsilon_for(sigmas["pld"], 1e-5, q, steps, "pld", resolution=1e-4)
        row.append(f"[ε by PLD at the pld σ: {check:.4f}]")
        print("  ".join(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
