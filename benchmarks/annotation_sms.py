"""Benchmark: model-assisted annotation (issue 14) on the SMS Spam Collection, simulated annotator.

The annotator answers from the true labels. Held-out: a stratified 20 % (seed ``--seed``); the
other 80 % is the pool people label. MiniLM-L6 sentence embeddings of all 5,574 messages are
computed once and cached in a temp file (keyed by the data file's SHA-256) for the repeated
retraining. Reports:

1. active learning (margin) vs random order: human labels needed to reach macro-F1 >= 0.95 on the
   held-out 20 % (batches of ``--batch`` labels, the proposer retrained after each), over
   ``--repeats`` seeds;
2. with at most 300 human labels: the threshold calibrated for 98 % precision (Clopper-Pearson
   lower bound, 95 % confidence, on 5-fold out-of-sample predictions of the human-labelled items),
   the share of the remaining pool labelled automatically, estimated vs measured precision;
3. 5 % of all labels flipped at random: recall of the flipped items among the top-k flagged by
   confident learning (k = number flipped), out-of-sample probabilities from 5-fold CV;
4. time to embed and to propose labels for all 5,574 messages on CPU;
5. exact and near-duplicates (character 5-gram Jaccard >= 0.8), and a sample of 30 near pairs
   judged by a stated rule (and printed for a person to check).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/annotation_sms.py
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sklearn.metrics import f1_score  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from training.annotation import active, auto, dedup, proposer, quality  # noqa: E402
from training.annotation.embed import load_embedder  # noqa: E402
from training.data import load_labelled_table  # noqa: E402

LABELS = ("ham", "spam")


def load(path: Path) -> tuple[list[str], np.ndarray]:
    table = load_labelled_table(path, text_column="SMS", label_column="Label", labels=LABELS)
    return list(table.texts), np.asarray(table.label_ids)


def embeddings(path: Path, texts: list[str], *, device: str) -> tuple[np.ndarray, float, bool]:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    cache = Path(tempfile.gettempdir()) / f"annotation_sms_{digest}_{device}.npz"
    if cache.exists():
        data = np.load(cache)
        return data["x"], float(data["seconds"]), True
    embedder = load_embedder(device=device)
    start = time.perf_counter()
    x = embedder.embed(texts, batch_size=64)
    seconds = time.perf_counter() - start
    np.savez(cache, x=x, seconds=seconds)
    return x, seconds, False


def labels_to_target(
    x: np.ndarray,
    y: np.ndarray,
    pool: np.ndarray,
    test: np.ndarray,
    *,
    strategy: str,
    batch: int,
    seed: int,
    target_f1: float,
    budget: int,
) -> int | None:
    """Human labels (from the pool) needed before the proposer reaches ``target_f1`` on ``test``."""
    known = np.full(len(pool), -1, dtype=np.int64)
    probabilities = None
    while (known >= 0).sum() < min(budget, len(pool)):
        order = (
            active.labelling_order(labels=known, n_classes=2, probabilities=probabilities, seed=seed)
            if strategy == "active"
            else np.random.default_rng(seed).permutation(np.flatnonzero(known == -1))
        )
        if strategy == "random":
            seed += 1
        ask = order[:batch]
        known[ask] = y[pool[ask]]  # the simulated annotator
        labelled = known >= 0
        if len(np.unique(known[labelled])) < 2:
            continue
        model = proposer.fit(x[pool[labelled]], known[labelled], n_classes=2)
        pred = model.propose(x[test]).label_ids
        if f1_score(y[test], pred, average="macro") >= target_f1:
            return int(labelled.sum())
        probabilities = model.propose(x[pool]).probabilities
    return None


def active_labels(
    x: np.ndarray, y: np.ndarray, pool: np.ndarray, *, n: int, batch: int, seed: int
) -> np.ndarray:
    """Pool positions of the first ``n`` items active learning asks about."""
    known = np.full(len(pool), -1, dtype=np.int64)
    probabilities = None
    while (known >= 0).sum() < n:
        order = active.labelling_order(labels=known, n_classes=2, probabilities=probabilities, seed=seed)
        take = order[: min(batch, n - int((known >= 0).sum()))]
        known[take] = y[pool[take]]  # the simulated annotator
        labelled = known >= 0
        if len(np.unique(known[labelled])) == 2:
            probabilities = (
                proposer.fit(x[pool[labelled]], known[labelled], n_classes=2).propose(x[pool]).probabilities
            )
    return np.flatnonzero(known >= 0)


def automatic(
    x: np.ndarray, y: np.ndarray, pool: np.ndarray, human: np.ndarray, *, target: float, name: str
) -> None:
    """Calibrate on the human-labelled items' out-of-sample predictions, auto-label the rest of the pool."""
    rows = pool[human]
    oos = proposer.out_of_sample_probabilities(x[rows], y[rows], n_classes=2, seed=0)
    conf, right = oos.max(axis=1), oos.argmax(axis=1) == y[rows]
    errors_at = np.flatnonzero(~right[np.argsort(-conf, kind="stable")])[:4].tolist()
    rest = np.setdiff1d(pool, rows)
    proposals = proposer.fit(x[rows], y[rows], n_classes=2).propose(x[rest])
    print(
        f"  {name}: {len(rows)} human labels ({int(y[rows].sum())} spam); out-of-sample accuracy "
        f"{right.mean():.3f}; first calibration errors at confidence ranks {errors_at}"
    )
    for level in (0.95, 0.8, 0.5):
        choice = auto.calibrate_threshold(conf, right, target_precision=target, confidence_level=level)
        above = proposals.confidences >= (choice.threshold if choice.threshold is not None else np.inf)
        measured = (
            float(np.mean(proposals.label_ids[above] == y[rest][above])) if above.any() else float("nan")
        )
        threshold = "none" if choice.threshold is None else f"{choice.threshold:.4f}"
        print(
            f"    CP level {level:.2f}: threshold {threshold}; estimated precision (CP lower bound) "
            f"{choice.precision_lower_bound:.4f}, observed on calibration {choice.observed_precision:.4f}, "
            f"calibration coverage {choice.calibration_coverage:.3f} -> auto-labelled {int(above.sum())}/"
            f"{len(rest)} = {above.mean():.3f} of the rest at measured precision {measured:.4f} "
            f"({int((proposals.label_ids[above] != y[rest][above]).sum())} wrong)"
        )
    order = np.argsort(-proposals.confidences)
    for share in (0.9, 0.95):
        top = order[: int(share * len(order))]
        print(
            f"    (oracle view: the most confident {share:.0%} of the rest have measured precision "
            f"{np.mean(proposals.label_ids[top] == y[rest][top]):.4f})"
        )


def near_dup_rule(a: str, b: str) -> bool:
    """Judge a near pair: after masking digits and dropping punctuation, the word sequences differ
    by at most 3 word edits (or at most 15 % of the longer one's words)."""

    def words(t: str) -> list[str]:
        return re.sub(r"[^\w#]+", " ", re.sub(r"\d", "#", t.casefold())).split()

    u, v = words(a), words(b)
    d = list(range(len(v) + 1))
    for i in range(1, len(u) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(v) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (u[i - 1] != v[j - 1]))
    return d[len(v)] <= max(3, int(0.15 * max(len(u), len(v))))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "sms_spam.tsv"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    path = Path(args.data)
    texts, y = load(path)
    print(f"SMS Spam: {len(texts)} messages, {int((y == 1).sum())} spam; torch threads {args.threads}")
    x, embed_s, cached = embeddings(path, texts, device=args.device)
    sample = texts[:500]
    embedder = load_embedder(device=args.device)
    t0 = time.perf_counter()
    embedder.embed(sample, batch_size=64)
    sample_s = time.perf_counter() - t0
    print(
        f"[4] embedding: the first 500 messages now {sample_s:.1f} s ({len(sample) / sample_s:.0f} msg/s, "
        f"all {len(texts)} extrapolated {sample_s * len(texts) / len(sample):.1f} s)"
    )
    print(
        f"[4] embedding {len(texts)} messages ({args.device}, MiniLM-L6): {embed_s:.1f} s"
        f"{' (measured when the cache was built)' if cached else ''}"
    )
    idx = np.arange(len(texts))
    pool, test = train_test_split(idx, test_size=0.2, stratify=y, random_state=args.seed)
    pool, test = np.sort(pool), np.sort(test)

    print(f"[1] labels to reach macro-F1 >= 0.95 on the held-out {len(test)} (batches of {args.batch})")
    results: dict[str, list[int | None]] = {}
    for strategy in ("active", "random"):
        results[strategy] = [
            labels_to_target(
                x,
                y,
                pool,
                test,
                strategy=strategy,
                batch=args.batch,
                seed=args.seed + r,
                target_f1=0.95,
                budget=2000,
            )
            for r in range(args.repeats)
        ]
        reached = [n for n in results[strategy] if n is not None]
        print(f"  {strategy}: {results[strategy]} (median {np.median(reached) if reached else 'n/a'})")
    full = proposer.fit(x[pool], y[pool], n_classes=2).propose(x[test]).label_ids
    print(f"  (all {len(pool)} pool labels: macro-F1 {f1_score(y[test], full, average='macro'):.4f})")

    print("[2] automatic labelling at target precision 0.98 with at most 300 human labels")
    human = active_labels(x, y, pool, n=300, batch=args.batch, seed=args.seed)
    automatic(x, y, pool, human, target=0.98, name="300 by active learning")
    rng = np.random.default_rng(args.seed)
    automatic(x, y, pool, np.sort(rng.permutation(len(pool))[:300]), target=0.98, name="300 at random")
    mixed = np.union1d(
        active_labels(x, y, pool, n=150, batch=args.batch, seed=args.seed), rng.permutation(len(pool))[:150]
    )
    automatic(x, y, pool, mixed, target=0.98, name="150 active + 150 random")

    print("[3] label errors: 5% of all labels flipped")
    flip_rng = np.random.default_rng(args.seed + 100)
    flipped = flip_rng.choice(len(y), size=round(0.05 * len(y)), replace=False)
    noisy = y.copy()
    noisy[flipped] = 1 - noisy[flipped]
    oos = proposer.out_of_sample_probabilities(x, noisy, n_classes=2, seed=args.seed)
    issues = quality.find_label_errors(noisy, oos)
    k = len(flipped)
    top = issues.ranked[:k]
    if len(top) < k:  # fewer flagged than flipped: fill with the lowest quality scores
        rest = [i for i in np.argsort(issues.quality, kind="stable") if i not in set(top)]
        top = np.r_[top, rest[: k - len(top)]]
    recall = len(np.intersect1d(top, flipped)) / k
    print(
        f"  flipped {k}; flagged {len(issues.ranked)}; recall of flipped among top-{k}: {recall:.3f}; "
        f"precision of all flagged {len(np.intersect1d(issues.ranked, flipped)) / max(1, len(issues.ranked)):.3f}"
    )

    print("[4] proposing for all messages on CPU")
    human_rows = pool[human]
    t0 = time.perf_counter()
    model = proposer.fit(x[human_rows], y[human_rows], n_classes=2)
    t1 = time.perf_counter()
    model.propose(x)
    t2 = time.perf_counter()
    model_all = proposer.fit(x[pool], y[pool], n_classes=2)
    t3 = time.perf_counter()
    model_all.propose(x)
    t4 = time.perf_counter()
    print(
        f"  fit on 300: {t1 - t0:.3f} s; propose {len(x)}: {t2 - t1:.3f} s; fit on {len(pool)}: "
        f"{t3 - t2:.3f} s; propose {len(x)}: {t4 - t3:.3f} s (embedding above: {embed_s:.1f} s)"
    )

    print(
        "[5] duplicates (normalised exact; near: character 5-gram Jaccard >= 0.8, MinHash LSH + exact check)"
    )
    t0 = time.perf_counter()
    report = dedup.find_duplicates(texts, threshold=0.8, shingle_size=5)
    dedup_s = time.perf_counter() - t0
    exact_items = {i for pair in report.exact_pairs for i in pair}
    near_items = {i for a, b, _ in report.near_pairs for i in (a, b)}
    conflicts = dedup.conflicting_groups(report, y)
    print(
        f"  {dedup_s:.1f} s; exact pairs {len(report.exact_pairs)} ({len(exact_items)} messages); near pairs "
        f"{len(report.near_pairs)} ({len(near_items)} messages, {len(near_items - exact_items)} not also exact); "
        f"groups {len(report.groups)} covering {report.items_in_groups()} messages; "
        f"groups with conflicting labels {len(conflicts)}"
    )
    leaked = dedup.leaked_test_rows([texts[i] for i in pool], [texts[i] for i in test])
    print(f"  held-out rows duplicating a pool row: {len(leaked)} of {len(test)}")
    sample_rng = np.random.default_rng(args.seed)
    sample = sample_rng.choice(len(report.near_pairs), size=min(30, len(report.near_pairs)), replace=False)
    good = 0
    for s in sample:
        a, b, sim = report.near_pairs[int(s)]
        ok = near_dup_rule(texts[a], texts[b])
        good += ok
        print(f"   {'OK ' if ok else 'NO '} J={sim:.2f} | {texts[a][:90]!r}\n{'':16}| {texts[b][:90]!r}")
    print(
        f"  rule (<=3 word edits or <=15% of words, digits masked, punctuation dropped): "
        f"{good}/{len(sample)} sampled near pairs judged duplicates"
    )
    print(f"wall time {time.perf_counter() - wall:.1f} s")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"labels_to_f1": results, "recall_at_k": recall}))


if __name__ == "__main__":
    main()
