"""DP-SGD with Opacus on the tiny BERT with LoRA: what trains, what is reported, clipping, refusals."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from tests.training.conftest import LABELS, make_texts
from training.data import LabelledTable, make_loader
from training.dp_sgd import make_private, train_private, train_with_plan
from training.models import build_model_and_tokenizer
from training.privacy import DpSgdError, DpSgdPlan

pytestmark = pytest.mark.filterwarnings(
    "ignore:Secure RNG turned off:UserWarning", "ignore:Full backward hook is firing:UserWarning"
)


def _no_dropout(model: nn.Module) -> nn.Module:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


@pytest.fixture
def setup(make_config, toy_tables):
    config = make_config(batch_size=8)
    model, tokenizer = build_model_and_tokenizer(config)
    train, _ = toy_tables  # 64 rows
    loader = make_loader(train, tokenizer=tokenizer, config=config, shuffle=False)
    return _no_dropout(model), tokenizer, config, loader


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_trains_only_trainable_parameters_and_reports_the_mechanism(setup) -> None:
    model, _, _, loader = setup
    plan = DpSgdPlan.from_job(
        rows=64, batch_size=8, local_steps=3, rounds=2, target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0
    )
    assert plan.sample_rate == 1 / 8 and plan.steps == 6
    before = _state(model)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name or "classifier" in name for name in trainable)

    first = train_with_plan(model, loader, plan, learning_rate=1e-2, steps=3, rng_seed=0)
    assert (first.steps, first.total_steps) == (3, 3)
    assert first.noise_multiplier == plan.noise_multiplier
    assert first.max_grad_norm == plan.max_grad_norm
    assert first.sample_rate == plan.sample_rate  # 64 rows / 8 a batch: 1 / ⌈64 / 8⌉ = 8 / 64
    assert first.history == ((plan.noise_multiplier, plan.sample_rate, 3),)
    assert first.delta == plan.delta and first.accountant == "prv"
    assert 0 < first.epsilon < plan.epsilon
    assert first.examples + first.empty_batches > 0 and math.isfinite(first.loss)

    # The second round resumes the accountant: ε covers both rounds, as the plan priced.
    second = train_with_plan(model, loader, plan, learning_rate=1e-2, prior_history=first.history, rng_seed=1)
    assert (second.steps, second.total_steps) == (3, 6)
    assert second.epsilon > first.epsilon
    # Opacus' PRV (ε error 0.01) against the plan's PLD: the same mechanism, the same ε.
    assert second.epsilon == pytest.approx(plan.epsilon, abs=0.02 + 0.01 * plan.epsilon)
    with pytest.raises(DpSgdError) as caught:  # the plan is spent
        train_with_plan(model, loader, plan, learning_rate=1e-2, steps=1, prior_history=second.history)
    assert caught.value.code == "plan_mismatch"

    after = _state(model)
    for name, value in after.items():
        if name in trainable:
            assert not torch.equal(value, before[name]), f"{name} did not train"
        else:
            assert torch.equal(value, before[name]), f"frozen {name} changed"
    # Opacus' hooks and per-example gradients are gone: the model trains and saves as before.
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def test_per_example_gradients_of_lora_are_exact(setup) -> None:
    model, _, _, loader = setup
    reference = copy.deepcopy(model)
    batch = next(iter(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    private = make_private(
        model,
        torch.optim.SGD(params, lr=0.0),
        loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        rng_seed=0,
    )
    try:
        private.module.train()
        private.module(**batch).loss.backward()
        samples = [p.grad_sample.detach().clone() for p in params]
    finally:
        private.optimizer.zero_grad(set_to_none=True)
        private.close()
    reference.train()
    ref_params = [p for p in reference.parameters() if p.requires_grad]
    for i in range(batch["labels"].shape[0]):
        one = {k: v[i : i + 1] for k, v in batch.items()}  # the same padding as in the batch
        reference.zero_grad(set_to_none=True)
        reference(**one).loss.backward()
        for sample, p in zip(samples, ref_params, strict=True):
            torch.testing.assert_close(sample[i], p.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:Optimal order is the smallest alpha:UserWarning")
def test_per_example_clipping_bounds_the_update(setup) -> None:
    model, tokenizer, config, _ = setup
    # One example with an enormous loss: its label contradicts a head scaled up 1000 times.
    texts, labels = make_texts(32, seed=5)
    table = LabelledTable.from_lists(texts=texts, labels=labels, label_names=LABELS)
    loader = make_loader(table, tokenizer=tokenizer, config=config, shuffle=False, batch_size=32)
    head = next(m for name, m in model.named_modules() if name.endswith("modules_to_save.default"))
    with torch.no_grad():
        head.weight.mul_(1000.0)
    trainable = [p for p in model.parameters() if p.requires_grad]

    plain = copy.deepcopy(model)
    plain_params = [p for p in plain.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in plain_params]
    optimizer = torch.optim.SGD(plain_params, lr=1.0)
    plain.train()
    plain(**next(iter(loader))).loss.backward()
    optimizer.step()
    plain_norm = math.sqrt(
        sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(plain_params, before, strict=True))
    )

    clip, lr = 1e-3, 1.0
    before = [p.detach().clone() for p in trainable]
    report = train_private(
        model,
        loader,
        noise_multiplier=1e-9,  # practically no noise: the update is the clipped gradients' mean
        max_grad_norm=clip,
        delta=1e-3,
        steps=1,
        learning_rate=lr,
        optimizer="sgd",
        accountant="rdp",
        rng_seed=3,
    )
    assert report.epsilon > 1000  # no noise, no privacy: the report says so
    update = math.sqrt(
        sum(float((p.detach() - b).pow(2).sum()) for p, b in zip(trainable, before, strict=True))
    )
    # Σ of `examples` gradients each of norm ≤ C, divided by the expected batch size (32 here).
    bound = lr * clip * report.examples / 32
    assert report.examples > 0
    assert update <= bound * (1 + 1e-4) + 1e-9
    assert plain_norm > 100 * bound  # without clipping the step is far larger


def test_empty_batches_are_noised_and_accounted(setup) -> None:
    model, tokenizer, config, _ = setup
    texts, labels = make_texts(8, seed=7)
    table = LabelledTable.from_lists(texts=texts, labels=labels, label_names=LABELS)
    loader = make_loader(table, tokenizer=tokenizer, config=config, shuffle=False, batch_size=1)
    before = _state(model)
    report = train_private(
        model,
        loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        delta=1e-2,
        steps=16,
        learning_rate=1e-2,
        rng_seed=11,
    )
    # q = 1/8 over 8 rows: a batch is empty with probability (7/8)^8 ≈ 0.34.
    assert report.empty_batches > 0
    assert report.steps == report.total_steps == 16
    assert report.history == ((1.0, 1 / 8, 16),)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


class _Stream(IterableDataset):
    def __iter__(self):
        return iter([])


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"poisson_sampling": False}, "poisson_sampling_required"),
        ({"noise_multiplier": None}, "missing_dp_parameter"),
        ({"max_grad_norm": None}, "missing_dp_parameter"),
        ({"delta": None}, "missing_dp_parameter"),
        ({"noise_multiplier": 0.0}, "invalid_noise_multiplier"),
        ({"noise_multiplier": math.nan}, "invalid_noise_multiplier"),
        ({"max_grad_norm": -1.0}, "invalid_max_grad_norm"),
        ({"delta": 1.0}, "invalid_privacy_loss"),
        ({"steps": 0}, "invalid_training_steps"),
        ({"accountant": "gdp"}, "unknown_accountant"),
    ],
)
def test_refusals(setup, changes: dict, code: str) -> None:
    model, _, _, loader = setup
    before = _state(model)
    values = {
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "delta": 1e-3,
        "steps": 2,
        "learning_rate": 1e-2,
        **changes,
    }
    with pytest.raises(DpSgdError) as caught:
        train_private(model, loader, **values)
    assert caught.value.code == code
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_refuses_loaders_it_cannot_resample_and_plans_for_other_data(setup) -> None:
    model, tokenizer, config, loader = setup
    with pytest.raises(DpSgdError) as caught:
        train_private(
            model,
            DataLoader(_Stream(), batch_size=4),
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            delta=1e-3,
            steps=1,
            learning_rate=1e-2,
        )
    assert caught.value.code == "unsupported_data_loader"

    plan = DpSgdPlan.from_job(
        rows=100, batch_size=8, local_steps=2, rounds=1, target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0
    )
    with pytest.raises(DpSgdError) as caught:
        train_with_plan(model, loader, plan, learning_rate=1e-2)  # 64 rows, not 100
    assert caught.value.code == "plan_mismatch"
    bigger_batches = make_loader(
        loader.dataset.table, tokenizer=tokenizer, config=config, shuffle=False, batch_size=16
    )
    plan64 = DpSgdPlan.from_job(
        rows=64, batch_size=8, local_steps=2, rounds=1, target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0
    )
    with pytest.raises(DpSgdError) as caught:
        train_with_plan(model, bigger_batches, plan64, learning_rate=1e-2)
    assert caught.value.code == "plan_mismatch"


def test_report_check_refuses_another_mechanism(setup) -> None:
    model, _, _, loader = setup
    plan = DpSgdPlan.from_job(
        rows=64, batch_size=8, local_steps=2, rounds=1, target_epsilon=8.0, delta=1e-3, max_grad_norm=1.0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = train_private(
            model,
            loader,
            noise_multiplier=plan.noise_multiplier * 0.5,  # half the planned noise
            max_grad_norm=1.0,
            delta=1e-3,
            steps=2,
            learning_rate=1e-2,
        )
    with pytest.raises(DpSgdError) as caught:
        report.check(plan)
    assert caught.value.code == "plan_mismatch"
    assert report.to_dict()["history"] == [[plan.noise_multiplier * 0.5, 1 / 8, 2]]


def test_a_head_over_the_mean_pooled_vector_learns_with_dp_sgd_and_plain_sgd(make_config, toy_tables) -> None:
    """DP linear probing: only the head trains (770 parameters on MiniLM), with plain SGD at a large
    step; the frozen encoder is left exactly as it was, and the toy task is learnt under the noise."""
    from training.loops import evaluate

    config = make_config(pooling="mean", head_only=True, optimizer="sgd", learning_rate=20.0, batch_size=16)
    model, tokenizer = build_model_and_tokenizer(config)
    train, test = toy_tables
    loader = make_loader(train, tokenizer=tokenizer, config=config, shuffle=False)
    test_loader = make_loader(test, tokenizer=tokenizer, config=config, shuffle=False)
    before = _state(model)
    chance = evaluate(model, test_loader, device=torch.device("cpu"), mixed_precision=False).accuracy
    plan = DpSgdPlan.from_job(
        rows=64, batch_size=16, local_epochs=40, rounds=1, target_epsilon=8.0, delta=1e-3, max_grad_norm=0.5
    )
    report = train_with_plan(model, loader, plan, learning_rate=20.0, optimizer="sgd", rng_seed=0)
    assert report.total_steps == plan.steps
    after = _state(model)
    changed = {name for name in after if not torch.equal(after[name], before[name])}
    assert changed == {"classifier.weight", "classifier.bias"}
    accuracy = evaluate(model, test_loader, device=torch.device("cpu"), mixed_precision=False).accuracy
    assert accuracy >= 0.9 > chance + 0.2, (chance, accuracy)
