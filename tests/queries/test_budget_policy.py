"""The steward's stated row bound (`max_rows`): a public upper bound on the table's size that the
DP engine calibrates float sums with. It is set with the rest of the budget policy (API and portal),
validated and audited; a tighter bound means less noise for later queries, and answers already
released are replayed unchanged."""

from __future__ import annotations

import pytest
from django.test import Client
from django.urls import reverse

from clearinghouse.audit.models import AuditEvent
from clearinghouse.queries.models import LedgerEntry, PrivacyBudget
from tests.factories import api_client

BUDGET = "/api/v1/datasets/org-a/pums/budget"
PREVIEW = "/api/v1/datasets/org-a/pums/queries/preview"
QUERIES = "/api/v1/datasets/org-a/pums/queries"
FLOAT_SUM = {"sql": "SELECT SUM(income) FROM pums", "privacy": {"epsilon": 1.0}}


def _sum_scale(client) -> float:
    response = client.post(PREVIEW, FLOAT_SUM, format="json")
    assert response.status_code == 200, response.json()
    return response.json()["aggregates"][0]["scale"]


def _policy(**overrides) -> dict:
    return {"measure": "pure", "total": 3.0, "per_query_max": 1.5, **overrides}


def test_a_tighter_row_bound_lowers_the_noise_of_a_float_sum(setup):
    world, dataset = setup
    steward, analyst = api_client(world.a.steward), api_client(world.b.analyst)
    assert steward.get(BUDGET).json()["max_rows"] == 10_000_000  # the default, until the steward states one
    loose = _sum_scale(analyst)
    released = analyst.post(QUERIES, FLOAT_SUM, format="json")
    assert released.status_code == 200, released.json()

    response = steward.put(BUDGET, _policy(max_rows=2000), format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["max_rows"] == 2000
    event = AuditEvent.objects.filter(action="budget.set").order_by("-seq").first()
    assert event.extra["max_rows"] == 2000

    tight = _sum_scale(analyst)
    assert tight < loose * 0.97  # 500000 (the income bound) plus far less rounding slack than at 10^7 rows
    # The answer released before the change is replayed as it was, at no new cost.
    again = analyst.post(QUERIES, FLOAT_SUM, format="json").json()
    assert again["replayed"] is True and again["result"] == released.json()["result"]
    assert LedgerEntry.objects.filter(budget__dataset=dataset).count() == 1
    # A PUT that does not mention the bound keeps it.
    assert steward.put(BUDGET, _policy(), format="json").json()["max_rows"] == 2000


@pytest.mark.parametrize("value", [0, -5, 1.5, "many", True, 2**32])
def test_row_bound_must_be_a_sane_positive_whole_number(world, value):
    steward = api_client(world.a.steward)
    response = steward.put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=value), format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["code"] in {"invalid_budget", "invalid"} and response.json()["detail"]
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).max_rows == 10_000_000


def test_row_bound_below_a_ready_versions_rows_is_refused(world):
    """The survey's ready version has 2 rows: a bound of 1 would be false, and every release would
    fail after its debit."""
    steward = api_client(world.a.steward)
    before = AuditEvent.objects.count()
    response = steward.put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=1), format="json")
    assert response.status_code == 409 and response.json()["code"] == "max_rows_below_data"
    assert "2" not in response.json()["detail"]  # the message states the rule, not the count
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).max_rows == 10_000_000
    assert AuditEvent.objects.count() == before
    assert (
        steward.put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=2), format="json").status_code
        == 200
    )


def test_only_the_owner_states_the_bound_and_grantees_do_not_see_it(world):
    assert (
        api_client(world.b.admin)
        .put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=50), format="json")
        .status_code
        == 404
    )
    assert (
        api_client(world.operator)
        .put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=50), format="json")
        .status_code
        == 403
    )
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).max_rows == 10_000_000


def test_portal_budget_page_sets_the_policy_with_its_row_bound(world):
    url = reverse("portal:budget_dashboard", args=["org-a", "survey"])
    steward = Client()
    steward.force_login(world.a.steward)
    page = steward.get(url).content.decode()
    assert "stated, not measured" in page and 'name="max_rows"' in page
    response = steward.post(
        url,
        {
            "measure": "pure",
            "total": "4",
            "delta_total": "0",
            "per_query_max": "",
            "per_analyst_cap": "",
            "max_rows": "5000",
        },
        follow=True,
    )
    assert response.status_code == 200
    budget = PrivacyBudget.objects.get(dataset=world.a.dataset)
    assert (budget.total, budget.max_rows, budget.per_query_max) == (4.0, 5000, None)
    assert "5000" in response.content.decode()
    refused = steward.post(url, {"measure": "pure", "total": "4", "max_rows": "0"}, follow=True)
    assert "max_rows" in refused.content.decode()
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).max_rows == 5000
    # Operators see the policy but have no form; grantees do not reach the page.
    operator = Client()
    operator.force_login(world.operator)
    assert 'name="max_rows"' not in operator.get(url).content.decode()
    grantee = Client()
    grantee.force_login(world.b.admin)
    assert grantee.get(url).status_code == 404
    assert grantee.post(url, {"measure": "pure", "total": "1", "max_rows": "7"}).status_code == 404


def test_portal_owner_sets_a_first_budget_where_there_was_none(world):
    from clearinghouse.datasets.services import dataset_register

    dataset = dataset_register(
        actor=world.a.steward,
        organisation=world.a.organisation,
        name="Fresh",
        slug="fresh",
        schema={"columns": [{"name": "x", "type": "float", "lower": 0, "upper": 1}]},
    )
    url = reverse("portal:budget_dashboard", args=["org-a", "fresh"])
    steward = Client()
    steward.force_login(world.a.steward)
    page = steward.get(url)
    assert page.status_code == 200 and "no privacy budget yet" in page.content.decode()
    response = steward.post(url, {"measure": "zcdp", "total": "0.5", "max_rows": "1000000"}, follow=True)
    assert response.status_code == 200 and "1000000" in response.content.decode()
    budget = PrivacyBudget.objects.get(dataset=dataset)
    assert (budget.measure, budget.total, budget.max_rows) == ("zcdp", 0.5, 1_000_000)
    operator = Client()
    operator.force_login(world.operator)
    assert operator.get(reverse("portal:budget_dashboard", args=["org-b", "survey"])).status_code == 200


def test_row_bound_cannot_change_under_a_paid_query_being_released(world):
    """A query debited under one bound is released under it: while one is in flight the bound stays
    (the rest of the policy may change)."""
    from clearinghouse.queries.models import Query

    submitted = api_client(world.a.analyst).post(
        "/api/v1/datasets/org-a/survey/queries?wait=0",
        {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.5}},
        format="json",
    )
    assert submitted.status_code == 202, submitted.json()
    query = Query.objects.get(pk=submitted.json()["id"])
    steward = api_client(world.a.steward)
    assert (
        steward.put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=500), format="json").status_code
        == 200
    )
    Query.objects.filter(pk=query.pk).update(
        status="running"
    )  # a dp worker has debited it and is releasing it
    refused = steward.put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=400), format="json")
    assert refused.status_code == 409 and refused.json()["code"] == "queries_in_flight"
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).max_rows == 500
    assert (
        steward.put(
            "/api/v1/datasets/org-a/survey/budget", _policy(total=4.0, max_rows=500), format="json"
        ).status_code
        == 200
    )
    Query.objects.filter(pk=query.pk).update(status="released")
    assert (
        steward.put("/api/v1/datasets/org-a/survey/budget", _policy(max_rows=400), format="json").json()[
            "max_rows"
        ]
        == 400
    )
