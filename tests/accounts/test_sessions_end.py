"""Taking access away ends sessions: suspending an organisation, removing a member, deactivating a
user. A session that merely stopped working while suspended would work again after reinstatement."""

from __future__ import annotations

from django.contrib.sessions.models import Session
from django.test import Client

from clearinghouse.accounts.models import UserSession
from clearinghouse.audit.models import AuditEvent
from clearinghouse.organisations.services import membership_remove, organisation_set_status
from tests.factories import PASSWORD


def _logged_in(username: str) -> Client:
    client = Client()
    assert client.post("/login/", {"username": username, "password": PASSWORD}).status_code == 302
    assert client.get("/dashboard/").status_code == 200
    return client


def _session_exists(client: Client) -> bool:
    return Session.objects.filter(session_key=client.session.session_key).exists()


def test_suspension_ends_sessions_and_reinstatement_does_not_revive_them(world):
    member = _logged_in(world.a.analyst.username)
    admin = Client()
    admin.force_login(world.a.admin)
    bystander = _logged_in(world.b.analyst.username)
    key = member.cookies["sessionid"].value

    organisation_set_status(
        actor=world.operator,
        organisation=world.a.organisation,
        status="suspended",
        reason="breach under investigation",
    )
    assert not Session.objects.filter(session_key=key).exists()
    assert not _session_exists(admin)
    assert not UserSession.objects.filter(user__in=[world.a.analyst, world.a.admin]).exists()
    event = AuditEvent.objects.filter(action="organisation.suspended").first()
    assert event.extra["sessions_ended"] == 2

    # Reinstated before the member made any request: the old session is still gone.
    organisation_set_status(actor=world.operator, organisation=world.a.organisation, status="approved")
    response = member.get("/dashboard/")
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    assert admin.get("/dashboard/").status_code == 302
    # Another organisation's members are untouched; the member can log in again.
    assert bystander.get("/dashboard/").status_code == 200
    _logged_in(world.a.analyst.username)


def test_removed_members_lose_their_sessions(world):
    removed = _logged_in(world.a.steward.username)
    membership_remove(actor=world.a.admin, membership=world.a.steward.membership)
    assert not _session_exists(removed)
    assert removed.get("/dashboard/").status_code == 302
    assert AuditEvent.objects.filter(action="membership.removed").first().extra["sessions_ended"] == 1


def test_a_member_who_leaves_keeps_the_session_they_left_with(world):
    leaver = _logged_in(world.a.analyst.username)
    assert leaver.post(f"/organisation/members/{world.a.analyst.membership.pk}/remove/").status_code == 302
    assert leaver.get("/dashboard/").status_code == 200


def test_deactivated_users_lose_their_sessions_for_good(world):
    user = world.a.analyst
    client = _logged_in(user.username)
    user.is_active = False
    user.save()
    assert not _session_exists(client)
    user.is_active = True
    user.save()
    assert client.get("/dashboard/").status_code == 302


def test_logging_out_forgets_the_session(world):
    client = _logged_in(world.a.analyst.username)
    assert UserSession.objects.filter(user=world.a.analyst).count() == 1
    client.post("/logout/")
    assert not UserSession.objects.filter(user=world.a.analyst).exists()


def test_api_tokens_are_refused_while_suspended(world):
    from tests.factories import api_client

    api = api_client(world.a.analyst)
    organisation_set_status(
        actor=world.operator, organisation=world.a.organisation, status="suspended", reason="x"
    )
    response = api.get("/api/v1/me")
    assert response.status_code == 401 and response.json()["code"] == "organisation_suspended"
