"""Server-rendered portal pages. Each view reads through selectors and writes through services; a
service's error becomes a message (or a 404 page), never a half-done change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clearinghouse.accounts.selectors import api_token_active_count, api_token_get, api_token_list
from clearinghouse.accounts.services import api_token_create, api_token_revoke, user_signup
from clearinghouse.audit.selectors import AuditTarget, audit_event_list, audit_event_targets
from clearinghouse.core.errors import ApplicationError, ValidationFailed
from clearinghouse.datasets.selectors import datasets_overview
from clearinghouse.organisations.models import OrganisationStatus, RequestStatus
from clearinghouse.organisations.roles import MANAGE_MEMBERS, Role
from clearinghouse.organisations.selectors import (
    ORGANISATION_DECISIONS,
    invitation_get,
    invitation_list,
    join_request_get,
    join_request_list,
    join_request_pending_for,
    membership_get,
    membership_list,
    membership_of,
    organisation_directory,
    organisation_directory_get,
    organisation_get,
    organisation_list,
    organisation_pending_list,
    organisations_overview,
    require_operator,
    user_capabilities,
)
from clearinghouse.organisations.services import (
    invitation_accept,
    invitation_create,
    invitation_find,
    invitation_revoke,
    join_request_create,
    join_request_decide,
    join_request_withdraw,
    membership_change_role,
    membership_remove,
    organisation_apply,
    organisation_set_status,
)
from clearinghouse.queries.selectors import budgets_overview
from federation.selectors import jobs_overview

from . import forms
from .shortcuts import form_error, my_membership, paginate, service_errors, signed_in_user


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("portal:dashboard")
    return render(request, "portal/home.html")


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("portal:dashboard")
    form = forms.SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            user = user_signup(**form.cleaned_data)
        except ApplicationError as exc:
            form_error(form, exc)
        else:
            login(request, user, backend="clearinghouse.accounts.backends.MemberAwareBackend")
            messages.success(request, "Welcome! Apply for a new organisation or ask to join one.")
            return redirect("portal:dashboard")
    return render(request, "portal/signup.html", {"form": form})


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    membership = membership_of(user=request.user)
    context: dict[str, Any] = {
        "membership": membership,
        "pending_join": join_request_pending_for(user=request.user),
        "my_requests": paginate(request, join_request_list(actor=request.user, own=True)),
        "tokens_active": api_token_active_count(actor=signed_in_user(request)),
    }
    context["pending_organisations"] = organisation_pending_list(actor=request.user)  # operators' work queue
    return render(request, "portal/dashboard.html", context)


@login_required
@require_http_methods(["GET", "POST"])
def organisation_apply_view(request: HttpRequest) -> HttpResponse:
    form = forms.OrganisationApplyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organisation = organisation_apply(actor=request.user, **form.cleaned_data)
        except ApplicationError as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"Your application for {organisation.name} was sent to the operators.")
            return redirect("portal:dashboard")
    return render(request, "portal/organisation_apply.html", {"form": form})


@login_required
@require_http_methods(["GET", "POST"])
def organisation_join(request: HttpRequest) -> HttpResponse:
    form = forms.JoinForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            organisation = organisation_directory_get(slug=form.cleaned_data["organisation"])
            join_request_create(
                actor=request.user, organisation=organisation, message=form.cleaned_data["message"]
            )
        except ApplicationError as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"You asked to join {organisation.name}.")
            return redirect("portal:dashboard")
    return render(
        request, "portal/organisation_join.html", {"form": form, "directory": organisation_directory()}
    )


@login_required
@require_POST
@service_errors
def join_request_withdraw_view(request: HttpRequest, join_request_id: int) -> HttpResponse:
    join_request_withdraw(
        actor=request.user, join_request=join_request_get(actor=request.user, join_request_id=join_request_id)
    )
    messages.success(request, "Join request withdrawn.")
    return redirect("portal:dashboard")


@login_required
@require_POST
@service_errors
def join_request_decide_view(request: HttpRequest, join_request_id: int, action: str) -> HttpResponse:
    join_request = join_request_get(actor=request.user, join_request_id=join_request_id)
    form = forms.DecisionForm(request.POST)
    form.is_valid()
    join_request_decide(
        actor=request.user,
        join_request=join_request,
        approve=action == "approve",
        role=form.cleaned_data.get("role") or Role.ANALYST,
        reason=form.cleaned_data.get("reason", ""),
    )
    messages.success(request, f"Join request of {join_request.user.username} {action}d.")
    return redirect(request.META.get("HTTP_REFERER") or "portal:dashboard")


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def invitation_accept_view(request: HttpRequest, token: str) -> HttpResponse:
    invitation = invitation_find(token=token)
    if request.method == "POST":
        membership = invitation_accept(actor=request.user, token=token)
        messages.success(
            request, f"You joined {membership.organisation.name} as {membership.get_role_display()}."
        )
        return redirect("portal:dashboard")
    return render(request, "portal/invitation_accept.html", {"invitation": invitation})


@login_required
@require_GET
@service_errors
def organisation_view(request: HttpRequest) -> HttpResponse:
    membership = my_membership(request)
    organisation = membership.organisation
    can_manage = organisation.is_approved and MANAGE_MEMBERS in user_capabilities(user=request.user)
    context = {
        "organisation": organisation,
        "members": membership_list(actor=request.user, organisation=organisation),
        "can_manage": can_manage,
        "roles": Role.choices,
        "invite_form": forms.InviteForm(),
    }
    if can_manage:
        context["invitations"] = paginate(
            request, invitation_list(actor=request.user, organisation=organisation)
        )
        context["join_requests"] = join_request_list(
            actor=request.user, organisation=organisation, status=RequestStatus.PENDING
        )
    return render(request, "portal/organisation.html", context)


@login_required
@require_POST
@service_errors
def member_role_view(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = membership_get(actor=request.user, membership_id=membership_id)
    membership_change_role(actor=request.user, membership=membership, role=request.POST.get("role", ""))
    messages.success(request, f"{membership.user.username} is now {request.POST.get('role')}.")
    return redirect("portal:organisation")


@login_required
@require_POST
@service_errors
def member_remove_view(request: HttpRequest, membership_id: int) -> HttpResponse:
    membership = membership_get(actor=request.user, membership_id=membership_id)
    leaving = membership.user_id == request.user.pk
    membership_remove(actor=request.user, membership=membership)
    messages.success(
        request, "You left the organisation." if leaving else f"{membership.user.username} removed."
    )
    return redirect("portal:dashboard" if leaving else "portal:organisation")


@login_required
@require_POST
@service_errors
def invitation_create_view(request: HttpRequest) -> HttpResponse:
    membership = my_membership(request)
    invitation, token = invitation_create(
        actor=request.user,
        organisation=membership.organisation,
        email=request.POST.get("email", ""),
        role=request.POST.get("role", ""),
    )
    url = request.build_absolute_uri(f"/invitations/{token}/")
    messages.success(
        request, f"Invitation for {invitation.email} created. Send them this link (shown once): {url}"
    )
    return redirect("portal:organisation")


@login_required
@require_POST
@service_errors
def invitation_revoke_view(request: HttpRequest, invitation_id: int) -> HttpResponse:
    invitation_revoke(
        actor=request.user, invitation=invitation_get(actor=request.user, invitation_id=invitation_id)
    )
    messages.success(request, "Invitation revoked.")
    return redirect("portal:organisation")


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def tokens_view(request: HttpRequest) -> HttpResponse:
    form = forms.TokenForm(request.POST or None)
    new_token = None
    if request.method == "POST" and form.is_valid():
        try:
            _, new_token = api_token_create(
                actor=signed_in_user(request),
                name=form.cleaned_data["name"],
                expires_at=timezone.now() + timedelta(days=form.cleaned_data["expires_in_days"]),
            )
        except ApplicationError as exc:
            form_error(form, exc)
        else:
            form = forms.TokenForm()
    return render(
        request,
        "portal/tokens.html",
        {
            "form": form,
            "tokens": paginate(request, api_token_list(actor=signed_in_user(request))),
            "new_token": new_token,
        },
    )


@login_required
@require_POST
@service_errors
def token_revoke_view(request: HttpRequest, token_id: int) -> HttpResponse:
    user = signed_in_user(request)
    token = api_token_revoke(actor=user, token=api_token_get(actor=user, token_id=token_id))
    messages.success(request, f"Token {token.name} revoked.")
    return redirect("portal:tokens")


@login_required
@require_GET
@service_errors
def operator_organisations(request: HttpRequest) -> HttpResponse:
    require_operator(actor=request.user)
    status = request.GET.get("status") or None
    return render(
        request,
        "portal/operator_organisations.html",
        {
            "organisations": paginate(request, organisation_list(actor=request.user, status=status)),
            "status": status,
            "statuses": OrganisationStatus.choices,
            "join_requests": join_request_list(actor=request.user, status=RequestStatus.PENDING),
        },
    )


@login_required
@require_GET
@service_errors
def operator_organisation_detail(request: HttpRequest, slug: str) -> HttpResponse:
    require_operator(actor=request.user)
    organisation = organisation_get(actor=request.user, slug=slug)
    return render(
        request,
        "portal/operator_organisation.html",
        {
            "organisation": organisation,
            "members": membership_list(actor=request.user, organisation=organisation),
        },
    )


@login_required
@require_POST
@service_errors
def operator_organisation_decide(request: HttpRequest, slug: str, action: str) -> HttpResponse:
    # Who may decide is organisation_set_status's to say (operators), as for the API's decisions.
    organisation = organisation_get(actor=request.user, slug=slug)
    organisation_set_status(
        actor=request.user,
        organisation=organisation,
        status=ORGANISATION_DECISIONS[action],
        reason=request.POST.get("reason", ""),
    )
    messages.success(request, f"{organisation.name}: {action} done.")
    return redirect("portal:operator_organisation", slug=slug)


@login_required
@require_GET
@service_errors
def audit_view(request: HttpRequest) -> HttpResponse:
    # The API's filters by the same names; a bad date or range is an error on the form, no events.
    user = signed_in_user(request)
    form = forms.AuditFilterForm(request.GET)
    events: Any = []
    if form.is_valid():
        filters = form.cleaned_data
        try:
            events = audit_event_list(
                actor=user,
                action=filters["action"],
                actor_username=filters["actor"],
                organisation_slug=filters["organisation"],
                date_from=filters["date_from"],
                date_to=filters["date_to"],
            )
        except ValidationFailed as exc:
            form_error(form, exc)
    else:
        audit_event_list(actor=user)  # who may read the log at all (403 page otherwise)
    page = paginate(request, events)
    targets = audit_event_targets(actor=user, events=page.object_list)
    rows = [(event, _audit_target_link(targets.get(event.seq))) for event in page.object_list]
    return render(request, "portal/audit.html", {"events": page, "rows": rows, "form": form})


def _audit_target_link(target: AuditTarget | None) -> str:
    """The portal page of an event's object (`audit_event_targets` says which the viewer may see)."""
    if target is None:
        return ""
    if target.kind == "organisation":
        if target.own:
            return reverse("portal:organisation")
        return reverse("portal:operator_organisation", kwargs={"slug": target.organisation})
    if target.kind == "federated_job":
        return reverse("portal:federated_job", kwargs={"job_id": target.job_id})
    name = "portal:query_console" if target.kind == "query_console" else "portal:dataset"
    return reverse(name, kwargs={"organisation": target.organisation, "slug": target.dataset})


@login_required
@require_GET
@service_errors
def operator_overview(request: HttpRequest) -> HttpResponse:
    """The consortium at a glance, for operators (the API's `GET /api/v1/operator/overview`, from the
    same selectors): organisations, datasets, budgets and federated jobs, metadata only, each list
    paged on its own; `q` filters them all by name or slug. Everyone else gets the 403 page."""
    q = request.GET.get("q", "").strip()
    sections = {
        "organisations": organisations_overview(actor=request.user, q=q),
        "datasets": datasets_overview(actor=request.user, q=q),
        "budgets": budgets_overview(actor=request.user, q=q),
        "jobs": jobs_overview(actor=request.user, q=q),
    }
    context: dict[str, Any] = {
        name: paginate(request, items, param=f"{name}_page") for name, items in sections.items()
    }
    return render(request, "portal/operator_overview.html", {**context, "q": q})
