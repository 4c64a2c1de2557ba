"""The join flow as a person meets it, in headless Chromium: sign up, apply for an organisation, an
operator approves it in the portal, the applicant sees the approval on their dashboard."""

from __future__ import annotations

from pathlib import Path

import pytest

from clearinghouse.organisations.models import Organisation
from tests.factories import PASSWORD, make_operator

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.browser


def test_join_flow(live_server, browser):
    from playwright.sync_api import expect

    make_operator("operator")
    ARTIFACTS.mkdir(exist_ok=True)

    applicant = browser.new_page()
    applicant.goto(f"{live_server.url}/")
    applicant.get_by_role("link", name="Sign up").first.click()
    applicant.get_by_label("Username").fill("grace")
    applicant.get_by_label("Email").fill("grace@lovelace.example.org")
    applicant.get_by_label("Full name").fill("Grace")
    applicant.get_by_label("Password").fill(PASSWORD)
    applicant.get_by_role("button", name="Sign up").click()
    expect(applicant.get_by_role("heading", name="Hello, Grace")).to_be_visible()

    applicant.get_by_role("link", name="Apply for a new organisation").click()
    applicant.get_by_label("Name").fill("Lovelace Institute")
    applicant.get_by_label("Slug").fill("lovelace")
    applicant.get_by_label("Country").fill("GB")
    applicant.get_by_label("Contact email").fill("data@lovelace.example.org")
    applicant.get_by_role("button", name="Send application").click()
    expect(applicant.get_by_test_id("organisation-status")).to_have_text("Pending approval")

    operator = browser.new_context().new_page()
    operator.goto(f"{live_server.url}/login/")
    operator.get_by_label("Username").fill("operator")
    operator.get_by_label("Password").fill(PASSWORD)
    operator.get_by_role("button", name="Log in").click()
    operator.locator("#operator-pending").get_by_role("link", name="Review").click()
    expect(operator.get_by_role("heading", name="Lovelace Institute")).to_be_visible()
    operator.get_by_role("button", name="Approve").click()
    expect(operator.get_by_test_id("organisation-status")).to_have_text("Approved")

    applicant.reload()
    expect(applicant.get_by_test_id("organisation-status")).to_have_text("Approved")
    expect(applicant.get_by_text("Your organisation is a member of the consortium.")).to_be_visible()
    applicant.screenshot(path=str(ARTIFACTS / "join-flow-approved.png"), full_page=True)

    organisation = Organisation.objects.get(slug="lovelace")
    assert organisation.status == "approved" and organisation.decided_by.username == "operator"
    assert organisation.memberships.get().user.username == "grace"
