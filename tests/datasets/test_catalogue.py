"""The catalogue (datasets their owners list for the consortium) and access requests (ask → the
owner approves, which makes the grant, or declines; the requester may withdraw), through the API and
the portal, on the real services, database and audit chain."""

from __future__ import annotations

import json

import pytest
from django.db import IntegrityError, transaction
from django.test import Client

from clearinghouse.accounts.models import User
from clearinghouse.audit.models import AuditEvent
from clearinghouse.datasets.models import AccessRequest, Dataset, DatasetGrant
from tests.factories import api_client

# eager_dp: the DP preview runs in-process (no worker here), as in the authorization matrix.
from tests.security.test_authorization_matrix import eager_dp  # noqa: F401

CATALOGUE = "/api/v1/catalogue"
SURVEY_A = "/api/v1/datasets/org-a/survey"
MINE = "/api/v1/access-requests"
SQL = {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.1}}


def grantee_admin() -> User:
    return User.objects.get(username="admin_org-c")  # org C holds query grants on both datasets


def events(action: str, target) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action, target_id=str(target.pk)))


def list_dataset(steward, organisation: str = "org-a", slug: str = "survey", listed: bool = True):
    response = api_client(steward).put(
        f"/api/v1/datasets/{organisation}/{slug}/listing", {"listed": listed}, format="json"
    )
    assert response.status_code == 200, response.json()
    return response.json()


def entries(user) -> dict[str, dict]:
    response = api_client(user).get(CATALOGUE)
    assert response.status_code == 200, response.json()
    return {f"{e['organisation']}/{e['slug']}": e for e in response.json()["results"]}


def proposed_dataset(world) -> Dataset:
    """A dataset whose schema is only a proposal read from its data (distinctive bounds): as ingestion
    leaves one that had no declared schema."""
    return Dataset.objects.create(
        organisation=world.a.organisation,
        name="Proposed",
        slug="proposed",
        schema={"columns": [{"name": "income", "type": "integer", "lower": 31337, "upper": 987654}]},
        schema_confirmed=False,
    )


# --- Listing ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_listing_rules_and_what_the_catalogue_shows(world):
    assert entries(world.b.analyst) == {}  # nothing is listed by default

    # Only the owner's admins and stewards list; analysts are forbidden; other organisations see nothing.
    forbidden = api_client(world.a.analyst).put(f"{SURVEY_A}/listing", {"listed": True}, format="json")
    assert forbidden.status_code == 403
    hidden = api_client(world.b.admin).put(f"{SURVEY_A}/listing", {"listed": True}, format="json")
    assert hidden.status_code == 404 and hidden.json()["code"] == "not_found"
    body = list_dataset(world.a.steward)
    assert body == {"organisation": "org-a", "slug": "survey", "listed": True}
    dataset = Dataset.objects.get(pk=world.a.dataset.pk)
    assert dataset.listed
    assert [e.actor_label for e in events("dataset.listed", dataset)] == ["steward_org-a"]
    list_dataset(world.a.steward)  # already listed: nothing changes, nothing is recorded
    assert len(events("dataset.listed", dataset)) == 1

    # Another organisation's analyst sees the public facts, and nothing derived from the rows.
    entry = entries(world.b.analyst)["org-a/survey"]
    assert entry["organisation_name"] == "Org ORG-A" and entry["name"] == "Survey"
    assert [c["name"] for c in entry["schema"]["columns"]] == ["age", "group"]
    age, group = entry["schema"]["columns"]
    assert (age["type"], age["lower"], age["upper"]) == ("integer", 0, 100)
    assert group["categories"] == ["a", "b"]
    assert entry["budget"] == {"measure": "pure", "total": 10.0, "per_query_max": None}
    assert entry["yours"] is False and entry["access"] == {"granted": [], "pending": []}
    # Every key is one a non-owner may read (docs/data-exposure.md): the steward's public facts.
    assert set(entry) == {
        "organisation",
        "organisation_name",
        "slug",
        "name",
        "description",
        "schema",
        "budget",
        "yours",
        "access",
    }
    text = json.dumps(entry)
    for private in ("spent", "row_count", "versions", "allocations", "quality"):
        assert private not in text
    # The grantee sees its grant; the owner sees its own dataset marked as such.
    assert entries(grantee_admin())["org-a/survey"]["access"] == {"granted": ["query"], "pending": []}
    assert entries(world.a.analyst)["org-a/survey"]["yours"] is True
    assert "org-a/survey" in entries(world.operator)

    # Unlisting takes it out (grants stay).
    list_dataset(world.a.steward, listed=False)
    assert entries(world.b.analyst) == {}
    assert len(events("dataset.unlisted", dataset)) == 1
    assert DatasetGrant.objects.filter(dataset=dataset, revoked_at__isnull=True).count() == 1


@pytest.mark.django_db
def test_a_schema_proposal_is_never_listed_nor_shown(world):
    dataset = proposed_dataset(world)
    response = api_client(world.a.steward).put(
        "/api/v1/datasets/org-a/proposed/listing", {"listed": True}, format="json"
    )
    assert response.status_code == 409 and response.json()["code"] == "schema_not_confirmed"
    assert not Dataset.objects.get(pk=dataset.pk).listed
    assert events("dataset.listed", dataset) == []
    # The invariant is the database's too.
    with pytest.raises(IntegrityError), transaction.atomic():
        Dataset.objects.filter(pk=dataset.pk).update(listed=True)
    list_dataset(world.a.steward)
    for user in (world.b.analyst, world.a.steward, world.operator):
        body = api_client(user).get(CATALOGUE).content.decode()
        assert "proposed" not in body and "31337" not in body and "987654" not in body
    portal = Client()
    portal.force_login(world.b.analyst)
    page = portal.get("/catalogue/").content.decode()
    assert "Survey" in page and "31337" not in page and "Proposed" not in page
    # Nor can anyone ask for it: it is not in the catalogue, and other organisations do not see it.
    refused = api_client(world.b.analyst).post(
        "/api/v1/datasets/org-a/proposed/access-requests", {"purpose": "query", "reason": "x"}, format="json"
    )
    assert refused.status_code == 404


# --- Access requests through the API -----------------------------------------------------------------


@pytest.mark.django_db
def test_request_approve_makes_the_grant_and_the_requester_can_preview(world, eager_dp):  # noqa: F811
    analyst_b = api_client(world.b.analyst)
    # Before: B has no access to A's dataset at all.
    assert analyst_b.post(f"{SURVEY_A}/queries/preview", SQL, format="json").status_code == 404
    # Not listed yet: B cannot even address it.
    early = analyst_b.post(f"{SURVEY_A}/access-requests", {"purpose": "query", "reason": "x"}, format="json")
    assert early.status_code == 404
    list_dataset(world.a.steward)

    created = analyst_b.post(
        f"{SURVEY_A}/access-requests",
        {"purpose": "query", "reason": "Regional health study,\nsecond wave."},
        format="json",
    )
    assert created.status_code == 201, created.json()
    body = created.json()
    assert body["status"] == "pending" and body["organisation"] == "org-b" and body["purpose"] == "query"
    assert (
        body["reason"] == "Regional health study,\nsecond wave." and body["requested_by"] == "analyst_org-b"
    )
    access_request = AccessRequest.objects.get(pk=body["id"])
    [event] = events("access_request.created", access_request)
    assert event.organisation.slug == "org-b" and event.extra == {
        "dataset": "org-a/survey",
        "purpose": "query",
    }
    assert entries(world.b.analyst)["org-a/survey"]["access"] == {"granted": [], "pending": ["query"]}

    # Refusals, each with its code, and nothing written.
    def refused(client, data, status, code, url=f"{SURVEY_A}/access-requests"):
        response = client.post(url, data, format="json")
        assert response.status_code == status, response.json()
        assert response.json()["code"] == code, response.json()

    refused(analyst_b, {"purpose": "query", "reason": "again"}, 409, "duplicate_request")
    refused(analyst_b, {"purpose": "admin", "reason": "x"}, 400, "invalid_purpose")
    refused(analyst_b, {"purpose": "training", "reason": "  "}, 400, "reason_required")
    refused(analyst_b, {"purpose": "training", "reason": "x" * 2001}, 400, "text_too_long")
    refused(analyst_b, {"purpose": "training", "reason": "bad \u202e text"}, 400, "invalid_name")
    refused(api_client(world.a.analyst), {"purpose": "query", "reason": "mine"}, 400, "own_dataset")
    refused(api_client(grantee_admin()), {"purpose": "query", "reason": "more"}, 409, "already_granted")
    refused(api_client(world.operator), {"purpose": "query", "reason": "ops"}, 403, "operator_not_member")
    assert AccessRequest.objects.count() == 1

    # Who sees it: both organisations, in their lists; a third organisation gets 404 for it.
    outgoing = analyst_b.get(MINE, {"direction": "outgoing"}).json()["results"]
    assert [r["id"] for r in outgoing] == [access_request.pk]
    incoming = api_client(world.a.admin).get(MINE, {"direction": "incoming", "status": "pending"}).json()
    assert [r["id"] for r in incoming["results"]] == [access_request.pk]
    assert api_client(world.a.analyst).get(f"{SURVEY_A}/access-requests").json()["count"] == 1
    assert api_client(grantee_admin()).get(MINE).json()["count"] == 0
    assert api_client(grantee_admin()).get(f"{SURVEY_A}/access-requests").json()["count"] == 0
    decide = f"{MINE}/{access_request.pk}/decide"
    for outsider in (grantee_admin(), world.a.joiner):
        response = api_client(outsider).post(decide, {"decision": "approve"}, format="json")
        assert response.status_code == 404 and response.json()["code"] == "not_found"
        assert api_client(outsider).post(f"{MINE}/{access_request.pk}/withdraw").status_code == 404
    assert api_client(world.b.admin).get(MINE, {"direction": "sideways"}).status_code == 400

    # Deciding is the owner's admins' and stewards': not its analysts, not the requester, not operators.
    assert api_client(world.a.analyst).post(decide, {"decision": "approve"}, format="json").status_code == 403
    not_owner = api_client(world.b.admin).post(decide, {"decision": "approve"}, format="json")
    assert not_owner.status_code == 403 and not_owner.json()["code"] == "not_owner"
    assert api_client(world.operator).post(decide, {"decision": "approve"}, format="json").status_code == 403
    bad = api_client(world.a.steward).post(decide, {"decision": "maybe"}, format="json")
    assert bad.status_code == 400
    assert (
        DatasetGrant.objects.filter(dataset=world.a.dataset, organisation=world.b.organisation).count() == 0
    )

    approved = api_client(world.a.steward).post(
        decide, {"decision": "approve", "note": "Granted for the study."}, format="json"
    )
    assert approved.status_code == 200, approved.json()
    body = approved.json()
    assert body["status"] == "approved" and body["decision_note"] == "Granted for the study."
    assert body["decided_by"] == "steward_org-a" and body["decided_at"]
    grant = DatasetGrant.objects.get(
        dataset=world.a.dataset, organisation=world.b.organisation, purpose="query", revoked_at__isnull=True
    )
    assert body["grant_id"] == grant.pk
    [decided] = events("access_request.approved", access_request)
    assert decided.organisation.slug == "org-a" and decided.extra["grant"] == grant.pk
    [granted] = events("dataset_grant.created", grant)
    assert granted.seq == decided.seq - 1  # one transaction: the grant, then the decision
    again = api_client(world.a.steward).post(decide, {"decision": "decline"}, format="json")
    assert again.status_code == 409 and again.json()["code"] == "access_request_decided"
    refused(analyst_b, {"purpose": "query", "reason": "again"}, 409, "already_granted")
    assert entries(world.b.analyst)["org-a/survey"]["access"] == {"granted": ["query"], "pending": []}

    # The requester now queries like any grantee: accept the agreement, then preview.
    assert analyst_b.post(f"{SURVEY_A}/queries/preview", SQL, format="json").status_code == 403
    accept = analyst_b.post(f"{SURVEY_A}/agreement/accept", {"version": 1}, format="json")
    assert accept.status_code == 201
    preview = analyst_b.post(f"{SURVEY_A}/queries/preview", SQL, format="json")
    assert preview.status_code == 200, preview.json()
    assert preview.json()["version"] == 1


@pytest.mark.django_db
def test_decline_withdraw_and_asking_again(world):
    list_dataset(world.a.steward)
    analyst_b = api_client(world.b.analyst)

    def ask() -> int:
        response = analyst_b.post(
            f"{SURVEY_A}/access-requests",
            {"purpose": "training", "reason": "Federated model."},
            format="json",
        )
        assert response.status_code == 201, response.json()
        return response.json()["id"]

    first = ask()
    declined = api_client(world.a.admin).post(
        f"{MINE}/{first}/decide", {"decision": "decline", "note": "Not for training."}, format="json"
    )
    assert declined.status_code == 200 and declined.json()["status"] == "declined"
    assert declined.json()["grant_id"] is None
    assert not DatasetGrant.objects.filter(
        dataset=world.a.dataset, organisation=world.b.organisation
    ).exists()
    assert len(events("access_request.declined", AccessRequest(pk=first))) == 1
    mine = analyst_b.get(MINE).json()["results"]
    assert [(r["id"], r["status"], r["decision_note"]) for r in mine] == [
        (first, "declined", "Not for training.")
    ]

    second = ask()  # a decided request does not block a new one
    owner_withdraw = api_client(world.a.admin).post(f"{MINE}/{second}/withdraw")
    assert owner_withdraw.status_code == 403 and owner_withdraw.json()["code"] == "not_requester"
    withdrawn = api_client(world.b.admin).post(f"{MINE}/{second}/withdraw")  # any member of the requester
    assert withdrawn.status_code == 200 and withdrawn.json()["status"] == "withdrawn"
    [event] = events("access_request.withdrawn", AccessRequest(pk=second))
    assert event.organisation.slug == "org-b" and event.actor_label == "admin_org-b"
    assert analyst_b.post(f"{MINE}/{second}/withdraw").status_code == 409
    late = api_client(world.a.admin).post(f"{MINE}/{second}/decide", {"decision": "approve"}, format="json")
    assert late.status_code == 409 and late.json()["code"] == "access_request_decided"
    assert not DatasetGrant.objects.filter(
        dataset=world.a.dataset, organisation=world.b.organisation
    ).exists()
    statuses = [
        r["status"] for r in api_client(world.a.admin).get(MINE, {"direction": "incoming"}).json()["results"]
    ]
    assert statuses == ["withdrawn", "declined"]


@pytest.mark.django_db
def test_one_pending_request_is_the_databases_rule_too(world):
    AccessRequest.objects.create(
        dataset=world.a.dataset, organisation=world.b.organisation, purpose="query", reason="one"
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        AccessRequest.objects.create(
            dataset=world.a.dataset, organisation=world.b.organisation, purpose="query", reason="two"
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        AccessRequest.objects.create(
            dataset=world.a.dataset, organisation=world.b.organisation, purpose="training", reason=""
        )


# --- The portal ----------------------------------------------------------------------------------------


def portal_client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.django_db
def test_portal_catalogue_request_and_decisions(world):
    steward_a, analyst_b = portal_client(world.a.steward), portal_client(world.b.analyst)
    # The owner lists its dataset from the access-requests page (a proposal cannot be listed).
    proposed_dataset(world)
    page = steward_a.get("/access-requests/").content.decode()
    assert "List in the catalogue" in page and "confirm the schema to list it" in page
    response = steward_a.post("/datasets/org-a/survey/listing/", {"listed": "true"})
    assert response.status_code == 302 and Dataset.objects.get(pk=world.a.dataset.pk).listed
    refused = steward_a.post("/datasets/org-a/proposed/listing/", {"listed": "true"}, follow=True)
    assert "confirmed schema" in refused.content.decode()
    assert not Dataset.objects.get(slug="proposed").listed

    # The requester sees the offer with its public facts and a form; the nav links to it.
    page = analyst_b.get("/catalogue/").content.decode()
    assert 'href="/catalogue/"' in page
    assert "Survey" in page and "Org ORG-A" in page and "<code>age</code>" in page
    assert "at most" not in page.split("Privacy budget:")[1].split("</p>")[0]  # no per-query maximum set
    assert "pure, 10 in all" in page
    assert (
        'name="purpose"' in page and "Differentially private queries" in page and "Federated training" in page
    )
    response = analyst_b.post(
        "/datasets/org-a/survey/access-requests/", {"purpose": "query", "reason": "Health study"}, follow=True
    )
    assert response.status_code == 200 and "requested" in response.content.decode()
    access_request = AccessRequest.objects.get(organisation=world.b.organisation)
    assert access_request.requested_by == world.b.analyst and access_request.reason == "Health study"
    assert "Differentially private queries: requested" in analyst_b.get("/catalogue/").content.decode()
    duplicate = analyst_b.post(
        "/datasets/org-a/survey/access-requests/", {"purpose": "query", "reason": "again"}, follow=True
    )
    assert "already has a pending request" in duplicate.content.decode()
    empty = analyst_b.post(
        "/datasets/org-a/survey/access-requests/", {"purpose": "training", "reason": ""}, follow=True
    )
    assert "reason is required" in empty.content.decode()
    assert AccessRequest.objects.count() == 1

    # The owner's page lists it with approve/decline; its analysts see it without the buttons.
    page = steward_a.get("/access-requests/").content.decode()
    assert "Health study" in page and f'action="/access-requests/{access_request.pk}/decide/"' in page
    analyst_page = portal_client(world.a.analyst).get("/access-requests/").content.decode()
    assert "Health study" in analyst_page and 'value="approve"' not in analyst_page
    assert (
        portal_client(world.a.analyst)
        .post(f"/access-requests/{access_request.pk}/decide/", {"decision": "approve"})
        .status_code
        == 403
    )
    foreign = portal_client(grantee_admin()).post(
        f"/access-requests/{access_request.pk}/decide/", {"decision": "approve"}
    )
    assert foreign.status_code == 404
    response = steward_a.post(
        f"/access-requests/{access_request.pk}/decide/",
        {"decision": "approve", "note": "Welcome"},
        follow=True,
    )
    assert "approved" in response.content.decode()
    access_request.refresh_from_db()
    assert access_request.status == "approved" and access_request.grant.organisation == world.b.organisation
    history = steward_a.get("/access-requests/").content.decode()
    assert "No pending requests." in history and "Welcome" in history
    outgoing = analyst_b.get("/access-requests/").content.decode()
    assert "Approved" in outgoing and "Welcome" in outgoing
    assert "Differentially private queries</span>" in analyst_b.get("/catalogue/").content.decode()

    # Decline and withdraw through the portal.
    second = analyst_b.post(
        "/datasets/org-a/survey/access-requests/", {"purpose": "training", "reason": "Model"}
    )
    assert second.status_code == 302
    training = AccessRequest.objects.get(purpose="training")
    steward_a.post(f"/access-requests/{training.pk}/decide/", {"decision": "decline", "note": "No"})
    training.refresh_from_db()
    assert training.status == "declined" and training.grant is None
    analyst_b.post("/datasets/org-a/survey/access-requests/", {"purpose": "training", "reason": "Please"})
    retry = AccessRequest.objects.get(purpose="training", status="pending")
    assert steward_a.post(f"/access-requests/{retry.pk}/withdraw/").status_code == 403
    assert analyst_b.post(f"/access-requests/{retry.pk}/withdraw/").status_code == 302
    retry.refresh_from_db()
    assert retry.status == "withdrawn"
    actions = set(
        AuditEvent.objects.filter(action__startswith="access_request.").values_list("action", flat=True)
    )
    assert actions == {
        "access_request.created",
        "access_request.approved",
        "access_request.declined",
        "access_request.withdrawn",
    }

    # Unlisting from the portal.
    assert steward_a.post("/datasets/org-a/survey/listing/", {"listed": "false"}).status_code == 302
    assert 'data-testid="catalogue-org-a-survey"' not in analyst_b.get("/catalogue/").content.decode()
    assert steward_a.post("/datasets/org-a/survey/listing/", {"listed": "maybe"}).status_code == 302
    assert not Dataset.objects.get(pk=world.a.dataset.pk).listed


@pytest.mark.django_db
def test_a_direct_grant_answers_the_pending_request_for_it(world):
    """Granting what an organisation asked for, from the grants form rather than the request, approves
    its pending request (linked to the grant, audited): none stays open to be declined while held."""
    list_dataset(world.a.steward)
    asked = api_client(world.b.analyst).post(
        f"{SURVEY_A}/access-requests",
        {"purpose": "training", "reason": "Fine-tune a classifier"},
        format="json",
    )
    assert asked.status_code == 201, asked.json()
    granted = api_client(world.a.steward).post(
        f"{SURVEY_A}/grants", {"organisation": "org-b", "purpose": "training"}, format="json"
    )
    assert granted.status_code == 201, granted.json()
    request = AccessRequest.objects.get(pk=asked.json()["id"])
    assert request.status == "approved" and request.grant_id == granted.json()["id"]
    assert request.decided_by == world.a.steward
    assert [e.extra["grant"] for e in events("access_request.approved", request)] == [request.grant_id]
    # Approving it now is refused as decided (not a second grant).
    decided = api_client(world.a.steward).post(
        f"/api/v1/access-requests/{request.pk}/decide", {"decision": "approve"}, format="json"
    )
    assert decided.status_code == 409 and decided.json()["code"] == "access_request_decided"
