"""Writes for organisations, memberships, join requests and invitations.

Every service checks who may act (authorization lives here, not only in views), changes state in one
transaction, and writes its audit event in that same transaction.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from clearinghouse.accounts.services import user_sessions_end
from clearinghouse.audit.services import audit_lock, audit_record
from clearinghouse.core.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.core.text import clean_email, clean_name, clean_slug

from .models import Invitation, JoinRequest, Membership, Organisation, OrganisationStatus, RequestStatus
from .roles import MANAGE_MEMBERS, MANAGE_ORGANISATION, Role
from .selectors import membership_of, require_capability, require_operator

COUNTRY_CODES_HINT = "a two-letter ISO 3166-1 code such as NL or GB"


def _clean_country(value: object) -> str:
    if (
        not isinstance(value, str)
        or len(value.strip()) != 2
        or not value.strip().isascii()
        or not value.strip().isalpha()
    ):
        message = f"Use {COUNTRY_CODES_HINT}."
        raise ValidationFailed(f"country: {message}", code="invalid_country", fields={"country": [message]})
    return value.strip().upper()


def _clean_role(value: object) -> str:
    if value not in Role.values:
        message = f"Choose one of: {', '.join(Role.values)}."
        raise ValidationFailed(f"role: {message}", code="invalid_role", fields={"role": [message]})
    return str(value)


def _require_no_membership(user: Any) -> None:
    if membership_of(user=user) is not None:
        raise Conflict("You already belong to an organisation.", code="already_member")


@transaction.atomic
def organisation_apply(*, actor: Any, name: str, slug: str, country: str, contact_email: str) -> Organisation:
    """A signed-up user applies for a new member organisation and becomes its admin once approved."""
    name = clean_name(name, field="name", max_length=120, min_length=2)
    slug = clean_slug(slug)
    country = _clean_country(country)
    contact_email = clean_email(contact_email, field="contact_email")
    _require_no_membership(actor)
    if Organisation.objects.filter(slug=slug).exists():
        raise Conflict(
            "An organisation with this slug already exists.",
            code="duplicate_slug",
            fields={"slug": ["Taken."]},
        )
    if Organisation.objects.filter(name__iexact=name).exists():
        raise Conflict(
            "An organisation with this name already exists.",
            code="duplicate_name",
            fields={"name": ["Taken."]},
        )
    if JoinRequest.objects.filter(user=actor, status=RequestStatus.PENDING).exists():
        raise Conflict("Withdraw your pending join request before applying.", code="join_request_pending")
    try:
        with transaction.atomic():
            organisation = Organisation.objects.create(
                name=name, slug=slug, country=country, contact_email=contact_email, created_by=actor
            )
            Membership.objects.create(user=actor, organisation=organisation, role=Role.ORG_ADMIN)
    except IntegrityError:
        # A concurrent application took the slug or name between the check and the insert.
        raise Conflict(
            "An organisation with this name or slug already exists.", code="duplicate_slug"
        ) from None
    audit_record(
        actor=actor,
        action="organisation.applied",
        organisation=organisation,
        target=organisation,
        extra={"name": name, "slug": slug, "country": country},
    )
    return organisation


@transaction.atomic
def organisation_set_status(
    *, actor: Any, organisation: Organisation, status: str, reason: str = ""
) -> Organisation:
    """Operators approve, reject, suspend and reinstate organisations. Rejection and suspension need a reason."""
    require_operator(actor=actor)
    audit_lock(organisation)  # first: the lock order of every write (see audit_lock)
    organisation = Organisation.objects.select_for_update(no_key=True).get(pk=organisation.pk)
    reason = reason.strip() if isinstance(reason, str) else ""
    if len(reason) > 2000:
        raise ValidationFailed("reason: at most 2000 characters.", code="invalid_reason")
    if status in {OrganisationStatus.REJECTED, OrganisationStatus.SUSPENDED} and not reason:
        raise ValidationFailed(
            "A reason is required to reject or suspend.",
            code="reason_required",
            fields={"reason": ["Required."]},
        )
    previous = organisation.transition_to(status, by=actor, reason=reason)
    organisation.save(update_fields=["status", "status_reason", "decided_by", "decided_at"])
    if status == OrganisationStatus.REJECTED:
        # The applicant is free to apply again or join another organisation.
        organisation.memberships.all().delete()
    extra: dict[str, Any] = {"from": previous, "to": status, "reason": reason}
    if status == OrganisationStatus.SUSPENDED:
        # Suspension ends its members' sessions at once: they log in again after a reinstatement.
        # (Their API tokens stay, refused while the organisation is suspended.)
        extra["sessions_ended"] = user_sessions_end(
            user_ids=organisation.memberships.values_list("user_id", flat=True)
        )
    audit_record(
        actor=actor,
        action=f"organisation.{status}",
        organisation=organisation,
        target=organisation,
        extra=extra,
    )
    return organisation


@transaction.atomic
def organisation_update(
    *,
    actor: Any,
    organisation: Organisation,
    name: str | None = None,
    country: str | None = None,
    contact_email: str | None = None,
) -> Organisation:
    require_capability(actor=actor, organisation=organisation, capability=MANAGE_ORGANISATION)
    changes: dict[str, Any] = {}
    if name is not None:
        name = clean_name(name, field="name", max_length=120, min_length=2)
        if Organisation.objects.filter(name__iexact=name).exclude(pk=organisation.pk).exists():
            raise Conflict("An organisation with this name already exists.", code="duplicate_name")
        changes["name"] = name
    if country is not None:
        changes["country"] = _clean_country(country)
    if contact_email is not None:
        changes["contact_email"] = clean_email(contact_email, field="contact_email")
    for field, value in changes.items():
        setattr(organisation, field, value)
    if changes:
        # The head before the row: the UPDATE locks it, as status changes do after taking the head.
        audit_lock(organisation)
        organisation.save(update_fields=list(changes))
        audit_record(
            actor=actor,
            action="organisation.updated",
            organisation=organisation,
            target=organisation,
            extra={"fields": sorted(changes)},
        )
    return organisation


@transaction.atomic
def join_request_create(*, actor: Any, organisation: Organisation, message: str = "") -> JoinRequest:
    if organisation.status != OrganisationStatus.APPROVED:
        raise NotFound("Organisation not found.")
    _require_no_membership(actor)
    message = clean_name(message, field="message", max_length=1000, min_length=0) if message else ""
    if JoinRequest.objects.filter(user=actor, status=RequestStatus.PENDING).exists():
        raise Conflict("You already have a pending join request.", code="join_request_pending")
    join_request = JoinRequest.objects.create(user=actor, organisation=organisation, message=message)
    audit_record(actor=actor, action="join_request.created", organisation=organisation, target=join_request)
    return join_request


@transaction.atomic
def join_request_decide(
    *, actor: Any, join_request: JoinRequest, approve: bool, role: str = Role.ANALYST, reason: str = ""
) -> JoinRequest:
    """The organisation's admins, or an operator, approve (with a role) or reject a join request."""
    audit_lock(join_request.organisation_id)  # first: the lock order of every write (see audit_lock)
    join_request = (
        JoinRequest.objects.select_for_update(no_key=True, of=("self",))
        .select_related("organisation", "user")
        .get(pk=join_request.pk)
    )
    if not actor.is_operator:
        require_capability(actor=actor, organisation=join_request.organisation, capability=MANAGE_MEMBERS)
    if join_request.status != RequestStatus.PENDING:
        raise Conflict(f"This request is already {join_request.status}.", code="join_request_decided")
    if approve:
        role = _clean_role(role)
        if membership_of(user=join_request.user) is not None:
            raise Conflict("The requester already belongs to an organisation.", code="already_member")
        Membership.objects.create(user=join_request.user, organisation=join_request.organisation, role=role)
        join_request.role = role
    join_request.status = RequestStatus.APPROVED if approve else RequestStatus.REJECTED
    join_request.reason = reason.strip()[:2000] if isinstance(reason, str) else ""
    join_request.decided_by = actor
    join_request.decided_at = timezone.now()
    join_request.save()
    audit_record(
        actor=actor,
        action=f"join_request.{join_request.status}",
        organisation=join_request.organisation,
        target=join_request,
        extra={"user": join_request.user.username, "role": join_request.role},
    )
    return join_request


@transaction.atomic
def join_request_withdraw(*, actor: Any, join_request: JoinRequest) -> JoinRequest:
    if join_request.user_id != actor.pk:
        raise NotFound("Join request not found.")
    audit_lock(join_request.organisation_id)  # first: the lock order of every write (see audit_lock)
    join_request = JoinRequest.objects.select_for_update(no_key=True).get(pk=join_request.pk)
    if join_request.status != RequestStatus.PENDING:
        raise Conflict(f"This request is already {join_request.status}.", code="join_request_decided")
    join_request.status = RequestStatus.WITHDRAWN
    join_request.save(update_fields=["status"])
    audit_record(
        actor=actor,
        action="join_request.withdrawn",
        organisation=join_request.organisation,
        target=join_request,
    )
    return join_request


def _invitation_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@transaction.atomic
def invitation_create(
    *, actor: Any, organisation: Organisation, email: str, role: str
) -> tuple[Invitation, str]:
    """Returns the invitation and its secret token (shown once; only its hash is stored)."""
    require_capability(actor=actor, organisation=organisation, capability=MANAGE_MEMBERS)
    email = clean_email(email, field="email")
    role = _clean_role(role)
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organisation=organisation,
        email=email,
        role=role,
        token_hash=_invitation_hash(token),
        invited_by=actor,
        expires_at=timezone.now() + settings.INVITATION_VALIDITY,
    )
    audit_record(
        actor=actor,
        action="invitation.created",
        organisation=organisation,
        target=invitation,
        extra={"email": email, "role": role},
    )
    return invitation, token


@transaction.atomic
def invitation_revoke(*, actor: Any, invitation: Invitation) -> Invitation:
    require_capability(actor=actor, organisation=invitation.organisation, capability=MANAGE_MEMBERS)
    audit_lock(invitation.organisation_id)  # first: the lock order of every write (see audit_lock)
    invitation = Invitation.objects.select_for_update(no_key=True).get(pk=invitation.pk)
    if not invitation.is_open:
        raise Conflict("This invitation is no longer open.", code="invitation_closed")
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor, action="invitation.revoked", organisation=invitation.organisation, target=invitation
    )
    return invitation


def invitation_find(*, token: str) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organisation")
        .filter(token_hash=_invitation_hash(token or ""))
        .first()
    )
    if (
        invitation is None
        or not invitation.is_open
        or invitation.organisation.status != OrganisationStatus.APPROVED
    ):
        raise NotFound("This invitation is invalid, expired or already used.", code="invitation_invalid")
    return invitation


@transaction.atomic
def invitation_accept(*, actor: Any, token: str) -> Membership:
    invitation = invitation_find(token=token)
    audit_lock(invitation.organisation_id)  # first: the lock order of every write (see audit_lock)
    invitation = (
        Invitation.objects.select_for_update(no_key=True, of=("self",))
        .select_related("organisation")
        .get(pk=invitation.pk)
    )
    if not invitation.is_open:
        raise NotFound("This invitation is invalid, expired or already used.", code="invitation_invalid")
    if invitation.email.lower() != (actor.email or "").lower():
        raise PermissionDenied(
            "This invitation was sent to another email address.", code="invitation_email_mismatch"
        )
    _require_no_membership(actor)
    membership = Membership.objects.create(
        user=actor, organisation=invitation.organisation, role=invitation.role
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = actor
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    JoinRequest.objects.filter(user=actor, status=RequestStatus.PENDING).update(
        status=RequestStatus.WITHDRAWN
    )
    audit_record(
        actor=actor,
        action="invitation.accepted",
        organisation=invitation.organisation,
        target=membership,
        extra={"role": invitation.role},
    )
    return membership


def _lock_admins(organisation: Organisation) -> int:
    """Locks the organisation row and counts its admins, so two concurrent demotions cannot both
    pass the 'keeps one admin' check."""
    audit_lock(organisation)  # first: the lock order of every write (see audit_lock)
    Organisation.objects.select_for_update(no_key=True).get(pk=organisation.pk)
    return Membership.objects.filter(organisation=organisation, role=Role.ORG_ADMIN).count()


@transaction.atomic
def membership_change_role(*, actor: Any, membership: Membership, role: str) -> Membership:
    require_capability(actor=actor, organisation=membership.organisation, capability=MANAGE_MEMBERS)
    role = _clean_role(role)
    admins = _lock_admins(membership.organisation)
    audit_lock(membership.organisation_id)  # first: the lock order of every write (see audit_lock)
    membership = Membership.objects.select_for_update(no_key=True).get(pk=membership.pk)
    if membership.role == role:
        return membership
    if membership.role == Role.ORG_ADMIN and admins <= 1:
        raise Conflict("An organisation must keep at least one admin.", code="last_admin")
    previous = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_record(
        actor=actor,
        action="membership.role_changed",
        organisation=membership.organisation,
        target=membership,
        extra={"user": membership.user.username, "from": previous, "to": role},
    )
    return membership


@transaction.atomic
def membership_remove(*, actor: Any, membership: Membership) -> None:
    """Admins remove members of their organisation; anyone may leave their own."""
    if membership.user_id != actor.pk:
        require_capability(actor=actor, organisation=membership.organisation, capability=MANAGE_MEMBERS)
    admins = _lock_admins(membership.organisation)
    audit_lock(membership.organisation_id)  # first: the lock order of every write (see audit_lock)
    membership = (
        Membership.objects.select_for_update(no_key=True, of=("self",))
        .select_related("user", "organisation")
        .get(pk=membership.pk)
    )
    if membership.role == Role.ORG_ADMIN and admins <= 1:
        raise Conflict("An organisation must keep at least one admin.", code="last_admin")
    extra: dict[str, Any] = {"user": membership.user.username, "role": membership.role}
    if membership.user_id != actor.pk:
        # A removed member's sessions end (one who leaves keeps the session they left with).
        extra["sessions_ended"] = user_sessions_end(user_ids=[membership.user_id])
    audit_record(
        actor=actor,
        action="membership.removed",
        organisation=membership.organisation,
        target=membership,
        extra=extra,
    )
    membership.delete()
