"""Portal pages for datasets: list, detail (schema, versions with their quality reports, grants,
data-use agreement) and upload. The upload form works without JavaScript; with it, a progress bar."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clearinghouse.core.errors import ApplicationError, NotFound, ValidationFailed
from clearinghouse.organisations.selectors import (
    membership_active,
    organisation_directory,
    organisation_directory_get,
)
from clearinghouse.portal.views import service_errors

from .models import DatasetGrant
from .selectors import (
    agreement_accepted,
    agreement_current,
    dataset_get,
    dataset_grant_list,
    dataset_is_owner,
    dataset_list,
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


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def dataset_list_view(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        membership = membership_active(user=request.user)
        if membership is None:
            raise NotFound("You are not a member of an approved organisation.")
        schema_text = request.POST.get("schema", "").strip()
        dataset = dataset_register(actor=request.user, organisation=membership.organisation,
                                   name=request.POST.get("name", ""), slug=request.POST.get("slug", ""),
                                   description=request.POST.get("description", ""),
                                   schema=schema_text or None)
        messages.success(request, f"Dataset {dataset.name} registered.")
        return redirect("portal:dataset", organisation=dataset.organisation.slug, slug=dataset.slug)
    return render(request, "datasets/list.html", {"datasets": dataset_list(actor=request.user)})


@login_required
@require_GET
@service_errors
def dataset_detail_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    owner = dataset_is_owner(actor=request.user, dataset=dataset)
    context = {
        "dataset": dataset,
        "owner": owner,
        "schema_text": json.dumps(dataset.schema, indent=2) if dataset.schema else "",
        "versions": dataset_version_list(actor=request.user, dataset=dataset)[:50],
        "agreement": agreement_current(dataset=dataset),
        "agreement_accepted": agreement_accepted(user=request.user, dataset=dataset),
    }
    if owner:
        context["grants"] = dataset_grant_list(dataset=dataset)
        context["directory"] = organisation_directory().exclude(pk=dataset.organisation_id)
    return render(request, "datasets/detail.html", context)


@login_required
@require_GET
@service_errors
def dataset_version_view(request: HttpRequest, organisation: str, slug: str, number: int) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    version = dataset_version_get(actor=request.user, dataset=dataset, number=number)
    owner = dataset_is_owner(actor=request.user, dataset=dataset)
    return render(request, "datasets/version.html", {
        "dataset": dataset, "version": version, "owner": owner,
        "report_json": json.dumps(version.quality_report, indent=2) if owner and version.quality_report else "",
    })


@login_required
@require_POST
@service_errors
def dataset_schema_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    dataset_schema_set(actor=request.user, dataset=dataset, schema=request.POST.get("schema", ""))
    messages.success(request, "Schema confirmed.")
    return redirect("portal:dataset", organisation=organisation, slug=slug)


@login_required
@require_POST
@service_errors
def dataset_upload_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    upload = request.FILES.get("file")
    try:
        if getattr(request, "upload_too_large", False):
            raise ValidationFailed("The file is larger than the upload limit.", code="file_too_large")
        dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
        if upload is None:
            raise ValidationFailed("Choose a file to upload.", code="file_required")
        delimiter = request.POST.get("delimiter", "")
        version = dataset_version_create(
            actor=request.user, dataset=dataset, upload=upload, fmt=request.POST.get("format", ""),
            delimiter="\t" if delimiter in {"\\t", "tab"} else delimiter,
            quote_char="" if request.POST.get("quote") == "none" else '"',
            has_header=request.POST.get("header", "on") == "on", repair=request.POST.get("repair", "none"))
    except ApplicationError:
        if upload is not None and hasattr(upload, "discard"):
            upload.discard()
        raise
    messages.success(request, f"Version {version.number} uploaded and encrypted; validation is running.")
    return redirect("portal:dataset_version", organisation=organisation, slug=slug, number=version.number)


@login_required
@require_POST
@service_errors
def dataset_version_retry_view(request: HttpRequest, organisation: str, slug: str, number: int) -> HttpResponse:
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
    dataset_grant_create(actor=request.user, dataset=dataset, organisation=grantee,
                         purpose=request.POST.get("purpose", ""))
    messages.success(request, f"{grantee.name} may now use this dataset ({request.POST.get('purpose')}).")
    return redirect("portal:dataset", organisation=organisation, slug=slug)


@login_required
@require_POST
@service_errors
def dataset_grant_revoke_view(request: HttpRequest, grant_id: int) -> HttpResponse:
    grant = DatasetGrant.objects.select_related("dataset__organisation", "organisation").filter(pk=grant_id).first()
    if grant is None or not dataset_is_owner(actor=request.user, dataset=grant.dataset):
        raise NotFound("Grant not found.")
    dataset_grant_revoke(actor=request.user, grant=grant)
    messages.success(request, "Grant revoked.")
    return redirect("portal:dataset", organisation=grant.dataset.organisation.slug, slug=grant.dataset.slug)


@login_required
@require_POST
@service_errors
def dataset_agreement_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    if request.POST.get("action") == "accept":
        agreement_accept(actor=request.user, dataset=dataset, version=int(request.POST.get("version") or 0))
        messages.success(request, "Agreement accepted.")
    else:
        agreement = agreement_publish(actor=request.user, dataset=dataset, text=request.POST.get("text", ""))
        messages.success(request, f"Agreement version {agreement.version} published; analysts must accept it again.")
    return redirect("portal:dataset", organisation=organisation, slug=slug)
