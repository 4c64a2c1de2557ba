"""Pricing DP-SGD: the noise for a privacy target, the privacy of a noise, and a job's plan.

DP-SGD samples every row with probability q (Poisson sampling), clips each example's gradient to
L2 norm C, adds N(0, σ²C²) to the sum and takes a step; after T steps the run is (ε, δ)-DP for the
rows of the dataset it trained on, with ε from an accountant of the Poisson-subsampled Gaussian
mechanism composed T times:

- ``"pld"``: privacy loss distributions (Google's ``dp_accounting``), what the privacy ledger
  (``clearinghouse.dp.accounting``) charges with: tight and an upper bound;
- ``"prv"``: privacy random variables (Opacus' default accountant), an upper bound as tight as PLD;
- ``"rdp"``: Rényi DP (``dp_accounting``), looser by 10-40 %; a cross-check.

``noise_multiplier_for`` searches the smallest σ (to a relative 1e-3 in ε) whose ε is at most the
target; ``epsilon_for`` is the inverse; ``DpSgdPlan.from_job`` turns a federated job's shape (rows,
batch size, local epochs or steps, rounds) into q = batch/rows, T = rounds × local steps and σ.

Opacus is imported only for ``"prv"``: pricing a plan needs neither torch nor a model, so the web
service can refuse an impossible job without loading the ML stack. One privacy unit per row and
add-or-remove-one neighbouring are assumed (as by the ledger).
"""

# dp_accounting and opacus ship no type information (no py.typed); their values are `Any` here.
# mypy: disable-error-code="import-untyped"

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from training.config import TrainingConfigError
from training.digest import DataExpectation

__all__ = [
    "ACCOUNTANTS",
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "Accountant",
    "DpSgdError",
    "DpSgdPlan",
    "epsilon_for",
    "noise_multiplier_for",
    "priced_plan",
    "train_rows",
]

Accountant = Literal["pld", "prv", "rdp"]
ACCOUNTANTS: tuple[str, ...] = get_args(Accountant)

#: Above this σ the run would learn nothing useful: the target is refused ("noise_too_large").
MAX_NOISE_MULTIPLIER = 50.0
#: The search does not go below this σ: a target that is met with less noise gets this much.
MIN_NOISE_MULTIPLIER = 0.3
#: ``noise_multiplier_for`` stops once ε(σ) ∈ [target × (1 - this), target].
EPSILON_RTOL = 1e-3

CODES = frozenset(
    {
        "invalid_privacy_loss",  # ε ≤ 0, δ outside (0, 1), NaN, inf
        "delta_too_large",  # δ ≥ 1/rows: a mechanism could publish a row and still be "DP"
        "invalid_sample_rate",  # q outside (0, 1]: a batch larger than the data, no rows
        "invalid_training_steps",  # steps, epochs, rounds or batch size < 1
        "invalid_noise_multiplier",  # σ ≤ 0, NaN, inf
        "invalid_max_grad_norm",  # C ≤ 0, NaN, inf
        "noise_too_large",  # the target needs σ above MAX_NOISE_MULTIPLIER
        "unknown_accountant",
        # raised by training.dp_sgd
        "poisson_sampling_required",  # DP-SGD's accounting assumes Poisson sampling
        "missing_dp_parameter",  # σ, C or δ not given
        "unsupported_data_loader",  # not a map-style, batch-size DataLoader
        "plan_mismatch",  # the run would not be the mechanism the plan priced
        "too_few_rows",  # a member's data cannot be split into train and test
        "invalid_test_fraction",  # the held-out share is not strictly between 0 and 1
        "dp_required",  # a member that trains only with DP got a job without a plan for it
        "invalid_data_expectation",  # the plan's `data` (rows and digest it was priced on) is malformed
        "data_mismatch",  # the member's local file is not the registered version the plan was priced on
    }
)


class DpSgdError(TrainingConfigError):
    """A DP-SGD plan or run that is refused. ``code`` is stable (tests pin it); ``field`` names the
    offending setting when there is one."""

    def __init__(self, code: str, message: str, *, field: str | None = None) -> None:
        if code not in CODES:  # pragma: no cover - programming error
            raise AssertionError(f"unknown DpSgdError code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.field = field


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _check_epsilon(epsilon: float, field: str = "target_epsilon") -> None:
    if not _is_number(epsilon) or not epsilon > 0:
        raise DpSgdError(
            "invalid_privacy_loss", f"{field} must be a finite number > 0, not {epsilon!r}", field=field
        )


def train_rows(rows: int, test_fraction: float) -> int:
    """How many of a member's ``rows`` rows train in a DP job: the train side of an unstratified
    ``training.data.split_train_test`` (what a DP job's members use), so that the clearinghouse
    prices each member's DP-SGD from the registered row count alone — a stratified split's size
    would depend on the labels."""
    if not _is_count(rows) or rows < 2:
        raise DpSgdError("too_few_rows", f"cannot split {rows!r} row(s) into train and test", field="rows")
    if not _is_number(test_fraction) or not 0.0 < test_fraction < 1.0:
        raise DpSgdError(
            "invalid_test_fraction",
            f"test_fraction must lie strictly between 0 and 1, not {test_fraction!r}",
            field="test_fraction",
        )
    return rows - min(max(round(rows * test_fraction), 1), rows - 1)


def _check_delta(delta: float, rows: int | None = None) -> None:
    if not _is_number(delta) or not 0 < delta < 1:
        raise DpSgdError(
            "invalid_privacy_loss", f"delta must lie strictly between 0 and 1, not {delta!r}", field="delta"
        )
    if rows is not None and delta >= 1 / rows:
        raise DpSgdError(
            "delta_too_large",
            f"delta {delta!r} is not below 1/rows = 1/{rows}: a run could leak a whole row within it",
            field="delta",
        )


def _check_mechanism(noise_multiplier: float, sample_rate: float, steps: int) -> None:
    if not _is_number(noise_multiplier) or not noise_multiplier > 0:
        raise DpSgdError(
            "invalid_noise_multiplier",
            f"noise_multiplier must be a finite number > 0, not {noise_multiplier!r}",
            field="noise_multiplier",
        )
    if not _is_number(sample_rate) or not 0 < sample_rate <= 1:
        raise DpSgdError(
            "invalid_sample_rate", f"sample_rate must lie in (0, 1], not {sample_rate!r}", field="sample_rate"
        )
    if not _is_count(steps):
        raise DpSgdError(
            "invalid_training_steps", f"steps must be an integer ≥ 1, not {steps!r}", field="steps"
        )


def _check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise DpSgdError(
            "unknown_accountant",
            f"accountant must be one of {list(ACCOUNTANTS)}, not {accountant!r}",
            field="accountant",
        )


def _epsilon(
    noise_multiplier: float, delta: float, sample_rate: float, steps: int, accountant: str, resolution: float
) -> float:
    if accountant == "prv":
        # Opacus' PRV accountant reads its history of (σ, q, steps); `eps_error` is its resolution.
        from opacus.accountants import PRVAccountant

        prv = PRVAccountant()
        prv.history = [(noise_multiplier, sample_rate, steps)]
        return float(prv.get_epsilon(delta, eps_error=resolution))

    import dp_accounting

    event = dp_accounting.SelfComposedDpEvent(
        event=dp_accounting.PoissonSampledDpEvent(
            sampling_probability=sample_rate,
            event=dp_accounting.GaussianDpEvent(noise_multiplier=noise_multiplier),
        ),
        count=steps,
    )
    if accountant == "pld":
        from dp_accounting.pld.pld_privacy_accountant import PLDAccountant

        return float(
            PLDAccountant(value_discretization_interval=resolution).compose(event).get_epsilon(delta)
        )
    from dp_accounting.rdp.rdp_privacy_accountant import RdpAccountant

    return float(RdpAccountant().compose(event).get_epsilon(delta))


def epsilon_for(
    noise_multiplier: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = "pld",
    *,
    resolution: float | None = None,
) -> float:
    """ε at ``delta`` of ``steps`` DP-SGD steps with Poisson rate ``sample_rate`` and noise σ.

    ``resolution`` is the PLD accountant's loss discretisation or the PRV accountant's ε error;
    both give upper bounds, a coarser resolution only overstating ε by about that much. By default
    it is relative: 1e-3 × ε for PLD, 2e-3 × ε for PRV (a first coarse pass estimates ε).
    """
    _check_delta(delta)
    _check_mechanism(noise_multiplier, sample_rate, steps)
    _check_accountant(accountant)
    if resolution is not None or accountant == "rdp":
        return _epsilon(noise_multiplier, delta, sample_rate, steps, accountant, resolution or 0.0)
    coarse = _epsilon(
        noise_multiplier, delta, sample_rate, steps, accountant, 1e-3 if accountant == "pld" else 1e-2
    )
    fine = _resolution(coarse, accountant)
    if fine >= (1e-3 if accountant == "pld" else 1e-2):
        return coarse
    return _epsilon(noise_multiplier, delta, sample_rate, steps, accountant, fine)


def _resolution(target_epsilon: float, accountant: str) -> float:
    # PLD's discretisation or PRV's ε error, scaled with the target so that the accountant's own
    # error stays well inside EPSILON_RTOL.
    # Floored: a finer PLD grid costs seconds per ε for tiny targets, and a coarser one only
    # overstates ε (so σ errs on the side of more noise).
    return max(1e-3 * min(1.0, target_epsilon), 1e-5) if accountant == "pld" else 2e-3 * target_epsilon


def _search(epsilon_of: Callable[[float], float], target: float) -> tuple[float, float]:
    """(σ, ε(σ)): the smallest σ in [MIN, MAX] (to EPSILON_RTOL in ε) with ε(σ) ≤ target.

    ε decreases in σ and is close to a power of σ, so regula falsi on (ln σ, ln ε) with the Illinois
    modification needs few evaluations. Only a σ whose ε was computed and found ≤ target is returned.
    """
    lo, eps_lo, hi, eps_hi = _bracket(epsilon_of, target)
    if lo == hi:  # the target is met already at MIN_NOISE_MULTIPLIER
        return hi, eps_hi
    return _narrow(epsilon_of, target, lo, eps_lo, hi, eps_hi)


def _bracket(epsilon_of: Callable[[float], float], target: float) -> tuple[float, float, float, float]:
    """(lo, ε(lo), hi, ε(hi)) with ε(lo) > target ≥ ε(hi), outwards from σ = 1; lo == hi where
    ε(MIN_NOISE_MULTIPLIER) ≤ target already. Refuses a target that σ = MAX does not meet."""
    lo, eps_lo = 1.0, epsilon_of(1.0)
    if eps_lo <= target:
        hi, eps_hi = lo, eps_lo
        while True:
            if hi <= MIN_NOISE_MULTIPLIER:
                return hi, eps_hi, hi, eps_hi
            lo = max(hi / 1.5, MIN_NOISE_MULTIPLIER)  # small σ are slow to account: go down gently
            eps_lo = epsilon_of(lo)
            if eps_lo > target:
                return lo, eps_lo, hi, eps_hi
            hi, eps_hi = lo, eps_lo
    while True:
        # σ = MAX is evaluated only when needed: accountants are slowest for tiny losses.
        sigma = min(lo * 2, MAX_NOISE_MULTIPLIER)
        eps = epsilon_of(sigma)
        if eps <= target:
            return lo, eps_lo, sigma, eps
        if sigma >= MAX_NOISE_MULTIPLIER:
            raise DpSgdError(
                "noise_too_large",
                f"ε ≤ {target} would need a noise multiplier above {MAX_NOISE_MULTIPLIER}: would need too "
                "much noise (raise ε, or train fewer steps or on a smaller share of the rows per step)",
                field="target_epsilon",
            )
        lo, eps_lo = sigma, eps


def _narrow(
    epsilon_of: Callable[[float], float],
    target: float,
    lo: float,
    eps_lo: float,
    hi: float,
    eps_hi: float,
) -> tuple[float, float]:
    """Narrow the bracket [lo, hi] by Illinois regula falsi on (ln σ, ln ε) until ε(hi) is within
    EPSILON_RTOL of ``target``; (hi, ε(hi))."""

    def gap(eps: float) -> float:  # ln(ε / target): > 0 is too little noise
        return math.log(eps / target) if eps > 0 else -math.inf

    g_lo, g_hi = gap(eps_lo), gap(eps_hi)
    kept = 0  # +1: hi was replaced last time, -1: lo was
    for _ in range(100):
        if eps_hi >= target * (1 - EPSILON_RTOL) or hi / lo <= 1 + 1e-9:
            return hi, eps_hi
        x_lo, x_hi = math.log(lo), math.log(hi)
        if math.isfinite(g_lo) and math.isfinite(g_hi) and g_lo > g_hi:
            x = x_hi - g_hi * (x_hi - x_lo) / (g_hi - g_lo)
        else:
            x = (x_lo + x_hi) / 2
        width = x_hi - x_lo  # stay strictly inside the bracket
        sigma = math.exp(min(max(x, x_lo + 1e-3 * width), x_hi - 1e-3 * width))
        eps = epsilon_of(sigma)
        if eps <= target:
            hi, eps_hi, g_hi = sigma, eps, gap(eps)
            if kept == 1:
                g_lo /= 2  # Illinois: lo kept twice in a row, halve its weight
            kept = 1
        else:
            lo, eps_lo, g_lo = sigma, eps, gap(eps)
            if kept == -1:
                g_hi /= 2
            kept = -1
    return hi, eps_hi  # pragma: no cover - converges in well under 100 evaluations


def _calibrate(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str
) -> tuple[float, float]:
    _check_epsilon(target_epsilon)
    _check_delta(delta)
    _check_mechanism(1.0, sample_rate, steps)
    _check_accountant(accountant)
    resolution = _resolution(target_epsilon, accountant)

    def epsilon_of(sigma: float) -> float:
        return _epsilon(sigma, delta, sample_rate, steps, accountant, resolution)

    return _search(epsilon_of, target_epsilon)


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Accountant = "pld",
) -> float:
    """The noise multiplier σ for which ``steps`` DP-SGD steps at Poisson rate ``sample_rate`` are
    (ε, ``delta``)-DP with target × (1 - 1e-3) ≤ ε ≤ ``target_epsilon`` (or ε below that when the
    target is met already at MIN_NOISE_MULTIPLIER, which is then returned).

    Refuses (``DpSgdError``) a target needing σ > MAX_NOISE_MULTIPLIER ("noise_too_large").
    """
    return _calibrate(target_epsilon, delta, sample_rate, steps, accountant)[0]


def _check_job_size(rows: int, batch_size: int, rounds: int, delta: float) -> None:
    """Rows, batch size and rounds are counts, δ fits the rows, and a batch fits in the rows."""
    for name, value in (("rows", rows), ("batch_size", batch_size), ("rounds", rounds)):
        if not _is_count(value):
            raise DpSgdError(
                "invalid_training_steps", f"{name} must be an integer ≥ 1, not {value!r}", field=name
            )
    _check_delta(delta, rows)
    if batch_size > rows:
        raise DpSgdError(
            "invalid_sample_rate",
            f"batch_size {batch_size} exceeds the {rows} rows: sample rate {batch_size / rows:.3g} > 1",
            field="batch_size",
        )


def _local_steps(rows: int, batch_size: int, local_epochs: int | None, local_steps: int | None) -> int:
    """A round's steps: ``local_steps``, or ``local_epochs`` × ⌈rows / batch_size⌉ (exactly one given)."""
    if (local_epochs is None) == (local_steps is None):
        raise DpSgdError(
            "invalid_training_steps",
            "give exactly one of local_epochs and local_steps",
            field="local_epochs",
        )
    if local_steps is None:
        if not _is_count(local_epochs):
            raise DpSgdError(
                "invalid_training_steps",
                f"local_epochs must be an integer ≥ 1, not {local_epochs!r}",
                field="local_epochs",
            )
        assert local_epochs is not None  # for mypy: _is_count refused None
        return local_epochs * math.ceil(rows / batch_size)
    if not _is_count(local_steps):
        raise DpSgdError(
            "invalid_training_steps",
            f"local_steps must be an integer ≥ 1, not {local_steps!r}",
            field="local_steps",
        )
    return local_steps


@dataclass(frozen=True)
class DpSgdPlan:
    """A member's DP-SGD run as priced: Poisson rate, steps, noise and clipping, and the ε it costs.

    ``epsilon`` is what ``accountant`` gives for (σ, q, steps) at ``delta`` (≤ ``target_epsilon``).
    ``rows`` and ``batch_size`` (when known) are what the run's data loader must have: q = batch/rows.
    ``data`` (when known) is the registered version the plan was priced on (all its rows, before the
    train/test split, and their content digest, ``training.digest``): the member trains only on a
    local file with that digest.
    """

    target_epsilon: float
    delta: float
    sample_rate: float
    steps: int
    noise_multiplier: float
    max_grad_norm: float
    accountant: Accountant
    epsilon: float
    rows: int | None = None
    batch_size: int | None = None
    data: DataExpectation | None = None

    def __post_init__(self) -> None:
        if self.data is not None:
            try:
                object.__setattr__(self, "data", DataExpectation.coerce(self.data))
            except (TrainingConfigError, TypeError) as exc:
                raise DpSgdError("invalid_data_expectation", str(exc), field="data") from exc
        _check_epsilon(self.target_epsilon)
        _check_epsilon(self.epsilon, "epsilon")
        _check_delta(self.delta, self.rows)
        _check_mechanism(self.noise_multiplier, self.sample_rate, self.steps)
        if self.noise_multiplier > MAX_NOISE_MULTIPLIER:
            raise DpSgdError(
                "noise_too_large",
                f"noise_multiplier {self.noise_multiplier} is above {MAX_NOISE_MULTIPLIER}: would need too much noise",
                field="noise_multiplier",
            )
        if not _is_number(self.max_grad_norm) or not self.max_grad_norm > 0:
            raise DpSgdError(
                "invalid_max_grad_norm",
                f"max_grad_norm must be a finite number > 0, not {self.max_grad_norm!r}",
                field="max_grad_norm",
            )
        _check_accountant(self.accountant)
        if self.epsilon > self.target_epsilon:
            raise DpSgdError(
                "invalid_privacy_loss",
                f"epsilon {self.epsilon} exceeds target {self.target_epsilon}",
                field="epsilon",
            )

    @classmethod
    def from_job(
        cls,
        *,
        rows: int,
        batch_size: int,
        rounds: int,
        target_epsilon: float,
        delta: float,
        max_grad_norm: float,
        local_epochs: int | None = None,
        local_steps: int | None = None,
        accountant: Accountant = "pld",
    ) -> DpSgdPlan:
        """The plan of one member training ``rounds`` rounds on ``rows`` rows.

        q = ``batch_size`` / ``rows`` (the expected batch under Poisson sampling); each round takes
        ``local_steps`` steps, or ``local_epochs`` × ⌈rows / batch_size⌉ (an epoch as Opacus counts
        it); T = ``rounds`` × local steps. Exactly one of ``local_epochs`` and ``local_steps``.
        """
        _check_epsilon(target_epsilon)
        _check_job_size(rows, batch_size, rounds, delta)
        local_steps = _local_steps(rows, batch_size, local_epochs, local_steps)
        sample_rate = batch_size / rows
        steps = rounds * local_steps
        sigma, epsilon = _calibrate(target_epsilon, delta, sample_rate, steps, accountant)
        return cls(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            noise_multiplier=sigma,
            max_grad_norm=max_grad_norm,
            accountant=accountant,
            epsilon=epsilon,
            rows=rows,
            batch_size=batch_size,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values (what a job records and sends to its members)."""
        return dataclasses.asdict(self)

    def with_data(self, data: DataExpectation | Mapping[str, Any] | None) -> DpSgdPlan:
        """The same plan, bound to the registered rows ``data`` (or to none)."""
        return dataclasses.replace(self, data=None if data is None else DataExpectation.coerce(data))

    def priced_dict(self) -> dict[str, Any]:
        """``to_dict()`` without ``data`` (``priced_plan``)."""
        return priced_plan(self.to_dict())


def priced_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """A plan (as ``DpSgdPlan.to_dict`` writes it) without ``data``, the rows it was priced on: what
    a ledger entry, a run config or a model's report keeps (the digest is the member's business,
    docs/data-exposure.md)."""
    return {key: value for key, value in plan.items() if key != "data"}
