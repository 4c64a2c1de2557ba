"""The privacy ledger's accountant: reference values, composition vs the naive sum, validation."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from clearinghouse.dp.accounting import (
    PLD_DISCRETISATION,
    AccountingError,
    ApproxEvent,
    GaussianEvent,
    LaplaceEvent,
    LedgerComposition,
    SubsampledGaussianEvent,
    compose,
    compose_epsilon,
    event_epsilon,
    event_from_dict,
    event_to_dict,
    naive_epsilon,
)

DELTA = 1e-5
# DP-SGD on one member of the SMS benchmark: batch 16 of 1858 rows, 3 rounds x 1 epoch (117 steps).
DP_SGD = SubsampledGaussianEvent(sample_rate=16 / 1858, noise_multiplier=1.0, steps=3 * 117)


def test_gaussian_matches_the_analytic_gaussian() -> None:
    # Balle & Wang's exact (ε, δ) of the Gaussian mechanism: an independent computation.
    for sigma in (0.8, 2.0, 5.0):
        exact = dp_accounting.get_epsilon_gaussian(sigma, DELTA)
        assert compose_epsilon([GaussianEvent(sigma)], DELTA) == pytest.approx(exact, rel=1e-3)
        assert compose_epsilon([GaussianEvent(sigma)], DELTA) >= exact * (1 - 1e-9)  # an upper bound


def test_laplace_is_its_own_epsilon() -> None:
    for epsilon in (0.1, 1.0, 3.0):
        composed = compose_epsilon([LaplaceEvent(epsilon)], DELTA)
        assert composed <= epsilon
        assert composed == pytest.approx(epsilon, rel=1e-3)
        assert event_epsilon(LaplaceEvent(epsilon), DELTA) == epsilon


def test_dp_sgd_matches_dp_accounting_directly() -> None:
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(16 / 1858, dp_accounting.GaussianDpEvent(1.0)), 351
    )
    pld = PLDAccountant().compose(event).get_epsilon(DELTA)
    rdp = RdpAccountant().compose(event).get_epsilon(DELTA)
    assert compose_epsilon([DP_SGD], DELTA) == pytest.approx(pld, rel=1e-9)
    assert compose_epsilon([DP_SGD], DELTA, accountant="rdp") == pytest.approx(rdp, rel=1e-9)
    assert 0.8 < pld < rdp  # PLD is the tighter of the two


def test_rho_is_a_gaussian_and_gaussians_compose_as_one() -> None:
    assert GaussianEvent.from_rho(0.5).noise_multiplier == pytest.approx(1.0)
    assert GaussianEvent.from_rho(0.02).rho == pytest.approx(0.02)
    five = compose_epsilon([GaussianEvent.from_rho(0.02)] * 5, DELTA)
    one = compose_epsilon([GaussianEvent.from_rho(0.1)], DELTA)
    assert five == pytest.approx(one, rel=1e-3)
    # ... tighter than converting ρ = 0.1 through zCDP's ε = ρ + 2√(ρ ln(1/δ)).
    assert one < 0.1 + 2 * math.sqrt(0.1 * math.log(1 / DELTA))


def test_queries_and_training_compose_below_the_naive_sum() -> None:
    queries = [LaplaceEvent(0.1)] * 10
    result = compose([*queries, DP_SGD], DELTA)
    assert result.epsilon_pld <= result.epsilon_naive
    assert result.epsilon_pld < 0.9 * result.epsilon_naive  # strictly, and by a margin
    assert result.epsilon_pld < result.epsilon_rdp
    assert result.epsilon == result.epsilon_pld
    # The naive sum is Σ ε: 10 × 0.1 for the queries plus DP-SGD's own ε at the whole δ.
    assert result.epsilon_naive == pytest.approx(1.0 + compose_epsilon([DP_SGD], DELTA), rel=1e-9)
    # Adding an event never makes the total smaller.
    assert result.epsilon_pld >= compose_epsilon([DP_SGD], DELTA)
    assert result.epsilon_pld >= compose_epsilon(queries, DELTA)


def test_naive_sum_splits_delta_between_the_events_that_need_one() -> None:
    events = [GaussianEvent(2.0), GaussianEvent(3.0), LaplaceEvent(0.5)]
    expected = (
        dp_accounting.get_epsilon_gaussian(2.0, DELTA / 2)
        + dp_accounting.get_epsilon_gaussian(3.0, DELTA / 2)
        + 0.5
    )
    assert naive_epsilon(events, DELTA) == pytest.approx(expected, rel=1e-3)
    assert compose_epsilon([], DELTA) == 0.0
    assert naive_epsilon([], DELTA) == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: LaplaceEvent(0),
        lambda: LaplaceEvent(-1.0),
        lambda: LaplaceEvent(math.nan),
        lambda: LaplaceEvent(math.inf),
        lambda: GaussianEvent(0.0),
        lambda: GaussianEvent.from_rho(0.0),
        lambda: SubsampledGaussianEvent(0.0, 1.0, 10),
        lambda: SubsampledGaussianEvent(1.5, 1.0, 10),
        lambda: SubsampledGaussianEvent(0.1, 0.0, 10),
        lambda: SubsampledGaussianEvent(0.1, 1.0, 0),
        lambda: SubsampledGaussianEvent(0.1, 1.0, 2.5),
        lambda: SubsampledGaussianEvent(0.1, 1.0, True),
    ],
)
def test_invalid_events_are_refused_with_a_code(make) -> None:
    with pytest.raises(AccountingError) as caught:
        make()
    assert caught.value.code == "invalid_privacy_event"
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("delta", [0, 1, -1e-5, 1.5, math.nan])
def test_invalid_delta_is_refused(delta) -> None:
    with pytest.raises(AccountingError) as caught:
        compose_epsilon([LaplaceEvent(1.0)], delta)
    assert caught.value.code == "invalid_delta"


def test_unknown_accountant_is_refused() -> None:
    with pytest.raises(AccountingError) as caught:
        compose_epsilon([LaplaceEvent(1.0)], DELTA, accountant="prv")  # type: ignore[arg-type]
    assert caught.value.code == "unknown_accountant"


# PLD is the slow accountant (0.1-1 s an ε): few examples, moderate step counts.
@settings(max_examples=10, deadline=None)
@given(
    q=st.floats(min_value=1e-3, max_value=0.05),
    sigma=st.floats(min_value=0.7, max_value=5.0),
    steps=st.integers(min_value=1, max_value=120),
    more_steps=st.integers(min_value=1, max_value=60),
    more_noise=st.floats(min_value=1.05, max_value=2.0),
)
def test_epsilon_grows_with_steps_and_shrinks_with_noise(q, sigma, steps, more_steps, more_noise) -> None:
    for accountant in ("rdp", "pld"):
        base = compose_epsilon([SubsampledGaussianEvent(q, sigma, steps)], DELTA, accountant=accountant)
        longer = compose_epsilon(
            [SubsampledGaussianEvent(q, sigma, steps + more_steps)], DELTA, accountant=accountant
        )
        noisier = compose_epsilon(
            [SubsampledGaussianEvent(q, sigma * more_noise, steps)], DELTA, accountant=accountant
        )
        # PLD's discretisation (1e-4 in loss) may round two nearly equal ε's either way.
        assert longer >= base - 1e-4
        assert noisier <= base + 1e-4


# ----------------------------------------------------------------------------- the ledger's events
def _optimal_pure_composition(epsilon: float, k: int, delta: float) -> float:
    """ε at δ of k ε-DP releases, exactly: the hockey-stick divergence of k-fold randomized response
    (Kairouz, Oh & Viswanath's optimal composition), solved for ε by bisection. Independent of
    dp_accounting."""
    good = math.exp(epsilon) / (1 + math.exp(epsilon))

    def delta_at(eps: float) -> float:
        return math.fsum(
            math.comb(k, j)
            * good**j
            * (1 - good) ** (k - j)
            * max(0.0, 1 - math.exp(eps - (2 * j - k) * epsilon))
            for j in range(k + 1)
        )

    low, high = 0.0, k * epsilon
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_at(middle) > delta else (low, middle)
    return high


@pytest.mark.parametrize(("epsilon", "k"), [(0.1, 10), (0.05, 100), (0.5, 7), (1.0, 3)])
def test_pure_releases_compose_as_the_optimal_composition_theorem(epsilon: float, k: int) -> None:
    exact = _optimal_pure_composition(epsilon, k, DELTA)
    composed = compose_epsilon([ApproxEvent(epsilon)] * k, DELTA)
    assert composed >= exact - 1e-9  # an upper bound: sound whatever the mechanism
    assert composed == pytest.approx(exact, abs=k * PLD_DISCRETISATION + 1e-6)  # and tight
    assert composed <= k * epsilon


def test_an_approx_event_spends_its_delta() -> None:
    assert compose_epsilon([ApproxEvent(1.0, 1e-6)], 1e-5) == pytest.approx(1.0, abs=1e-3)
    assert math.isinf(compose_epsilon([ApproxEvent(1.0, 2e-5)], 1e-5))
    assert naive_epsilon([ApproxEvent(1.0, 2e-6), ApproxEvent(0.5, 3e-6)], 1e-5) == 1.5
    assert math.isinf(naive_epsilon([ApproxEvent(1.0, 1e-5), DP_SGD], 1e-5))  # no δ left for DP-SGD
    assert math.isinf(compose_epsilon([ApproxEvent(1.0, 1e-5)], 1e-5, accountant="rdp"))
    # RDP composes the pure part as ε²/2-zCDP: a hundred releases at 0.1 cost far less than their sum.
    assert compose_epsilon([ApproxEvent(0.1)] * 100, DELTA, accountant="rdp") < 5.0


events_strategy = st.lists(
    st.builds(
        ApproxEvent,
        epsilon=st.floats(min_value=0.001, max_value=2.0),
        delta=st.one_of(st.just(0.0), st.floats(min_value=1e-9, max_value=1e-7)),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=40, deadline=None)
@given(queries=events_strategy, sigma=st.floats(min_value=0.6, max_value=4.0), train=st.booleans())
def test_queries_plus_training_never_exceed_the_naive_sum(queries, sigma, train) -> None:
    events = [*queries, SubsampledGaussianEvent(0.02, sigma, 200)] if train else list(queries)
    result = compose(events, DELTA)
    # PLD alone is an upper bound that discretisation may round up by at most one grid step per event.
    assert result.epsilon_pld <= result.epsilon_naive + len(events) * PLD_DISCRETISATION
    # ... and never below what any single event costs on its own (composition only adds).
    alone = max(event_epsilon(event, DELTA) for event in events)
    assert result.epsilon >= min(alone, result.epsilon_naive) - len(events) * PLD_DISCRETISATION


def test_the_ledger_grows_one_event_at_a_time_as_from_scratch() -> None:
    events = [ApproxEvent(0.1)] * 5 + [DP_SGD, ApproxEvent(0.3, 1e-7), GaussianEvent(3.0), LaplaceEvent(0.2)]
    grown = LedgerComposition()
    for event in events:
        before = grown.epsilon(DELTA)
        grown = grown.add(event)
        assert grown.epsilon(DELTA) >= before - 1e-9
    scratch = LedgerComposition(events)
    assert grown.epsilon(DELTA) == pytest.approx(scratch.epsilon(DELTA), rel=1e-6)
    assert grown.events == tuple(events)
    # Ten small queries and one DP-SGD run: clearly below the naive sum.
    ten = compose([*[ApproxEvent(0.1)] * 10, DP_SGD], DELTA)
    assert ten.epsilon < 0.9 * ten.epsilon_naive


def test_a_budget_without_delta_adds_pure_releases() -> None:
    ledger = LedgerComposition([ApproxEvent(0.25)] * 4)
    assert ledger.epsilon(0.0) == pytest.approx(1.0)
    assert math.isinf(ledger.add(ApproxEvent(0.1, 1e-9)).epsilon(0.0))
    assert math.isinf(ledger.add(DP_SGD).epsilon(0.0))


def test_events_round_trip_through_json() -> None:
    for event in (ApproxEvent(0.5, 1e-7), LaplaceEvent(1.0), GaussianEvent(2.0), DP_SGD):
        assert event_from_dict(event_to_dict(event)) == event
    for bad in (None, {}, {"type": "unknown"}, {"type": "approx"}, {"type": "approx", "epsilon": -1}):
        with pytest.raises(AccountingError):
            event_from_dict(bad)
    with pytest.raises(AccountingError):
        ApproxEvent(1.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(
    queries=events_strategy,
    new=st.floats(min_value=0.001, max_value=2.0),
    sigma=st.floats(min_value=0.6, max_value=4.0),
)
def test_a_pure_release_raises_the_ledger_by_at_most_its_own_epsilon(queries, new, sigma) -> None:
    # (A then B) with B pure ε_B-DP is (ε_A + ε_B, δ)-DP: the ledger's ε never rises by more than ε_B,
    # up to PLD's grid (one step per event).
    before = LedgerComposition([*queries, SubsampledGaussianEvent(0.02, sigma, 200)])
    after = before.add(ApproxEvent(new))
    grid = (len(after.events) + 1) * PLD_DISCRETISATION
    assert before.epsilon(DELTA) - grid <= after.epsilon(DELTA) <= before.epsilon(DELTA) + new + grid
