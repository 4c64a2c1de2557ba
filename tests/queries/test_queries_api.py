"""DP queries end to end: the API validates and records, a real Celery worker on the `dp` queue
prices the query with OpenDP's privacy map, debits the ledger, decrypts and releases."""

from __future__ import annotations

import pytest

from clearinghouse.datasets.services import agreement_accept
from clearinghouse.queries.models import LedgerEntry, PrivacyBudget, Query
from tests.factories import api_client

URL = "/api/v1/datasets/org-a/pums/queries"
SQL = "SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ"


def spent(dataset) -> float:
    return PrivacyBudget.objects.get(dataset=dataset).spent


def test_release_preview_replay_and_spending(setup):
    world, dataset = setup
    analyst = api_client(world.b.analyst)
    body = {"sql": SQL, "privacy": {"epsilon": 0.5}}
    from clearinghouse.datasets.services import agreement_publish

    agreement_publish(actor=world.a.steward, dataset=dataset, text="Research only.")
    refused = analyst.post(URL, body, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "agreement_required"
    assert not Query.objects.exists()
    agreement_accept(actor=world.b.analyst, dataset=dataset, version=1)

    preview = analyst.post(URL + "/preview", body, format="json")
    assert preview.status_code == 200, preview.json()
    preview = preview.json()
    assert preview["cost"]["epsilon"] == pytest.approx(0.5) and preview["cost"]["epsilon"] <= 0.5
    assert {a["mechanism"] for a in preview["aggregates"]} and preview["public_groups"] == 16
    assert spent(dataset) == 0.0  # previews are free

    released = analyst.post(URL, body, format="json")
    assert released.status_code == 200, released.json()
    release = released.json()
    assert release["status"] == "released" and release["replayed"] is False
    rows = release["result"]["rows"]
    assert len(rows) == 16 and {r["educ"] for r in rows} == {str(i) for i in range(1, 17)}  # absent keys too
    assert release["cost"]["amount"] == pytest.approx(preview["cost"]["epsilon"])
    assert spent(dataset) == pytest.approx(release["cost"]["amount"])
    assert "age" not in str(release["result"]["columns"])  # aggregates only, never rows

    again = analyst.post(URL, body, format="json").json()
    assert again["replayed"] is True and again["result"] == release["result"]
    assert spent(dataset) == pytest.approx(release["cost"]["amount"])  # replay spends nothing
    assert LedgerEntry.objects.filter(budget__dataset=dataset).count() == 1

    other_epsilon = analyst.post(URL, {"sql": SQL, "privacy": {"epsilon": 0.25}}, format="json").json()
    assert other_epsilon["replayed"] is False and other_epsilon["query_hash"] != release["query_hash"]
    assert spent(dataset) == pytest.approx(0.75)

    # The owner sees spending per organisation; the analyst sees what is left to them.
    owner_view = api_client(world.a.steward).get("/api/v1/datasets/org-a/pums/budget").json()
    assert owner_view["allocations"][0] == {
        "organisation": "org-b",
        "amount": 2.0,
        "spent": pytest.approx(0.75),
        "left": pytest.approx(1.25),
        "delta_amount": 0.0,
        "delta_spent": 0.0,
    }
    left = analyst.get("/api/v1/datasets/org-a/pums/budget").json()["left"]
    assert left["organisation"] == pytest.approx(1.25)

    over = analyst.post(URL, {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 1.4}}, format="json")
    assert over.status_code == 409 and over.json()["code"] == "budget_exceeded"
    assert "1.25" in over.json()["detail"]
    assert spent(dataset) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "body,status,code",
    [
        (
            {"spec": {"aggregates": [{"type": "mean", "column": "salary"}], "privacy": {"epsilon": 1}}},
            400,
            "unknown_column",
        ),
        (
            {"spec": {"aggregates": [{"type": "mean", "column": "race"}], "privacy": {"epsilon": 1}}},
            400,
            "unsupported_column_type",
        ),
        ({"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0}}, 400, "invalid_privacy_loss"),
        ({"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": -1}}, 400, "invalid_privacy_loss"),
        ({"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": "NaN"}}, 400, "invalid_privacy_loss"),
        ({"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": "inf"}}, 400, "invalid_privacy_loss"),
        ({"sql": "SELECT * FROM pums", "privacy": {"epsilon": 1}}, 400, "unsupported_sql"),
        (
            {"sql": "SELECT COUNT(*) FROM pums JOIN x ON 1=1", "privacy": {"epsilon": 1}},
            400,
            "unsupported_sql",
        ),
        (
            {"sql": "SELECT COUNT(*) FROM pums; DROP TABLE queries_query", "privacy": {"epsilon": 1}},
            400,
            "unsupported_sql",
        ),
        (
            {"sql": "SELECT COUNT(*) FROM pums WHERE educ = '1' OR '1'='1'", "privacy": {"epsilon": 1}},
            400,
            None,
        ),
        (
            {"sql": "SELECT race, COUNT(*) FROM pums GROUP BY race", "privacy": {"epsilon": 1}},
            400,
            "group_by_requires_public_keys",
        ),
        ({"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 1.49}}, 200, None),
        ({"sql": "SELECT AVG(income) FROM pums", "privacy": {"epsilon": 1.5001}}, 409, "above_per_query_max"),
    ],
)
def test_bad_queries_are_refused_and_spend_nothing(setup, body, status, code):
    world, dataset = setup
    agreement_ok = world.b.analyst  # no agreement published: grantees may query
    response = api_client(agreement_ok).post(URL, body, format="json")
    assert response.status_code == status, response.json()
    if status != 200:
        assert code is None or response.json()["code"] == code, response.json()
        assert response.json()["detail"]
        assert spent(dataset) == 0.0
        assert not Query.objects.filter(status="released").exists()


def test_foreign_and_ungranted_datasets_answer_404(setup):
    world, _dataset = setup
    # The owner's analyst gets past authorization (and is then told its organisation has no allocation).
    owner = api_client(world.a.analyst).post(
        URL, {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.1}}, format="json"
    )
    assert owner.status_code == 409 and "allocation has ε=0 left" in owner.json()["detail"]
    from clearinghouse.organisations.models import Membership

    org_c_admin = Membership.objects.get(organisation__slug="org-c").user
    response = api_client(org_c_admin).post(
        URL, {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.1}}, format="json"
    )
    assert response.status_code == 404 and response.json()["code"] == "not_found"


def test_several_queries_in_one_request_are_priced_and_answered_each(setup):
    world, dataset = setup
    analyst = api_client(world.b.analyst)
    body = {
        "queries": [
            {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.2}},
            {"sql": "SELECT AVG(income) FROM pums", "privacy": {"epsilon": 0.2}},
            {"sql": "SELECT educ, COUNT(*) FROM pums GROUP BY educ", "privacy": {"epsilon": 0.2}},
        ]
    }
    response = analyst.post(URL, body, format="json")
    assert response.status_code == 200, response.json()
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["released"] * 3
    assert [len(r["result"]["rows"]) for r in results] == [1, 1, 16]
    assert spent(dataset) == pytest.approx(0.6)
    assert LedgerEntry.objects.filter(budget__dataset=dataset).count() == 3
    again = analyst.post(URL, body, format="json").json()["results"]
    assert all(r["replayed"] for r in again) and spent(dataset) == pytest.approx(0.6)
    bad = analyst.post(
        URL,
        {"queries": [body["queries"][0], {"sql": "SELECT * FROM pums", "privacy": {"epsilon": 1}}]},
        format="json",
    )
    assert bad.status_code == 400 and bad.json()["code"] == "unsupported_sql"
    assert bad.json()["detail"].startswith("queries[1]:")
