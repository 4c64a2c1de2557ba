"""The analyst's query console in headless Chromium: preview the cost, run, read the answer with
its intervals, and see it in the history."""

import re

import pytest

from clearinghouse.datasets.services import agreement_accept, agreement_publish
from tests.factories import PASSWORD
from tests.portal.test_join_flow_browser import ARTIFACTS

pytestmark = pytest.mark.browser


def test_console_preview_and_run(setup, live_server, browser):
    from playwright.sync_api import expect

    world, dataset = setup
    agreement_publish(actor=world.a.steward, dataset=dataset, text="Research only.")
    agreement_accept(actor=world.b.analyst, dataset=dataset, version=1)
    world.b.analyst.set_password(PASSWORD)
    world.b.analyst.save()

    page = browser.new_page()
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill(world.b.analyst.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}/datasets/org-a/pums/console/")
    expect(page.get_by_test_id("budget-left")).to_contain_text(re.compile(r"ε = 2(?![.,\d])"))
    page.get_by_label("SQL").fill(
        "SELECT educ, COUNT(*), AVG(income) FROM pums WHERE age >= 30 GROUP BY educ"
    )
    page.get_by_label("Privacy loss ε").fill("0.5")
    page.get_by_role("button", name="Preview cost and accuracy").click()
    expect(page.locator("#preview")).to_contain_text("would cost ε = 0.5")
    expect(page.get_by_test_id("budget-left")).to_contain_text(
        re.compile(r"ε = 2(?![.,\d])")
    )  # previews are free
    page.get_by_role("button", name="Run (spends budget)").click()
    expect(page.locator("#result")).to_contain_text("mean_income")
    expect(page.locator("#result tr")).to_have_count(17)  # header + 16 public education levels
    expect(page.get_by_test_id("budget-left")).to_contain_text(re.compile(r"ε = 1\.5(?![.,\d])"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "query-console.png"), full_page=True)
