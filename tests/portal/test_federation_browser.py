"""A federated job's page as a member sees it in headless Chromium: from the nav to the job, its
rounds table and the accuracy/loss plot drawn, saved as a screenshot for review."""

from __future__ import annotations

import pytest

from tests.factories import PASSWORD
from tests.federation.test_portal import _add_rounds
from tests.portal.test_join_flow_browser import ARTIFACTS

pytestmark = pytest.mark.browser


def test_job_page_with_rounds(live_server, browser, world):
    from playwright.sync_api import expect

    from federation.models import FederatedJob

    job = FederatedJob.objects.get(pk=world.a.job_id)
    _add_rounds(job)
    ARTIFACTS.mkdir(exist_ok=True)

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill(world.a.admin.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Federation").click()
    page.get_by_role("link", name=job.name).click()

    expect(page.get_by_test_id("job-state")).to_have_text("Succeeded")
    plot = page.get_by_test_id("round-plot")
    expect(plot).to_be_visible()
    # Drawn, not just present: the accuracy line spans the plot's width.
    assert plot.locator('[data-series="accuracy"]').bounding_box()["width"] > 400
    expect(page.get_by_role("link", name="Download the model (safetensors adapter)")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "federated-job-rounds.png"), full_page=True)
