"""Bad input and escalation attempts against the organisation services: each refused with a stable
code, and nothing half-written (no organisation, membership or audit event is left behind)."""

import pytest

from clearinghouse.audit.models import AuditEvent
from clearinghouse.core.errors import ApplicationError, Conflict, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.organisations.models import Membership, Organisation
from clearinghouse.organisations.roles import Role
from clearinghouse.organisations.services import (
    invitation_accept,
    invitation_create,
    join_request_decide,
    membership_change_role,
    membership_remove,
    organisation_apply,
    organisation_set_status,
)
from tests.factories import make_user

VALID = {"name": "Acme Research", "slug": "acme", "country": "gb", "contact_email": "data@acme.example.org"}


def _refused(exc_type, code, call, **kwargs):
    before = (Organisation.objects.count(), Membership.objects.count(), AuditEvent.objects.count())
    with pytest.raises(exc_type) as info:
        call(**kwargs)
    assert info.value.code == code, info.value.message
    after = (Organisation.objects.count(), Membership.objects.count(), AuditEvent.objects.count())
    assert after == before, "a refused call changed the database"
    return info.value


@pytest.mark.parametrize(
    "field,value,code",
    [
        ("name", "", "invalid_name"),
        ("name", "   ", "invalid_name"),
        ("name", "x" * 121, "invalid_name"),
        ("name", "Acme\u202eevil", "invalid_name"),  # right-to-left override disguises the name
        ("name", "Ac\u200bme", "invalid_name"),  # zero-width space: looks like "Acme"
        ("name", "Acme\x00", "invalid_name"),
        ("slug", "Acme", "invalid_slug"),
        ("slug", "acme-", "invalid_slug"),
        ("slug", "ac me", "invalid_slug"),
        ("slug", "аcme", "invalid_slug"),  # Cyrillic 'а'
        ("slug", "a" * 51, "invalid_slug"),
        ("country", "GBR", "invalid_country"),
        ("country", "1x", "invalid_country"),
        ("contact_email", "not-an-email", "invalid_email"),
    ],
)
def test_apply_refuses_bad_fields(db, field, value, code):
    user = make_user("applicant")
    error = _refused(ValidationFailed, code, organisation_apply, actor=user, **{**VALID, field: value})
    assert field in error.fields


def test_apply_normalises_unicode_and_case(db):
    user = make_user("applicant")
    organisation = organisation_apply(actor=user, **{**VALID, "name": "  Cafe\u0301 Data  "})
    assert organisation.name == "Café Data"  # NFC: one code point for é
    assert organisation.country == "GB"


def test_duplicate_slug_and_name_are_refused(db):
    organisation_apply(actor=make_user("first"), **VALID)
    _refused(Conflict, "duplicate_slug", organisation_apply, actor=make_user("second"), **VALID)
    _refused(
        Conflict,
        "duplicate_name",
        organisation_apply,
        actor=make_user("third"),
        **{**VALID, "slug": "acme-2", "name": "ACME research"},
    )


def test_member_cannot_apply_for_a_second_organisation(world):
    _refused(Conflict, "already_member", organisation_apply, actor=world.a.analyst, **VALID)


def test_analyst_cannot_make_itself_admin(world):
    _refused(
        PermissionDenied,
        "role_forbidden",
        membership_change_role,
        actor=world.a.analyst,
        membership=world.a.analyst.membership,
        role=Role.ORG_ADMIN,
    )
    assert Membership.objects.get(user=world.a.analyst).role == Role.ANALYST


def test_admin_of_a_cannot_act_in_b(world):
    _refused(
        NotFound,
        "not_found",
        membership_change_role,
        actor=world.a.admin,
        membership=world.b.analyst.membership,
        role=Role.ORG_ADMIN,
    )
    _refused(
        NotFound, "not_found", membership_remove, actor=world.a.admin, membership=world.b.steward.membership
    )
    _refused(
        NotFound,
        "not_found",
        invitation_create,
        actor=world.a.admin,
        organisation=world.b.organisation,
        email="spy@example.org",
        role=Role.ORG_ADMIN,
    )
    _refused(
        NotFound,
        "not_found",
        join_request_decide,
        actor=world.a.admin,
        join_request=world.b.join_request,
        approve=True,
        role=Role.ORG_ADMIN,
    )


def test_invalid_role_is_refused(world):
    _refused(
        ValidationFailed,
        "invalid_role",
        membership_change_role,
        actor=world.a.admin,
        membership=world.a.analyst.membership,
        role="superuser",
    )


def test_last_admin_cannot_be_demoted_or_removed(world):
    _refused(
        Conflict,
        "last_admin",
        membership_change_role,
        actor=world.a.admin,
        membership=world.a.admin.membership,
        role=Role.ANALYST,
    )
    _refused(
        Conflict, "last_admin", membership_remove, actor=world.a.admin, membership=world.a.admin.membership
    )


def test_invitation_for_another_email_cannot_be_taken(world):
    outsider = make_user("outsider")
    _refused(
        PermissionDenied,
        "invitation_email_mismatch",
        invitation_accept,
        actor=outsider,
        token=world.a.invitation_token,
    )


def test_invitation_token_is_single_use(world):
    invitee = make_user("invitee")
    _, token = invitation_create(
        actor=world.a.admin, organisation=world.a.organisation, email=invitee.email, role=Role.ANALYST
    )
    invitation_accept(actor=invitee, token=token)
    other = make_user("other")
    _refused(NotFound, "invitation_invalid", invitation_accept, actor=other, token=token)


def test_status_transitions_are_enforced(world):
    _refused(
        PermissionDenied,
        "operator_required",
        organisation_set_status,
        actor=world.a.admin,
        organisation=world.a.organisation,
        status="suspended",
        reason="x",
    )
    _refused(
        ValidationFailed,
        "reason_required",
        organisation_set_status,
        actor=world.operator,
        organisation=world.a.organisation,
        status="suspended",
        reason="",
    )
    _refused(
        Conflict,
        "invalid_status_transition",
        organisation_set_status,
        actor=world.operator,
        organisation=world.a.organisation,
        status="rejected",
        reason="late",
    )


def test_rejection_frees_the_applicant(db):
    from tests.factories import make_operator

    operator = make_operator()
    applicant = make_user("applicant")
    organisation = organisation_apply(actor=applicant, **VALID)
    organisation_set_status(
        actor=operator, organisation=organisation, status="rejected", reason="not a research body"
    )
    organisation.refresh_from_db()
    assert organisation.status == "rejected" and organisation.status_reason == "not a research body"
    assert not Membership.objects.filter(user=applicant).exists()
    organisation_apply(actor=applicant, **{**VALID, "slug": "acme-again", "name": "Acme Again"})


def test_every_change_is_audited_with_actor_and_organisation(world):
    membership_change_role(actor=world.a.admin, membership=world.a.analyst.membership, role=Role.DATA_STEWARD)
    event = AuditEvent.objects.order_by("-seq").first()
    assert event.action == "membership.role_changed"
    assert event.actor == world.a.admin
    assert event.organisation == world.a.organisation
    assert event.extra == {"user": "analyst_org-a", "from": "analyst", "to": "data_steward"}


def test_service_errors_never_echo_secrets(world):
    with pytest.raises(ApplicationError) as info:
        invitation_accept(actor=make_user("x1"), token=world.a.invitation_token)
    assert world.a.invitation_token not in str(info.value)
