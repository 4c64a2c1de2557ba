"""One privacy ledger for queries and training: composing privacy events into (ε, δ).

A dataset's budget is paid by two kinds of release: DP queries (OpenDP, a Laplace mechanism at a
pure ε, or a Gaussian one at a ρ under zCDP) and DP-SGD fine-tuning (a Poisson-subsampled Gaussian
mechanism repeated once per optimiser step). Summing their ε's is valid but loose; this module
composes them with Google's ``dp_accounting``:

- ``ApproxEvent(epsilon, delta)``: any (ε, δ)-DP release whose mechanism is not modelled (an
  OpenDP query: Laplace and exponential mechanisms composed inside it, a key release's threshold),
  accounted by its worst case: the privacy-loss distribution that dominates every (ε, δ)-DP
  mechanism (loss ±ε, and ∞ with probability δ), so composing it is sound whatever the mechanism.
- ``LaplaceEvent(epsilon)``: the Laplace mechanism with scale Δ/ε (tighter than ``ApproxEvent``,
  for a release known to be exactly that).
- ``GaussianEvent(noise_multiplier)``: the Gaussian mechanism, σ/Δ₂; ``GaussianEvent.from_rho(ρ)``
  is the Gaussian with ρ = 1/(2σ²).
- ``SubsampledGaussianEvent(sample_rate, noise_multiplier, steps)``: DP-SGD, Poisson sampling at
  rate q, then the Gaussian mechanism, ``steps`` times.

``compose_epsilon(events, delta)`` gives ε at δ by privacy loss distributions (PLD; a pessimistic
discretisation: an upper bound, tight in practice), ``accountant="rdp"`` by Rényi DP (looser, a
cross-check; an ``ApproxEvent``'s pure part enters as ε²/2-zCDP and its δ adds); ``naive_epsilon``
is basic composition (the sum of each event's ε, the δ left by ``ApproxEvent``s split evenly
between the events that need one). ``compose`` gives all three; ``charged_epsilon`` is the one rule
for what a ledger counts (each is a valid bound). ``LedgerComposition`` keeps a ledger's composition and grows it one
event at a time (a debit composes only the new event with the PLD kept from those before).

All accounting is under add-or-remove-one neighbouring, one privacy unit per row: a dataset whose
unit contributes several rows needs group privacy on top, which this module does not do.
"""

# dp_accounting ships no type information (no py.typed); its values are used as `Any` here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import dp_accounting
from dp_accounting.pld import common as pld_common
from dp_accounting.pld import privacy_loss_distribution as pld_lib
from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

__all__ = [
    "EVENT_TYPES",
    "PLD_DISCRETISATION",
    "AccountingError",
    "ApproxEvent",
    "Composition",
    "GaussianEvent",
    "LaplaceEvent",
    "LedgerComposition",
    "PrivacyEvent",
    "SubsampledGaussianEvent",
    "charged_epsilon",
    "compose",
    "compose_epsilon",
    "event_epsilon",
    "event_from_dict",
    "event_to_dict",
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
class ApproxEvent:
    """Any (ε, δ)-DP release (δ = 0: pure ε-DP), accounted by its worst case, whatever its mechanism:
    the privacy-loss distribution ``from_privacy_parameters`` (loss ε or −ε, ∞ with probability δ)
    dominates every (ε, δ)-DP mechanism, so composing it is sound for an OpenDP query whatever it
    measures (for pure DP the bound of Kairouz, Oh & Viswanath's optimal composition)."""

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        _positive("epsilon", self.epsilon)
        if isinstance(self.delta, bool) or not isinstance(self.delta, int | float) or not 0 <= self.delta < 1:
            raise AccountingError("invalid_privacy_event", f"delta must lie in [0, 1), not {self.delta!r}")


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


PrivacyEvent = ApproxEvent | LaplaceEvent | GaussianEvent | SubsampledGaussianEvent

#: A serialised event's ``type`` -> its class (the ledger's ``details.event`` and the API's ``type``).
EVENT_TYPES: dict[str, type[ApproxEvent | LaplaceEvent | GaussianEvent | SubsampledGaussianEvent]] = {
    "approx": ApproxEvent,
    "laplace": LaplaceEvent,
    "gaussian": GaussianEvent,
    "subsampled_gaussian": SubsampledGaussianEvent,
}


def event_to_dict(event: PrivacyEvent) -> dict[str, Any]:
    """``event`` as JSON (kept with its ledger entry): ``{"type": ..., <its fields>}``."""
    name = next(key for key, cls in EVENT_TYPES.items() if type(event) is cls)
    return {"type": name, **{key: value for key, value in event.__dict__.items()}}


def event_from_dict(data: Any) -> PrivacyEvent:
    """The event ``event_to_dict`` wrote; AccountingError ``invalid_privacy_event`` otherwise."""
    if not isinstance(data, dict) or data.get("type") not in EVENT_TYPES:
        raise AccountingError("invalid_privacy_event", "not a recorded privacy event")
    fields = {key: value for key, value in data.items() if key != "type"}
    try:
        return EVENT_TYPES[data["type"]](**fields)
    except TypeError as error:
        raise AccountingError("invalid_privacy_event", f"bad fields for {data['type']}") from error


def to_dp_event(event: PrivacyEvent) -> Any:
    """The ``dp_accounting.DpEvent`` describing ``event`` (an ``ApproxEvent`` has none: dp_accounting
    composes it only as a privacy loss distribution, see ``compose_epsilon``)."""
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


def _check_accountant(accountant: str) -> None:
    if accountant not in ("pld", "rdp"):
        raise AccountingError("unknown_accountant", f"accountant must be 'pld' or 'rdp', not {accountant!r}")


# Building a subsampled Gaussian's PLD takes up to a second, and a ledger prices the same events again
# and again (each debit and preview composes the ledger, basic composition prices each event alone):
# kept, by event (PLDs are never modified in place: composing makes a new one).
@functools.lru_cache(maxsize=64)
def _event_pld(event: PrivacyEvent, count: int) -> Any:
    """The PLD of ``count`` repetitions of ``event``: what dp_accounting's ``PLDAccountant`` builds
    for the same ``DpEvent`` (add-or-remove-one), and ``from_privacy_parameters`` for an ApproxEvent."""
    interval = PLD_DISCRETISATION
    if isinstance(event, ApproxEvent):
        parameters = pld_common.DifferentialPrivacyParameters(event.epsilon, event.delta)
        pld = pld_lib.from_privacy_parameters(parameters, value_discretization_interval=interval)
        return pld.self_compose(count) if count > 1 else pld
    if isinstance(event, LaplaceEvent):
        pld = pld_lib.from_laplace_mechanism(1.0 / event.epsilon, value_discretization_interval=interval)
        return pld.self_compose(count) if count > 1 else pld
    if isinstance(event, GaussianEvent):  # k Gaussians at σ are one at σ/√k
        return pld_lib.from_gaussian_mechanism(
            event.noise_multiplier / math.sqrt(count), value_discretization_interval=interval
        )
    if isinstance(event, SubsampledGaussianEvent):
        step = pld_lib.from_gaussian_mechanism(
            event.noise_multiplier, value_discretization_interval=interval, sampling_prob=event.sample_rate
        )
        return step.self_compose(event.steps * count)
    raise AccountingError("invalid_privacy_event", f"not a privacy event: {type(event).__name__}")


def _compose_pld(events: Sequence[PrivacyEvent]) -> Any:
    """The PLD of ``events`` composed (identical events grouped: self-composition is one FFT power);
    None when there are none."""
    composed = None
    for event, count in Counter(events).items():
        pld = _event_pld(event, count)
        composed = pld if composed is None else composed.compose(pld)
    return composed


def _pure_delta(events: Sequence[PrivacyEvent]) -> float:
    """The δ that ApproxEvents spend outright (it adds under every composition)."""
    return math.fsum(event.delta for event in events if isinstance(event, ApproxEvent))


def _rdp_epsilon(events: Sequence[PrivacyEvent], delta: float) -> float:
    """Rényi DP: an ApproxEvent's pure part is ε²/2-zCDP (Bun & Steinke 2016, Prop. 3.3), its δ adds."""
    left = delta - _pure_delta(events)
    if left <= 0:
        return math.inf
    dp_events = [
        dp_accounting.ZCDpEvent(event.epsilon**2 / 2)
        if isinstance(event, ApproxEvent)
        else to_dp_event(event)
        for event in events
    ]
    return float(RdpAccountant().compose(dp_accounting.ComposedDpEvent(events=dp_events)).get_epsilon(left))


def compose_epsilon(events: Sequence[PrivacyEvent], delta: float, *, accountant: Accountant = "pld") -> float:
    """ε at ``delta`` of all ``events`` composed (adaptively, in any order).

    ``"pld"``: privacy loss distributions (tight, an upper bound); ``"rdp"``: Rényi DP (looser).
    No events cost nothing: 0.0. ∞ when the events' own δ's leave none of ``delta``.
    """
    _check_delta(delta)
    _check_accountant(accountant)
    if not events:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(events, delta)
    return float(_compose_pld(events).get_epsilon_for_delta(delta))


@functools.lru_cache(maxsize=256)
def event_epsilon(event: PrivacyEvent, delta: float, *, accountant: Accountant = "pld") -> float:
    """ε of one event at ``delta``; a Laplace or pure event's own ε (it needs no δ); an
    ApproxEvent's own ε when its δ fits in ``delta`` (∞ otherwise)."""
    if isinstance(event, LaplaceEvent):
        return float(event.epsilon)
    if isinstance(event, ApproxEvent):
        return float(event.epsilon) if event.delta <= delta else math.inf
    return compose_epsilon([event], delta, accountant=accountant)


def naive_epsilon(events: Sequence[PrivacyEvent], delta: float, *, accountant: Accountant = "pld") -> float:
    """Basic composition: Σ εᵢ; ApproxEvents spend their own δ, and each event that needs one
    (a Gaussian) is priced at an even share of the δ they leave (∞ if they leave none).

    A valid bound (what a ledger that adds up ε's would charge), for comparison with
    ``compose_epsilon``. ``delta`` may be 0 when every event is pure.
    """
    if delta != 0:
        _check_delta(delta)
    priced = [event for event in events if not isinstance(event, ApproxEvent | LaplaceEvent)]
    left = delta - _pure_delta(events)
    if left < 0 or (priced and left <= 0):
        return math.inf
    share = left / len(priced) if priced else left
    return math.fsum(
        event.epsilon
        if isinstance(event, ApproxEvent)
        else event_epsilon(event, share, accountant=accountant)
        for event in events
    )


@dataclass(frozen=True)
class Composition:
    """ε at ``delta`` of the same events three ways: PLD, RDP and basic composition."""

    delta: float
    epsilon_pld: float
    epsilon_rdp: float
    epsilon_naive: float

    @property
    def epsilon(self) -> float:
        """What a ledger charges (``charged_epsilon``)."""
        return charged_epsilon(self.epsilon_pld, self.epsilon_naive, lambda: self.epsilon_rdp)


def charged_epsilon(pld: float, naive: float, rdp: Callable[[], float]) -> float:
    """The one rule for the ledger's ε (each bound is valid): the tighter of PLD and the naive sum;
    Rényi DP only where both are infinite (PLD's truncated tails at a tiny δ). RDP is looser than PLD
    for every event the ledger holds, and pricing it would cost each debit ~0.2 s more."""
    best = min(pld, naive)
    return best if math.isfinite(best) else min(best, rdp())


def compose(events: Sequence[PrivacyEvent], delta: float) -> Composition:
    """``events`` composed by the PLD and RDP accountants, and by basic composition (with PLD)."""
    return LedgerComposition(events).composition(delta)


class LedgerComposition:
    """A ledger's events composed so far. ``add`` composes one more event with the PLD kept from the
    ones before (one convolution, not the whole history again); ``epsilon(δ)`` is the ledger's charge
    (see there); ``composition(δ)`` all three bounds. Immutable: ``add`` returns a new one."""

    __slots__ = ("_compositions", "_epsilons", "_pld", "events")

    def __init__(self, events: Sequence[PrivacyEvent] = (), *, _pld: Any = None) -> None:
        self.events: tuple[PrivacyEvent, ...] = tuple(events)
        self._pld = _pld if _pld is not None or not self.events else _compose_pld(self.events)
        # Reading ε off a wide PLD takes ~0.1 s; the events never change, so neither does it.
        self._compositions: dict[float, Composition] = {}
        self._epsilons: dict[float, tuple[float, float]] = {}

    def add(self, event: PrivacyEvent) -> LedgerComposition:
        pld = _event_pld(event, 1)
        return LedgerComposition(
            (*self.events, event), _pld=pld if self._pld is None else self._pld.compose(pld)
        )

    def composition(self, delta: float) -> Composition:
        """ε at ``delta`` three ways. ``delta`` = 0 (an approximate-DP budget that allows no δ): only
        pure events compose to anything finite, by their sum."""
        if delta not in self._compositions:
            pld, naive = self._bounds(delta)
            rdp = naive if delta == 0 or not self.events else _rdp_epsilon(self.events, delta)
            self._compositions[delta] = Composition(
                delta=delta, epsilon_pld=pld, epsilon_rdp=rdp, epsilon_naive=naive
            )
        return self._compositions[delta]

    def _bounds(self, delta: float) -> tuple[float, float]:
        """(PLD, naive sum) at ``delta``, kept: reading ε off a wide PLD takes ~0.1 s."""
        if delta not in self._epsilons:
            if not self.events:
                self._epsilons[delta] = (0.0, 0.0)
            else:
                naive = naive_epsilon(self.events, delta)
                pld = naive if delta == 0 else float(self._pld.get_epsilon_for_delta(delta))
                self._epsilons[delta] = (pld, naive)
        return self._epsilons[delta]

    def epsilon(self, delta: float) -> float:
        """The ledger's ε at ``delta`` (``charged_epsilon``), RDP computed only if needed."""
        pld, naive = self._bounds(delta)
        return charged_epsilon(pld, naive, lambda: self.composition(delta).epsilon_rdp)
