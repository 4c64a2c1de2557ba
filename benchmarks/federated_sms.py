"""Benchmark: federated LoRA fine-tuning on SMS spam (3 non-IID members) vs the centralised baseline.

- SMS Spam Collection (``Label<TAB>SMS``), stratified 80/20 split with a fixed seed; the 20 % is
  the held-out test set of both runs.
- The 80 % (optionally subsampled with ``--max-train-rows``) is partitioned over 3 members,
  non-IID: member 0 holds most of the spam (``--spam-skew 8,1,1``).
- Federated: a real SuperLink + 3 SuperNodes on loopback (subprocesses), the clearinghouse's Flower
  app submitted with ``flwr run``, ``--rounds`` rounds of ``--local-epochs`` epochs.
- Centralised: the same model and hyper-parameters on the union of the rows the members train on
  (each member keeps ``--member-test-fraction`` for its local evaluation), for
  ``rounds x local_epochs`` epochs: the same number of passes over the same data.
- Reports accuracy and spam F1 on the held-out 20 %, time per round, Flower overhead per round
  (round's training phase minus the slowest member's local training), bytes per round vs the full
  model's size.

CUDA is used when present (members and baseline); on CPU keep it small, e.g.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/federated_sms.py --max-train-rows 600 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The project's packages, importable once the repository root is on the path (above).
from federation.flower.local import LocalFederation, read_jsonl  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import LabelledTable, load_table_for_config, partition, split_train_test  # noqa: E402


def write_tsv(table: LabelledTable, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("Label\tSMS\n")
        for text, label_id in zip(table.texts, table.label_ids, strict=True):
            clean = text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
            handle.write(f"{table.labels[label_id]}\t{clean}\n")
    return path


def evaluate_adapter(config: TrainConfig, adapter: Path, test: LabelledTable) -> dict:
    from training.data import make_loader
    from training.loops import evaluate
    from training.models import build_model_and_tokenizer, select_device
    from training.params import load_trainable_state, set_trainable_state

    model, tokenizer = build_model_and_tokenizer(config)
    set_trainable_state(model, load_trainable_state(adapter))
    device = select_device()
    loader = make_loader(
        test, tokenizer=tokenizer, config=config, shuffle=False, batch_size=config.batch_size * 4
    )
    return evaluate(model, loader, device=device, mixed_precision=config.mixed_precision).to_dict()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "datasets" / "sms_spam.tsv")
    )
    parser.add_argument("--base-model", default="minilm-l6")
    parser.add_argument("--strategy", default="fedavg", choices=["fedavg", "fedprox", "fedadam"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--proximal-mu", type=float, default=0.01)
    parser.add_argument("--max-train-rows", type=int, default=0, help="subsample the 80 %% split (0: all)")
    parser.add_argument("--max-test-rows", type=int, default=0, help="subsample the 20 %% split (0: all)")
    parser.add_argument("--spam-skew", default="8,1,1", help="share of the spam per member")
    parser.add_argument("--member-test-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads-per-node", type=int, default=max(1, (os.cpu_count() or 3) // 3))
    parser.add_argument("--round-timeout", type=float, default=1800.0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--skip-centralised", action="store_true")
    args = parser.parse_args()

    import torch

    from training.centralised import train_centralised
    from training.models import build_model_and_tokenizer, count_parameters
    from training.params import get_trainable_state, state_nbytes

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="federated-sms-"))
    workdir.mkdir(parents=True, exist_ok=True)
    config = TrainConfig(
        labels=("ham", "spam"),
        base_model=args.base_model,
        text_column="SMS",
        label_column="Label",
        batch_size=args.batch_size,
        max_length=args.max_length,
        learning_rate=args.learning_rate,
        local_epochs=args.local_epochs,
        seed=args.seed,
    )
    table = load_table_for_config(args.data, config)
    train_all, test = split_train_test(table, test_fraction=0.2, seed=args.seed)
    rng = np.random.default_rng(args.seed)
    if args.max_train_rows and args.max_train_rows < len(train_all):
        train_all = train_all.subset(np.sort(rng.choice(len(train_all), args.max_train_rows, replace=False)))
    if args.max_test_rows and args.max_test_rows < len(test):
        test = test.subset(np.sort(rng.choice(len(test), args.max_test_rows, replace=False)))
    skew = [float(x) for x in args.spam_skew.split(",")]
    members = partition(train_all, n_parts=3, seed=args.seed, label_skew={"spam": skew})
    # What each member trains on (the ClientApp keeps member-test-fraction for local evaluation,
    # with the same seeded split): the centralised baseline gets exactly their union.
    member_train = [
        split_train_test(m, test_fraction=args.member_test_fraction, seed=args.seed)[0] for m in members
    ]
    union = LabelledTable(
        texts=tuple(t for m in member_train for t in m.texts),
        label_ids=np.concatenate([m.label_ids for m in member_train]),
        labels=config.labels,
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device={device}  train rows={len(train_all)} (members: {[m.label_counts() for m in members]})  "
        f"test rows={len(test)} {test.label_counts()}  workdir={workdir}",
        flush=True,
    )

    model, _ = build_model_and_tokenizer(config)
    trainable, total = count_parameters(model)
    full_model_bytes = sum(p.numel() * 4 for p in model.parameters())  # fp32
    trainable_bytes = state_nbytes(get_trainable_state(model))
    del model

    # ---------------------------------------------------------------- federated
    orgs = ["member-a", "member-b", "member-c"]
    out = workdir / "federated"
    started = time.perf_counter()
    with LocalFederation(workdir / "flower") as fed:
        fed.start_superlink()
        for org, part in zip(orgs, members, strict=True):
            path = write_tsv(part, workdir / f"{org}.tsv")
            fed.add_supernode(
                org,
                {"data-path": str(path), "text-column": "SMS", "label-column": "Label", "organisation": org},
                threads=args.threads_per_node,
            )
        run_config = {
            "job-id": "federated-sms",
            "labels": "ham,spam",
            "base-model": args.base_model,
            "strategy": args.strategy,
            "num-rounds": args.rounds,
            "min-clients": 3,
            "participants": ",".join(f"org:{o}" for o in orgs),
            "local-epochs": args.local_epochs,
            "batch-size": args.batch_size,
            "max-length": args.max_length,
            "learning-rate": args.learning_rate,
            "lora-dropout": 0.1,
            "seed": args.seed,
            "proximal-mu": args.proximal_mu,
            "test-fraction": args.member_test_fraction,
            "round-timeout": args.round_timeout,
            "connect-timeout": 120.0,
            "output-dir": str(out),
            "metrics-jsonl": str(out / "metrics.jsonl"),
        }
        result = fed.run_app(run_config, timeout=args.round_timeout * args.rounds + 600)
    federated_wall = time.perf_counter() - started
    records = read_jsonl(out / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round"]
    if not (out / "adapter.safetensors").exists() or len(rounds) != args.rounds:
        print(result.stdout[-5000:])
        print("federated run failed; see", workdir)
        return 1
    fed_eval = evaluate_adapter(config, out / "adapter.safetensors", test)

    # ---------------------------------------------------------------- centralised
    central = None
    if not args.skip_centralised:
        central = train_centralised(config, union, test, epochs=args.rounds * args.local_epochs)

    # ---------------------------------------------------------------- report
    per_round = [
        {
            "round": r["round"],
            "round_seconds": round(r["round_seconds"], 2),
            "train_phase_seconds": round(r["train_phase_seconds"], 2),
            "slowest_client_train_seconds": round(r["slowest_client_train_seconds"], 2),
            "flower_overhead_seconds": round(r["flower_overhead_seconds"], 2),
            "bytes_sent": r["bytes_sent"],
            "bytes_received": r["bytes_received"],
            "members_pooled_local_accuracy": r["evaluate"].get("accuracy"),
        }
        for r in rounds
    ]
    summary = {
        "device": device,
        "strategy": args.strategy,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "n_train_members": [len(m) for m in member_train],
        "member_label_counts": [m.label_counts() for m in members],
        "n_train_centralised": len(union),
        "n_test": len(test),
        "total_parameters": total,
        "trainable_parameters": trainable,
        "full_model_bytes_fp32": full_model_bytes,
        "trainable_bytes": trainable_bytes,
        "federated": {
            "accuracy": fed_eval["accuracy"],
            "spam_f1": fed_eval["per_class_f1"]["spam"],
            "macro_f1": fed_eval["macro_f1"],
            "wall_seconds_incl_startup": round(federated_wall, 1),
            "mean_round_seconds": round(float(np.mean([r["round_seconds"] for r in rounds])), 2),
            "mean_flower_overhead_seconds": round(
                float(np.mean([r["flower_overhead_seconds"] for r in rounds])), 2
            ),
            "mean_bytes_per_round": int(np.mean([r["bytes_sent"] + r["bytes_received"] for r in rounds])),
            "bytes_per_round_vs_full_model": round(
                float(np.mean([r["bytes_sent"] + r["bytes_received"] for r in rounds])) / full_model_bytes, 4
            ),
            # One member's link per round (its train and evaluate downloads plus its upload): what LoRA
            # saves each member against exchanging the full model.
            "mean_bytes_per_member_per_round": int(
                np.mean([(r["bytes_sent"] + r["bytes_received"]) / max(1, len(members)) for r in rounds])
            ),
            "bytes_per_member_per_round_vs_full_model": round(
                float(
                    np.mean([(r["bytes_sent"] + r["bytes_received"]) / max(1, len(members)) for r in rounds])
                )
                / full_model_bytes,
                4,
            ),
            "mean_overhead_vs_local_training": round(
                float(
                    np.mean(
                        [r["flower_overhead_seconds"] / r["slowest_client_train_seconds"] for r in rounds]
                    )
                ),
                3,
            ),
            "per_round": per_round,
        },
        "centralised": None
        if central is None
        else {
            "accuracy": central["final"]["accuracy"],
            "spam_f1": central["final"]["per_class_f1"]["spam"],
            "macro_f1": central["final"]["macro_f1"],
            "seconds": round(central["seconds"], 1),
            "seconds_per_epoch": round(central["seconds"] / (args.rounds * args.local_epochs), 2),
        },
        "workdir": str(workdir),
    }
    print(json.dumps(summary, indent=2))
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
