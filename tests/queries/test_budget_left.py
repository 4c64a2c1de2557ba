"""The owner's budget dashboard after real releases: for every organisation with an allocation,
"left" is exactly the allocation less what it spent, on the portal page (to the digits it shows), on
`GET .../budget` (`api:dataset_budget`) and on each analyst's "My budgets" page; and the dashboard
says who ran what (each analyst's paid releases and their cost).

Queries are released by a real `dp` worker (tests/queries/conftest.py `setup`): OpenDP prices them,
`budget_debit` pays, so the spending is the ledger's own, not numbers written by the test."""

from __future__ import annotations

import re

import pytest
from django.db.models import Sum
from django.test import Client
from django.urls import reverse

from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.organisations.models import Organisation
from clearinghouse.portal.templatetags.numbers import sig
from clearinghouse.queries.ledger import allocation_set
from clearinghouse.queries.models import BudgetAllocation, LedgerEntry, PrivacyBudget
from tests.factories import api_client

URL = "/api/v1/datasets/org-a/pums/queries"
DASHBOARD = reverse("portal:budget_dashboard", args=["org-a", "pums"])
MINE = reverse("portal:my_budgets")


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _cell(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{re.escape(testid)}"[^>]*>([^<]*)<', html)
    assert match, f"no {testid} on the page"
    return match.group(1).strip()


def _release(user, sql: str, epsilon: float) -> dict:
    response = api_client(user).post(URL, {"sql": sql, "privacy": {"epsilon": epsilon}}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "released", body
    return body


def test_left_is_the_allocation_less_the_spending_everywhere_after_real_releases(setup):
    world, dataset = setup
    org_c = Organisation.objects.get(slug="org-c")
    c_admin = org_c.memberships.get().user  # org C's one member: its admin, who may query
    dataset_grant_create(actor=world.a.steward, dataset=dataset, organisation=org_c, purpose="query")
    allocation_set(actor=world.a.steward, dataset=dataset, organisation=org_c, amount=0.9)

    # Org B: two people, three paid releases and a replay (free); org C: one release.
    paid = [
        _release(world.b.analyst, "SELECT COUNT(*) FROM pums", 0.5),
        _release(world.b.analyst, "SELECT AVG(income) FROM pums WHERE age >= 30", 0.25),
        _release(world.b.admin, "SELECT educ, COUNT(*) FROM pums GROUP BY educ", 0.3),
        _release(c_admin, "SELECT SUM(income) FROM pums", 0.2),
    ]
    replay = _release(world.b.analyst, "SELECT COUNT(*) FROM pums", 0.5)
    assert replay["replayed"] is True
    assert LedgerEntry.objects.filter(budget__dataset=dataset).count() == len(paid)

    budget = PrivacyBudget.objects.get(dataset=dataset)
    expected = {}
    for allocation in BudgetAllocation.objects.filter(budget=budget).select_related("organisation"):
        ledger = LedgerEntry.objects.filter(budget=budget, organisation=allocation.organisation)
        spent = ledger.aggregate(s=Sum("amount"))["s"]
        # The allocation's `spent` is the ledger's sum (`budget_debit`, the one writer).
        assert allocation.spent == pytest.approx(spent, rel=1e-12, abs=1e-12)
        expected[allocation.organisation.slug] = (allocation.amount, spent, allocation.amount - spent)
    assert set(expected) == {"org-b", "org-c"}
    assert expected["org-b"][1] == pytest.approx(sum(q["cost"]["amount"] for q in paid[:3]))
    assert expected["org-c"][1] == pytest.approx(paid[3]["cost"]["amount"])
    assert all(left > 0 for _, _, left in expected.values())

    # The owner's dashboard (and an operator's): allocated, spent, left = allocated - spent, as shown.
    for viewer in (world.a.steward, world.operator):
        page = _client(viewer).get(DASHBOARD).content.decode()
        for slug, (amount, spent, left) in expected.items():
            assert _cell(page, f"allocated-{slug}") == sig(amount)
            assert _cell(page, f"spent-{slug}") == sig(spent)
            assert _cell(page, f"left-{slug}") == sig(left)
            shown = float(_cell(page, f"left-{slug}").replace(",", ""))
            assert shown == pytest.approx(left, rel=5e-4)  # 4 significant digits

    # The API: the same three numbers, exactly.
    body = api_client(world.a.steward).get(reverse("api:dataset_budget", args=["org-a", "pums"])).json()
    allocations = {a["organisation"]: a for a in body["allocations"]}
    for slug, (amount, spent, left) in expected.items():
        assert allocations[slug]["amount"] == amount
        assert allocations[slug]["spent"] == pytest.approx(spent, rel=1e-12)
        assert allocations[slug]["left"] == pytest.approx(left, rel=1e-12, abs=1e-12)
        assert allocations[slug]["left"] == pytest.approx(
            allocations[slug]["amount"] - allocations[slug]["spent"], rel=1e-12, abs=1e-12
        )
    assert body["spent"] == pytest.approx(sum(spent for _, spent, _ in expected.values()), rel=1e-12)

    # Each analyst's "My budgets" page agrees with the owner's figures for their organisation.
    for user, slug in ((world.b.analyst, "org-b"), (world.b.admin, "org-b"), (c_admin, "org-c")):
        html = _client(user).get(MINE).content.decode()
        row = html.split('data-testid="budget-org-a-pums"', 1)[1].split("</tr>", 1)[0]
        amount, spent, left = expected[slug]
        assert (_cell(row, "allocated"), _cell(row, "spent"), _cell(row, "left")) == (
            sig(amount),
            sig(spent),
            sig(left),
        )
        mine = api_client(user).get("/api/v1/datasets/org-a/pums/budget").json()["left"]
        assert mine["organisation"] == pytest.approx(left, rel=1e-12, abs=1e-12)

    # Who ran what: per analyst, the paid releases (not the replay) and their cost, then each release.
    page = _client(world.a.steward).get(DASHBOARD).content.decode()
    runs = {
        world.b.analyst.username: paid[:2],
        world.b.admin.username: paid[2:3],
        c_admin.username: paid[3:],
    }
    for username, queries in runs.items():
        assert _cell(page, f"analyst-queries-{username}") == str(len(queries))
        assert _cell(page, f"analyst-spent-{username}") == sig(sum(q["cost"]["amount"] for q in queries))
    for query in paid:
        assert _cell(page, f"release-cost-{query['id']}") == sig(query["cost"]["amount"])
    assert f'data-testid="release-{replay["id"]}"' not in page or replay["id"] == paid[0]["id"]
    assert "SELECT educ, COUNT(*) FROM pums GROUP BY educ" in page

    # A grantee reads only what is left to it: no one else's spending, nobody's name.
    grantee = _client(world.b.analyst).get(DASHBOARD).content.decode()
    assert 'data-testid="who-ran-what"' not in grantee and c_admin.username not in grantee
