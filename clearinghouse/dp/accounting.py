"""One privacy ledger for queries and training: composing privacy events into (ε, δ).

A dataset's budget is paid by two kinds of release: DP queries (OpenDP, a Laplace mechanism at a
pure ε, or a Gaussian one at a ρ under zCDP) and DP-SGD fine-tuning (a Poisson-subsampled Gaussian
mechanism repeated once per optimiser step). Summing their ε's is valid but loose; this module
composes them with Google's ``dp_accounting``:

- ``LaplaceEvent(epsilon)``: a pure-ε release (the Laplace mechanism with scale Δ/ε).
- ``GaussianEvent(noise_multiplier)``: the Gaussian mechanism, σ/Δ₂; ``GaussianEvent.from_rho(ρ)``
  is the Gaussian with ρ = 1/(2σ²).
- ``SubsampledGaussianEvent(sample_rate, noise_multiplier, steps)``: DP-SGD, Poisson sampling at
  rate q, then the Gaussian mechanism, ``steps`` times.

``compose_epsilon(events, delta)`` gives ε at δ by the privacy-loss-distribution (PLD) accountant
(a pessimistic discretisation: an upper bound, tight in practice), ``accountant="rdp"`` by Rényi DP
(looser, a cross-check); ``naive_epsilon`` is basic composition (the sum of each event's ε, δ split
evenly between the events that need one). ``compose`` gives all three.

All accounting is under add-or-remove-one neighbouring, one privacy unit per row: a dataset whose
unit contributes several rows needs group privacy on top, which this module does not do.
"""

# dp_accounting ships no type information (no py.typed); its values are used as `Any` here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting.pld.pld_privacy_accountant import PLDAccountant
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

__all__ = [
    "PLD_DISCRETISATION",
    "AccountingError",
    "Composition",
    "GaussianEvent",
    "LaplaceEvent",
    "PrivacyEvent",
    "SubsampledGaussianEvent",
    "compose",
    "compose_epsilon",
    "event_epsilon",
    "naive_epsilon",
    "to_dp_event",
]

Accountant = Literal["pld", "rdp"]

#: The PLD accountant's loss discretisation. Coarser is faster and still an upper bound (the
#: discretisation is pessimistic); 1e-4 is dp_accounting's default and tight to ~1e-4 in ε.
PLD_DISCRETISATION = 1e-4

CODES = frozenset({"invalid_privacy_event", "invalid_delta", "unknown_accountant"})


class AccountingError(ValueError):
    """An event or an accounting request that cannot be priced. ``code`` is stable."""

    def __init__(self, code: str, message: str) -> None:
        if code not in CODES:  # pragma: no cover - programming error
            raise AssertionError(f"unknown AccountingError code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def _positive(name: str, value: float) -> None:
    # `not value > 0` also refuses NaN; booleans are ints to Python but no privacy parameter.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not value > 0
    ):
        raise AccountingError("invalid_privacy_event", f"{name} must be a finite number > 0, not {value!r}")


@dataclass(frozen=True)
class LaplaceEvent:
    """A pure ε-DP release, e.g. a query answered by the Laplace mechanism at ε."""

    epsilon: float

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)


@dataclass(frozen=True)
class GaussianEvent:
    """The Gaussian mechanism with noise σ = ``noise_multiplier`` × the L2 sensitivity."""

    noise_multiplier: float

    def __post_init__(self) -> None:
        _positive("noise_multiplier", self.noise_multiplier)

    @classmethod
    def from_rho(cls, rho: float) -> GaussianEvent:
        """The Gaussian mechanism that is exactly ρ-zCDP: σ = 1/√(2ρ).

        Exact for the (continuous) Gaussian mechanism and for any composition of Gaussians whose
        ρ's sum to ``rho``; for another ρ-zCDP mechanism it is a model, not a bound.
        """
        _positive("rho", rho)
        return cls(noise_multiplier=1.0 / math.sqrt(2.0 * rho))

    @property
    def rho(self) -> float:
        return 1.0 / (2.0 * self.noise_multiplier**2)


@dataclass(frozen=True)
class SubsampledGaussianEvent:
    """DP-SGD: each step samples every row with probability ``sample_rate`` (Poisson sampling),
    clips each example's gradient and adds Gaussian noise ``noise_multiplier`` × the clip norm;
    repeated ``steps`` times."""

    sample_rate: float
    noise_multiplier: float
    steps: int

    def __post_init__(self) -> None:
        _positive("sample_rate", self.sample_rate)
        if self.sample_rate > 1:
            raise AccountingError(
                "invalid_privacy_event", f"sample_rate must be ≤ 1, not {self.sample_rate!r}"
            )
        _positive("noise_multiplier", self.noise_multiplier)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise AccountingError(
                "invalid_privacy_event", f"steps must be an integer ≥ 1, not {self.steps!r}"
            )


PrivacyEvent = LaplaceEvent | GaussianEvent | SubsampledGaussianEvent


def to_dp_event(event: PrivacyEvent) -> Any:
    """The ``dp_accounting.DpEvent`` describing ``event``."""
    if isinstance(event, LaplaceEvent):
        # Laplace with scale b and L1 sensitivity Δ is (Δ/b)-DP; noise_multiplier = b/Δ = 1/ε.
        return dp_accounting.LaplaceDpEvent(noise_multiplier=1.0 / event.epsilon)
    if isinstance(event, GaussianEvent):
        return dp_accounting.GaussianDpEvent(noise_multiplier=event.noise_multiplier)
    if isinstance(event, SubsampledGaussianEvent):
        step = dp_accounting.PoissonSampledDpEvent(
            sampling_probability=event.sample_rate,
            event=dp_accounting.GaussianDpEvent(noise_multiplier=event.noise_multiplier),
        )
        return dp_accounting.SelfComposedDpEvent(event=step, count=event.steps)
    raise AccountingError("invalid_privacy_event", f"not a privacy event: {type(event).__name__}")


def _check_delta(delta: float) -> None:
    if isinstance(delta, bool) or not isinstance(delta, int | float) or not 0 < delta < 1:
        raise AccountingError("invalid_delta", f"delta must lie strictly between 0 and 1, not {delta!r}")


def _accountant(accountant: str) -> Any:
    if accountant == "pld":
        return PLDAccountant(value_discretization_interval=PLD_DISCRETISATION)
    if accountant == "rdp":
        return RdpAccountant()
    raise AccountingError("unknown_accountant", f"accountant must be 'pld' or 'rdp', not {accountant!r}")


def compose_epsilon(events: Sequence[PrivacyEvent], delta: float, *, accountant: Accountant = "pld") -> float:
    """ε at ``delta`` of all ``events`` composed (adaptively, in any order).

    ``"pld"``: privacy loss distributions (tight, an upper bound); ``"rdp"``: Rényi DP (looser).
    No events cost nothing: 0.0.
    """
    _check_delta(delta)
    if not events:
        return 0.0
    ledger = dp_accounting.ComposedDpEvent(events=[to_dp_event(event) for event in events])
    return float(_accountant(accountant).compose(ledger).get_epsilon(delta))


def event_epsilon(event: PrivacyEvent, delta: float, *, accountant: Accountant = "pld") -> float:
    """ε of one event at ``delta``; a Laplace event's own ε (pure DP: it needs no δ)."""
    if isinstance(event, LaplaceEvent):
        return float(event.epsilon)
    return compose_epsilon([event], delta, accountant=accountant)


def naive_epsilon(events: Sequence[PrivacyEvent], delta: float, *, accountant: Accountant = "pld") -> float:
    """Basic composition: Σ εᵢ, each event that needs a δ priced at ``delta`` / (their number).

    A valid bound (what a ledger that adds up ε's would charge), for comparison with
    ``compose_epsilon``.
    """
    _check_delta(delta)
    needing_delta = sum(1 for event in events if not isinstance(event, LaplaceEvent))
    share = delta / needing_delta if needing_delta else delta
    return math.fsum(event_epsilon(event, share, accountant=accountant) for event in events)


@dataclass(frozen=True)
class Composition:
    """ε at ``delta`` of the same events three ways: PLD (the charge), RDP and basic composition."""

    delta: float
    epsilon_pld: float
    epsilon_rdp: float
    epsilon_naive: float

    @property
    def epsilon(self) -> float:
        """The charge: the tightest bound of the three."""
        return min(self.epsilon_pld, self.epsilon_rdp, self.epsilon_naive)


def compose(events: Sequence[PrivacyEvent], delta: float) -> Composition:
    """``events`` composed by the PLD and RDP accountants, and by basic composition (with PLD)."""
    return Composition(
        delta=delta,
        epsilon_pld=compose_epsilon(events, delta, accountant="pld"),
        epsilon_rdp=compose_epsilon(events, delta, accountant="rdp"),
        epsilon_naive=naive_epsilon(events, delta),
    )
