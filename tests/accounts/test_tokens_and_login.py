from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from clearinghouse.accounts.models import APIToken
from clearinghouse.accounts.services import api_token_create, api_token_revoke
from clearinghouse.core.errors import ValidationFailed
from clearinghouse.organisations.services import organisation_set_status
from tests.factories import PASSWORD, make_user


def _bearer(text: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {text}")
    return client


def test_token_secret_is_shown_once_and_only_its_hash_stored(world):
    response = _bearer(api_token_create(actor=world.a.analyst, name="boot")[1]).post(
        "/api/v1/tokens", {"name": "ci"}, format="json"
    )
    assert response.status_code == 201
    text = response.json()["token"]
    stored = APIToken.objects.get(pk=response.json()["id"])
    assert text.split("_", 2)[2] not in (stored.secret_hash, stored.prefix)
    listing = _bearer(text).get("/api/v1/tokens").json()
    assert all("token" not in item for item in listing["results"])
    assert text not in str(listing)


@pytest.mark.parametrize(
    "mangle,code",
    [
        (lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"), "token_invalid"),
        (lambda t: "chp_deadbeef0000_" + t.split("_", 2)[2], "token_invalid"),
        (lambda t: "garbage", "token_invalid"),
        (lambda t: t + " extra", "token_invalid"),
    ],
)
def test_wrong_tokens_are_refused(world, mangle, code):
    _, text = api_token_create(actor=world.a.analyst, name="real")
    response = _bearer(mangle(text)).get("/api/v1/me")
    assert response.status_code == 401
    assert response.json()["code"] == code


def test_expired_token_is_refused(world):
    token, text = api_token_create(actor=world.a.analyst, name="short")
    now = timezone.now()
    APIToken.objects.filter(pk=token.pk).update(
        created_at=now - timedelta(days=2), expires_at=now - timedelta(seconds=1)
    )
    response = _bearer(text).get("/api/v1/me")
    assert response.status_code == 401 and response.json()["code"] == "token_expired"


def test_revoked_token_is_refused_at_once(world):
    token, text = api_token_create(actor=world.a.analyst, name="soon-revoked")
    client = _bearer(text)
    assert client.get("/api/v1/me").status_code == 200
    api_token_revoke(actor=world.a.analyst, token=token)
    response = client.get("/api/v1/me")
    assert response.status_code == 401 and response.json()["code"] == "token_revoked"


@pytest.mark.parametrize(
    "expires,code",
    [
        (timedelta(seconds=-5), "invalid_expiry"),
        (timedelta(days=366), "invalid_expiry"),
    ],
)
def test_token_expiry_must_be_sensible(world, expires, code):
    with pytest.raises(ValidationFailed) as info:
        api_token_create(actor=world.a.analyst, name="x", expires_at=timezone.now() + expires)
    assert info.value.code == code


def test_suspension_stops_tokens_and_sessions_at_once(world):
    _, text = api_token_create(actor=world.a.analyst, name="work")
    api = _bearer(text)
    portal = Client()
    portal.force_login(world.a.analyst)
    assert api.get("/api/v1/me").status_code == 200
    assert portal.get("/dashboard/").status_code == 200

    organisation_set_status(
        actor=world.operator,
        organisation=world.a.organisation,
        status="suspended",
        reason="breach under investigation",
    )

    response = api.get("/api/v1/me")
    assert response.status_code == 401 and response.json()["code"] == "organisation_suspended"
    assert portal.get("/dashboard/").status_code == 302  # logged out, sent to log in
    # Other organisations are untouched.
    _, other = api_token_create(actor=world.b.analyst, name="work")
    assert _bearer(other).get("/api/v1/me").status_code == 200

    organisation_set_status(actor=world.operator, organisation=world.a.organisation, status="approved")
    assert api.get("/api/v1/me").status_code == 200


def _login(client: Client, username: str, password: str):
    return client.post("/login/", {"username": username, "password": password})


def test_password_login_works_and_suspended_members_cannot_log_in(world):
    assert _login(Client(), world.a.analyst.username, PASSWORD).status_code == 302
    organisation_set_status(
        actor=world.operator, organisation=world.a.organisation, status="suspended", reason="x"
    )
    response = _login(Client(), world.a.analyst.username, PASSWORD)
    assert response.status_code == 200 and "_auth_user_id" not in Client().session


def test_login_is_throttled_after_repeated_failures(db, settings):
    make_user("victim")
    client = Client()
    for _ in range(settings.AXES_FAILURE_LIMIT - 1):
        assert _login(client, "victim", "wrong-password").status_code == 200
    assert _login(client, "victim", "wrong-password").status_code == 429
    # Locked now: even the right password is refused for this username from this address.
    response = _login(client, "victim", PASSWORD)
    assert response.status_code == 429
    assert b"Too many failed log-ins" in response.content
    # Another user from the same address is not locked out.
    make_user("bystander")
    assert _login(Client(), "bystander", PASSWORD).status_code == 302
