"""The client address behind a reverse proxy: X-Forwarded-For is believed only from TRUSTED_PROXIES,
read from the right; the audit log, log-in throttling (django-axes) and the API's anonymous throttle
all use that one address."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory

from clearinghouse.core.client_ip import client_ip, parse_networks
from tests.factories import PASSWORD, api_client, make_user

PROXY = "10.0.0.2"


def _ip(remote_addr: str, forwarded: str | None = None) -> str | None:
    extra = {"REMOTE_ADDR": remote_addr}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return client_ip(RequestFactory().get("/", **extra))


@pytest.fixture(autouse=True)
def _fresh_throttles():
    cache.clear()  # DRF's throttle history lives in the cache
    yield
    cache.clear()


def test_without_trusted_proxies_the_header_is_ignored(settings):
    settings.TRUSTED_PROXIES = []
    assert _ip("198.51.100.7", "203.0.113.9") == "198.51.100.7"
    assert _ip("198.51.100.7") == "198.51.100.7"


def test_a_spoofed_header_from_an_untrusted_peer_is_ignored(settings):
    settings.TRUSTED_PROXIES = [PROXY]
    assert _ip("198.51.100.7", "10.0.0.2, 203.0.113.9") == "198.51.100.7"


def test_behind_a_trusted_proxy_the_rightmost_untrusted_address_is_the_client(settings):
    settings.TRUSTED_PROXIES = [PROXY]
    assert _ip(PROXY, "198.51.100.7") == "198.51.100.7"
    # What the client wrote itself lies to the left of what the proxy appended: never used.
    assert _ip(PROXY, "1.2.3.4, 198.51.100.7") == "198.51.100.7"
    assert _ip(PROXY, "not-an-ip, 198.51.100.7") == "198.51.100.7"


def test_a_chain_of_trusted_proxies_is_walked_through(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "2001:db8:1::/48"]
    assert _ip("10.0.0.2", "6.6.6.6, 198.51.100.7, 10.1.2.3") == "198.51.100.7"
    assert _ip("2001:db8:1::5", "2001:db8:ffff::9, 2001:db8:1::7") == "2001:db8:ffff::9"
    # Several X-Forwarded-For headers arrive joined; ports and brackets some proxies add are dropped.
    assert _ip("10.0.0.2", "198.51.100.7:5123, 10.0.0.9") == "198.51.100.7"
    assert _ip("10.0.0.2", "[2001:db8:ffff::9]:443") == "2001:db8:ffff::9"
    # Only proxies all the way: the request started at the leftmost of them.
    assert _ip("10.0.0.2", "10.0.0.3, 10.0.0.4") == "10.0.0.3"
    # No header: the proxy itself (e.g. its health checks).
    assert _ip("10.0.0.2") == "10.0.0.2"


def test_garbage_where_a_trusted_proxy_would_have_written_stops_at_that_proxy(settings):
    settings.TRUSTED_PROXIES = ["10.0.0.0/8"]
    assert _ip("10.0.0.2", "198.51.100.7, garbage, 10.0.0.3") == "10.0.0.3"


def test_addresses_are_normalised(settings):
    settings.TRUSTED_PROXIES = [PROXY]
    assert _ip("::ffff:10.0.0.2", "2001:DB8:0:0::1") == "2001:db8::1"
    assert _ip("not an address") is None


def test_malformed_trusted_proxies_refuse_to_start():
    with pytest.raises(ImproperlyConfigured, match="TRUSTED_PROXIES"):
        parse_networks(["10.0.0.0/8", "proxy.example.org"])


def test_the_audit_log_records_the_client_not_the_proxy(db, settings):
    from clearinghouse.audit.models import AuditEvent

    settings.TRUSTED_PROXIES = [PROXY]
    user = make_user("alice")
    client = api_client(user)
    response = client.post(
        "/api/v1/tokens",
        {"name": "laptop"},
        format="json",
        REMOTE_ADDR=PROXY,
        HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7",
    )
    assert response.status_code == 201
    assert (
        AuditEvent.objects.get(
            action="api_token.created", actor=user, target_id=str(response.json()["id"])
        ).ip
        == "198.51.100.7"
    )
    # Straight to the web process (not through the proxy): the header is the client's own, ignored.
    response = client.post(
        "/api/v1/tokens",
        {"name": "direct"},
        format="json",
        REMOTE_ADDR="198.51.100.99",
        HTTP_X_FORWARDED_FOR="6.6.6.6",
    )
    assert (
        AuditEvent.objects.get(action="api_token.created", target_id=str(response.json()["id"])).ip
        == "198.51.100.99"
    )


def _login(username: str, password: str, *, remote: str, forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return Client().post("/login/", {"username": username, "password": password}, **extra)


def test_a_lockout_behind_the_proxy_locks_only_the_attackers_address(db, settings):
    settings.TRUSTED_PROXIES = [PROXY]
    make_user("victim")
    for _ in range(settings.AXES_FAILURE_LIMIT):
        _login("victim", "wrong-password", remote=PROXY, forwarded="203.0.113.5")
    assert _login("victim", PASSWORD, remote=PROXY, forwarded="203.0.113.5").status_code == 429
    # The victim, through the same proxy from elsewhere, still gets in.
    assert _login("victim", PASSWORD, remote=PROXY, forwarded="198.51.100.7").status_code == 302


def test_a_direct_attacker_cannot_escape_the_lockout_by_inventing_addresses(db, settings):
    settings.TRUSTED_PROXIES = [PROXY]
    make_user("victim")
    for index in range(settings.AXES_FAILURE_LIMIT):
        _login("victim", "wrong-password", remote="203.0.113.5", forwarded=f"192.0.2.{index}")
    response = _login("victim", PASSWORD, remote="203.0.113.5", forwarded="192.0.2.200")
    assert response.status_code == 429


def test_the_anonymous_api_throttle_is_per_client_behind_the_proxy(db, settings):
    """60 anonymous requests a minute each (THROTTLE_ANON): one busy client does not use up another's."""
    settings.TRUSTED_PROXIES = [PROXY]
    client = api_client(None)
    url = "/api/v1/federated-jobs/999999/events"  # anonymous by design (the ServerApp's callback)

    def post(forwarded: str) -> int:
        return client.post(
            url, {"event": "started"}, format="json", REMOTE_ADDR=PROXY, HTTP_X_FORWARDED_FOR=forwarded
        ).status_code

    statuses = [post("203.0.113.5") for _ in range(61)]
    assert statuses[-1] == 429 and set(statuses[:-1]) == {403}
    assert post("198.51.100.7") == 403  # another client through the same proxy
