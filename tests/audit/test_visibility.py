from clearinghouse.audit.models import AuditEvent
from tests.factories import api_client


def test_org_admin_sees_only_its_organisation_events(world):
    events = api_client(world.a.admin).get("/api/v1/audit-events?limit=500").json()["results"]
    assert events and {event["organisation"] for event in events} == {"org-a"}
    all_events = api_client(world.operator).get("/api/v1/audit-events?limit=500").json()
    assert {"org-a", "org-b"} <= {event["organisation"] for event in all_events["results"]}
    assert all_events["count"] == AuditEvent.objects.count()


def test_event_carries_request_id_and_address_of_the_request(world):
    client = api_client(world.a.admin)
    response = client.patch("/api/v1/organisations/org-a", {"contact_email": "new@org-a.example.org"},
                            format="json", HTTP_X_REQUEST_ID="req-0123456789", REMOTE_ADDR="203.0.113.7")
    assert response.status_code == 200 and response["X-Request-ID"] == "req-0123456789"
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.request_id, event.ip) == ("organisation.updated", "req-0123456789", "203.0.113.7")
    assert event.actor == world.a.admin and event.extra == {"fields": ["contact_email"]}


def test_malformed_request_id_is_replaced(world):
    response = api_client(world.a.admin).get("/api/v1/me", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert response["X-Request-ID"] != "bad id\nwith newline" and len(response["X-Request-ID"]) == 32
