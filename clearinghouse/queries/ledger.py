"""Budget settings and the atomic debit. Every write is audited in its own transaction.

One debit (`_debit`) pays every use of a dataset: a query's release (`budget_debit`) and a federated
job's DP-SGD training (`budget_debit_training`, priced in (ε, δ), approximate-DP budgets only), under
the same locks and limits. An approximate-DP budget composes its releases with the accountant
(`clearinghouse.dp.accounting.charged_epsilon`: the tighter of PLD and the naive sum) instead of
adding them, for its total; allocations and personal caps count each release's own cost;
docs/privacy-ledger.md."""

from __future__ import annotations

import logging
import math
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cachetools import LRUCache
from django.db import transaction
from django.db.models import Count, Max, Q, Sum
from django.utils import timezone

from clearinghouse.audit.services import audit_lock, audit_record
from clearinghouse.core.errors import ApplicationError, Conflict, NotFound, ValidationFailed
from clearinghouse.core.metrics import PRIVACY_LOSS_SPENT, count_on_commit
from clearinghouse.datasets.models import Dataset
from clearinghouse.datasets.selectors import dataset_ready_rows_max, dataset_require_owner
from clearinghouse.dp.accounting import (
    AccountingError,
    ApproxEvent,
    LedgerComposition,
    PrivacyEvent,
    SubsampledGaussianEvent,
    event_from_dict,
    event_to_dict,
)
from clearinghouse.dp.schema import U32_MAX as MAX_ROWS_LIMIT  # OpenDP's max_length is a u32
from clearinghouse.organisations.models import Organisation, OrganisationStatus

from .models import (
    BudgetAllocation,
    LedgerEntry,
    LedgerKind,
    PrivacyBudget,
    PrivacyMeasure,
    Query,
    QueryStatus,
    TrainingPolicy,
)

log = logging.getLogger(__name__)

# Floating-point sums of many small costs may overshoot by rounding alone; this slack is far below any
# meaningful privacy loss (1e-12 of the total).
_SLACK = 1e-12


class BudgetExceeded(ApplicationError):
    status_code = 409
    default_code = "budget_exceeded"


# No meaningful privacy budget comes near this (ε = 10⁶ protects nothing); the bound also keeps the
# ledger's checks (spent ≤ total · (1 + 10⁻⁹)) inside the range of a float in the database.
MAX_PRIVACY_AMOUNT = 1e6


def _amount(value: Any, *, field: str, allow_zero: bool = False, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationFailed(
            f"{field} must be a finite number.", code="invalid_budget", fields={field: ["Invalid."]}
        )
    value = float(value)
    if (
        value < 0
        or (value == 0 and not allow_zero)
        or (below_one and value >= 1)
        or value > MAX_PRIVACY_AMOUNT
        or 0 < value < sys.float_info.min
    ):
        raise ValidationFailed(
            f"{field} is out of range.", code="invalid_budget", fields={field: ["Out of range."]}
        )
    return value


def _row_bound(value: Any, *, dataset: Dataset) -> int:
    """The steward's stated `max_rows`: a whole number from 1 to the engine's limit, and no lower than
    the rows of a ready version (a false bound would make every release on it fail after its debit).
    The refusal states the rule, never the count."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ROWS_LIMIT:
        raise ValidationFailed(
            f"max_rows must be a whole number from 1 to {MAX_ROWS_LIMIT}.",
            code="invalid_budget",
            fields={"max_rows": ["Out of range."]},
        )
    largest = dataset_ready_rows_max(dataset=dataset)
    if largest is not None and value < largest:
        raise Conflict(
            "max_rows is below the size of a ready version of this dataset; state a public upper bound "
            "that holds for all of its data.",
            code="max_rows_below_data",
            fields={"max_rows": ["Below the size of a ready version."]},
        )
    return value


@transaction.atomic
def budget_set(
    *,
    actor: Any,
    dataset: Dataset,
    measure: str,
    total: float,
    delta_total: float = 0.0,
    per_query_max: float | None = None,
    per_analyst_cap: float | None = None,
    max_rows: int | None = None,
    training: str | None = None,
) -> PrivacyBudget:
    """The steward's policy. `max_rows` is a public upper bound on the row count that the DP engine
    calibrates with (stated, never measured); None keeps the current one (the default for a new
    budget). `training` (a `TrainingPolicy`): whether federated jobs may train on the dataset, only
    with DP-SGD paid from this budget, or also without DP; None keeps the current one (`dp` for a new
    budget). Changes apply to queries priced and jobs scheduled afterwards: released answers are
    replayed as they were, and jobs already scheduled keep what they were debited."""
    dataset_require_owner(actor=actor, dataset=dataset)
    if training is not None and training not in TrainingPolicy.values:
        raise ValidationFailed(
            f"training must be one of {', '.join(TrainingPolicy.values)}.",
            code="invalid_training_policy",
            fields={"training": [f"Choose one of {', '.join(TrainingPolicy.values)}."]},
        )
    if measure not in PrivacyMeasure.values:
        raise ValidationFailed(
            f"measure must be one of {', '.join(PrivacyMeasure.values)}.",
            code="invalid_measure",
            fields={"measure": [f"Choose one of {', '.join(PrivacyMeasure.values)}."]},
        )
    total = _amount(total, field="total")
    delta_total = _amount(delta_total, field="delta_total", allow_zero=True, below_one=True)
    per_query_max = None if per_query_max is None else _amount(per_query_max, field="per_query_max")
    per_analyst_cap = None if per_analyst_cap is None else _amount(per_analyst_cap, field="per_analyst_cap")
    max_rows = None if max_rows is None else _row_bound(max_rows, dataset=dataset)
    audit_lock(dataset.organisation_id)  # first: the lock order of every ledger write (see audit_lock)
    budget = PrivacyBudget.objects.select_for_update(no_key=True).filter(dataset=dataset).first()
    if budget is None:
        budget = PrivacyBudget(dataset=dataset, measure=measure, total=total)
    elif budget.spent > 0 and budget.measure != measure:
        raise Conflict(
            "The measure cannot change once budget was spent.",
            code="measure_locked",
            fields={"measure": ["Locked: budget was spent."]},
        )
    # A per-query maximum above the total is refused when it is set or the total changes; a policy
    # saved before this rule existed can still be re-saved as it is.
    changed = budget.pk is None or (per_query_max, total) != (budget.per_query_max, budget.total)
    if per_query_max is not None and per_query_max > total and changed:
        raise ValidationFailed(
            "per_query_max cannot exceed the total.",
            code="invalid_budget",
            fields={"per_query_max": ["Above the total."]},
        )
    if budget.pk and measure == PrivacyMeasure.APPROX and delta_total != budget.delta_total:
        # The composed ε is stated at the budget's δ: another δ states the same releases anew.
        composed = budget_composition(budget=budget).epsilon(delta_total)
        if composed > total * (1 + _SLACK):
            raise Conflict(
                f"At δ={delta_total:g} what was already released composes to ε={composed:.6g}, above the "
                "total; keep a larger δ or raise the total.",
                code="below_spent",
                fields={"delta_total": ["Too small for what was already released."]},
            )
        budget.spent = min(total, composed)
    if total < budget.spent or delta_total < budget.delta_spent:
        field = "total" if total < budget.spent else "delta_total"
        raise Conflict(
            f"{budget.spent:g} is already spent; the total cannot go below it.",
            code="below_spent",
            fields={field: ["Below what was already spent."]},
        )
    budget.measure, budget.total, budget.delta_total = measure, total, delta_total
    budget.per_query_max, budget.per_analyst_cap = per_query_max, per_analyst_cap
    if max_rows is not None and max_rows != budget.max_rows:
        # A paid query still being released was priced under the current bound: it must be released
        # under it too (a worker that recovers it rebuilds the measurement from the budget).
        if budget.pk and Query.objects.filter(dataset=dataset, status=QueryStatus.RUNNING).exists():
            raise Conflict(
                "Paid queries on this dataset are being released under the current max_rows; change it "
                "once they have finished.",
                code="queries_in_flight",
            )
        budget.max_rows = max_rows
    if training is not None:
        budget.training = training
    budget.updated_at = timezone.now()
    budget.save()
    audit_record(
        actor=actor,
        action="budget.set",
        organisation=dataset.organisation,
        target=budget,
        extra={
            "dataset": dataset.slug,
            "measure": measure,
            "total": total,
            "delta_total": delta_total,
            "per_query_max": per_query_max,
            "per_analyst_cap": per_analyst_cap,
            "max_rows": budget.max_rows,
            "training": budget.training,
            "spent": budget.spent,  # restated when a composed budget's δ changed
        },
    )
    return budget


@transaction.atomic
def allocation_set(
    *, actor: Any, dataset: Dataset, organisation: Organisation, amount: float, delta_amount: float = 0.0
) -> BudgetAllocation:
    dataset_require_owner(actor=actor, dataset=dataset)
    if organisation.status != OrganisationStatus.APPROVED:
        raise NotFound("Organisation not found.")
    audit_lock(dataset.organisation_id)  # first: the lock order of every ledger write (see audit_lock)
    budget = PrivacyBudget.objects.select_for_update(no_key=True).filter(dataset=dataset).first()
    if budget is None:
        raise Conflict("Set the dataset's budget first.", code="no_budget")
    amount = _amount(amount, field="amount", allow_zero=True)
    delta_amount = _amount(delta_amount, field="delta_amount", allow_zero=True, below_one=True)
    allocation, _ = BudgetAllocation.objects.select_for_update(no_key=True).get_or_create(
        budget=budget, organisation=organisation, defaults={"amount": amount}
    )
    if amount < allocation.spent or delta_amount < allocation.delta_spent:
        raise Conflict(
            f"{allocation.spent:g} is already spent by this organisation.",
            code="below_spent",
            fields={"amount" if amount < allocation.spent else "delta_amount": ["Below what was spent."]},
        )
    allocation.amount, allocation.delta_amount = amount, delta_amount
    allocation.save()
    audit_record(
        actor=actor,
        action="budget.allocated",
        organisation=dataset.organisation,
        target=allocation,
        extra={
            "dataset": dataset.slug,
            "grantee": organisation.slug,
            "amount": amount,
            "delta_amount": delta_amount,
        },
    )
    return allocation


@dataclass(frozen=True)
class Remaining:
    measure: str
    organisation: float
    dataset: float
    analyst: float | None
    delta_organisation: float
    per_query_max: float | None
    # The organisation's own allocation and what it has spent of it (`organisation` is what is left).
    organisation_allocated: float = 0.0
    organisation_spent: float = 0.0


def budget_remaining(
    *,
    budget: PrivacyBudget,
    allocation: BudgetAllocation | None,
    analyst: Any,
    analyst_used: float | None = None,
) -> Remaining:
    """What is left; `analyst_used`: what the analyst has spent of the budget, when the caller knows it
    (otherwise read from the ledger)."""
    analyst_left = None
    if budget.per_analyst_cap is not None:
        used = (
            analyst_used
            if analyst_used is not None
            else LedgerEntry.objects.filter(budget=budget, analyst=analyst).aggregate(s=Sum("amount"))["s"]
            or 0.0
        )
        analyst_left = max(0.0, budget.per_analyst_cap - used)
    return Remaining(
        measure=budget.measure,
        organisation=max(0.0, allocation.amount - allocation.spent) if allocation else 0.0,
        dataset=max(0.0, budget.total - budget.spent),
        analyst=analyst_left,
        delta_organisation=max(0.0, allocation.delta_amount - allocation.delta_spent) if allocation else 0.0,
        per_query_max=budget.per_query_max,
        organisation_allocated=allocation.amount if allocation else 0.0,
        organisation_spent=allocation.spent if allocation else 0.0,
    )


@dataclass(frozen=True)
class _Payer:
    """Who pays a debit and how its refusals name what: a query's asking organisation and analyst
    ("This query", "your organisation's allocation"), or a federated job's participant and the admin
    who accepted it (named, since the operator who schedules the job reads the refusal)."""

    organisation_id: int
    analyst: Any
    use: str
    allocation: str = "your organisation's allocation"
    cap: str = "your personal cap"
    delta_to: str = "your organisation"


# --------------------------------------------------------------------------- the composed ledger
# An approximate-DP budget is paid by composition, not by a sum: every entry is a privacy event
# (`details["event"]`) and the budget's `spent` is the ε at which all of them compose at the budget's
# δ (`LedgerComposition.epsilon`); the dataset's total is checked against it. An entry's `amount` is
# the release's own cost (a query's ε, a training plan's ε), and what allocations and personal caps
# count: each payer's own releases, priced alone, whatever others released before (their sum bounds
# the payer's own composed loss). So the entries of a composed budget add up to more than `spent`.
# Pure-ε and ρ-zCDP budgets add: `spent` is the sum of the entries.

# The composition kept per budget in this process, with the ledger it composes: (number of entries,
# newest entry's id, sum of their amounts). A kept one is brought up to date with the entries added
# since (other workers' debits), after checking that those and the kept ones are exactly the ledger;
# otherwise the ledger is composed again from all its entries. A cache, never the record. A wide PLD
# takes several MB: few are kept.
_Signature = tuple[int, int | None, float]
_COMPOSITIONS: LRUCache[int, tuple[_Signature, LedgerComposition]] = LRUCache(maxsize=32)
_COMPOSITIONS_LOCK = threading.Lock()


def _training_event(plan: dict[str, Any]) -> SubsampledGaussianEvent:
    """The privacy event of a DP-SGD plan: Poisson sampling at q, Gaussian noise σ, `steps` times."""
    return SubsampledGaussianEvent(
        sample_rate=plan["sample_rate"], noise_multiplier=plan["noise_multiplier"], steps=plan["steps"]
    )


def _entry_event(entry: LedgerEntry) -> PrivacyEvent:
    """The privacy event `entry` paid for. Entries written before the ledger composed carry none: a
    query's was an (ε, δ) release of its amount, a training's the Poisson-subsampled Gaussian of its
    plan. An entry whose record cannot be read as one (damaged `details`) counts as an (ε, δ) release
    of its amount at its plan's or its own δ: its own guarantee, stated pessimistically."""
    details = entry.details or {}
    try:
        if "event" in details:
            return event_from_dict(details["event"])
        if entry.kind == LedgerKind.TRAINING:
            return _training_event(details)
    except (AccountingError, KeyError, TypeError):
        log.warning("ledger entry %s: unreadable privacy event; counted as (amount, delta)", entry.pk)
    stated = details.get("delta") if entry.kind == LedgerKind.TRAINING else entry.delta
    delta = stated if isinstance(stated, float) and 0 <= stated < 1 else entry.delta
    return ApproxEvent(epsilon=entry.amount, delta=delta)


def ledger_entry_event(entry: LedgerEntry) -> dict[str, Any]:
    """The privacy event `entry` paid for, as JSON (`event_to_dict`)."""
    return event_to_dict(_entry_event(entry))


def _keep(budget_id: int, signature: _Signature, composition: LedgerComposition) -> None:
    with _COMPOSITIONS_LOCK:
        _COMPOSITIONS[budget_id] = (signature, composition)


def _composition_state(budget: PrivacyBudget) -> tuple[_Signature, LedgerComposition]:
    """The composition of every entry of `budget` and the signature of the entries it holds."""
    entries = LedgerEntry.objects.filter(budget=budget).order_by("pk")
    with _COMPOSITIONS_LOCK:
        cached = _COMPOSITIONS.get(budget.pk)
    if cached is not None:
        (count, last, amount), kept = cached
        newer = list(entries if last is None else entries.filter(pk__gt=last))
        # Read after `newer`: an entry committed in between (or a kept entry that was rolled back or
        # belongs to another database) shows as a mismatch, and the ledger is composed again.
        state = entries.aggregate(n=Count("pk"), last=Max("pk"), amount=Sum("amount"))
        signature = (
            count + len(newer),
            newer[-1].pk if newer else last,
            math.fsum([amount, *(entry.amount for entry in newer)]),
        )
        if (state["n"], state["last"]) == signature[:2] and math.isclose(
            state["amount"] or 0.0, signature[2], rel_tol=1e-9, abs_tol=1e-12
        ):
            composition = kept
            for entry in newer:
                composition = composition.add(_entry_event(entry))
            if newer:
                _keep(budget.pk, signature, composition)
            return signature, composition
    rows = list(entries)  # one statement: a consistent set of entries, whatever commits meanwhile
    composition = LedgerComposition([_entry_event(entry) for entry in rows])
    signature = (len(rows), rows[-1].pk if rows else None, math.fsum(entry.amount for entry in rows))
    _keep(budget.pk, signature, composition)
    return signature, composition


def budget_composition(*, budget: PrivacyBudget) -> LedgerComposition:
    """Every privacy event paid from `budget`, composed (see above)."""
    return _composition_state(budget)[1]


@dataclass(frozen=True)
class _Price:
    """What the dataset will have spent after a debit (`spent_after`: ε or ρ) and, for a composed
    budget, the composition with the new event and the signature it will have once recorded."""

    spent_after: float
    composition: LedgerComposition | None = None
    signature: _Signature | None = None


def _price(
    budget: PrivacyBudget,
    amount: float,
    event: Callable[[], PrivacyEvent],
    state: tuple[_Signature, LedgerComposition] | None = None,
) -> _Price:
    """`state`: the composition to add to (the ledger's and the batch's debits so far); by default the
    ledger's own."""
    if budget.measure != PrivacyMeasure.APPROX:
        return _Price(spent_after=budget.spent + amount)
    signature, before = state if state is not None else _composition_state(budget)
    after = before.add(event())
    return _Price(spent_after=after.epsilon(budget.delta_total), composition=after, signature=signature)


@dataclass
class _Use:
    """One use to pay (see `_debit`): its payer, its own cost `amount` and the δ it spends outright,
    its privacy event, the check of the budget's kind, and the ledger entry's other fields."""

    payer: _Payer
    amount: float
    delta: float
    event: Callable[[], PrivacyEvent]
    check: Callable[[PrivacyBudget], None]
    entry: dict[str, Any]
    # The budget's measure the use was priced in, if it was (`check` refuses it under another).
    measure: str | None = None


@dataclass(frozen=True)
class _Debited:
    """A paid use: its ledger entry, and the dataset's spent just after it (for its audit event)."""

    entry: LedgerEntry
    spent: float


def _check_use(
    budget: PrivacyBudget,
    allocation: BudgetAllocation | None,
    use: _Use,
    *,
    analyst_used: float | None,
    state: tuple[_Signature, LedgerComposition] | None,
) -> _Price:
    """The limits of one use against the budget and allocation as they stand (the one rule, for a
    debit alone and for each of a batch in turn): its price, or raises and spends nothing."""
    payer, amount, delta = use.payer, use.amount, use.delta
    if not (amount > 0 and math.isfinite(amount)) or not (0 <= delta < 1):
        raise ValidationFailed("The privacy cost must be positive and finite.", code="invalid_privacy_loss")
    use.check(budget)
    unit = "ρ" if budget.measure == PrivacyMeasure.ZCDP else "ε"
    if allocation is None:  # however small the cost: nothing was allocated, so nothing may be spent
        raise BudgetExceeded(f"{payer.use} costs {unit}={amount:.6g}; {payer.allocation} has {unit}=0 left.")
    left = budget_remaining(
        budget=budget, allocation=allocation, analyst=payer.analyst, analyst_used=analyst_used
    )
    if left.per_query_max is not None and amount > left.per_query_max * (1 + _SLACK):
        raise BudgetExceeded(
            f"{payer.use} costs {unit}={amount:.6g}, above the per-query maximum {left.per_query_max:g}.",
            code="above_per_query_max",
        )
    price = _price(budget, amount, use.event, state)
    slack = _SLACK * max(1.0, budget.total)
    if amount > left.organisation + slack:
        raise BudgetExceeded(
            f"{payer.use} costs {unit}={amount:.6g}; {payer.allocation} has {unit}={left.organisation:.6g} left."
        )
    if price.spent_after > budget.total + slack:
        composed = (
            f" (composed with the dataset's other releases, the total would reach ε={price.spent_after:.6g})"
            if price.composition is not None
            else ""
        )
        raise BudgetExceeded(
            f"{payer.use} costs {unit}={amount:.6g}{composed}; the dataset's total budget has "
            f"{unit}={left.dataset:.6g} left."
        )
    if left.analyst is not None and amount > left.analyst + slack:
        raise BudgetExceeded(
            f"{payer.use} costs {unit}={amount:.6g}; {payer.cap} has {unit}={left.analyst:.6g} left."
        )
    if delta > left.delta_organisation + _SLACK or delta > budget.delta_total - budget.delta_spent + _SLACK:
        raise BudgetExceeded(
            f"{payer.use} needs δ={delta:g}; δ={left.delta_organisation:g} is left to {payer.delta_to}.",
            code="delta_exceeded",
        )
    return price


def _debit_many(
    *, dataset_id: int, uses: list[_Use], heads_held: bool = False
) -> list[_Debited | ApplicationError]:
    """The one debit, for several uses of one dataset in turn: locks the budget, then the payers'
    allocations, once (after the audit heads: the lock order of every ledger write); checks each use
    in order against what the ones before it left (`_check_use`: per-use maximum, allocation, the
    payer's personal cap on the use's own cost `amount`, and the dataset's total on what it will have
    spent — composed, for an approximate-DP budget), exactly as debiting them one after the other
    would; then writes the allocations and the budget once and the ledger entries in one INSERT.
    Returns, per use, what it paid or why it was refused (nothing spent for it). `delta` is the δ a
    use spends outright (a key release's), against the payer's and the dataset's δ. The caller writes
    the audit events in the same transaction. `heads_held`: the caller's transaction already holds the
    audit heads of the payers' organisations (`audit_lock`), so they are not locked again."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("a ledger debit must run inside a transaction")
    if not uses:
        return []
    # Compose the ledger before taking the locks (a cold composition can take seconds, and the audit
    # head is every writer's): under them only the entries added meanwhile are composed.
    # (Uses priced under another measure are refused under an approximate-DP one: no need to look.)
    if any(use.measure in (None, PrivacyMeasure.APPROX) for use in uses):
        unlocked = PrivacyBudget.objects.filter(dataset_id=dataset_id).first()
        if unlocked is not None and unlocked.measure == PrivacyMeasure.APPROX:
            _composition_state(unlocked)
    # Lock order: budget, then allocations (by id), everywhere, so concurrent debits cannot deadlock.
    if not heads_held:
        audit_lock(*{use.payer.organisation_id for use in uses})  # first: the lock order of every write
    budget = PrivacyBudget.objects.select_for_update(no_key=True).filter(dataset_id=dataset_id).first()
    if budget is None:
        return [
            NotFound("This dataset has no privacy budget; its owner must set one.", code="no_budget")
            for _ in uses
        ]
    allocations = {
        allocation.organisation_id: allocation
        for allocation in BudgetAllocation.objects.select_for_update(no_key=True)
        .filter(budget=budget, organisation_id__in={use.payer.organisation_id for use in uses})
        .order_by("pk")
    }
    used: dict[Any, float] = {}
    if budget.per_analyst_cap is not None:
        analysts = {getattr(use.payer.analyst, "pk", use.payer.analyst) for use in uses}
        used = {analyst: 0.0 for analyst in analysts}
        named = Q(analyst__in=analysts - {None}) | (Q(analyst__isnull=True) if None in analysts else Q())
        for row in (
            LedgerEntry.objects.filter(named, budget=budget)
            .values("analyst")
            .annotate(s=Sum("amount"))
            .order_by()
        ):
            used[row["analyst"]] = row["s"] or 0.0
    state = _composition_state(budget) if budget.measure == PrivacyMeasure.APPROX else None
    outcomes: dict[int, _Debited | ApplicationError] = {}
    paid: list[tuple[int, _Use, _Price, float]] = []  # (index, use, price, the dataset's spent after)
    for index, use in enumerate(uses):
        allocation = allocations.get(use.payer.organisation_id)
        analyst = getattr(use.payer.analyst, "pk", use.payer.analyst)
        try:
            price = _check_use(budget, allocation, use, analyst_used=used.get(analyst), state=state)
        except ApplicationError as exc:
            outcomes[index] = exc
            continue
        assert allocation is not None  # `_check_use` refuses a payer without one
        # Clamp the rounding slack away so that the stored sums never pass their limits.
        allocation.spent = min(allocation.amount, allocation.spent + use.amount)
        allocation.delta_spent = min(allocation.delta_amount, allocation.delta_spent + use.delta)
        budget.spent = min(budget.total, price.spent_after)
        budget.delta_spent = min(budget.delta_total, budget.delta_spent + use.delta)
        if analyst in used:
            used[analyst] += use.amount
        if price.composition is not None and price.signature is not None:
            state = (price.signature, price.composition)
        paid.append((index, use, price, budget.spent))
    if paid:
        for organisation_id in sorted({use.payer.organisation_id for _, use, _, _ in paid}):
            allocations[organisation_id].save(update_fields=["spent", "delta_spent"])
        budget.save(update_fields=["spent", "delta_spent"])
        entries = [_entry(budget, use, price) for _, use, price, _ in paid]
        LedgerEntry.objects.bulk_create(entries)  # one INSERT; PostgreSQL gives back their ids, in order
        for (index, use, _, spent), created in zip(paid, entries, strict=True):
            count_on_commit(PRIVACY_LOSS_SPENT.labels(measure=budget.measure), use.amount)
            outcomes[index] = _Debited(entry=created, spent=spent)
        before = paid[0][2].signature  # the ledger's, before the batch
        if state is not None and before is not None:
            count, _, total = before
            signature = (
                count + len(entries),
                entries[-1].pk,
                total + math.fsum(entry.amount for entry in entries),
            )
            composition = state[1]
            transaction.on_commit(lambda: _keep(budget.pk, signature, composition))
    return [outcomes[index] for index in range(len(uses))]


def _entry(budget: PrivacyBudget, use: _Use, price: _Price) -> LedgerEntry:
    """The (unsaved) ledger entry of a paid use; a composed budget's records its privacy event."""
    fields = dict(use.entry)
    details = dict(fields.pop("details", {}))
    if price.composition is not None:
        details["event"] = event_to_dict(price.composition.events[-1])
    return LedgerEntry(
        budget=budget,
        organisation_id=use.payer.organisation_id,
        amount=use.amount,
        delta=use.delta,
        details=details,
        **fields,
    )


def _debit(*, dataset_id: int, use: _Use) -> _Debited:
    """One use (`_debit_many` with one): pays it, or raises and spends nothing. `use.check(budget)`
    refuses a budget that cannot pay this kind of use (its measure); `use.event()` is its privacy
    event; `use.entry`: the ledger entry's other fields. The caller writes the audit event in the same
    transaction."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("a ledger debit must run inside a transaction")
    if not (use.amount > 0 and math.isfinite(use.amount)) or not (0 <= use.delta < 1):
        raise ValidationFailed("The privacy cost must be positive and finite.", code="invalid_privacy_loss")
    (outcome,) = _debit_many(dataset_id=dataset_id, uses=[use])
    if isinstance(outcome, ApplicationError):
        raise outcome
    return outcome


def _query_use(query: Query, amount: float, delta: float, measure: str | None) -> _Use:
    """What paying for `query` is: see `budget_debit`."""

    def check(budget: PrivacyBudget) -> None:
        if measure is not None and measure != budget.measure:
            raise Conflict(
                "The dataset's privacy measure changed after this query was priced; nothing was spent. "
                "Ask again.",
                code="policy_changed",
            )

    return _Use(
        payer=_Payer(organisation_id=query.organisation_id, analyst=query.analyst, use="This query"),
        amount=amount,
        delta=delta,
        event=lambda: ApproxEvent(epsilon=amount, delta=delta),
        check=check,
        entry={
            "kind": LedgerKind.QUERY,
            "analyst": query.analyst,
            "query": query,
            "query_hash": query.query_hash,
        },
        measure=measure,
    )


def _debited_event(query: Query, debited: _Debited) -> dict[str, Any]:
    """The `budget.debited` audit event of a paid query (`audit_record`'s arguments)."""
    entry = debited.entry
    return {
        "actor": query.analyst,
        "action": "budget.debited",
        "organisation": query.organisation,
        "target": entry,
        "extra": {
            "kind": LedgerKind.QUERY,
            "dataset": query.dataset_id,
            "query": query.pk,
            "query_hash": query.query_hash,
            "amount": entry.amount,
            "delta": entry.delta,
            "measure": entry.budget.measure,
            "spent": debited.spent,  # the dataset's, after it (composed, for an approximate-DP budget)
        },
    }


def budget_debit(
    *, query: Query, amount: float, delta: float = 0.0, measure: str | None = None
) -> LedgerEntry:
    """Pays for `query`, or raises BudgetExceeded and spends nothing. Must run inside the caller's
    transaction (which also records the query as running), so that the debit and the query's state
    commit together. `measure`: the one `amount` was priced in; if the owner changed the budget's
    measure since, the query is refused rather than paid in the wrong unit. On an approximate-DP
    budget the query is the privacy event (`amount`, `delta`) whatever its mechanisms (`ApproxEvent`),
    composed with the dataset's other releases."""
    debited = _debit(dataset_id=query.dataset_id, use=_query_use(query, amount, delta, measure))
    audit_record(**_debited_event(query, debited))
    return debited.entry


@dataclass(frozen=True)
class QueryDebit:
    """The outcome of one query of `budget_debit_many`: its ledger entry and `budget.debited` audit
    event (`audit_record`'s arguments), or the refusal (nothing spent for it)."""

    entry: LedgerEntry | None = None
    audit: dict[str, Any] | None = None
    refusal: ApplicationError | None = None


def budget_debit_many(
    *, dataset_id: int, queries: list[tuple[Query, float, float, str | None]], heads_held: bool = False
) -> list[QueryDebit]:
    """Pays for several queries on one dataset, each (query, amount, delta, measure) as `budget_debit`
    would, in turn: a query is refused exactly when debiting them one after the other would refuse it,
    with the same error. One lock of the budget and the allocations, one write of each, one INSERT of
    the entries (`_debit_many`). Must run inside the caller's transaction; the caller records the
    returned audit events (`audit_record_many`, in the queries' order, with its own refusals) in it.
    `heads_held`: that transaction holds the audit heads of the queries' organisations already
    (`audit_lock`, taken first), saving a round trip."""
    uses = []
    for query, amount, delta, measure in queries:
        if query.dataset_id != dataset_id:
            raise ValueError("budget_debit_many pays for the queries of one dataset")
        uses.append(_query_use(query, amount, delta, measure))
    outcomes = _debit_many(dataset_id=dataset_id, uses=uses, heads_held=heads_held)
    return [
        QueryDebit(refusal=outcome)
        if isinstance(outcome, ApplicationError)
        else QueryDebit(entry=outcome.entry, audit=_debited_event(query, outcome))
        for (query, *_), outcome in zip(queries, outcomes, strict=True)
    ]


def _can_pay_training(budget: PrivacyBudget) -> None:
    """Training is priced in (ε, δ): only an approximate-DP budget with training allowed pays it."""
    if budget.training == TrainingPolicy.FORBIDDEN:
        raise Conflict("The dataset's owner allows no federated training on it.", code="training_forbidden")
    if budget.measure == PrivacyMeasure.PURE:
        raise Conflict(
            "DP-SGD cannot give pure ε-DP (its Gaussian noise always needs a δ > 0): the dataset's budget "
            "is pure ε, so it cannot pay for training. Its owner may state the budget as approximate DP "
            "(ε, δ).",
            code="training_needs_approx_dp",
        )
    if budget.measure != PrivacyMeasure.APPROX:
        raise Conflict(
            "DP-SGD is priced in (ε, δ), and the dataset's budget is stated in ρ (zero-concentrated DP), "
            "which the ledger does not convert: it cannot pay for training. Its owner may state the budget "
            "as approximate DP (ε, δ).",
            code="training_needs_approx_dp",
        )


def budget_debit_training(
    *,
    dataset: Dataset,
    organisation: Organisation,
    payer: Any,
    job_uid: Any,
    plan: dict[str, Any],
    epsilon: float,
    delta: float,
) -> LedgerEntry:
    """Pays for a federated job's DP-SGD training on `dataset` by `organisation` (a participant of
    job `job_uid`), priced (`epsilon`, `delta`) on its own, from the organisation's allocation on the
    dataset's approximate-DP budget, under the same limits as a query (per-use maximum, allocation and
    the payer's personal cap on `epsilon`; the total on the composed ε). Its δ is not spent outright:
    the plan's Poisson-subsampled Gaussian composes as what it is.
    `payer` is the participant's admin who accepted the job (the entry's analyst); `plan` the priced
    DP-SGD plan, kept with the entry. Must run inside the caller's transaction (the job's
    scheduling), so that a refusal anywhere rolls every debit back. One entry per job and budget: a
    second debit of the same job is refused (`already_debited`)."""
    if LedgerEntry.objects.filter(
        budget__dataset=dataset, kind=LedgerKind.TRAINING, job_uid=job_uid
    ).exists():
        raise Conflict("This job has already paid for training on this dataset.", code="already_debited")
    name = getattr(payer, "get_username", lambda: "the payer")()
    use = _Use(
        payer=_Payer(
            organisation_id=organisation.pk,
            analyst=payer,
            use="Training on this dataset",
            allocation=f"{organisation.slug}'s allocation",
            cap=f"{name}'s personal cap",
            delta_to=organisation.slug,
        ),
        amount=epsilon,
        # DP-SGD's δ is not spent outright: its noise composes as what it is, a Poisson-subsampled
        # Gaussian (the plan keeps the δ it was priced at).
        delta=0.0,
        event=lambda: _training_event(plan),
        check=_can_pay_training,
        entry={"kind": LedgerKind.TRAINING, "analyst": payer, "job_uid": job_uid, "details": dict(plan)},
    )
    debited = _debit(dataset_id=dataset.pk, use=use)
    entry, budget = debited.entry, debited.entry.budget
    audit_record(
        actor=payer,
        action="budget.debited",
        organisation=organisation,
        target=entry,
        extra={
            "kind": LedgerKind.TRAINING,
            "dataset": dataset.pk,
            "job": str(job_uid),
            "amount": epsilon,
            "delta": delta,
            "spent": debited.spent,
            "measure": budget.measure,
            "noise_multiplier": plan.get("noise_multiplier"),
            "steps": plan.get("steps"),
        },
    )
    return entry
