"""Portal pages of the catalogue and of access requests: the datasets offered to the consortium (with a
"Request access" form each), and the page where an organisation decides the requests to its datasets,
follows its own, and lists or unlists its datasets. They call the same selectors and services as the
API (`datasets.apis`): every rule is written there once."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from clearinghouse.core.errors import ValidationFailed
from clearinghouse.organisations.roles import MANAGE_DATASETS
from clearinghouse.organisations.selectors import membership_active, user_capabilities
from clearinghouse.portal.shortcuts import paginate, service_errors

from .models import AccessRequestStatus, GrantPurpose
from .selectors import (
    access_request_get,
    access_request_incoming,
    access_request_outgoing,
    catalogue_budget_terms,
    catalogue_dataset_get,
    catalogue_list,
    dataset_get,
    dataset_list,
    dataset_schema_visible,
)
from .services import (
    access_request_create,
    access_request_decide,
    access_request_withdraw,
    dataset_listing_set,
)

_TRUE, _FALSE = {"true", "on", "1"}, {"false", "off", "0"}


@login_required
@require_GET
@service_errors
def catalogue_view(request: HttpRequest) -> HttpResponse:
    page = paginate(request, catalogue_list(actor=request.user))
    entries = []
    for dataset in page:
        granted = [p for p in GrantPurpose if getattr(dataset, f"granted_{p.value}", False)]
        pending = [p for p in GrantPurpose if getattr(dataset, f"pending_{p.value}", False)]
        entries.append(
            {
                "dataset": dataset,
                # A listed dataset's schema is confirmed: the steward's public facts, never a proposal.
                "schema": dataset_schema_visible(dataset=dataset, owner=False),
                "budget": catalogue_budget_terms(dataset=dataset),
                "granted": granted,
                "pending": pending,
                # What the form offers: the purposes not held or asked for already (the service decides).
                "requestable": [p for p in GrantPurpose if p not in granted and p not in pending],
            }
        )
    return render(
        request,
        "datasets/catalogue.html",
        {
            "page": page,
            "entries": entries,
            "can_request": membership_active(user=request.user) is not None,
            "outgoing": access_request_outgoing(actor=request.user)[:20],
        },
    )


@login_required
@require_POST
@service_errors
def dataset_access_request_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = catalogue_dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    access_request = access_request_create(
        actor=request.user,
        dataset=dataset,
        purpose=request.POST.get("purpose", ""),
        reason=request.POST.get("reason", ""),
    )
    messages.success(
        request,
        f"Access to {dataset.name} ({access_request.get_purpose_display().lower()}) requested; "
        f"{dataset.organisation.name} will decide.",
    )
    return redirect("portal:catalogue")


@login_required
@require_GET
@service_errors
def access_requests_view(request: HttpRequest) -> HttpResponse:
    incoming = access_request_incoming(actor=request.user)
    can_manage = MANAGE_DATASETS in user_capabilities(user=request.user)
    membership = membership_active(user=request.user)
    own_datasets = (
        paginate(
            request,
            dataset_list(actor=request.user).filter(organisation_id=membership.organisation_id),
            param="datasets_page",
        )
        if membership is not None
        else None
    )
    return render(
        request,
        "datasets/access_requests.html",
        {
            "pending": incoming.filter(status=AccessRequestStatus.PENDING),
            "history": paginate(
                request, incoming.exclude(status=AccessRequestStatus.PENDING), param="history_page"
            ),
            "outgoing": paginate(request, access_request_outgoing(actor=request.user), param="outgoing_page"),
            "can_manage": can_manage,
            "own_datasets": own_datasets,
        },
    )


@login_required
@require_POST
@service_errors
def access_request_decide_view(request: HttpRequest, request_id: int) -> HttpResponse:
    access_request = access_request_decide(
        actor=request.user,
        access_request=access_request_get(actor=request.user, request_id=request_id),
        decision=request.POST.get("decision", ""),
        note=request.POST.get("note", ""),
    )
    messages.success(
        request,
        f"Request of {access_request.organisation.name} for {access_request.dataset.name} "
        f"{access_request.status}.",
    )
    return redirect("portal:access_requests")


@login_required
@require_POST
@service_errors
def access_request_withdraw_view(request: HttpRequest, request_id: int) -> HttpResponse:
    access_request_withdraw(
        actor=request.user, access_request=access_request_get(actor=request.user, request_id=request_id)
    )
    messages.success(request, "Request withdrawn.")
    return redirect("portal:access_requests")


@login_required
@require_POST
@service_errors
def dataset_listing_view(request: HttpRequest, organisation: str, slug: str) -> HttpResponse:
    dataset = dataset_get(actor=request.user, organisation_slug=organisation, dataset_slug=slug)
    value = request.POST.get("listed", "").lower()
    if value not in _TRUE | _FALSE:
        raise ValidationFailed("listed must be true or false.", code="invalid_listed")
    dataset = dataset_listing_set(actor=request.user, dataset=dataset, listed=value in _TRUE)
    messages.success(
        request,
        f"{dataset.name} is {'now offered in' if dataset.listed else 'no longer in'} the catalogue.",
    )
    if request.POST.get("from") == "dataset":  # the dataset page's own button: back to it
        return redirect("portal:dataset", organisation=organisation, slug=slug)
    return redirect("portal:access_requests")
