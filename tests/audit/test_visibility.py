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
    response = client.patch(
        "/api/v1/organisations/org-a",
        {"contact_email": "new@org-a.example.org"},
        format="json",
        HTTP_X_REQUEST_ID="req-0123456789",
        REMOTE_ADDR="203.0.113.7",
    )
    assert response.status_code == 200 and response["X-Request-ID"] == "req-0123456789"
    event = AuditEvent.objects.order_by("-seq").first()
    assert (event.action, event.request_id, event.ip) == (
        "organisation.updated",
        "req-0123456789",
        "203.0.113.7",
    )
    assert event.actor == world.a.admin and event.extra == {"fields": ["contact_email"]}


def test_malformed_request_id_is_replaced(world):
    response = api_client(world.a.admin).get("/api/v1/me", HTTP_X_REQUEST_ID="bad id\nwith newline")
    assert response["X-Request-ID"] != "bad id\nwith newline" and len(response["X-Request-ID"]) == 32


def test_values_derived_from_data_reach_only_the_owner_organisation(world, media_root):
    """A version's row and violation counts and its upload size are in the chain (hashed), but only the
    owner's admins read them: operators and other organisations never do (docs/data-exposure.md)."""
    from tests.factories import make_dataset

    make_dataset(steward=world.a.steward, slug="counted", csv=b"age,group\n30,a\n41,b\n52,a\n")
    for action, derived in (("dataset_version.ready", "rows"), ("dataset_version.uploaded", "bytes")):
        stored = (
            AuditEvent.objects.filter(action=action, organisation=world.a.organisation)
            .order_by("-seq")
            .first()
        )
        assert derived in stored.extra["owner_only"]
        url = f"/api/v1/audit-events?action={action}&limit=500"
        owner = [e for e in api_client(world.a.admin).get(url).json()["results"] if e["seq"] == stored.seq]
        assert owner and owner[0]["extra"]["owner_only"][derived] == stored.extra["owner_only"][derived]
        operator = [
            e for e in api_client(world.operator).get(url).json()["results"] if e["seq"] == stored.seq
        ]
        assert (
            operator and "owner_only" not in operator[0]["extra"] and derived not in str(operator[0]["extra"])
        )
