"""DP-SGD pricing: σ for a target ε, checked by an independent accountant; plans and refusals."""

from __future__ import annotations

import math
import warnings

import pytest

from training.privacy import (
    MAX_NOISE_MULTIPLIER,
    DpSgdError,
    DpSgdPlan,
    epsilon_for,
    noise_multiplier_for,
)

DELTA = 1e-5
Q = 16 / 1858  # batch 16 of the SMS benchmark's 1858 rows per member
STEPS = 3 * math.ceil(1858 / 16)  # 3 rounds x 1 local epoch


def opacus_epsilon(sigma: float, q: float, steps: int, accountant: str) -> float:
    """ε by Opacus' own accountant, fed its history directly (no dp_accounting involved)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if accountant == "prv":
            prv = PRVAccountant()
            prv.history = [(sigma, q, steps)]
            return float(prv.get_epsilon(DELTA, eps_error=1e-3))
        rdp = RDPAccountant()
        rdp.history = [(sigma, q, steps)]
        return float(rdp.get_epsilon(DELTA))


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_sigma_from_dp_accounting_pld_gives_back_epsilon_by_opacus_prv(target: float) -> None:
    sigma = noise_multiplier_for(target, DELTA, Q, STEPS, "pld")
    assert 0.3 < sigma < 2
    assert epsilon_for(sigma, DELTA, Q, STEPS, "pld", resolution=1e-4) <= target
    assert opacus_epsilon(sigma, Q, STEPS, "prv") == pytest.approx(target, rel=0.01)


def test_sigma_from_opacus_prv_gives_back_epsilon_by_dp_accounting_pld() -> None:
    sigma = noise_multiplier_for(8.0, DELTA, Q, STEPS, "prv")
    assert epsilon_for(sigma, DELTA, Q, STEPS, "pld", resolution=1e-4) == pytest.approx(8.0, rel=0.01)


def test_sigma_from_dp_accounting_rdp_gives_back_epsilon_by_opacus_rdp() -> None:
    sigma = noise_multiplier_for(3.0, DELTA, Q, STEPS, "rdp")
    assert opacus_epsilon(sigma, Q, STEPS, "rdp") == pytest.approx(3.0, rel=0.01)
    # RDP is looser: the same target costs more noise than under PLD.
    assert sigma > noise_multiplier_for(3.0, DELTA, Q, STEPS, "pld")


def test_more_epsilon_less_noise() -> None:
    sigmas = [noise_multiplier_for(eps, DELTA, Q, STEPS) for eps in (1.0, 3.0, 8.0)]
    assert sigmas == sorted(sigmas, reverse=True)


def test_plan_from_job() -> None:
    plan = DpSgdPlan.from_job(
        rows=1858, batch_size=16, local_epochs=1, rounds=3, target_epsilon=3.0, delta=DELTA, max_grad_norm=1.0
    )
    assert plan.sample_rate == 16 / 1858
    assert plan.steps == 3 * 117
    assert plan.epsilon <= plan.target_epsilon
    assert plan.epsilon == pytest.approx(3.0, rel=1e-3)
    assert plan.noise_multiplier == pytest.approx(noise_multiplier_for(3.0, DELTA, Q, 351), rel=1e-6)
    assert plan.to_dict()["steps"] == 351
    assert (plan.rows, plan.batch_size, plan.accountant) == (1858, 16, "pld")

    by_steps = DpSgdPlan.from_job(
        rows=1858, batch_size=16, local_steps=10, rounds=5, target_epsilon=3.0, delta=DELTA, max_grad_norm=0.5
    )
    assert by_steps.steps == 50
    assert by_steps.noise_multiplier < plan.noise_multiplier  # fewer steps, less noise


JOB = {"rows": 1000, "batch_size": 10, "local_epochs": 1, "rounds": 2, "target_epsilon": 3.0, "delta": 1e-5}


@pytest.mark.parametrize(
    ("changes", "code"),
    [
        ({"target_epsilon": 0}, "invalid_privacy_loss"),
        ({"target_epsilon": -1.0}, "invalid_privacy_loss"),
        ({"target_epsilon": math.nan}, "invalid_privacy_loss"),
        ({"target_epsilon": math.inf}, "invalid_privacy_loss"),
        ({"delta": 0}, "invalid_privacy_loss"),
        ({"delta": -1e-6}, "invalid_privacy_loss"),
        ({"delta": 1e-3}, "delta_too_large"),  # = 1/rows
        ({"delta": 0.5}, "delta_too_large"),
        ({"batch_size": 1001}, "invalid_sample_rate"),  # q > 1
        ({"batch_size": 0}, "invalid_training_steps"),
        ({"rows": 0}, "invalid_training_steps"),
        ({"rounds": 0}, "invalid_training_steps"),
        ({"local_epochs": 0}, "invalid_training_steps"),
        ({"local_epochs": None}, "invalid_training_steps"),  # neither epochs nor steps
        ({"local_steps": 5}, "invalid_training_steps"),  # both
        ({"max_grad_norm": 0.0}, "invalid_max_grad_norm"),
        ({"max_grad_norm": math.inf}, "invalid_max_grad_norm"),
        ({"accountant": "gdp"}, "unknown_accountant"),
        # ε = 0.005 after 200 steps at q = 1 % needs σ > 50 (σ = 50 gives ε ≈ 0.0066 by PLD).
        pytest.param({"target_epsilon": 0.005}, "noise_too_large", marks=pytest.mark.slow),  # PLD: ~10 s
        ({"target_epsilon": 0.005, "accountant": "rdp"}, "noise_too_large"),
    ],
)
def test_plan_refusals_have_stable_codes(changes: dict, code: str) -> None:
    values = {**JOB, "max_grad_norm": 1.0, **changes}
    with pytest.raises(DpSgdError) as caught:
        DpSgdPlan.from_job(**values)
    assert caught.value.code == code
    assert isinstance(caught.value, ValueError)


def test_noise_cap_is_the_limit() -> None:
    # Just under the cap's own ε the target is still met, with σ at most the cap.
    # RDP: the fast accountant (the search is the same for all three).
    at_cap = epsilon_for(MAX_NOISE_MULTIPLIER, DELTA, 0.01, 200, "rdp")
    assert 0.007 < at_cap < 0.008
    assert noise_multiplier_for(at_cap * 1.01, DELTA, 0.01, 200, "rdp") <= MAX_NOISE_MULTIPLIER
    with pytest.raises(DpSgdError) as caught:
        noise_multiplier_for(at_cap * 0.99, DELTA, 0.01, 200, "rdp")
    assert caught.value.code == "noise_too_large"


@pytest.mark.parametrize(
    ("args", "code"),
    [
        ((0.0, DELTA, Q, 10), "invalid_noise_multiplier"),
        ((1.0, 0.0, Q, 10), "invalid_privacy_loss"),
        ((1.0, 1.0, Q, 10), "invalid_privacy_loss"),
        ((1.0, DELTA, 0.0, 10), "invalid_sample_rate"),
        ((1.0, DELTA, 1.5, 10), "invalid_sample_rate"),
        ((1.0, DELTA, Q, 0), "invalid_training_steps"),
    ],
)
def test_epsilon_for_refusals(args: tuple, code: str) -> None:
    with pytest.raises(DpSgdError) as caught:
        epsilon_for(*args)
    assert caught.value.code == code


def test_plan_validates_direct_construction() -> None:
    values = {
        "target_epsilon": 3.0,
        "delta": DELTA,
        "sample_rate": Q,
        "steps": 10,
        "noise_multiplier": 1.0,
        "max_grad_norm": 1.0,
        "accountant": "pld",
        "epsilon": 2.0,
    }
    DpSgdPlan(**values)
    for changes, code in [
        ({"noise_multiplier": MAX_NOISE_MULTIPLIER * 1.2}, "noise_too_large"),
        ({"sample_rate": 1.2}, "invalid_sample_rate"),
        ({"epsilon": 3.5}, "invalid_privacy_loss"),  # costs more than its target
        ({"rows": 200_000}, "delta_too_large"),  # δ = 1e-5 ≥ 1/200 000
    ]:
        with pytest.raises(DpSgdError) as caught:
            DpSgdPlan(**{**values, **changes})
        assert caught.value.code == code, changes
