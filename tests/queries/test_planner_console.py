"""The console's accuracy planner, schema panel, accuracy table and preview warnings (Django's test
client, a real Celery worker on the `dp` queue). Nothing here spends budget."""

from __future__ import annotations

import re

import pytest
from django.test import Client
from django.urls import reverse

from clearinghouse.queries.models import LedgerEntry, PrivacyBudget, Query

SQL = "SELECT educ, COUNT(*) AS n, AVG(income) AS m FROM pums GROUP BY educ"


@pytest.fixture
def console(setup):
    world, dataset = setup
    client = Client()
    client.force_login(world.b.analyst)
    return client, reverse("portal:query_console", args=["org-a", "pums"]), dataset


def nothing_spent(dataset) -> bool:
    budget = PrivacyBudget.objects.get(dataset=dataset)
    return budget.spent == 0 and not LedgerEntry.objects.exists() and not Query.objects.exists()


def test_schema_beside_the_sql_box_and_the_planner_form(console):
    client, url, _ = console
    page = client.get(url).content.decode()
    schema = page[page.index('data-testid="schema"') :]
    assert "<code>income</code>" in schema and "[0, 500,000]" in schema
    assert "1, 2, 3, 4, 5, 6, 7, 8, … (16 in all)" in schema  # educ's public categories
    assert "no public categories (not groupable)" in schema  # race
    assert 'name="target"' in page and 'value="plan"' in page


def test_plan_shows_the_least_epsilon_a_button_to_use_it_and_the_table(console):
    client, url, dataset = console
    page = client.post(url, {"sql": SQL, "epsilon": "0.5", "target": "10", "action": "plan"}).content.decode()
    assert 'data-testid="plan-level"' in page and "the least ε = <strong>" in page
    use = re.search(r'<input type="hidden" name="epsilon" value="([0-9.e-]+)">', page)
    assert use is not None
    epsilon = float(use.group(1))
    assert 0.1 < epsilon < 2
    assert f"Put ε = {use.group(1)} in the ε field and preview" in page
    assert "m: a mean&#x27;s interval depends on the group&#x27;s size" in page
    assert 'data-code="group_too_small_for_mean"' in page
    table = page[page.index('data-testid="accuracy-table"') :]
    assert table.count("<tr><td>") == 6 and "<th>ε</th>" in table and "m: useful from groups of" in table
    assert nothing_spent(dataset)

    # the button previews at that ε: the count's interval meets the target
    page = client.post(url, {"sql": SQL, "epsilon": use.group(1), "target": "10", "action": "preview"})
    page = page.content.decode()
    assert f'name="epsilon" value="{use.group(1)}"' in page
    preview = page[page.index('id="preview"') : page.index('id="accuracy"')]
    widths = re.findall(r"<td>Integer Laplace</td><td>[0-9.,]+</td><td>([0-9.,]+)</td>", preview)
    assert widths and float(widths[0]) <= 10
    assert nothing_spent(dataset)


def test_preview_warns_before_spending(console):
    client, url, dataset = console
    page = client.post(url, {"sql": SQL, "epsilon": "0.01", "action": "preview"}).content.decode()
    warnings = page[
        page.index('data-testid="preview-warnings"') : page.index("<table", page.index('id="preview"'))
    ]
    assert 'data-code="group_too_small_for_mean"' in warnings and "groups of fewer than" in warnings
    assert page.index('data-testid="preview-warnings"') < page.index('id="accuracy"')
    assert nothing_spent(dataset)


@pytest.mark.parametrize(
    "target,code",
    [("", "accuracy_target_invalid"), ("abc", "accuracy_target_invalid"), ("-2", "accuracy_target_invalid")],
)
def test_a_bad_target_is_a_form_error(console, target, code):
    client, url, dataset = console
    answer = client.post(url, {"sql": SQL, "epsilon": "0.5", "target": target, "action": "plan"})
    assert answer.status_code == 200
    page = answer.content.decode()
    assert f"({code})" in page and 'role="alert"' in page and 'id="plan"' not in page
    assert nothing_spent(dataset)


def test_a_plan_of_only_a_median_is_refused(console):
    client, url, _ = console
    page = client.post(
        url, {"sql": "SELECT MEDIAN(age) FROM pums", "target": "3", "action": "plan"}
    ).content.decode()
    assert "(accuracy_not_plannable)" in page


def test_under_a_zcdp_budget_the_console_asks_in_rho_and_its_plan_button_works(console, setup):
    """The budget's unit is ρ: the console's field, the planner's answer and its button speak ρ, and
    the preview and the release are asked in ρ (not refused as an ε the policy does not allow)."""
    from clearinghouse.queries.ledger import budget_set

    client, url, dataset = console
    world, _ = setup
    budget_set(actor=world.a.steward, dataset=dataset, measure="zcdp", total=1.0)
    page = client.get(url).content.decode()
    assert '<label for="epsilon">Privacy loss ρ</label>' in page and "Find the least ρ" in page
    page = client.post(url, {"sql": SQL, "target": "10", "action": "plan"}).content.decode()
    use = re.search(r'<input type="hidden" name="epsilon" value="([0-9.e-]+)">', page)
    assert use is not None and "the least ρ = <strong>" in page
    page = client.post(url, {"sql": SQL, "epsilon": use.group(1), "action": "preview"}).content.decode()
    assert 'id="preview"' in page and "privacy_measure_not_allowed" not in page
    assert f"(ρ = {float(use.group(1)):g}" in page or "ρ =" in page[page.index('id="preview"') :]
    assert nothing_spent(dataset)
