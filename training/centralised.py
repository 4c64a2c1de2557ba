"""The centralised baseline: the same model, loops and hyper-parameters on all the data at once.

Federated fine-tuning is judged against this: if pooling the data (which the clearinghouse exists
to avoid) would give a much better model, members deserve to know by how much.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from training.config import TrainConfig
from training.data import LabelledTable, make_loader
from training.loops import evaluate, train
from training.models import build_model_and_tokenizer, count_parameters, select_device
from training.params import get_trainable_state, state_nbytes

__all__ = ["train_centralised"]


def train_centralised(
    config: TrainConfig,
    train_table: LabelledTable,
    test_table: LabelledTable,
    *,
    epochs: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Train on ``train_table`` for ``epochs`` passes (default ``config.local_epochs``), evaluating
    on ``test_table`` after each, and return a JSON-serialisable report.

    Epoch ``e`` (0-based) shuffles and seeds dropout with ``config.seed + e``, the same convention a
    federated client uses with its round number, so runs are reproducible.
    """
    if epochs is None:
        epochs = config.local_epochs
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    for name, table in (("train_table", train_table), ("test_table", test_table)):
        if tuple(table.labels) != tuple(config.labels):
            raise ValueError(
                f"{name} has labels {list(table.labels)!r}, the configuration {list(config.labels)!r}"
            )

    started = time.perf_counter()
    device = select_device(device)
    model, tokenizer = build_model_and_tokenizer(config)
    model.to(device)
    trainable, total = count_parameters(model)
    per_epoch = config.replace(local_epochs=1)
    test_loader = make_loader(
        test_table, tokenizer=tokenizer, config=config, shuffle=False, batch_size=config.batch_size * 2
    )
    history = []
    for epoch in range(epochs):
        loader = make_loader(
            train_table, tokenizer=tokenizer, config=config, shuffle=True, seed=config.seed + epoch
        )
        result = train(model, loader, config=per_epoch, device=device, seed=config.seed + epoch)
        metrics = evaluate(model, test_loader, device=device, mixed_precision=config.mixed_precision)
        history.append({"epoch": epoch + 1, "train": result.to_dict(), "eval": metrics.to_dict()})

    return {
        "mode": "centralised",
        "config": config.to_dict(),
        "device": str(device),
        "epochs": epochs,
        "n_train": len(train_table),
        "n_test": len(test_table),
        "train_label_counts": train_table.label_counts(),
        "test_label_counts": test_table.label_counts(),
        "trainable_parameters": trainable,
        "total_parameters": total,
        "trainable_bytes": state_nbytes(get_trainable_state(model)),
        "history": history,
        "final": history[-1]["eval"],
        "seconds": time.perf_counter() - started,
    }
