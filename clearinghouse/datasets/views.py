"""Portal pages for datasets: list, detail (schema, versions with their quality reports, grants,
data-use agreement) and upload. The upload form works without JavaScript; with it, a progress bar."""

from __future__ import annotations

import json
from typing import Any

import yaml
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clearinghouse.core.errors import ValidationFailed
from clearinghouse.organisations.selectors import organisation_directory_get
from clearinghouse.portal.charts import Bars, Chart, bar_chart
from clearinghouse.portal.shortcuts import paginate, service_errors

from .forms import AgreementAcceptForm, SchemaForm, SchemaTextForm
from .models import Dataset, GrantPurpose, VersionStatus
from .quality import QualityTables, report_tables
from .selectors import (
    agreement_accepted,
    agreement_current,
    dataset_get,
    dataset_grant_candidates,
    dataset_grant_get,
    dataset_grant_list,
    dataset_is_owner,
    dataset_is_owner_or_operator,
    dataset_list,
    dataset_register_organisation,
    dataset_require_owner,
    dataset_schema_visible,
    dataset_version_get,
    dataset_version_list,
)
from .services import (
    SchemaRejected,
    agreement_accept,
    agreement_publish,
    dataset_grant_create,
    dataset_grant_revoke,
    dataset_register,
    dataset_schema_set,
    dataset_version_create,
    dataset_version_retry,
)
from .uploads import csrf_failure_response, csrf_refusal, dataset_upload_receiving, upload_reader_options

# One line each, under the grant form's purpose choice.
PURPOSE_HELP: dict[str, str] = {
    GrantPurpose.QUERY: "the organisation's analysts may ask differentially private queries; each answer "
    "spends privacy budget, and no row leaves your organisation.",
    GrantPurpose.TRAINING: "the organisation's members may include this dataset in federated training "
    "jobs; the model trains on your own node, and only model updates leave it.",
}


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def dataset_list_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        schema_text = request.POST.get("schema", "").strip()
        dataset = dataset_register(
            actor=request.user,
            organisation=dataset_register_organisation(actor=request.user),
            name=request.POST.get("name", ""),
            slug=request.POST.get("slug", ""),
            description=request.POST.get("description", ""),
            schema=schema_text or None,
        )
        messages.success(request, f"Dataset {dataset.name} registered.")
        return redirect("portal:dataset", organisation=dataset.organisation.slug, slug=dataset.slug)
    return render(
        request, "datasets/list.html", {"datasets": paginate(request, dataset_list(actor=request.user))}
    )


def _awaiting_schema(request: HttpRequest, dataset: Dataset) -> list[int]:
    """The numbers of the versions waiting for a confirmed schema (the owner's to see)."""
    versions = dataset_version_list(actor=request.user, dataset=dataset)
    return list(versions.filter(status=VersionStatus.AWAITING_SCHEMA).values_list("number", flat=True))


@login_required
@require_GET
@service_errors
def dataset_detail_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    owner = dataset_is_owner(actor=request.user, dataset=dataset)
    schema = dataset_schema_visible(dataset=dataset, owner=owner)  # a proposal is the owner's alone
    versions = dataset_version_list(actor=request.user, dataset=dataset)
    context = {
        "dataset": dataset,
        "owner": owner,
        "schema": schema,
        "versions": paginate(request, versions),
        "awaiting_schema": _awaiting_schema(request, dataset),
        "purposes": [(value, label, PURPOSE_HELP[value]) for value, label in GrantPurpose.choices],
        "agreement": agreement_current(dataset=dataset),
        "agreement_accepted": agreement_accepted(user=request.user, dataset=dataset),
        "grants": None,  # the owner organisation and operators see the grants (and may revoke them)
    }
    if dataset_is_owner_or_operator(actor=request.user, dataset=dataset):
        context["grants"] = dataset_grant_list(actor=request.user, dataset=dataset)
    if owner:  # granting is the owner's alone
        context["directory"] = dataset_grant_candidates(dataset=dataset)
    return render(request, "datasets/detail.html", context)


@login_required
@require_GET
@service_errors
def dataset_version_view(request: HttpRequest, organisation: str, slug: str, number: int) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    version = dataset_version_get(actor=request.user, dataset=dataset, number=number)
    owner = dataset_is_owner(actor=request.user, dataset=dataset)
    # The quality report is derived from the rows: its owner's alone (docs/data-exposure.md).
    quality = report_tables(version.quality_report) if owner and version.quality_report else None
    return render(
        request,
        "datasets/version.html",
        {
            "dataset": dataset,
            "version": version,
            "owner": owner,
            "quality": quality,
            "quality_chart": _quality_chart(quality) if quality is not None else None,
            "awaiting_schema": owner and version.status == VersionStatus.AWAITING_SCHEMA,
            "report_json": json.dumps(version.quality_report, indent=2)
            if owner and version.quality_report
            else "",
            "digest_parse": _digest_parse(version.content_digests) if owner else None,
        },
    )


_DELIMITER_NAMES = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}


def _digest_parse(digests: dict | None) -> dict[str, str] | None:
    """How the digested cells were parsed from the upload (`ingest.content_digests`' `parse`), as the
    version page states it and as the preflight's options repeat it: None when not recorded."""
    parse = (digests or {}).get("parse")
    if not parse:
        return None
    if parse.get("format") != "csv":
        return {"text": "a Parquet upload (no delimiter or quoting)", "flags": ""}
    delimiter, quote = parse["delimiter"], parse.get("quote_char")
    name = _DELIMITER_NAMES.get(delimiter, repr(delimiter))
    flag = "tab" if delimiter == "\t" else delimiter
    return {
        "text": f"{name}-separated text, " + (f"quote character {quote}" if quote else "no quoting"),
        "flags": f"--delimiter '{flag}' --quote-char '{quote or 'none'}'",
    }


@login_required
@require_GET
@service_errors
def dataset_version_quality_view(
    request: HttpRequest, organisation: str, slug: str, number: int
) -> HttpResponse:
    """The version's quality report as a JSON file: its owner organisation's alone, as on the page."""
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    version = dataset_version_get(actor=request.user, dataset=dataset, number=number)
    if not dataset_is_owner(actor=request.user, dataset=dataset) or not version.quality_report:
        raise Http404("This version has no quality report.")
    response = JsonResponse(version.quality_report, json_dumps_params={"indent": 2})
    response["Content-Disposition"] = (
        f'attachment; filename="{dataset.organisation.slug}-{dataset.slug}-v{version.number}-quality.json"'
    )
    response["Cache-Control"] = "private, no-store"
    return response


def _schema_page(
    request: HttpRequest,
    dataset: Dataset,
    *,
    form: SchemaForm | None = None,
    text_form: SchemaTextForm | None = None,
    status: int = 200,
    stale: Any = None,
) -> HttpResponse:
    schema: dict[str, Any] = dataset.schema or {"columns": []}
    form = form or SchemaForm(schema=schema)
    text_form = text_form or SchemaTextForm(
        initial={"schema": yaml.safe_dump(dataset.schema, sort_keys=False) if dataset.schema else ""}
    )
    return render(
        request,
        "datasets/schema.html",
        {
            "dataset": dataset,
            "form": form,
            # The advanced view opens when it was the one posted, or when there are no columns to edit.
            "advanced_open": text_form.is_bound or not form.names,
            "text_form": text_form,
            "awaiting_schema": _awaiting_schema(request, dataset),
            "stale": stale,  # why the posted column form was set aside (the columns changed meanwhile)
        },
        status=status,
    )


@login_required
@require_GET
@service_errors
def dataset_schema_edit_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    dataset_require_owner(actor=request.user, dataset=dataset)  # a proposal is the owner's alone
    return _schema_page(request, dataset)


def _quality_chart(quality: QualityTables) -> Chart | None:
    """Empty values and values breaking the schema per column, as bars (the portal's chart helper);
    None when every column is clean (the tables say so)."""
    columns = [c for c in quality.columns if (c.nulls or 0) or c.problems]
    if not columns:
        return None
    return bar_chart(
        chart_id="quality-chart",
        title="Empty values and values breaking the schema, per column",
        categories=[c.name for c in columns],
        measures=[
            Bars(name="empty values", values=[float(c.nulls or 0) for c in columns]),
            Bars(name="breaking the schema", values=[float(c.problems) for c in columns]),
        ],
        value_label="values",
        category_label="column",
    )


@login_required
@require_POST
@service_errors
def dataset_schema_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    """Saves the schema from the column form, or from the advanced view's YAML/JSON (the field
    `schema`), through `dataset_schema_set`. A refusal shows the page again (400) with what was typed,
    the error on its column's field or at its line; success queues the versions awaiting a schema."""
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    dataset_require_owner(actor=request.user, dataset=dataset)  # before the page shows its columns
    column_form: SchemaForm | None = None
    text_form: SchemaTextForm | None = None
    schema: Any = None
    if "schema" in request.POST:  # the advanced view
        text_form = SchemaTextForm(request.POST)
        if text_form.is_valid():
            schema = text_form.cleaned_data["schema"]
    else:
        column_form = SchemaForm(request.POST, schema=dataset.schema or {"columns": []})
        if column_form.is_valid():
            schema = column_form.schema()
        elif "column_names" in column_form.errors:
            # The columns changed since the page was opened: the posted values belong to other
            # columns (fields are named by position), so show the current schema, not them.
            stale = column_form.errors["column_names"]
            column_form = SchemaForm(schema=dataset.schema or {"columns": []})
            return _schema_page(request, dataset, form=column_form, status=400, stale=stale)
    if schema is not None:
        awaiting = _awaiting_schema(request, dataset)
        try:
            dataset_schema_set(actor=request.user, dataset=dataset, schema=schema)
        except SchemaRejected as exc:
            if column_form is not None:
                column_form.add_schema_error(exc.path, exc.problem)
            elif text_form is not None:
                text_form.add_error("schema", f"{exc.path}: {exc.problem}" if exc.path else exc.problem)
        else:
            if awaiting:
                numbers = ", ".join(str(number) for number in awaiting)
                messages.success(request, f"Schema confirmed. Version {numbers}: validating against it now.")
                return redirect(
                    "portal:dataset_version", organisation=organisation, slug=slug, number=max(awaiting)
                )
            messages.success(request, "Schema confirmed.")
            return redirect(reverse("portal:dataset", args=[organisation, slug]) + "#schema")
    return _schema_page(request, dataset, form=column_form, text_form=text_form, status=400)


def _csrf_before_file(request: HttpRequest, fields) -> str | None:
    if csrf_refusal(request, fields):
        return "it did not come after a valid CSRF token (reload the page and upload again)"
    return None


# The middleware's CSRF check would read the form, and so stage the file, before login and authorization
# are checked: this view checks CSRF itself, when the file part starts (from the token the form sends
# first, or the X-CSRFToken header), and again over the whole form.
@csrf_exempt
@login_required
@require_POST
@service_errors
def dataset_upload_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    # Who may upload here and the staging quota, before a byte of the body is read or staged (the
    # same entry as the API's upload).
    with dataset_upload_receiving(
        request,
        actor=request.user,
        organisation_slug=organisation,
        dataset_slug=slug,
        admit=lambda fields: _csrf_before_file(request, fields),
    ) as (dataset, receipt):
        forbidden = csrf_failure_response(request)  # reads the form: the file streams through the handler
        if forbidden is not None:
            return forbidden
        version = dataset_version_create(
            actor=request.user,
            dataset=dataset,
            upload=receipt.upload(request.FILES),
            **upload_reader_options(
                fmt=request.POST.get("format", ""),
                delimiter=request.POST.get("delimiter", ""),
                # the portal's form offers only the double quote or none
                quote="none" if request.POST.get("quote") == "none" else '"',
                # The form sends "off", then "on" when its box is ticked: the last value decides.
                has_header=request.POST.get("header", "on") == "on",
                repair=request.POST.get("repair", ""),
            ),
        )
    messages.success(request, f"Version {version.number} uploaded and encrypted; validation is running.")
    return redirect("portal:dataset_version", organisation=organisation, slug=slug, number=version.number)


@login_required
@require_POST
@service_errors
def dataset_version_retry_view(
    request: HttpRequest, organisation: str, slug: str, number: int
) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    version = dataset_version_get(actor=request.user, dataset=dataset, number=number)
    dataset_version_retry(actor=request.user, version=version, repair=request.POST.get("repair") or None)
    messages.success(request, f"Version {number} queued for validation again.")
    return redirect("portal:dataset_version", organisation=organisation, slug=slug, number=number)


@login_required
@require_POST
@service_errors
def dataset_grant_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    grantee = organisation_directory_get(slug=request.POST.get("organisation", ""))
    dataset_grant_create(
        actor=request.user, dataset=dataset, organisation=grantee, purpose=request.POST.get("purpose", "")
    )
    messages.success(request, f"{grantee.name} may now use this dataset ({request.POST.get('purpose')}).")
    return redirect("portal:dataset", organisation=organisation, slug=slug)


@login_required
@require_POST
@service_errors
def dataset_grant_revoke_view(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = dataset_grant_revoke(
        actor=request.user, grant=dataset_grant_get(actor=request.user, grant_id=grant_id)
    )
    messages.success(request, "Grant revoked.")
    return redirect("portal:dataset", organisation=grant.dataset.organisation.slug, slug=grant.dataset.slug)


@login_required
@require_POST
@service_errors
def dataset_agreement_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    if request.POST.get("action") == "accept":
        form = AgreementAcceptForm(request.POST)
        if not form.is_valid():
            raise ValidationFailed("Accept the agreement by its version number.", code="invalid_version")
        agreement_accept(actor=request.user, dataset=dataset, version=form.cleaned_data["version"])
        messages.success(request, "Agreement accepted.")
    else:
        agreement = agreement_publish(actor=request.user, dataset=dataset, text=request.POST.get("text", ""))
        messages.success(
            request, f"Agreement version {agreement.version} published; analysts must accept it again."
        )
    return redirect("portal:dataset", organisation=organisation, slug=slug)
