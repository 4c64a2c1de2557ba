from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any

from django.db.models import Count, F, FloatField, Max, Q, QuerySet, Sum, Value
from django.db.models.functions import Greatest, TruncDate

from clearinghouse.core.compiled import CompiledRead
from clearinghouse.core.errors import ApplicationError, NotFound
from clearinghouse.datasets.models import Dataset
from clearinghouse.datasets.selectors import (
    dataset_grant_active,
    dataset_grant_list,
    dataset_is_owner_or_operator,
    dataset_list,
    dataset_require_owner,
)
from clearinghouse.organisations.selectors import (
    UNREAD,
    MembershipArg,
    membership_active,
    membership_given,
    require_operator,
)

from .ledger import Remaining, budget_composition, budget_remaining, ledger_entry_event
from .models import BudgetAllocation, LedgerEntry, LedgerKind, PrivacyBudget, PrivacyMeasure, Query

# Compiled once (`CompiledRead`): every query request reads its dataset's budget and its allocation.
_BUDGET_OF_DATASET = CompiledRead(
    "a dataset's budget", lambda p: PrivacyBudget.objects.filter(dataset_id=p.number("dataset_id"))[:1]
)
_ALLOCATION_OF_ORGANISATION = CompiledRead(
    "an organisation's allocation of a budget",
    lambda p: BudgetAllocation.objects.filter(
        budget_id=p.number("budget_id"), organisation_id=p.number("organisation_id")
    )[:1],
)


def budget_of(*, dataset: Dataset) -> PrivacyBudget | None:
    """The dataset's privacy budget; None until its owner sets one."""
    return _BUDGET_OF_DATASET.first(dataset_id=dataset.pk)


def budget_get(*, dataset: Dataset) -> PrivacyBudget:
    budget = budget_of(dataset=dataset)
    if budget is None:
        raise NotFound("This dataset has no privacy budget yet.", code="no_budget")
    return budget


def budget_left_for(
    *, actor: Any, dataset: Dataset, budget: PrivacyBudget | None = None, membership: MembershipArg = UNREAD
) -> Remaining:
    """What the actor may still spend on this dataset (analysts see only their own figures).
    `budget` and `membership`: the dataset's budget and the actor's membership, when the caller read
    them in this request (`query_prepare`'s budget; `membership_given`)."""
    if budget is None:
        budget = budget_get(dataset=dataset)
    assert budget.dataset_id == dataset.pk, "budget_left_for: the budget of another dataset"
    membership = membership_given(user=actor, membership=membership)
    allocation = (
        _ALLOCATION_OF_ORGANISATION.first(budget_id=budget.pk, organisation_id=membership.organisation_id)
        if membership
        else None
    )
    return budget_remaining(budget=budget, allocation=allocation, analyst=actor)


def budget_spending(*, actor: Any, dataset: Dataset) -> dict[str, Any]:
    """Owners and operators (`dataset_is_owner_or_operator`): the policy, allocations, spending per
    organisation and per day (for the dashboard plot)."""
    if not dataset_is_owner_or_operator(actor=actor, dataset=dataset):
        raise NotFound("Dataset not found.")
    budget = budget_get(dataset=dataset)
    allocations = [
        {
            "organisation": a.organisation.slug,
            "amount": a.amount,
            "spent": a.spent,
            # What the organisation may still spend: the allocation less what it spent.
            "left": max(0.0, a.amount - a.spent),
            "delta_amount": a.delta_amount,
            "delta_spent": a.delta_spent,
        }
        for a in budget.allocations.select_related("organisation").order_by("organisation__slug")
    ]
    daily = (
        LedgerEntry.objects.filter(budget=budget)
        .annotate(day=TruncDate("created_at"))
        .values("day", "organisation__slug")
        .annotate(amount=Sum("amount"))
        .order_by("day")
    )
    return {
        "measure": budget.measure,
        "total": budget.total,
        "spent": budget.spent,
        "delta_total": budget.delta_total,
        "delta_spent": budget.delta_spent,
        "per_query_max": budget.per_query_max,
        "per_analyst_cap": budget.per_analyst_cap,
        "max_rows": budget.max_rows,  # stated by the steward, never measured
        "training": budget.training,
        "composition": budget_composition_view(budget=budget),
        "allocations": allocations,
        "daily": [
            {
                "day": row["day"].isoformat(),
                "organisation": row["organisation__slug"],
                "amount": row["amount"],
            }
            for row in daily
        ],
    }


def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None


def budget_composition_view(*, budget: PrivacyBudget) -> dict[str, Any] | None:
    """How an approximate-DP budget's `spent` was composed (None for pure-ε and ρ budgets, which add):
    the number of privacy events paid from it, and their ε at the budget's δ by PLD, RDP and the naive
    sum (null where a bound is infinite); `epsilon` is what the ledger charges (`spent`; the tighter of
    PLD and the sum, `LedgerComposition.epsilon`), `accountant` names the bound it is."""
    if budget.measure != PrivacyMeasure.APPROX:
        return None
    ledger = budget_composition(budget=budget)
    composed = ledger.composition(budget.delta_total)
    bounds = {"pld": composed.epsilon_pld, "naive": composed.epsilon_naive, "rdp": composed.epsilon_rdp}
    charged = ledger.epsilon(budget.delta_total)
    return {
        "events": len(ledger.events),
        "delta": budget.delta_total,
        "epsilon": _finite_or_none(charged),
        "accountant": next((name for name, value in bounds.items() if value == charged), None)
        if ledger.events
        else None,
        **{f"epsilon_{name}": _finite_or_none(value) for name, value in bounds.items()},
    }


def budget_ledger_rows(*, actor: Any, dataset: Dataset) -> QuerySet[LedgerEntry]:
    """`budget_ledger_entries`, oldest first (the order the ledger composed them), for the API."""
    return budget_ledger_entries(actor=actor, dataset=dataset).order_by("pk")


def budget_ledger_entry_body(entry: LedgerEntry) -> dict[str, Any]:
    """One paid use as the API lists it: what it released (a query or a job's training), its own cost
    (`amount`; ε or ρ: what allocations and caps count), the δ it spent outright, and, on an
    approximate-DP budget, the privacy event the ledger composed (`event`; null on pure-ε and ρ
    budgets, which add)."""
    return {
        "id": entry.pk,
        "kind": entry.kind,
        "organisation": entry.organisation.slug,
        "analyst": entry.analyst.get_username(),
        "query": entry.query_id,
        "job": str(entry.job_uid) if entry.job_uid else None,
        "amount": entry.amount,
        "delta": entry.delta,
        "event": ledger_entry_event(entry) if entry.budget.measure == PrivacyMeasure.APPROX else None,
        "created_at": entry.created_at,
    }


def budget_view_for(*, actor: Any, dataset: Dataset) -> dict[str, Any]:
    """The one rule for reading a budget (`GET .../budget` and the portal budget page): those who
    oversee the dataset (its owner organisation and operators, `dataset_is_owner_or_operator`) read the
    whole budget (`budget_spending`); everyone else who sees the dataset (grantees) reads only what is
    left to them, as `{"left": ...}` (`budget_left_for`). NotFound `no_budget` while it has none.
    Setting it is the owner's alone (`ledger.budget_set`, `ledger.allocation_set`)."""
    if dataset_is_owner_or_operator(actor=actor, dataset=dataset):
        return budget_spending(actor=actor, dataset=dataset)
    return {"left": asdict(budget_left_for(actor=actor, dataset=dataset))}


def budget_editable(*, actor: Any, dataset: Dataset) -> bool:
    """Whether the actor may set the budget and its allocations: exactly `ledger.budget_set`'s and
    `ledger.allocation_set`'s rule (`dataset_require_owner`), asked without raising."""
    try:
        dataset_require_owner(actor=actor, dataset=dataset)
    except ApplicationError:
        return False
    return True


def budget_allocation_rows(*, actor: Any, dataset: Dataset) -> list[dict[str, Any]]:
    """The owner's allocation editor: one row per organisation holding an active grant on the dataset
    or an allocation of its budget, with its allocation, spending and what is left (zeros when it has
    none yet). Those who oversee the dataset only (`dataset_grant_list` decides)."""
    organisations = {
        grant.organisation.slug: grant.organisation
        for grant in dataset_grant_list(actor=actor, dataset=dataset).filter(revoked_at__isnull=True)
    }
    budget = budget_of(dataset=dataset)
    allocations = {
        a.organisation.slug: a
        for a in (
            budget.allocations.select_related("organisation") if budget else BudgetAllocation.objects.none()
        )
    }
    rows = []
    for slug in sorted(organisations.keys() | allocations.keys()):
        allocation = allocations.get(slug)
        organisation = allocation.organisation if allocation else organisations[slug]
        amount = allocation.amount if allocation else 0.0
        spent = allocation.spent if allocation else 0.0
        rows.append(
            {
                "organisation": organisation.slug,
                "name": organisation.name,
                "granted": slug in organisations,
                "amount": amount,
                "spent": spent,
                "left": max(0.0, amount - spent),
                "delta_amount": allocation.delta_amount if allocation else 0.0,
                "delta_spent": allocation.delta_spent if allocation else 0.0,
            }
        )
    return rows


def budget_views_mine(*, actor: Any) -> list[dict[str, Any]]:
    """The analyst's budget page: each dataset of another organisation that the actor's organisation
    holds a query grant on, with what `budget_view_for` shows them of its budget (`left`: their
    organisation's allocation, spent, left, the per-query cap), or None while it has no budget."""
    membership = membership_active(user=actor)
    if membership is None:
        return []
    rows = []
    mine = dataset_list(actor=actor).exclude(organisation_id=membership.organisation_id)
    for dataset in mine.order_by("organisation__slug", "slug"):
        if not dataset_grant_active(
            dataset=dataset, organisation_id=membership.organisation_id, purpose="query"
        ):
            continue
        try:
            left = budget_view_for(actor=actor, dataset=dataset).get("left")
        except NotFound:
            left = None
        rows.append({"dataset": dataset, "left": left})
    return rows


def query_list(*, actor: Any, dataset: Dataset):
    """Owners and operators see every query on their dataset; others their organisation's (operators
    without the answers: `query_answer_visible`)."""
    queries = Query.objects.filter(dataset=dataset).select_related("dataset__organisation", "version")
    if dataset_is_owner_or_operator(actor=actor, dataset=dataset):
        return queries.order_by("-created_at")
    membership = membership_active(user=actor)
    return queries.filter(organisation=membership.organisation if membership else None).order_by(
        "-created_at"
    )


def query_answer_visible(*, actor: Any, query: Query) -> bool:
    """A release's values are the asking organisation's and the dataset owner's. Operators see that a
    query ran, what it asked and what it cost, not its answer (they own no data and asked nothing)."""
    membership = membership_active(user=actor)
    return membership is not None and membership.organisation_id in {
        query.organisation_id,
        query.dataset.organisation_id,
    }


def query_get(*, actor: Any, query_id: int) -> Query:
    """A query for those who oversee its dataset (`dataset_is_owner_or_operator`) and for its asking
    organisation's members, as `query_list` shows it; 404 for everyone else."""
    query = (
        Query.objects.select_related("dataset__organisation", "version", "organisation")
        .filter(pk=query_id)
        .first()
    )
    if query is None:
        raise NotFound("Query not found.")
    membership = membership_active(user=actor)
    asked = membership is not None and membership.organisation_id == query.organisation_id
    if not (asked or dataset_is_owner_or_operator(actor=actor, dataset=query.dataset)):
        raise NotFound("Query not found.")
    return query


def budget_spending_by_analyst(*, actor: Any, dataset: Dataset) -> list[dict[str, Any]]:
    """Who ran what, for the budget dashboard: per organisation and analyst, how many releases were
    paid from the dataset's budget (`queries`; a replay costs nothing and is not one), how many
    federated trainings (`trainings`: the participant's admin who accepted the job paid them), what
    they cost in all (`amount`, ε or ρ, and `delta`) and when the last one was paid (`last`). The ledger is
    privacy accounting, not data: those who oversee the dataset read it (`dataset_is_owner_or_operator`,
    as `budget_spending`); everyone else is told the dataset does not exist."""
    if not dataset_is_owner_or_operator(actor=actor, dataset=dataset):
        raise NotFound("Dataset not found.")
    rows = (
        LedgerEntry.objects.filter(budget__dataset=dataset)
        .values("organisation__slug", "analyst__username")
        .annotate(
            queries=Count("pk", filter=Q(kind=LedgerKind.QUERY)),
            trainings=Count("pk", filter=Q(kind=LedgerKind.TRAINING)),
            amount=Sum("amount"),
            delta=Sum("delta"),
            last=Max("created_at"),
        )
        .order_by("organisation__slug", "analyst__username")
    )
    return [
        {
            "organisation": row["organisation__slug"],
            "analyst": row["analyst__username"],
            "queries": row["queries"],
            "trainings": row["trainings"],
            "amount": row["amount"],
            "delta": row["delta"],
            "last": row["last"],
        }
        for row in rows
    ]


def budget_ledger_entries(*, actor: Any, dataset: Dataset) -> QuerySet[LedgerEntry]:
    """Every paid use of the dataset, newest first: query releases with their query, federated
    trainings (`kind` training, `job_uid`, the plan in `details`), with organisation and analyst (the
    rows behind `budget_spending_by_analyst`, for the same readers)."""
    if not dataset_is_owner_or_operator(actor=actor, dataset=dataset):
        raise NotFound("Dataset not found.")
    return (
        LedgerEntry.objects.filter(budget__dataset=dataset)
        .select_related("budget", "organisation", "analyst", "query")
        .order_by("-created_at", "-pk")
    )


def budgets_overview(*, actor: Any, q: str = "") -> QuerySet[PrivacyBudget]:
    """The operators' consortium overview (`portal:operator_overview`, `GET /api/v1/operator/overview`):
    every dataset's budget with its policy and spending as operators read it on `GET .../budget`
    (`budget_spending`; docs/data-exposure.md): `left` (the total less what was spent, never below
    0, as `ledger.budget_remaining` counts it) and `allocations_count`. `q` keeps the budgets whose
    dataset's, or its owner's, name or slug holds it. Operators only (PermissionDenied otherwise)."""
    require_operator(actor=actor)
    budgets = PrivacyBudget.objects.select_related("dataset__organisation").annotate(
        left=Greatest(F("total") - F("spent"), Value(0.0), output_field=FloatField()),
        allocations_count=Count("allocations"),
    )
    if q:
        budgets = budgets.filter(
            Q(dataset__name__icontains=q)
            | Q(dataset__slug__icontains=q)
            | Q(dataset__organisation__name__icontains=q)
            | Q(dataset__organisation__slug__icontains=q)
        )
    return budgets.order_by("dataset__organisation__slug", "dataset__slug", "pk")
