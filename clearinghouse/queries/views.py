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
from clearinghouse.datasets.selectors import dataset_get, dataset_is_owner
from clearinghouse.portal.charts import COLOURS, Line, line_chart
from clearinghouse.portal.shortcuts import paginate, service_errors

from .ledger import budget_set
from .models import PrivacyMeasure, Query
from .selectors import budget_left_for, budget_view_for, query_answer_visible, query_list
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


def _policy_from_form(data) -> dict:
    """The budget form's fields as budget_set takes them; what does not parse is passed on as typed,
    so that the service says what is wrong with it. An empty row bound keeps the current one."""

    def number(name: str, *, whole: bool = False, empty=None):
        text = (data.get(name) or "").strip()
        if not text:
            return empty
        try:
            return int(text) if whole else float(text)
        except ValueError:
            return text

    return {
        "measure": (data.get("measure") or "").strip(),
        "total": number("total"),
        "delta_total": number("delta_total", empty=0.0),
        "per_query_max": number("per_query_max"),
        "per_analyst_cap": number("per_analyst_cap"),
        "max_rows": number("max_rows", whole=True),
    }


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def budget_dashboard(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    """What `budget_view_for` shows (the API's `GET .../budget` too): the whole budget with its spending
    to the owner and operators, what is left to them to grantees; the owner's stewards and admins also
    set the policy here (`budget_set` decides who may)."""
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    owner = dataset_is_owner(actor=request.user, dataset=dataset)  # shows the policy form
    error = None
    if request.method == "POST":
        try:
            budget_set(actor=request.user, dataset=dataset, **_policy_from_form(request.POST))
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            error = exc.message
        else:
            messages.success(request, "Budget policy saved; it applies to queries priced from now on.")
            return redirect("portal:budget_dashboard", organisation=organisation, slug=slug)
    try:
        view = budget_view_for(actor=request.user, dataset=dataset)
    except NotFound:
        if not owner:
            raise
        view = {}  # no budget yet: the owner sets the first one here
    left = view.get("left")
    spending = None if left is not None or not view else view
    return render(
        request,
        "queries/budget.html",
        {
            "dataset": dataset,
            "spending": spending,
            "left": left,
            "owner": owner,
            "error": error,
            "measures": PrivacyMeasure.choices,
            "form": request.POST if error else None,
            "plot": _spending_plot(spending["daily"], spending["total"]) if spending else None,
            "spending_json": json.dumps(spending, indent=2) if spending else "",
        },
    )
