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

Private federated fine-tuning (``--dp-epsilon 8,3,1``, ``--dp-delta 1e-5``,
``--dp-max-grad-norm 1``): after the non-private run, one federated run per ε on the same split
and seed, every member training with DP-SGD (Opacus: Poisson rate q, clipping C, noise σ) under
the plan the clearinghouse prices for it (``training.privacy.train_rows`` and
``DpSgdPlan.from_job``, PLD accountant, T = rounds x local steps), sent in the run config's
``dp-plans`` exactly as a scheduled private job is (same hyper-parameters as the non-private run;
``--dp-learning-rate`` gives the private runs their own). For each ε it reports, beside the
non-private run:

- accuracy and spam F1 on the held-out 20 %, time per round;
- a loss-threshold membership-inference attack on the final global model: AUC of the
  per-example loss separating the rows the members trained on from the held-out 20 %
  (sklearn's ``roc_auc_score``, else the rank formula); 0.5 is no better than chance;
- an accountant cross-check: each member's (σ, q, T) fed to Opacus' own PRV accountant (and its
  RDP one, looser) gives ε at δ; the relative error against the target ε (PRV: within 1 %), and
  the ε Opacus accounted for the run the member actually did (q = 1/⌈rows/batch⌉ ≤ batch/rows).

CUDA is used when present (members and baseline); on CPU keep it small, e.g.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/federated_sms.py --max-train-rows 600 --rounds 3
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/federated_sms.py --rounds 3 --pooling mean \
        --dp-epsilon 8,3,1 --dp-head-only --dp-optimizer sgd --dp-learning-rate 10 \
        --dp-max-grad-norm 0.5 --dp-batch-size 32 --dp-local-epochs 5 --skip-centralised --json-out dp.json

(the private jobs' recipe, docs/private-training.md, where the measured figures are; about 50 min on
2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The project's packages, importable once the repository root is on the path (above).
from federation.flower.local import LocalFederation, read_jsonl  # noqa: E402
from training.config import TrainConfig  # noqa: E402
from training.data import LabelledTable, load_table_for_config, partition, split_train_test  # noqa: E402
from training.privacy import DpSgdPlan, train_rows  # noqa: E402


def write_tsv(table: LabelledTable, path: Path) -> Path:
    with path.open("w", encoding="utf-8") as handle:
        handle.write("Label\tSMS\n")
        for text, label_id in zip(table.texts, table.label_ids, strict=True):
            clean = text.replace("\t", " ").replace("\n", " ").replace("\r", " ")
            handle.write(f"{table.labels[label_id]}\t{clean}\n")
    return path


def load_adapter(config: TrainConfig, adapter: Path) -> tuple[Any, Any, Any]:
    """The base model with the run's final global trainable state: (model, tokenizer, device)."""
    from training.models import build_model_and_tokenizer, select_device
    from training.params import load_trainable_state, set_trainable_state

    model, tokenizer = build_model_and_tokenizer(config)
    set_trainable_state(model, load_trainable_state(adapter))
    return model, tokenizer, select_device()


def evaluate_model(config: TrainConfig, loaded: tuple[Any, Any, Any], test: LabelledTable) -> dict:
    from training.data import make_loader
    from training.loops import evaluate

    model, tokenizer, device = loaded
    loader = make_loader(
        test, tokenizer=tokenizer, config=config, shuffle=False, batch_size=config.batch_size * 4
    )
    return evaluate(model, loader, device=device, mixed_precision=config.mixed_precision).to_dict()


def per_example_loss(config: TrainConfig, loaded: tuple[Any, Any, Any], table: LabelledTable) -> np.ndarray:
    """Cross-entropy of each row under the model (what a loss-threshold attacker scores)."""
    from training.loops import predict

    model, tokenizer, device = loaded
    _, probs = predict(model, tokenizer=tokenizer, texts=list(table.texts), config=config, device=device)
    picked = probs[np.arange(len(table)), np.asarray(table.label_ids)]
    return -np.log(np.clip(picked.astype(np.float64), 1e-12, 1.0))


def auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """ROC AUC of ``scores`` (higher: more likely a member): sklearn's, else the rank formula
    (Mann-Whitney U / (n_members x n_others), ties at half)."""
    try:
        from sklearn.metrics import roc_auc_score
    except ImportError:
        from scipy.stats import rankdata

        ranks = rankdata(scores)
        n1, n0 = int(is_member.sum()), int((~is_member).sum())
        return float((ranks[is_member].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    return float(roc_auc_score(is_member, scores))


def membership_inference(
    config: TrainConfig, loaded: tuple[Any, Any, Any], members: LabelledTable, others: LabelledTable
) -> dict:
    """Loss-threshold attack: a row with a lower loss is guessed a training row. AUC over the
    rows the members trained on vs the held-out rows, and the best threshold's TPR - FPR."""
    member_loss = per_example_loss(config, loaded, members)
    other_loss = per_example_loss(config, loaded, others)
    scores = -np.concatenate([member_loss, other_loss])
    is_member = np.concatenate([np.ones(len(member_loss), bool), np.zeros(len(other_loss), bool)])
    thresholds = np.unique(scores)
    advantage = max(
        float((scores[is_member] >= t).mean() - (scores[~is_member] >= t).mean()) for t in thresholds
    )
    return {
        "auc": round(auc(scores, is_member), 4),
        "advantage": round(advantage, 4),
        "mean_loss_members": round(float(member_loss.mean()), 4),
        "mean_loss_held_out": round(float(other_loss.mean()), 4),
        "n_members": len(member_loss),
        "n_held_out": len(other_loss),
    }


def accountant_check(plan: DpSgdPlan) -> dict:
    """The plan's (σ, q, T) priced again by Opacus' own accountants (not the PLD one that priced
    it): ε at δ by PRV (to 0.1 % of the target) and RDP, and their relative error to the target."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    history = [(plan.noise_multiplier, plan.sample_rate, plan.steps)]
    prv = PRVAccountant()
    prv.history = list(history)
    rdp = RDPAccountant()
    rdp.history = list(history)
    eps_prv = float(prv.get_epsilon(plan.delta, eps_error=1e-3 * plan.target_epsilon))
    eps_rdp = float(rdp.get_epsilon(plan.delta))
    return {
        "pld_epsilon": round(plan.epsilon, 5),
        "prv_epsilon": round(eps_prv, 5),
        "prv_relative_error": round((eps_prv - plan.target_epsilon) / plan.target_epsilon, 5),
        "rdp_epsilon": round(eps_rdp, 5),
        "rdp_relative_error": round((eps_rdp - plan.target_epsilon) / plan.target_epsilon, 5),
    }


def round_summary(rounds: list[dict], full_model_bytes: int, n_members: int) -> dict:
    """Time, Flower overhead and bytes per round of one federated run."""
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
    per_member = [(r["bytes_sent"] + r["bytes_received"]) / max(1, n_members) for r in rounds]
    return {
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
        "mean_bytes_per_member_per_round": int(np.mean(per_member)),
        "bytes_per_member_per_round_vs_full_model": round(float(np.mean(per_member)) / full_model_bytes, 4),
        "mean_overhead_vs_local_training": round(
            float(
                np.mean([r["flower_overhead_seconds"] / r["slowest_client_train_seconds"] for r in rounds])
            ),
            3,
        ),
        "per_round": per_round,
    }


def union_of(tables: list[LabelledTable], labels: tuple[str, ...]) -> LabelledTable:
    return LabelledTable(
        texts=tuple(t for m in tables for t in m.texts),
        label_ids=np.concatenate([m.label_ids for m in tables]),
        labels=labels,
    )


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
    parser.add_argument(
        "--dp-epsilon",
        default="",
        help="comma-separated ε targets: one private federated run each (e.g. 8,3,1)",
    )
    parser.add_argument("--dp-delta", type=float, default=1e-5)
    parser.add_argument("--dp-max-grad-norm", type=float, default=1.0, help="DP-SGD's clipping norm C")
    parser.add_argument(
        "--dp-learning-rate",
        type=float,
        default=None,
        help="the private runs' learning rate (default: --learning-rate)",
    )
    parser.add_argument(
        "--pooling", default="cls", choices=["cls", "mean"], help="what the head reads (all runs)"
    )
    parser.add_argument(
        "--dp-head-only",
        action="store_true",
        help="the private runs train the classifier head alone (DP linear probing on the frozen encoder)",
    )
    parser.add_argument("--dp-optimizer", default=None, choices=["adamw", "sgd"], help="default: adamw")
    parser.add_argument("--dp-batch-size", type=int, default=None, help="default: --batch-size")
    parser.add_argument("--dp-local-epochs", type=int, default=None, help="default: --local-epochs")
    args = parser.parse_args()
    epsilons = [float(x) for x in args.dp_epsilon.split(",") if x.strip()]
    if epsilons and args.strategy == "fedprox":
        parser.error("a private job cannot use fedprox (its proximal term is not part of the priced step)")

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
        pooling=args.pooling,
    )
    # The private runs' own hyper-parameters (DP-SGD wants other ones than AdamW on LoRA does).
    dp_config = config.replace(
        head_only=args.dp_head_only,
        optimizer=args.dp_optimizer or config.optimizer,
        batch_size=args.dp_batch_size or config.batch_size,
        local_epochs=args.dp_local_epochs or config.local_epochs,
        learning_rate=args.dp_learning_rate or config.learning_rate,
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
    union = union_of(member_train, config.labels)
    # In a private job each member splits unstratified (the ClientApp does; the train side's size,
    # which its plan is priced on, then depends on the row count alone).
    dp_member_train = [
        split_train_test(m, test_fraction=args.member_test_fraction, seed=args.seed, stratify=False)[0]
        for m in members
    ]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(
        f"device={device}  train rows={len(train_all)} (members: {[m.label_counts() for m in members]})  "
        f"test rows={len(test)} {test.label_counts()}  workdir={workdir}",
        flush=True,
    )

    model, _ = build_model_and_tokenizer(config)
    trainable, total = count_parameters(model)
    dp_trainable = count_parameters(build_model_and_tokenizer(dp_config)[0])[0] if epsilons else None
    full_model_bytes = sum(p.numel() * 4 for p in model.parameters())  # fp32
    trainable_bytes = state_nbytes(get_trainable_state(model))
    del model

    # ---------------------------------------------------------------- plans
    orgs = ["member-a", "member-b", "member-c"]
    # What the clearinghouse prices when it schedules a private job (federation.services): the
    # train side's rows from the member's row count, the job's batch size, local epochs and rounds.
    plans_by_epsilon: dict[float, dict[str, DpSgdPlan]] = {}
    for epsilon in epsilons:
        plans_by_epsilon[epsilon] = {}
        for org, part, trained in zip(orgs, members, dp_member_train, strict=True):
            rows = train_rows(len(part), args.member_test_fraction)
            assert rows == len(trained), (rows, len(trained))
            plans_by_epsilon[epsilon][org] = DpSgdPlan.from_job(
                rows=rows,
                batch_size=dp_config.batch_size,
                rounds=args.rounds,
                target_epsilon=epsilon,
                delta=args.dp_delta,
                max_grad_norm=args.dp_max_grad_norm,
                local_epochs=dp_config.local_epochs,
            )

    # ---------------------------------------------------------------- federated
    base_run_config = {
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
        "pooling": args.pooling,
        "seed": args.seed,
        "proximal-mu": args.proximal_mu,
        "test-fraction": args.member_test_fraction,
        "round-timeout": args.round_timeout,
        "connect-timeout": 120.0,
    }
    runs: dict[str, dict] = {}
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
        startup_seconds = time.perf_counter() - started
        for epsilon in [None, *epsilons]:
            name = "federated" if epsilon is None else f"dp-epsilon-{epsilon:g}"
            out = workdir / name
            run_config = {
                **base_run_config,
                "job-id": f"federated-sms-{name}",
                "output-dir": str(out),
                "metrics-jsonl": str(out / "metrics.jsonl"),
            }
            plans = {} if epsilon is None else plans_by_epsilon[epsilon]
            if plans:
                run_config["dp-plans"] = json.dumps(
                    {o: p.to_dict() for o, p in plans.items()}, sort_keys=True
                )
                run_config.update(
                    {
                        "learning-rate": dp_config.effective_learning_rate,
                        "head-only": dp_config.head_only,
                        "optimizer": dp_config.optimizer,
                        "batch-size": dp_config.batch_size,
                        "local-epochs": dp_config.local_epochs,
                    }
                )
            print(f"--- {name}", flush=True)
            run_started = time.perf_counter()
            result = fed.run_app(
                run_config, timeout=args.round_timeout * args.rounds + 600, stream_log=f"flwr-run-{name}"
            )
            run_wall = time.perf_counter() - run_started
            records = read_jsonl(out / "metrics.jsonl")
            rounds = [r for r in records if r["event"] == "round"]
            if not (out / "adapter.safetensors").exists() or len(rounds) != args.rounds:
                print(result.stdout[-5000:])
                print(f"{name} run failed; see", workdir)
                return 1
            run_train_config = config if epsilon is None else dp_config
            loaded = load_adapter(run_train_config, out / "adapter.safetensors")
            evaluation = evaluate_model(run_train_config, loaded, test)
            trained_on = union_of(member_train if epsilon is None else dp_member_train, config.labels)
            attack = membership_inference(run_train_config, loaded, trained_on, test)
            del loaded
            runs[name] = {
                "target_epsilon": epsilon,
                "accuracy": evaluation["accuracy"],
                "spam_f1": evaluation["per_class_f1"]["spam"],
                "macro_f1": evaluation["macro_f1"],
                "wall_seconds": round(run_wall, 1),
                **round_summary(rounds, full_model_bytes, len(members)),
                "membership_inference": attack,
            }
            if plans:
                reported = json.loads((out / "report.json").read_text(encoding="utf-8"))["privacy"]
                runs[name]["privacy"] = {
                    "learning_rate": run_config["learning-rate"],
                    "optimizer": dp_config.optimizer,
                    "head_only": dp_config.head_only,
                    "batch_size": dp_config.batch_size,
                    "local_epochs": dp_config.local_epochs,
                    "delta": args.dp_delta,
                    "max_grad_norm": args.dp_max_grad_norm,
                    "accountant": "pld",
                    "members": {
                        org: {
                            "rows": plan.rows,
                            "sample_rate": round(plan.sample_rate, 5),
                            "steps": plan.steps,
                            "noise_multiplier": round(plan.noise_multiplier, 4),
                            **accountant_check(plan),
                            "opacus_epsilon_of_the_run": reported[org]["reported_epsilon"],
                            "steps_taken": reported[org]["steps_taken"],
                        }
                        for org, plan in plans.items()
                    },
                }
            print(json.dumps({k: v for k, v in runs[name].items() if k != "per_round"}), flush=True)

    # ---------------------------------------------------------------- centralised
    central = None
    if not args.skip_centralised:
        central = train_centralised(config, union, test, epochs=args.rounds * args.local_epochs)

    # ---------------------------------------------------------------- report
    summary = {
        "device": device,
        "strategy": args.strategy,
        "rounds": args.rounds,
        "local_epochs": args.local_epochs,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "pooling": args.pooling,
        "seed": args.seed,
        "n_train_members": [len(m) for m in member_train],
        "n_train_members_private": [len(m) for m in dp_member_train],
        "member_label_counts": [m.label_counts() for m in members],
        "n_train_centralised": len(union),
        "n_test": len(test),
        "total_parameters": total,
        "trainable_parameters": trainable,
        "trainable_parameters_private": dp_trainable,
        "full_model_bytes_fp32": full_model_bytes,
        "trainable_bytes": trainable_bytes,
        "federation_startup_seconds": round(startup_seconds, 1),
        # Side by side: the non-private run, then each ε.
        "comparison": [
            {
                "run": name,
                "target_epsilon": run["target_epsilon"],
                "accuracy": round(run["accuracy"], 4),
                "spam_f1": None if run["spam_f1"] is None else round(run["spam_f1"], 4),
                "mean_round_seconds": run["mean_round_seconds"],
                "mia_auc": run["membership_inference"]["auc"],
                "max_prv_relative_error": None
                if "privacy" not in run
                else max(abs(m["prv_relative_error"]) for m in run["privacy"]["members"].values()),
            }
            for name, run in runs.items()
        ],
        "federated": runs["federated"],
        "private": [run for name, run in runs.items() if name != "federated"],
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
