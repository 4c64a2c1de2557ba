"""Train/evaluate loops: learning, determinism, FedProx, metrics; the centralised baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from training.centralised import train_centralised
from training.data import make_loader
from training.loops import classification_metrics, evaluate, predict, train
from training.models import build_model_and_tokenizer
from training.params import get_trainable_state, set_trainable_state

CPU = torch.device("cpu")


def _setup(config, table):
    model, tokenizer = build_model_and_tokenizer(config)
    loader = make_loader(table, tokenizer=tokenizer, config=config, shuffle=True)
    return model, tokenizer, loader


def _distance(a, b):
    return float(sum((a[n].double() - b[n].double()).pow(2).sum() for n in a) ** 0.5)


def test_training_reduces_loss_and_separates_the_toy_classes(make_config, toy_tables):
    train_table, test_table = toy_tables
    config = make_config(local_epochs=8)
    model, tokenizer, loader = _setup(config, train_table)
    test_loader = make_loader(test_table, tokenizer=tokenizer, config=config, shuffle=False)
    before = evaluate(model, test_loader, device=CPU)
    result = train(model, loader, config=config, device=CPU)
    after = evaluate(model, test_loader, device=CPU)
    assert result.steps == 8 * 8 and result.examples == 8 * 64 and result.epochs == 8
    assert result.proximal_loss == 0.0 and result.seconds > 0
    assert after.loss < before.loss
    assert after.accuracy >= 0.9 and after.macro_f1 >= 0.9, after
    assert after.n == 32 and set(after.per_class_f1) == {"ham", "spam"}
    assert sum(map(sum, after.confusion)) == 32

    labels, probs = predict(
        model,
        tokenizer=tokenizer,
        texts=["win free cash prize", "dinner at home later"],
        config=config,
        device=CPU,
    )
    assert labels == ["spam", "ham"] and probs.shape == (2, 2)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_same_seed_gives_identical_weights(make_config, toy_tables):
    train_table, _ = toy_tables
    states = []
    for seed in (7, 7, 8):
        config = make_config(seed=seed, local_epochs=2, lora_dropout=0.1)
        model, _, loader = _setup(config, train_table)
        train(model, loader, config=config, device=CPU)
        states.append(get_trainable_state(model))
    assert all(torch.equal(states[0][n], states[1][n]) for n in states[0])
    assert not all(torch.equal(states[0][n], states[2][n]) for n in states[0])


def test_fedprox_keeps_weights_closer_to_the_global_model(make_config, toy_tables):
    train_table, _ = toy_tables
    distances, results = {}, {}
    for mu in (0.0, 1.0):
        config = make_config(fedprox_mu=mu, local_epochs=3)
        model, _, loader = _setup(config, train_table)
        global_state = get_trainable_state(model)
        results[mu] = train(model, loader, config=config, device=CPU, global_state=global_state)
        distances[mu] = _distance(get_trainable_state(model), global_state)
    assert results[0.0].proximal_loss == 0.0 and results[1.0].proximal_loss > 0.0
    assert distances[1.0] < 0.8 * distances[0.0], distances


def test_fedprox_anchor_defaults_to_the_weights_at_the_start(make_config, toy_tables):
    train_table, _ = toy_tables
    config = make_config(fedprox_mu=1.0, local_epochs=2)
    a, _, loader_a = _setup(config, train_table)
    b, _, loader_b = _setup(config, train_table)
    train(a, loader_a, config=config, device=CPU, global_state=get_trainable_state(a))
    train(b, loader_b, config=config, device=CPU)
    sa, sb = get_trainable_state(a), get_trainable_state(b)
    assert all(torch.equal(sa[n], sb[n]) for n in sa)


def test_max_steps_caps_local_work(make_config, toy_tables):
    train_table, _ = toy_tables
    config = make_config(local_epochs=5, max_steps=3)
    model, _, loader = _setup(config, train_table)
    result = train(model, loader, config=config, device=CPU)
    assert (result.steps, result.examples, result.epochs) == (3, 24, 0)


def test_a_round_trip_through_the_global_state_continues_training(make_config, toy_tables):
    """What a federated round does: receive state, train, send state back."""
    train_table, _ = toy_tables
    config = make_config(local_epochs=1)
    server, _ = build_model_and_tokenizer(config)
    client, _, loader = _setup(config.replace(seed=1), train_table)
    set_trainable_state(client, get_trainable_state(server))
    train(client, loader, config=config, device=CPU)
    update = get_trainable_state(client)
    assert _distance(update, get_trainable_state(server)) > 0
    set_trainable_state(server, update)
    assert _distance(get_trainable_state(server), update) == 0


def test_classification_metrics_by_hand():
    # truth:     a a a b b c ; predicted: a a b b c c
    metrics = classification_metrics(
        np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2]), label_names=["a", "b", "c", "d"]
    )
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    f1 = {"a": 2 * 2 / (3 + 2), "b": 2 * 1 / (2 + 2), "c": 2 * 1 / (1 + 2)}
    assert metrics["per_class_f1"] == pytest.approx({**f1, "d": None})
    assert metrics["macro_f1"] == pytest.approx(sum(f1.values()) / 3)  # 'd' absent: left out
    assert metrics["confusion"][0] == [2, 1, 0, 0] and metrics["n"] == 6
    # A class that is never predicted counts as F1 = 0.
    never_predicted = classification_metrics(np.array([0, 1]), np.array([0, 0]), label_names=["a", "b"])
    assert never_predicted["per_class_f1"]["b"] == 0.0


def test_centralised_baseline_report(make_config, toy_tables):
    train_table, test_table = toy_tables
    report = train_centralised(make_config(), train_table, test_table, epochs=6)
    assert report["mode"] == "centralised" and report["device"] in ("cpu", "cuda")
    assert report["n_train"] == 64 and report["n_test"] == 32 and report["epochs"] == 6
    assert [h["epoch"] for h in report["history"]] == list(range(1, 7))
    assert report["final"]["accuracy"] >= 0.9
    assert report["history"][-1]["train"]["loss"] < report["history"][0]["train"]["loss"]
    assert report["trainable_bytes"] == 4 * report["trainable_parameters"]
    import json

    json.dumps(report)  # JSON-serialisable as promised
