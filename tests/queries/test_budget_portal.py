"""The privacy budget in the portal: the steward's policy and allocation editor, the owner's budget
dashboard (allocated, spent and left per organisation) and the analyst's "My budgets" page, all
through the real ledger services (`budget_set`, `allocation_set`, `budget_debit`) and the same
selector as `GET .../budget` (`budget_view_for`)."""

from __future__ import annotations

import re
import uuid

import pytest
from django.db import transaction
from django.test import Client
from django.urls import reverse

from clearinghouse.audit.models import AuditEvent
from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.queries.ledger import budget_debit
from clearinghouse.queries.models import BudgetAllocation, PrivacyBudget, Query
from tests.factories import api_client

DASHBOARD = reverse("portal:budget_dashboard", args=["org-a", "survey"])
MINE = reverse("portal:my_budgets")


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _cell(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{re.escape(testid)}"[^>]*>([^<]*)<', html)
    assert match, f"no {testid} on the page"
    return match.group(1).strip()


def _number(html: str, testid: str) -> float:
    """A figure as the page shows it (however it is rounded or grouped for display)."""
    return float(_cell(html, testid).replace(",", ""))


def _spend(world, amount: float) -> None:
    """A release by org B's analyst, paid through the ledger's one writer of `spent`."""
    dataset = world.a.dataset
    query = Query.objects.create(
        dataset=dataset,
        version=dataset.versions.get(number=1),
        organisation=world.b.organisation,
        analyst=world.b.analyst,
        spec={"q": uuid.uuid4().hex},
        query_hash=uuid.uuid4().hex,
        cost=amount,
    )
    with transaction.atomic():
        budget_debit(query=query, amount=amount)


def _grant_b(world) -> None:
    dataset_grant_create(
        actor=world.a.steward, dataset=world.a.dataset, organisation=world.b.organisation, purpose="query"
    )


def _policy(**overrides) -> dict:
    return {
        "measure": "pure",
        "total": "6",
        "delta_total": "0",
        "per_query_max": "1.5",
        "per_analyst_cap": "",
        "max_rows": "",
        **overrides,
    }


def test_owner_sets_budget_and_allocations_in_the_portal_and_both_pages_show_what_is_left(world):
    _grant_b(world)
    steward = _client(world.a.steward)
    page = steward.get(DASHBOARD).content.decode()
    # One line per measure, and a row per granted organisation in the allocation editor.
    assert "ε only" in page and "(ρ)" in page and "failure probability δ" in page
    assert 'data-testid="allocation-row-org-b"' in page and 'data-testid="allocation-row-org-c"' in page

    last = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first()
    assert steward.post(DASHBOARD, _policy()).status_code == 302
    allocate = reverse("portal:budget_allocation", args=["org-a", "survey", "org-b"])
    assert steward.post(allocate, {"amount": "2.5"}).status_code == 302
    budget = PrivacyBudget.objects.get(dataset=world.a.dataset)
    assert (budget.measure, budget.total, budget.per_query_max, budget.per_analyst_cap) == (
        "pure",
        6.0,
        1.5,
        None,
    )
    assert BudgetAllocation.objects.get(budget=budget, organisation=world.b.organisation).amount == 2.5
    # Audited exactly as the API's writes are: by the services, with the steward as actor.
    new = list(AuditEvent.objects.filter(pk__gt=last))
    assert sorted(e.action for e in new) == ["budget.allocated", "budget.set"]
    assert {e.actor_id for e in new} == {world.a.steward.pk}

    _spend(world, 0.75)
    _spend(world, 0.75)

    page = steward.get(DASHBOARD).content.decode()
    assert _number(page, "allocated-org-b") == pytest.approx(2.5)
    assert _number(page, "spent-org-b") == pytest.approx(1.5)
    assert _number(page, "left-org-b") == pytest.approx(1.0)  # not the allocation (2.5), as it showed before
    assert _number(page, "left-org-c") == pytest.approx(
        1.0
    )  # org C's allocation from the world, nothing spent

    # The analyst's page: their organisation's figures, from the same selector as the API.
    mine = _client(world.b.analyst).get(MINE)
    assert mine.status_code == 200
    row = mine.content.decode().split('data-testid="budget-org-a-survey"')[1].split("</tr>")[0]
    assert _number(row, "allocated") == pytest.approx(2.5)
    assert _number(row, "spent") == pytest.approx(1.5)
    assert _number(row, "left") == pytest.approx(1.0)
    assert _number(row, "per-query") == pytest.approx(1.5)
    api = api_client(world.b.analyst).get("/api/v1/datasets/org-a/survey/budget").json()["left"]
    assert (api["organisation_allocated"], api["organisation_spent"]) == (2.5, 1.5)
    assert api["organisation"] == pytest.approx(1.0)
    owner_api = api_client(world.a.steward).get("/api/v1/datasets/org-a/survey/budget").json()
    assert {a["organisation"]: a["left"] for a in owner_api["allocations"]} == {"org-b": 1.0, "org-c": 1.0}
    # A dataset without a query grant to the analyst's organisation is not listed.
    assert 'data-testid="budget-org-b-survey"' not in mine.content.decode()


def test_the_dataset_pages_budget_link_leads_to_the_dashboard(world):
    steward = _client(world.a.steward)
    detail = steward.get(reverse("portal:dataset", args=["org-a", "survey"])).content.decode()
    href = re.search(r'href="([^"]+)"[^>]*>Budget dashboard<', detail).group(1)
    assert href == DASHBOARD
    assert steward.get(href).status_code == 200


@pytest.mark.parametrize(
    "overrides,field,typed",
    [
        ({"total": "-1"}, "total", "-1"),
        ({"total": "2", "per_query_max": "5"}, "per_query_max", "5"),
        ({"measure": "renyi"}, "measure", "renyi"),
        ({"total": "lots"}, "total", "lots"),
    ],
)
def test_a_refused_policy_keeps_the_input_and_shows_the_error_by_its_field(world, overrides, field, typed):
    steward = _client(world.a.steward)
    events = AuditEvent.objects.count()
    response = steward.post(DASHBOARD, _policy(**overrides))
    assert response.status_code == 400
    page = response.content.decode()
    assert f'name="{field}" value="{typed}"' in page
    # The field's own error list follows its input; the service's message heads the form.
    after = page.split(f'name="{field}" value="{typed}"', 1)[1]
    assert '<ul class="errorlist' in after[:120], after[:200]
    assert 'role="alert"' in page
    budget = PrivacyBudget.objects.get(dataset=world.a.dataset)
    assert (budget.measure, budget.total, budget.per_query_max) == ("pure", 10.0, None)
    assert AuditEvent.objects.count() == events


def test_a_refused_policy_error_sits_next_to_its_input(world):
    page = _client(world.a.steward).post(DASHBOARD, _policy(total="-1")).content.decode()
    assert re.search(
        r'name="total" value="-1" required><ul class="errorlist[^"]*"[^>]*><li>Out of range.', page
    )


def test_a_refused_allocation_keeps_the_input_and_writes_nothing(world):
    steward = _client(world.a.steward)
    events = AuditEvent.objects.count()
    allocate = reverse("portal:budget_allocation", args=["org-a", "survey", "org-c"])
    response = steward.post(allocate, {"amount": "-3"})
    assert response.status_code == 400
    page = response.content.decode()
    assert re.search(
        r'name="amount" value="-3" required><ul class="errorlist[^"]*"[^>]*><li>Out of range.', page
    )
    assert BudgetAllocation.objects.get(budget__dataset=world.a.dataset).amount == 1.0
    assert AuditEvent.objects.count() == events


def test_another_organisations_members_get_404_and_write_nothing(world):
    events = AuditEvent.objects.count()
    allocate = reverse("portal:budget_allocation", args=["org-a", "survey", "org-b"])
    for user in (world.b.admin, world.b.analyst):
        other = _client(user)
        assert other.get(DASHBOARD).status_code == 404  # no grant: the dataset does not exist to them
        assert other.post(DASHBOARD, _policy(total="99")).status_code == 404
        assert other.post(allocate, {"amount": "9"}).status_code == 404
    _grant_b(world)  # a grantee reads what is left to it, and still may not set anything
    events = AuditEvent.objects.count()
    grantee = _client(world.b.admin)
    assert grantee.get(DASHBOARD).status_code == 200
    assert 'name="total"' not in grantee.get(DASHBOARD).content.decode()
    assert grantee.post(DASHBOARD, _policy(total="99")).status_code == 404
    assert grantee.post(allocate, {"amount": "9"}).status_code == 404
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).total == 10.0
    assert not BudgetAllocation.objects.filter(organisation=world.b.organisation).exists()
    assert AuditEvent.objects.count() == events
    # The owner's analyst sees the dashboard but not the editor (budget_set refuses them: 403).
    analyst = _client(world.a.analyst)
    assert 'name="total"' not in analyst.get(DASHBOARD).content.decode()
    assert analyst.post(DASHBOARD, _policy()).status_code == 403


@pytest.mark.parametrize("field", ["total", "measure", "per_query_max"])
def test_overlong_policy_input_is_a_400_with_the_input_kept_never_a_500(world, field):
    steward = _client(world.a.steward)
    junk = "1" * 150
    response = steward.post(DASHBOARD, _policy(**{field: junk}))
    assert response.status_code == 400
    assert not PrivacyBudget.objects.filter(dataset=world.a.dataset, total=6.0).exists()
    allocate = reverse("portal:budget_allocation", args=["org-a", "survey", "org-b"])
    assert steward.post(allocate, {"amount": junk}).status_code == 400
    # Who may set it is decided first: another organisation's admin is told it does not exist.
    assert _client(world.b.admin).post(DASHBOARD, _policy(**{field: junk})).status_code == 404
    assert _client(world.b.admin).post(allocate, {"amount": junk}).status_code == 404


def test_a_policy_saved_before_the_per_query_rule_can_be_saved_again_as_it_is(world):
    """A per-query maximum above the total is refused when set, but a stored policy that has one
    (saved before the rule) is re-saved unchanged, e.g. when only the row bound changes."""
    steward = _client(world.a.steward)
    assert steward.post(DASHBOARD, _policy(total="2", per_query_max="1")).status_code == 302
    PrivacyBudget.objects.filter(dataset=world.a.dataset).update(per_query_max=5.0)  # as stored before
    assert (
        steward.post(DASHBOARD, _policy(total="2", per_query_max="5", per_analyst_cap="1")).status_code == 302
    )
    assert PrivacyBudget.objects.get(dataset=world.a.dataset).per_analyst_cap == 1.0
    refused = steward.post(DASHBOARD, _policy(total="3", per_query_max="5"))  # the total changes
    assert refused.status_code == 400
    assert steward.post(DASHBOARD, _policy(total="2", per_query_max="6")).status_code == 400
