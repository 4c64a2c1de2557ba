"""Portal pages: the analyst's query console and the owner's budget dashboard (where the steward
also sets the budget policy, its stated row bound included)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from datetime import date
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from clearinghouse.core.errors import ApplicationError, NotFound, PermissionDenied
from clearinghouse.datasets.selectors import dataset_get, dataset_is_owner, dataset_require_owner
from clearinghouse.organisations.selectors import organisation_directory_get
from clearinghouse.portal.charts import COLOURS, Line, line_chart
from clearinghouse.portal.shortcuts import form_error, paginate, service_errors

from .forms import MEASURE_HELP, AllocationForm, BudgetPolicyForm
from .ledger import allocation_set, budget_set
from .models import PrivacyMeasure, Query
from .selectors import (
    budget_allocation_rows,
    budget_editable,
    budget_left_for,
    budget_view_for,
    budget_views_mine,
    query_answer_visible,
    query_list,
)
from .services import query_error_for, query_prepare, query_preview_run, query_submit, query_wait


def _rows_with_intervals(result: dict) -> list[list[str]]:
    table = []
    for row, interval in zip(result["rows"], result["intervals"], strict=False):
        cells = []
        for column in result["columns"]:
            value = row.get(column)
            if column in interval:
                lo, hi = interval[column]
                cells.append(
                    f"{value:,.2f}  [{lo:,.2f}, {hi:,.2f}]"
                    if isinstance(value, float)
                    else f"{value}  [{lo:,.0f}, {hi:,.0f}]"
                )
            else:
                cells.append(str(value))
        table.append(cells)
    return table


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def query_console(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    sql = request.POST.get("sql", f"SELECT COUNT(*) FROM {dataset.slug}")
    epsilon = request.POST.get("epsilon", "0.5")
    context: dict[str, Any] = {
        "dataset": dataset,
        "sql": sql,
        "epsilon": epsilon,
        "preview": None,
        "released": None,
    }
    if request.method == "POST":
        try:
            privacy: dict[str, Any] = {"epsilon": float(epsilon)}
        except ValueError:
            privacy = {"epsilon": epsilon}  # the service says what is wrong with it
        try:
            if request.POST.get("action") == "preview":
                version, _, spec = query_prepare(
                    actor=request.user, dataset=dataset, sql=sql, privacy=privacy
                )
                context["preview"] = query_preview_run(
                    version=version, spec=spec, timeout=settings.QUERY_WAIT_SECONDS
                )
            else:
                query: Query | None
                query, replayed = query_submit(actor=request.user, dataset=dataset, sql=sql, privacy=privacy)
                query = query_wait(query=query, timeout=settings.QUERY_WAIT_SECONDS)
                error = query_error_for(query)
                if error is not None:
                    raise error
                if query.status != "released":  # the worker is busy: the answer lands in the history
                    messages.info(
                        request,
                        "The query is still being answered; it will appear in the history below when done.",
                    )
                    query = None
                elif replayed:
                    messages.info(
                        request,
                        "This exact query was released before: here is that answer again, at no new cost.",
                    )
                context["released"] = query
        except ApplicationError as exc:
            if isinstance(exc, (NotFound, PermissionDenied)):  # refused, as the API refuses it: 404/403
                raise
            context["error"] = f"{exc.message} ({exc.code})"
    try:
        context["left"] = asdict(budget_left_for(actor=request.user, dataset=dataset))
    except ApplicationError:
        context["left"] = None
    history = paginate(request, query_list(actor=request.user, dataset=dataset))
    context["history_page"] = history
    context["history"] = [
        {
            "query": query,
            "table": _rows_with_intervals(query.result)
            if query.result and query_answer_visible(actor=request.user, query=query)
            else [],
        }
        for query in history
    ]
    if context["released"] is not None:
        context["released_table"] = _rows_with_intervals(context["released"].result)
    return render(request, "queries/console.html", context)


def _spending_plot(daily: list[dict], total: float) -> dict | None:
    """Cumulative spending per organisation over time, one line each from nothing on the first day
    (the portal's one chart, `portal.charts`)."""
    if not daily:
        return None
    days = sorted({date.fromisoformat(row["day"]) for row in daily})
    first, last = days[0], days[-1]
    span = max(1, (last - first).days)
    per_org: dict[str, float] = defaultdict(float)
    series: dict[str, list[tuple[float, float]]] = defaultdict(lambda: [(0.0, 0.0)])
    for row in sorted(daily, key=lambda r: r["day"]):
        per_org[row["organisation"]] += row["amount"]
        x = (date.fromisoformat(row["day"]) - first).days / span
        series[row["organisation"]].append((x, per_org[row["organisation"]] / total if total > 0 else 0.0))
    return line_chart(
        chart_id="spending-plot",
        title="Cumulative privacy spending per organisation",
        lines=[
            Line(org, points, colour=COLOURS[i % len(COLOURS)], note=f"{round(per_org[org], 6)}")
            for i, (org, points) in enumerate(series.items())
        ],
        width=640,
        height=240,
        pad=40,
        left_labels=[(1.0, str(total)), (0.0, "0")],
        x_labels=[(0.0, first.isoformat()), (1.0, last.isoformat())]
        if last != first
        else [(0.0, first.isoformat())],
    )


def _dashboard(
    request: HttpRequest,
    dataset: Any,
    *,
    policy_form: BudgetPolicyForm | None = None,
    allocation_forms: dict[str, AllocationForm] | None = None,
    error: str | None = None,
    status: int = 200,
) -> HttpResponse:
    """The budget page: what `budget_view_for` shows the viewer, and, to those who may set the budget
    (`budget_editable`: `budget_set`'s own rule), the policy form and the allocation editor. A refused
    save passes its bound form back, so the page shows what was typed with the service's error."""
    editable = budget_editable(actor=request.user, dataset=dataset)
    try:
        view = budget_view_for(actor=request.user, dataset=dataset)
    except NotFound:
        if not dataset_is_owner(actor=request.user, dataset=dataset):
            raise
        view = {}  # no budget yet: the owner's steward or admin sets the first one here
    left = view.get("left")
    spending = None if left is not None or not view else view
    context: dict[str, Any] = {
        "dataset": dataset,
        "spending": spending,
        "left": left,
        "owner": editable,  # shows the policy form and the allocation editor
        "error": error,
        "plot": _spending_plot(spending["daily"], spending["total"]) if spending else None,
        "spending_json": json.dumps(spending, indent=2) if spending else "",
    }
    if editable:
        if policy_form is None:
            current = spending or {}  # the form starts from the policy in force
            policy_form = BudgetPolicyForm(
                initial={key: current.get(key) for key in BudgetPolicyForm.base_fields}
            )
        forms_by_org = allocation_forms or {}
        rows = budget_allocation_rows(actor=request.user, dataset=dataset)
        for row in rows:
            row["form"] = forms_by_org.get(row["organisation"]) or AllocationForm(
                initial={"amount": row["amount"], "delta_amount": row["delta_amount"]}
            )
        context |= {
            "policy_form": policy_form,
            "measures": [(value, label, MEASURE_HELP[value]) for value, label in PrivacyMeasure.choices],
            "allocation_rows": rows,
            # A measure the service refused, shown back as typed next to its error.
            "unknown_measure": ""
            if policy_form.data.get("measure", "") in {"", *PrivacyMeasure.values}
            else policy_form.data["measure"],
        }
    return render(request, "queries/budget.html", context, status=status)


FORM_INVALID = "Correct the fields marked below."


def _refused(exc: ApplicationError) -> None:
    """Refusals of who may act are answered as the API answers them (404/403, `service_errors`)."""
    if isinstance(exc, (NotFound, PermissionDenied)):
        raise exc


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def budget_dashboard(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    """What `budget_view_for` shows (the API's `GET .../budget` too): the whole budget with allocated,
    spent and left per organisation to the owner and operators, what is left to them to grantees; the
    owner's stewards and admins also set the policy here (`budget_set`, as `PUT .../budget`)."""
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    if request.method != "POST":
        return _dashboard(request, dataset)
    form = BudgetPolicyForm(request.POST)
    # Who may set it first (404/403, as the service and the API answer), then the form's own limit
    # (text of at most 100 characters); the service checks the values.
    dataset_require_owner(actor=request.user, dataset=dataset)
    if not form.is_valid():
        return _dashboard(request, dataset, policy_form=form, error=FORM_INVALID, status=400)
    try:
        budget_set(actor=request.user, dataset=dataset, **form.policy())
    except ApplicationError as exc:
        _refused(exc)
        form_error(form, exc)
        return _dashboard(request, dataset, policy_form=form, error=exc.message, status=400)
    messages.success(request, "Budget policy saved; it applies to queries priced from now on.")
    return redirect("portal:budget_dashboard", organisation=organisation, slug=slug)


@login_required
@require_http_methods(["POST"])
@service_errors
def budget_allocation(request: HttpRequest, organisation: str, slug: str, grantee: str) -> HttpResponse:
    """Sets one organisation's share of the budget (`allocation_set`, as `PUT .../budget/allocations/
    <grantee>`); a refused amount is shown back on the budget page next to its row."""
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    form = AllocationForm(request.POST)
    dataset_require_owner(actor=request.user, dataset=dataset)  # as in budget_dashboard
    if not form.is_valid():
        return _dashboard(request, dataset, allocation_forms={grantee: form}, error=FORM_INVALID, status=400)
    try:
        allocation_set(
            actor=request.user,
            dataset=dataset,
            organisation=organisation_directory_get(slug=grantee),
            **form.allocation(),
        )
    except ApplicationError as exc:
        _refused(exc)
        form_error(form, exc)
        return _dashboard(request, dataset, allocation_forms={grantee: form}, error=exc.message, status=400)
    messages.success(request, f"Allocation of {grantee} saved.")
    return redirect("portal:budget_dashboard", organisation=organisation, slug=slug)


@login_required
@require_http_methods(["GET"])
@service_errors
def my_budgets(request: HttpRequest) -> HttpResponse:
    """The analyst's budgets: per dataset their organisation may query, its allocation, what it spent
    and has left, and the per-query cap, as `GET .../budget` answers a grantee (`budget_view_for`)."""
    return render(request, "queries/my_budgets.html", {"rows": budget_views_mine(actor=request.user)})
