"""Portal pages: the analyst's query console and the owner's budget dashboard."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict
from datetime import date

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_http_methods

from clearinghouse.core.errors import ApplicationError, NotFound
from clearinghouse.datasets.selectors import dataset_get, dataset_is_owner
from clearinghouse.portal.views import service_errors

from .selectors import budget_left_for, budget_spending, query_list
from .services import query_error_for, query_prepare, query_preview_run, query_submit, query_wait


def _rows_with_intervals(result: dict) -> list[list[str]]:
    table = []
    for row, interval in zip(result["rows"], result["intervals"]):
        cells = []
        for column in result["columns"]:
            value = row.get(column)
            if column in interval:
                lo, hi = interval[column]
                cells.append(f"{value:,.2f}  [{lo:,.2f}, {hi:,.2f}]" if isinstance(value, float)
                             else f"{value}  [{lo:,.0f}, {hi:,.0f}]")
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
    context = {"dataset": dataset, "sql": sql, "epsilon": epsilon, "preview": None, "released": None}
    if request.method == "POST":
        try:
            privacy = {"epsilon": float(epsilon)}
        except ValueError:
            privacy = {"epsilon": epsilon}  # the service says what is wrong with it
        try:
            if request.POST.get("action") == "preview":
                version, _, spec = query_prepare(actor=request.user, dataset=dataset, sql=sql, privacy=privacy)
                context["preview"] = query_preview_run(version=version, spec=spec, timeout=settings.QUERY_WAIT_SECONDS)
            else:
                query, replayed = query_submit(actor=request.user, dataset=dataset, sql=sql, privacy=privacy)
                query = query_wait(query=query, timeout=settings.QUERY_WAIT_SECONDS)
                error = query_error_for(query)
                if error is not None:
                    raise error
                if replayed:
                    messages.info(request, "This exact query was released before: here is that answer again, "
                                           "at no new cost.")
                context["released"] = query
        except ApplicationError as exc:
            if isinstance(exc, NotFound):
                raise
            context["error"] = f"{exc.message} ({exc.code})"
    try:
        context["left"] = asdict(budget_left_for(actor=request.user, dataset=dataset))
    except ApplicationError:
        context["left"] = None
    history = []
    for query in query_list(actor=request.user, dataset=dataset)[:25]:
        history.append({"query": query, "table": _rows_with_intervals(query.result) if query.result else []})
    context["history"] = history
    if context["released"] is not None:
        context["released_table"] = _rows_with_intervals(context["released"].result)
    return render(request, "queries/console.html", context)


def _spending_plot(daily: list[dict], total: float) -> dict:
    """Cumulative spending per organisation over time, as SVG polylines (no JavaScript needed)."""
    if not daily:
        return {"series": [], "width": 640, "height": 240}
    days = sorted({date.fromisoformat(row["day"]) for row in daily})
    first, last = days[0], days[-1]
    span = max(1, (last - first).days)
    width, height, pad = 640, 240, 40
    per_org: dict[str, float] = defaultdict(float)
    series: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in sorted(daily, key=lambda r: r["day"]):
        per_org[row["organisation"]] += row["amount"]
        x = pad + (date.fromisoformat(row["day"]) - first).days / span * (width - 2 * pad)
        y = height - pad - per_org[row["organisation"]] / total * (height - 2 * pad)
        series[row["organisation"]].append((round(x, 1), round(y, 1)))
    colours = ["#1f5fbf", "#b3261e", "#1e7a45", "#8a5a00", "#6b3fa0"]
    return {"width": width, "height": height, "pad": pad, "first": first, "last": last,
            "series": [{"organisation": org, "colour": colours[i % len(colours)],
                        "points": " ".join(f"{x},{y}" for x, y in ([(pad, height - pad)] + points)),
                        "spent": round(per_org[org], 6)}
                       for i, (org, points) in enumerate(series.items())]}


@login_required
@require_GET
@service_errors
def budget_dashboard(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    if not (dataset_is_owner(actor=request.user, dataset=dataset) or request.user.is_operator):
        raise NotFound("Dataset not found.")
    spending = budget_spending(actor=request.user, dataset=dataset)
    return render(request, "queries/budget.html", {
        "dataset": dataset, "spending": spending, "plot": _spending_plot(spending["daily"], spending["total"]),
        "spending_json": json.dumps(spending, indent=2),
    })
