"""Portal pages for datasets: list, detail (schema, versions with their quality reports, grants,
data-use agreement) and upload. The upload form works without JavaScript; with it, a progress bar."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clearinghouse.core.errors import ValidationFailed
from clearinghouse.organisations.selectors import organisation_directory_get
from clearinghouse.portal.shortcuts import paginate, service_errors

from .forms import AgreementAcceptForm
from .quality import report_tables
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
    dataset_schema_visible,
    dataset_version_get,
    dataset_version_list,
)
from .services import (
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


@login_required
@require_GET
@service_errors
def dataset_detail_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    owner = dataset_is_owner(actor=request.user, dataset=dataset)
    schema = dataset_schema_visible(dataset=dataset, owner=owner)  # a proposal is the owner's alone
    context = {
        "dataset": dataset,
        "owner": owner,
        "schema": schema,
        "schema_text": json.dumps(schema, indent=2) if owner and schema else "",
        "versions": paginate(request, dataset_version_list(actor=request.user, dataset=dataset)),
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
    return render(
        request,
        "datasets/version.html",
        {
            "dataset": dataset,
            "version": version,
            "owner": owner,
            # The quality report is derived from the rows: its owner's alone (docs/data-exposure.md).
            "quality": report_tables(version.quality_report) if owner and version.quality_report else None,
            "report_json": json.dumps(version.quality_report, indent=2)
            if owner and version.quality_report
            else "",
        },
    )


@login_required
@require_POST
@service_errors
def dataset_schema_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    dataset_schema_set(actor=request.user, dataset=dataset, schema=request.POST.get("schema", ""))
    messages.success(request, "Schema confirmed.")
    return redirect("portal:dataset", organisation=organisation, slug=slug)


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
