"""Every role's journey through the portal alone, in headless Chromium, from an empty consortium (an
operator account only), with real Celery workers for ingestion and DP releases. No step calls the API.

- Steward: signs up and applies for an organisation; registers a dataset, uploads the first file,
  reviews the proposed schema in the column form and confirms it (the version becomes ready with no
  other click), sets the budget, lists the dataset in the catalogue, publishes an agreement, approves
  an access request and allocates a share of the budget.
- Analyst (another organisation): finds the dataset in the catalogue, asks for query access, accepts
  the agreement, plans ε by a target accuracy, runs the query, sees the chart and downloads the CSV.
- Operator: approves both organisations and filters the audit log.

A screenshot per step lands in `test-artifacts/journeys/`.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
from celery.contrib.testing.worker import start_worker

from clearinghouse.celery import app
from tests.factories import PASSWORD, make_operator
from tests.portal.test_join_flow_browser import ARTIFACTS
from tests.shared_data import DATASETS as SHARED

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "journeys"
SQL = "SELECT educ, COUNT(*), AVG(income) FROM pums GROUP BY educ"


class Journey:
    """One person's browser tab, numbering their screenshots."""

    def __init__(self, browser, base_url: str, role: str) -> None:
        self.page = browser.new_context(accept_downloads=True).new_page()
        self.base_url, self.role, self.step = base_url, role, 0

    def goto(self, path: str) -> None:
        self.page.goto(f"{self.base_url}{path}")

    def shot(self, name: str) -> None:
        self.step += 1
        self.page.screenshot(path=str(SHOTS / f"{self.role}-{self.step:02d}-{name}.png"), full_page=True)

    def log_in(self, username: str) -> None:
        self.goto("/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Log in").click()

    def sign_up_and_apply(self, username: str, name: str, organisation: str, slug: str) -> None:
        page = self.page
        self.goto("/")
        page.get_by_role("link", name="Sign up").first.click()
        page.get_by_label("Username").fill(username)
        page.get_by_label("Email").fill(f"{username}@{slug}.example.org")
        page.get_by_label("Full name").fill(name)
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign up").click()
        page.get_by_role("link", name="Apply for a new organisation").click()
        page.get_by_label("Name").fill(organisation)
        page.get_by_label("Slug").fill(slug)
        page.get_by_label("Country").fill("GB")
        page.get_by_label("Contact email").fill(f"data@{slug}.example.org")
        page.get_by_role("button", name="Send application").click()


def _approve(operator: Journey, organisation: str) -> None:
    from playwright.sync_api import expect

    page = operator.page
    operator.goto("/dashboard/")
    page.locator("#operator-pending tr", has_text=organisation).get_by_role("link", name="Review").click()
    expect(page.get_by_role("heading", name=organisation)).to_be_visible()
    page.get_by_role("button", name="Approve").click()
    expect(page.get_by_test_id("organisation-status")).to_have_text("Approved")


def test_every_role_finishes_its_journey_in_the_portal(live_server, browser, media_root):
    from playwright.sync_api import expect

    from clearinghouse.datasets.models import AccessRequest, DatasetVersion
    from clearinghouse.queries.models import LedgerEntry, PrivacyBudget, Query

    SHOTS.mkdir(parents=True, exist_ok=True)
    make_operator("operator")
    operator = Journey(browser, live_server.url, "operator")
    steward = Journey(browser, live_server.url, "steward")
    analyst = Journey(browser, live_server.url, "analyst")
    s, a, o = steward.page, analyst.page, operator.page

    with start_worker(
        app, pool="solo", perform_ping_check=False, queues=["ingestion", "dp", "default"], shutdown_timeout=30
    ):
        # --- Both organisations join; the operator approves them --------------------------------------
        steward.sign_up_and_apply("ada", "Ada", "Lovelace Institute", "lovelace")
        expect(s.get_by_test_id("organisation-status")).to_have_text("Pending approval")
        steward.shot("applied")
        analyst.sign_up_and_apply("charles", "Charles", "Babbage Analytics", "babbage")
        operator.log_in("operator")
        operator.shot("pending-organisations")
        _approve(operator, "Lovelace Institute")
        operator.shot("approved-lovelace")
        _approve(operator, "Babbage Analytics")

        # --- Steward: register, upload, confirm the proposed schema, set the budget -------------------
        steward.goto("/datasets/")
        s.get_by_label("Name").fill("PUMS extract")
        s.get_by_label("Slug").fill("pums")
        s.get_by_label("Description").fill("US Census PUMS sample: age, sex, education, race, income.")
        s.get_by_role("button", name="Register").click()
        steward.shot("registered")
        s.get_by_label("File (CSV/TSV or Parquet)").set_input_files(str(SHARED / "pums_1000.csv"))
        s.get_by_role("button", name="Upload and encrypt").click()
        expect(s.get_by_test_id("version-status")).to_have_text(
            "Awaiting schema confirmation", timeout=30_000
        )
        expect(s.get_by_text("Failed")).to_have_count(0)
        steward.shot("awaiting-schema")
        s.get_by_role("link", name="Review and confirm the schema").click()
        expect(s.get_by_test_id("schema-public-rule")).to_contain_text("must come from public knowledge")
        # Public bounds from the codebook, not the data's extremes.
        s.get_by_label("Lower bound of age").fill("0")
        s.get_by_label("Upper bound of age").fill("120")
        s.get_by_label("Lower bound of income").fill("0")
        s.get_by_label("Upper bound of income").fill("500000")
        # Education is a code (the PUMS codebook's 16 levels), to group by: categorical.
        s.get_by_label("Type of educ").select_option("categorical")
        s.get_by_label("Categories of educ").fill("\n".join(str(level) for level in range(1, 17)))
        steward.shot("schema-form")
        s.get_by_role("button", name="Confirm schema").first.click()
        expect(s.get_by_test_id("version-status")).to_have_text("Ready", timeout=60_000)
        steward.shot("version-ready")
        version = DatasetVersion.objects.get(dataset__slug="pums", number=1)
        assert version.status == "ready" and version.schema["columns"][0]["upper"] == 120

        s.get_by_role("link", name="PUMS extract").click()
        s.get_by_role("link", name="Budget dashboard").click()
        s.get_by_label("Pure DP (ε)").check()
        s.get_by_label("Total (ε or ρ for the dataset's whole life)").fill("3")
        s.get_by_label("At most per query (empty: no limit)").fill("1.5")
        s.get_by_label(re.compile("Row bound")).fill("5000")
        s.get_by_role("button", name="Save policy").click()
        expect(s.get_by_role("alert")).to_have_count(0)
        steward.shot("budget-policy")
        budget = PrivacyBudget.objects.get(dataset__slug="pums")
        assert (budget.measure, budget.total, budget.per_query_max, budget.max_rows) == (
            "pure",
            3.0,
            1.5,
            5000,
        )

        steward.goto("/datasets/lovelace/pums/")
        s.get_by_role("button", name="List in the catalogue").click()
        expect(s.get_by_test_id("listing-state")).to_contain_text("Listed")
        s.get_by_label("Publish a new version").fill("Research use only; no attempt to re-identify anyone.")
        s.get_by_role("button", name="Publish").click()
        steward.shot("listed-and-agreement")

        # --- Analyst: catalogue, access request -------------------------------------------------------
        analyst.goto("/catalogue/")
        entry = a.get_by_test_id("catalogue-lovelace-pums")
        expect(entry).to_contain_text("PUMS extract")
        expect(entry).to_contain_text("income")
        entry.get_by_label("Purpose").select_option("query")
        entry.get_by_label("Reason (what you will use it for)").fill(
            "Income by education level, for a report."
        )
        analyst.shot("catalogue")
        entry.get_by_role("button", name="Request access").click()
        analyst.shot("requested")
        assert AccessRequest.objects.get().status == "pending"

        # --- Steward: approve, allocate ---------------------------------------------------------------
        steward.goto("/access-requests/")
        expect(s.get_by_text("Income by education level")).to_be_visible()
        steward.shot("incoming-request")
        s.get_by_role("button", name="Approve").click()
        steward.goto("/datasets/lovelace/pums/budget/")
        s.get_by_label("Amount for babbage").fill("2")
        s.get_by_test_id("allocation-row-babbage").get_by_role("button", name="Save").click()
        expect(s.get_by_test_id("allocation-row-babbage")).to_contain_text("2")
        steward.shot("allocation")
        assert AccessRequest.objects.get().status == "approved"

        # --- Analyst: agreement, plan, run, chart, CSV -------------------------------------------------
        analyst.goto("/datasets/lovelace/pums/")
        a.get_by_role("button", name="I accept version 1").click()
        a.get_by_role("link", name="Query console").click()
        expect(a.get_by_test_id("schema")).to_contain_text("income")
        expect(a.get_by_test_id("budget-left")).to_contain_text(re.compile(r"ε = 2(?![.,\d])"))
        a.get_by_label("SQL").fill(SQL)
        a.get_by_label("I need ± at 95%").fill("40")
        a.get_by_role("button", name="Find the least ε").click()
        expect(a.get_by_test_id("plan-level")).to_contain_text("least ε")
        analyst.shot("plan")
        level = float(a.get_by_test_id("use-level").inner_text().split("=")[1].split()[0])
        assert 0 < level <= 1.5
        a.get_by_test_id("use-level").click()
        expect(a.locator("#preview")).to_contain_text("would cost ε")
        analyst.shot("preview")
        a.get_by_role("button", name="Run (spends budget)").click()
        result = a.locator("#result")
        expect(result).to_contain_text("mean_income", timeout=30_000)
        expect(result.locator("svg")).to_have_count(1)
        analyst.shot("result-chart")
        with a.expect_download() as download_info:
            result.get_by_test_id("result-csv-link").click()
        rows = list(csv.DictReader(io.StringIO(open(download_info.value.path(), encoding="utf-8").read())))
        assert len(rows) == 16 and {"educ", "count", "count_lo", "count_hi", "mean_income"} <= set(rows[0])
        query = Query.objects.get(status="released")
        assert LedgerEntry.objects.get(query=query).amount == pytest.approx(level)

        # --- The owner sees what was spent; the operator reads the audit log ---------------------------
        steward.goto("/datasets/lovelace/pums/budget/")
        expect(s.get_by_test_id("allocation-row-babbage")).to_be_visible()
        steward.shot("dashboard-after-release")
        allocation = PrivacyBudget.objects.get(dataset__slug="pums").allocations.get()
        assert allocation.spent == pytest.approx(level) and allocation.amount == 2.0

        operator.goto("/audit/")
        o.get_by_label("Organisation (slug)").fill("lovelace")
        o.get_by_label("Action").fill("budget.")
        o.get_by_role("button", name="Filter").click()
        expect(o.locator("table code").first).to_contain_text("budget.")
        actions = set(o.locator("table code").all_inner_texts())
        assert actions and all(action.startswith("budget.") for action in actions)
        operator.shot("audit-filtered")
