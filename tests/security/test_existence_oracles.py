"""References to datasets by name must not confirm that another organisation's dataset exists:
naming one that exists but is not yours to use and naming one that does not exist get the same
answer (status, code and detail)."""

from __future__ import annotations

from django.test import Client
from django.urls import reverse
from django.utils.html import escape

from federation.models import JobParticipant, ParticipantStatus
from tests.factories import api_client

# org-a/survey exists (B has no grant on it); the others do not exist.
REFS = ["org-a/survey", "org-a/no-such-dataset", "no-such-org/survey", "not-a-reference"]


def _answer(response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["code"], body["detail"]


def _job_inviting_b(world) -> dict:
    response = api_client(world.operator).post(
        "/api/v1/federated-jobs",
        {
            "name": "Oracle",
            "text_column": "SMS",
            "label_column": "Label",
            "labels": ["ham", "spam"],
            "participants": [{"organisation": "org-a"}, {"organisation": "org-b"}],
            "min_clients": 2,
        },
        format="json",
    )
    assert response.status_code == 201, response.json()
    return response.json()


def test_training_participation_answers_alike_for_a_foreign_dataset_and_a_missing_one(world):
    job = _job_inviting_b(world)
    admin_b = api_client(world.b.admin)
    answers = {
        ref: _answer(
            admin_b.post(f"{job['url']}/participation", {"decision": "accept", "dataset": ref}, format="json")
        )
        for ref in REFS
    }
    assert len(set(answers.values())) == 1, answers
    assert answers["org-a/survey"][:2] == (403, "training_grant_required")
    participant = JobParticipant.objects.get(job_id=job["id"], organisation=world.b.organisation)
    assert participant.status == ParticipantStatus.INVITED and participant.dataset is None
    # In the portal too: the same message for both.
    portal = Client()
    portal.force_login(world.b.admin)
    url = reverse("portal:federated_job_participation", args=[job["id"]])
    pages = [portal.post(url, {"decision": "accept", "dataset": ref}) for ref in REFS[:2]]
    assert {p.status_code for p in pages} == {403}
    detail = escape(answers["org-a/survey"][2])
    assert all(detail in p.content.decode() for p in pages)


def test_operator_creating_a_job_gets_the_same_answer_for_both(world):
    operator = api_client(world.operator)
    answers = set()
    for ref in REFS:
        response = operator.post(
            "/api/v1/federated-jobs",
            {
                "name": "Oracle",
                "text_column": "SMS",
                "label_column": "Label",
                "labels": ["ham", "spam"],
                "participants": [{"organisation": "org-b", "dataset": ref}, {"organisation": "org-a"}],
            },
            format="json",
        )
        answers.add(_answer(response))
    assert len(answers) == 1, answers


def test_a_granted_dataset_is_accepted_and_the_owners_own_needs_no_grant(world):
    from clearinghouse.datasets.services import dataset_grant_create

    job = _job_inviting_b(world)
    dataset_grant_create(
        actor=world.a.steward, dataset=world.a.dataset, organisation=world.b.organisation, purpose="training"
    )
    accepted = api_client(world.b.admin).post(
        f"{job['url']}/participation", {"decision": "accept", "dataset": "org-a/survey"}, format="json"
    )
    assert accepted.status_code == 200, accepted.json()
    own = api_client(world.a.admin).post(
        f"{job['url']}/participation", {"decision": "accept", "dataset": "org-a/survey"}, format="json"
    )
    assert own.status_code == 200, own.json()


def test_dataset_references_elsewhere_answer_alike(world):
    """Datasets, versions, grants, budgets, allocations and queries of another organisation named
    by slug or id answer exactly as missing ones do."""
    outsider = api_client(world.b.admin)
    pairs = [
        ("get", "/api/v1/datasets/org-a/survey", "/api/v1/datasets/org-a/nothing", None),
        (
            "get",
            "/api/v1/datasets/org-a/survey/versions/1",
            "/api/v1/datasets/org-a/nothing/versions/1",
            None,
        ),
        ("get", "/api/v1/datasets/org-a/survey/budget", "/api/v1/datasets/org-a/nothing/budget", None),
        (
            "put",
            "/api/v1/datasets/org-a/survey/budget/allocations/org-b",
            "/api/v1/datasets/org-a/nothing/budget/allocations/org-b",
            {"amount": 1.0},
        ),
        (
            "post",
            "/api/v1/datasets/org-a/survey/grants",
            "/api/v1/datasets/org-a/nothing/grants",
            {"organisation": "org-b", "purpose": "query"},
        ),
        (
            "post",
            "/api/v1/datasets/org-a/survey/queries",
            "/api/v1/datasets/org-a/nothing/queries",
            {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 1.0}},
        ),
        (
            "post",
            f"/api/v1/dataset-grants/{world.a.grant_id}/revoke",
            "/api/v1/dataset-grants/999999/revoke",
            None,
        ),
    ]
    for method, existing, missing, data in pairs:
        call = getattr(outsider, method)
        kwargs = {"data": data, "format": "json"} if data else {}
        assert _answer(call(existing, **kwargs)) == _answer(call(missing, **kwargs)), existing
