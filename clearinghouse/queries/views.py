"""Portal pages: the analyst's query console and the owner's budget dashboard (where the steward
also sets the budget policy, its stated row bound included)."""

from __future__ import annotations

import csv
import io
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
from django.urls import reverse
from django.views.decorators.http import require_http_methods

from clearinghouse.core.errors import ApplicationError, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.datasets.models import Dataset
from clearinghouse.datasets.selectors import (
    dataset_get,
    dataset_is_owner,
    dataset_require_owner,
    dataset_schema_visible,
    dataset_version_latest_ready,
)
from clearinghouse.dp.planner import COVERS  # the share of a public range that makes an interval "wide"
from clearinghouse.dp.schema import is_finite_number
from clearinghouse.organisations.selectors import organisation_directory_get
from clearinghouse.portal.charts import Bars, Chart, Line, bar_chart, line_chart
from clearinghouse.portal.shortcuts import form_error, paginate, service_errors

from .forms import MEASURE_HELP, TRAINING_HELP, AllocationForm, BudgetPolicyForm
from .ledger import allocation_set, budget_set
from .models import PrivacyMeasure, Query, TrainingPolicy
from .selectors import (
    budget_allocation_rows,
    budget_editable,
    budget_ledger_entries,
    budget_left_for,
    budget_spending_by_analyst,
    budget_view_for,
    budget_views_mine,
    query_answer_visible,
    query_get,
    query_list,
)
from .services import (
    query_error_for,
    query_plan_prepare,
    query_plan_run,
    query_prepare,
    query_preview_run,
    query_submit,
    query_wait,
)

# A grouped answer is charted up to this many rows (beyond, the table alone stays readable).
CHART_MAX_ROWS = 40
# Aggregates whose value lies on their column's own scale, so within its public bounds.
ON_COLUMN_SCALE = {"mean", "median", "quantile"}
# A spreadsheet reads a cell that starts with one of these as a formula (CSV injection).
CSV_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def _public_ranges(query: Query) -> dict[str, tuple[str, float, float]]:
    """Per aggregate on its column's scale (a mean, a median, a quantile): the column and its public
    bounds, from the schema the query's version was checked against (bounds are public by design)."""
    schema = query.version.schema if isinstance(query.version.schema, dict) else {}
    columns = {c.get("name"): c for c in schema.get("columns", []) if isinstance(c, dict)}
    ranges = {}
    for aggregate in (query.result or {}).get("aggregates", []):
        column = columns.get(aggregate.get("column"))
        if aggregate.get("type") not in ON_COLUMN_SCALE or column is None:
            continue
        lower, upper = column.get("lower"), column.get("upper")
        if isinstance(lower, int | float) and isinstance(upper, int | float) and upper > lower:
            ranges[aggregate["name"]] = (column["name"], float(lower), float(upper))
    return ranges


def released_answer(query: Query) -> dict[str, Any]:
    """A released answer as the portal shows it (the console's released card, the result page): the
    table's cells with their 95% intervals (formatted by the templates' `sig`), a note per aggregate
    whose interval covers most of its column's public range, and, for a grouped answer or several
    aggregates, a bar chart with the intervals as error bars. Only for viewers who may read the answer
    (`query_answer_visible`): the callers check."""
    result = query.result or {}
    columns = list(result.get("columns", []))
    group_by = [c for c in result.get("group_by", []) if c in columns]
    measures = [c for c in columns if c not in group_by]
    rows, intervals = list(result.get("rows", [])), list(result.get("intervals", []))
    ranges = _public_ranges(query)
    wide: dict[str, int] = defaultdict(int)
    table = []
    for row, interval in zip(rows, intervals, strict=False):
        cells = []
        for column in columns:
            cell: dict[str, Any] = {"value": row.get(column), "lo": None, "hi": None, "wide": False}
            if column in interval:
                lo, hi = interval[column]
                cell |= {"lo": lo, "hi": hi}
                bounds = ranges.get(column)
                if bounds and hi - lo >= COVERS * (bounds[2] - bounds[1]):
                    cell["wide"] = True
                    wide[column] += 1
            cells.append(cell)
        table.append(cells)
    notes = [
        {
            "aggregate": column,
            "column": ranges[column][0],
            "lower": ranges[column][1],
            "upper": ranges[column][2],
            "rows": count,
            "of": len(table),
        }
        for column, count in wide.items()
    ]
    chart: Chart | None = None
    if (group_by or len(measures) > 1) and measures and 0 < len(rows) <= CHART_MAX_ROWS:
        categories = [" / ".join(str(row.get(g)) for g in group_by) or "all rows" for row in rows]
        chart = bar_chart(
            chart_id=f"result-{query.pk}-chart",
            title=(
                f"{', '.join(measures)}"
                + (f" by {', '.join(group_by)}" if group_by else "")
                + ", with 95% intervals"
            ),
            categories=categories,
            measures=[
                Bars(
                    name=measure,
                    values=[row.get(measure) if is_finite_number(row.get(measure)) else None for row in rows],
                    intervals=[
                        tuple(interval[measure]) if measure in interval else None  # type: ignore[misc]
                        for interval in intervals
                    ],
                )
                for measure in measures
            ],
            category_label=", ".join(group_by),
            shared_axis=len(measures) == 1,
        )
    organisation, slug = query.dataset.organisation.slug, query.dataset.slug
    return {
        "query": query,
        "columns": columns,
        "table": table,
        "notes": notes,
        "chart": chart,
        "too_many_to_chart": len(rows) > CHART_MAX_ROWS,
        "page_url": reverse("portal:query_result", args=[organisation, slug, query.pk]),
        "csv_url": reverse("portal:query_result_csv", args=[organisation, slug, query.pk]),
    }


def _csv_cell(value: Any) -> str:
    """A value as a CSV cell: numbers as Python writes them (every digit kept), None empty, and text
    that a spreadsheet would run as a formula prefixed with a quote (CSV injection)."""
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return repr(value)
    text = str(value)
    return f"'{text}" if text.startswith(CSV_FORMULA_STARTS) else text


def released_answer_csv(query: Query) -> str:
    """The released table as CSV: its columns, each aggregate with an interval followed by
    `<column>_lo` and `<column>_hi`, its 95% interval (empty where a row has none)."""
    result = query.result or {}
    columns = list(result.get("columns", []))
    rows, intervals = list(result.get("rows", [])), list(result.get("intervals", []))
    with_interval = {name for interval in intervals for name in interval}
    header: list[str] = []
    for column in columns:
        header.append(column)
        if column in with_interval:
            header += [f"{column}_lo", f"{column}_hi"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([_csv_cell(name) for name in header])
    for row, interval in zip(rows, intervals, strict=False):
        cells = []
        for column in columns:
            cells.append(_csv_cell(row.get(column)))
            if column in with_interval:
                lo, hi = interval.get(column) or (None, None)
                cells += [_csv_cell(lo), _csv_cell(hi)]
        writer.writerow(cells)
    return buffer.getvalue()


def _accuracy_table(plan: dict) -> dict[str, Any] | None:
    """The console's ε → 95% half-width table from a plan's curve (`dp.planner.accuracy_curve`): one
    row per level, a column per count or sum, then per mean its least group size."""
    curve = plan.get("curve")
    if not curve:
        return None
    names = [n for n in curve[0]["half_widths"] if any(p["half_widths"][n] is not None for p in curve)]
    means = list(curve[0]["min_group_sizes"])
    return {
        "symbol": "ρ" if plan.get("measure") == "rho" else "ε",
        "names": names,
        "means": means,
        "rows": [
            {
                "level": point["level"],
                "widths": [point["half_widths"][n] for n in names],
                "sizes": [point["min_group_sizes"][m] for m in means],
            }
            for point in curve
        ],
    }


def _console_curve(request: HttpRequest, dataset: Any, sql: str) -> dict[str, Any] | None:
    """The accuracy table for the console's query at the planner's default levels (spends nothing)."""
    plan_request = query_plan_prepare(actor=request.user, dataset=dataset, sql=sql, curve=True)
    return _accuracy_table(query_plan_run(request=plan_request, timeout=settings.QUERY_WAIT_SECONDS))


def _console_schema(request: HttpRequest, dataset: Dataset) -> dict | None:
    latest = dataset_version_latest_ready(dataset=dataset)
    if latest is not None and latest.schema:
        return latest.schema
    return dataset_schema_visible(
        dataset=dataset, owner=dataset_is_owner(actor=request.user, dataset=dataset)
    )


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def query_console(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    sql = request.POST.get("sql", f"SELECT COUNT(*) FROM {dataset.slug}")
    epsilon = request.POST.get("epsilon", "0.5")
    target = request.POST.get("target", "").strip()
    context: dict[str, Any] = {
        "dataset": dataset,
        "sql": sql,
        "epsilon": epsilon,
        "target": target,
        "preview": None,
        "plan": None,
        "accuracy": None,
        "released": None,
        # beside the SQL box: the columns, bounds and categories queries run on — the latest ready
        # version's (confirmed) schema, as `query_schema` reads it; before any, the visible schema
        "schema": _console_schema(request, dataset),
    }
    # The privacy level is ε, or ρ under a zCDP budget: the console asks in the budget's own unit.
    try:
        level_key = (
            "rho" if budget_left_for(actor=request.user, dataset=dataset).measure == "zcdp" else "epsilon"
        )
    except ApplicationError:
        level_key = "epsilon"  # no budget (yet): the service says so when asked
    context["level_symbol"] = "ρ" if level_key == "rho" else "ε"
    if request.method == "POST":
        try:
            privacy: dict[str, Any] = {level_key: float(epsilon)}
        except ValueError:
            privacy = {level_key: epsilon}  # the service says what is wrong with it
        try:
            if request.POST.get("action") == "plan":  # the least ε for "±target at 95%"; spends nothing
                if not target:
                    raise ValidationFailed(
                        "Enter the 95% half-width you need (e.g. 50) to plan.", code="accuracy_target_invalid"
                    )
                try:
                    wanted: Any = float(target)
                except ValueError:
                    wanted = target  # the service says what is wrong with it
                plan_request = query_plan_prepare(
                    actor=request.user, dataset=dataset, sql=sql, target_half_width=wanted, curve=True
                )
                context["plan"] = query_plan_run(request=plan_request, timeout=settings.QUERY_WAIT_SECONDS)
                context["accuracy"] = _accuracy_table(context["plan"])
            elif request.POST.get("action") == "preview":
                version, budget, spec = query_prepare(
                    actor=request.user, dataset=dataset, sql=sql, privacy=privacy
                )
                context["preview"] = query_preview_run(version=version, budget=budget, spec=spec)
                context["accuracy"] = _console_curve(request, dataset, sql)
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
    # Each row links to its result page (`query_result`), which shows the answer to those who may read it.
    context["history"] = [{"query": query} for query in history]
    if context["released"] is not None:  # the analyst's own release: theirs to read
        context["released_result"] = released_answer(context["released"])
    return render(request, "queries/console.html", context)


def _spending_plot(daily: list[dict], total: float) -> Chart | None:
    """Cumulative spending per organisation over time, one line each from nothing on the first day,
    against the budget's total (the portal's one chart helper, `portal.charts`)."""
    if not daily:
        return None
    first = min(date.fromisoformat(row["day"]) for row in daily)
    per_org: dict[str, float] = defaultdict(float)
    series: dict[str, list[tuple[date, float]]] = defaultdict(lambda: [(first, 0.0)])
    for row in sorted(daily, key=lambda r: r["day"]):
        per_org[row["organisation"]] += row["amount"]
        series[row["organisation"]].append((date.fromisoformat(row["day"]), per_org[row["organisation"]]))
    return line_chart(
        chart_id="spending-plot",
        title="Cumulative privacy spending per organisation",
        lines=[
            Line(org, points, markers=True, note=f"{round(per_org[org], 6)}")
            for org, points in series.items()
        ],
        y_label="spent",
        y_range=(0.0, max(total, *per_org.values()) if total > 0 else max(1.0, *per_org.values())),
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
        # Who ran what (those who read the whole budget): per analyst, then every paid release.
        "by_analyst": budget_spending_by_analyst(actor=request.user, dataset=dataset) if spending else [],
        "ledger": paginate(
            request, budget_ledger_entries(actor=request.user, dataset=dataset), param="ledger_page"
        )
        if spending
        else None,
        "plot": _spending_plot(spending["daily"], spending["total"]) if spending else None,
        "training_label": TrainingPolicy(spending["training"]).label if spending else "",
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
            "trainings": [(value, label, TRAINING_HELP[value]) for value, label in TrainingPolicy.choices],
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


def _query_on(request: HttpRequest, organisation: str, slug: str, query_id: int) -> Query:
    """A query on this dataset, for whom the API's `GET /queries/<id>` shows it (`query_get`: its
    asking organisation's members, the dataset's owner and operators); 404 for everyone else."""
    query = query_get(actor=request.user, query_id=query_id)  # the one rule, as the API's
    if (query.dataset.organisation.slug, query.dataset.slug) != (organisation, slug):
        raise NotFound("Query not found.")
    return query


def _answer_readable(request: HttpRequest, query: Query) -> bool:
    """Whether the viewer reads this query's answer, as the API decides (`query_answer_visible`)."""
    return (
        query.status == "released"
        and bool(query.result)
        and query_answer_visible(actor=request.user, query=query)
    )


@login_required
@require_http_methods(["GET"])
@service_errors
def query_result(request: HttpRequest, organisation: str, slug: str, query_id: int) -> HttpResponse:
    """One query's page, reopened from the console's history: its SQL, cost and times, and, to those
    who may read it, its released answer as a table and a chart, with a CSV download."""
    query = _query_on(request, organisation, slug, query_id)
    readable = _answer_readable(request, query)
    context = {
        "dataset": query.dataset,
        "query": query,
        "result": released_answer(query) if readable else None,
        "answer_withheld": query.status == "released" and not readable,
        "symbol": "ρ" if "rho" in (query.privacy or {}) else "ε",
    }
    return render(request, "queries/result.html", context)


@login_required
@require_http_methods(["GET"])
@service_errors
def query_result_csv(request: HttpRequest, organisation: str, slug: str, query_id: int) -> HttpResponse:
    """The released answer as a CSV file (`released_answer_csv`), to those who read it on the page."""
    query = _query_on(request, organisation, slug, query_id)
    if not _answer_readable(request, query):
        raise NotFound("This query has no answer for you to download.", code="no_answer")
    response = HttpResponse(released_answer_csv(query), content_type="text/csv; charset=utf-8")
    filename = f"{query.dataset.organisation.slug}-{query.dataset.slug}-query-{query.pk}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["X-Content-Type-Options"] = "nosniff"
    return response
