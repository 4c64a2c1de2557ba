"""DP-SGD with Opacus: per-example clipping and Gaussian noise on the trainable (LoRA) parameters.

``make_private`` wraps a model, its optimiser and a DataLoader with Opacus 1.6's ``PrivacyEngine``
(Poisson sampling, flat clipping at C, noise σ·C, per-example gradients by hooks); ``train_private``
runs a number of steps and reports what Opacus did and accounted (steps, σ, C, q, ε at δ, the
accountant's history to resume from next round); ``train_with_plan`` does so for a ``DpSgdPlan``
and refuses a run that would not be the mechanism the plan priced.

Only parameters with ``requires_grad`` get per-example gradients and updates: under peft LoRA the
adapters and the classification head (peft's ``modules_to_save``), all ``nn.Linear``, which
Opacus' hook-based grad samplers support; the frozen encoder needs no grad sampler.

Randomness: the Poisson sampler and the noise each get a fresh generator seeded from the operating
system (``secrets``), never from the job's seed, which every party knows: noise drawn from a known
seed can be subtracted again. ``rng_seed`` (tests only) makes both reproducible, and predictable.
Opacus' ``secure_mode`` (torchcsprng) is not available for this torch.
"""

# opacus ships no type information (no py.typed); its objects are `Any` here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import dataclasses
import math
import secrets
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from training.config import TrainingError
from training.models import make_optimizer
from training.privacy import DpSgdError, DpSgdPlan

__all__ = ["DpSgdReport", "PrivateTraining", "make_private", "train_private", "train_with_plan"]

OpacusAccountant = Literal["prv", "rdp"]
History = tuple[tuple[float, float, int], ...]


@dataclass(frozen=True)
class DpSgdReport:
    """What one ``train_private`` call did, from Opacus' own objects.

    ``steps``: optimiser steps taken in this call (each one noised and accounted, empty batches
    included); ``history``: the accountant's (σ, q, steps) entries including ``prior_history``;
    ``epsilon``: ε at ``delta`` of the whole history by Opacus' ``accountant``; ``sample_rate``:
    the Poisson rate the data loader sampled at (1 / ⌈rows / batch⌉, at most batch / rows).
    """

    steps: int
    total_steps: int
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    delta: float
    epsilon: float
    accountant: str
    history: History
    examples: int
    empty_batches: int
    loss: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["history"] = [list(entry) for entry in self.history]
        return out

    def check(self, plan: DpSgdPlan) -> None:
        """Refuse (``plan_mismatch``) a run that is not the mechanism ``plan`` priced: another σ or
        C, a higher sample rate, or more steps in all than planned."""
        problems = []
        if not math.isclose(self.noise_multiplier, plan.noise_multiplier, rel_tol=1e-12):
            problems.append(f"noise multiplier {self.noise_multiplier} ≠ {plan.noise_multiplier}")
        if not math.isclose(self.max_grad_norm, plan.max_grad_norm, rel_tol=1e-12):
            problems.append(f"max_grad_norm {self.max_grad_norm} ≠ {plan.max_grad_norm}")
        if any(q > plan.sample_rate * (1 + 1e-12) for _, q, _ in self.history):
            problems.append(f"sample rate {self.sample_rate} > planned {plan.sample_rate}")
        if any(not math.isclose(s, plan.noise_multiplier, rel_tol=1e-12) for s, _, _ in self.history):
            problems.append("the accountant's history holds steps at another noise multiplier")
        if self.total_steps > plan.steps:
            problems.append(f"{self.total_steps} steps in all > planned {plan.steps}")
        if problems:
            raise DpSgdError("plan_mismatch", "; ".join(problems))


@dataclass
class PrivateTraining:
    """Opacus' wrapped objects. Train ``module`` (it wraps the original model, whose parameters it
    updates in place) with ``optimizer`` on ``loader``; ``close()`` removes Opacus' hooks."""

    engine: Any  # opacus.PrivacyEngine
    module: nn.Module  # opacus.GradSampleModule
    optimizer: Any  # opacus.optimizers.DPOptimizer
    loader: DataLoader[Any]  # opacus.data_loader.DPDataLoader

    def close(self) -> None:
        self.module.cleanup()  # type: ignore[operator]  # GradSampleModule.cleanup is unannotated


def _positive(name: str, value: float | None) -> float:
    if value is None:
        raise DpSgdError("missing_dp_parameter", f"{name} is required for DP-SGD", field=name)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        code = "invalid_max_grad_norm" if name == "max_grad_norm" else "invalid_noise_multiplier"
        raise DpSgdError(code, f"{name} must be a finite number > 0, not {value!r}", field=name)
    return float(value)


def _generator(device: torch.device | str, seed: int | None) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(secrets.randbits(63) if seed is None else seed)
    return generator


def _check_mechanism_options(
    poisson_sampling: bool, accountant: OpacusAccountant, loader: DataLoader[Any]
) -> None:
    """Refuse what would not be the mechanism Opacus accounts: fixed-size batches, another
    accountant, a loader Opacus cannot resample."""
    if poisson_sampling is not True:
        raise DpSgdError(
            "poisson_sampling_required",
            "DP-SGD's privacy accounting assumes Poisson sampling; shuffled fixed-size batches are not priced",
            field="poisson_sampling",
        )
    if accountant not in ("prv", "rdp"):
        raise DpSgdError(
            "unknown_accountant", f"Opacus' accountant must be 'prv' or 'rdp', not {accountant!r}"
        )
    if isinstance(loader.dataset, IterableDataset) or loader.batch_size is None:
        raise DpSgdError(
            "unsupported_data_loader",
            "DP-SGD needs a map-style dataset and a DataLoader with a batch_size (no custom batch sampler)",
        )


def _trainable_device(model: nn.Module, optimizer: torch.optim.Optimizer) -> torch.device:
    """The device of the model's trainable parameters, once the optimiser is found to hold only
    those (and there are some)."""
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    if not trainable:
        raise TrainingError("the model has no trainable parameters")
    if any(id(p) not in trainable for group in optimizer.param_groups for p in group["params"]):
        raise TrainingError("the optimiser must hold only the model's trainable parameters")
    return next(p for p in model.parameters() if p.requires_grad).device


def _resampled_loader(loader: DataLoader[Any], rng_seed: int | None) -> DataLoader[Any]:
    """The loader Opacus resamples, with a sampling generator nobody can predict (see the module doc)."""
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        collate_fn=loader.collate_fn,
        num_workers=0,
        generator=_generator("cpu", None if rng_seed is None else rng_seed + 1),
    )


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader[Any],
    *,
    noise_multiplier: float | None,
    max_grad_norm: float | None,
    poisson_sampling: bool = True,
    accountant: OpacusAccountant = "prv",
    grad_sample_mode: str = "hooks",
    rng_seed: int | None = None,
) -> PrivateTraining:
    """Wrap ``model``, ``optimizer`` (over the model's trainable parameters) and ``loader`` (a
    map-style DataLoader with a ``batch_size``) for DP-SGD at noise σ = ``noise_multiplier`` and
    clip norm C = ``max_grad_norm``, with Poisson sampling at rate 1/len(loader).

    Refuses (``DpSgdError``) a missing σ or C, ``poisson_sampling=False`` (the accounting would not
    hold) and a loader Opacus cannot resample (an iterable dataset, a custom batch sampler).
    """
    from opacus import PrivacyEngine

    sigma = _positive("noise_multiplier", noise_multiplier)
    clip = _positive("max_grad_norm", max_grad_norm)
    _check_mechanism_options(poisson_sampling, accountant, loader)
    device = _trainable_device(model, optimizer)
    plain = _resampled_loader(loader, rng_seed)  # its generator is seeded before the noise's
    engine = PrivacyEngine(accountant=accountant)
    module, dp_optimizer, dp_loader = engine.make_private(
        module=model,
        optimizer=optimizer,
        data_loader=plain,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        poisson_sampling=True,
        clipping="flat",
        grad_sample_mode=grad_sample_mode,
        noise_generator=_generator(device, rng_seed),
    )
    return PrivateTraining(engine=engine, module=module, optimizer=dp_optimizer, loader=dp_loader)


def _poisson_batches(private: PrivateTraining, steps: int) -> Iterable[Any]:
    """``steps`` batches from the Poisson sampler Opacus installed, collated here: an empty draw
    is ``None`` (Opacus' own empty-batch collation needs tensor examples; ours are texts)."""
    loader = private.loader
    sampler = loader.batch_sampler
    assert sampler is not None  # a DPDataLoader always has its Poisson batch sampler
    taken = 0
    while taken < steps:
        for indices in sampler:
            yield loader.collate_fn([loader.dataset[i] for i in indices]) if indices else None
            taken += 1
            if taken >= steps:
                return


def _checked_delta_and_steps(delta: float | None, steps: int) -> float:
    """``delta`` as given, once it lies strictly in (0, 1) and ``steps`` is an integer ≥ 1."""
    if delta is None:
        raise DpSgdError("missing_dp_parameter", "delta is required for DP-SGD", field="delta")
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise DpSgdError("invalid_privacy_loss", f"delta must lie strictly between 0 and 1, not {delta!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DpSgdError(
            "invalid_training_steps", f"steps must be an integer ≥ 1, not {steps!r}", field="steps"
        )
    return delta


def _placed(model: nn.Module, device: torch.device | str | None) -> tuple[torch.device, list[nn.Parameter]]:
    """Move ``model`` to ``device`` (default: where its parameters are); the device and its
    trainable parameters (refused if none)."""
    target = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(target)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise TrainingError("the model has no trainable parameters")
    return target, params


@contextmanager
def _expected_opacus_warnings_ignored() -> Iterator[None]:
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off (see the module doc), and the hooks warn that no
        # input needs a gradient (the embeddings are frozen): both expected here.
        warnings.filterwarnings("ignore", message="Secure RNG turned off", category=UserWarning)
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


@dataclass
class _Tally:
    """What the steps of one ``train_private`` call saw."""

    steps: int = 0
    examples: int = 0
    empty: int = 0
    loss_sum: float = 0.0


def _private_step(
    private: PrivateTraining,
    batch: Any,
    params: list[nn.Parameter],
    target: torch.device,
    tally: _Tally,
) -> None:
    """One noised, accounted optimiser step on ``batch`` (``None`` or empty: the noise alone)."""
    n = 0 if batch is None else int(batch["labels"].shape[0])
    private.optimizer.zero_grad(set_to_none=True)
    if batch is None or n == 0:
        # No forward pass on nothing: every per-example gradient list is empty, so the
        # step adds (and accounts) the noise alone.
        tally.empty += 1
        for p in params:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)  # type: ignore[attr-defined]
    else:
        output = private.module(**{k: v.to(target) for k, v in batch.items()})
        output.loss.backward()
        tally.loss_sum += float(output.loss.detach()) * n
        tally.examples += n
    private.optimizer.step()
    if private.optimizer._is_last_step_skipped:  # pragma: no cover - only with accumulation
        raise TrainingError("Opacus skipped a step")
    tally.steps += 1


def _run_private_steps(
    private: PrivateTraining,
    params: list[nn.Parameter],
    steps: int,
    target: torch.device,
    prior_history: Sequence[tuple[float, float, int]],
) -> _Tally:
    """``steps`` DP-SGD steps on Poisson-sampled batches, accounted after ``prior_history``."""
    if prior_history:
        private.engine.accountant.history = [(float(s), float(q), int(n)) for s, q, n in prior_history]
    tally = _Tally()
    private.module.train()
    for batch in _poisson_batches(private, steps):
        _private_step(private, batch, params, target, tally)
    return tally


class _Accounted(NamedTuple):
    history: History
    epsilon: float


def _accounted(private: PrivateTraining, delta: float) -> _Accounted:
    """The accountant's history and ε at ``delta`` over all of it (∞ where it has no finite one)."""
    history: History = tuple((float(s), float(q), int(k)) for s, q, k in private.engine.accountant.history)
    try:
        epsilon = float(private.engine.accountant.get_epsilon(delta=delta))
    except (ValueError, OverflowError, MemoryError):
        # PRV's grid cannot hold the loss of a (near) noiseless run: no finite guarantee.
        epsilon = math.inf
    return _Accounted(history, epsilon)


def _report(
    private: PrivateTraining,
    tally: _Tally,
    accounted: _Accounted,
    *,
    delta: float,
    accountant: OpacusAccountant,
    started: float,
) -> DpSgdReport:
    loss = tally.loss_sum / tally.examples if tally.examples else math.nan
    if tally.examples and not math.isfinite(loss):
        raise TrainingError("training diverged (loss is not finite); lower the learning rate")
    return DpSgdReport(
        steps=tally.steps,
        total_steps=sum(k for _, _, k in accounted.history),
        noise_multiplier=float(private.optimizer.noise_multiplier),
        max_grad_norm=float(private.optimizer.max_grad_norm),
        sample_rate=float(private.loader.sample_rate),  # type: ignore[attr-defined]  # a DPDataLoader
        delta=float(delta),
        epsilon=accounted.epsilon,
        accountant=accountant,
        history=accounted.history,
        examples=tally.examples,
        empty_batches=tally.empty,
        loss=loss,
        seconds=time.perf_counter() - started,
    )


def train_private(
    model: nn.Module,
    loader: DataLoader[Any],
    *,
    noise_multiplier: float | None,
    max_grad_norm: float | None,
    delta: float | None,
    steps: int,
    learning_rate: float,
    poisson_sampling: bool = True,
    optimizer: Literal["adamw", "sgd"] = "adamw",
    weight_decay: float = 0.0,
    accountant: OpacusAccountant = "prv",
    prior_history: Sequence[tuple[float, float, int]] = (),
    device: torch.device | str | None = None,
    rng_seed: int | None = None,
) -> DpSgdReport:
    """Train the model's trainable parameters for exactly ``steps`` DP-SGD steps (cycling over
    Poisson-sampled batches; an empty batch is still a noised, accounted step).

    ``prior_history`` is a previous report's ``history`` (earlier rounds of the same member on the
    same rows), so that ``epsilon`` covers every round. ``loader`` yields dicts with ``labels`` that
    the model takes as keyword arguments and answers with ``.loss`` (a mean over the batch), as
    ``training.data.make_loader`` and Hugging Face classifiers do. fp32 only (no autocast).
    """
    started = time.perf_counter()
    checked_delta = _checked_delta_and_steps(delta, steps)
    target, params = _placed(model, device)
    base = make_optimizer(params, kind=optimizer, learning_rate=learning_rate, weight_decay=weight_decay)
    with _expected_opacus_warnings_ignored():
        private = make_private(
            model,
            base,
            loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=poisson_sampling,
            accountant=accountant,
            rng_seed=rng_seed,
        )
        try:
            tally = _run_private_steps(private, params, steps, target, prior_history)
            accounted = _accounted(private, checked_delta)
        finally:
            private.optimizer.zero_grad(set_to_none=True)
            private.close()
    return _report(private, tally, accounted, delta=checked_delta, accountant=accountant, started=started)


def train_with_plan(
    model: nn.Module,
    loader: DataLoader[Any],
    plan: DpSgdPlan,
    *,
    learning_rate: float,
    steps: int | None = None,
    prior_history: Sequence[tuple[float, float, int]] = (),
    **options: Any,
) -> DpSgdReport:
    """``train_private`` with the plan's σ, C and δ for ``steps`` (default: all of ``plan.steps``;
    a federated member passes one round's share and the previous round's ``history``).

    Refuses (``plan_mismatch``) before training a loader over another number of rows or with
    another batch size than the plan's, or more steps than the plan has left; checks the report
    against the plan afterwards (``DpSgdReport.check``).
    """
    rows = len(loader.dataset)  # type: ignore[arg-type]  # a map-style dataset (make_private checks)
    if plan.rows is not None and rows != plan.rows:
        raise DpSgdError(
            "plan_mismatch", f"the loader holds {rows} rows, the plan was priced for {plan.rows}"
        )
    if plan.batch_size is not None and loader.batch_size != plan.batch_size:
        raise DpSgdError(
            "plan_mismatch", f"the loader's batch size is {loader.batch_size}, the plan's {plan.batch_size}"
        )
    done = sum(int(k) for _, _, k in prior_history)
    steps = plan.steps - done if steps is None else steps
    if steps < 1 or done + steps > plan.steps:
        raise DpSgdError(
            "plan_mismatch",
            f"{done} steps taken and {steps} more asked: the plan has {plan.steps}",
            field="steps",
        )
    accountant: OpacusAccountant = "rdp" if plan.accountant == "rdp" else "prv"
    report = train_private(
        model,
        loader,
        noise_multiplier=plan.noise_multiplier,
        max_grad_norm=plan.max_grad_norm,
        delta=plan.delta,
        steps=steps,
        learning_rate=learning_rate,
        accountant=accountant,
        prior_history=prior_history,
        **options,
    )
    report.check(plan)
    return report
