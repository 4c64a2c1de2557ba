"""Manual labelling in the portal, in headless Chromium, with a real Celery worker (preparation and the
texts the pages show): a steward creates a project on a text dataset through the form, labels with
the shortcut keys (one per label), skips one item (`s`), undoes a label (`u`) and labels it again;
an annotator of the same organisation then labels the overlap items, and Cohen's κ appears on the
project page. No step calls the API. Screenshots land in `test-artifacts/annotation/`."""

from __future__ import annotations

import re
import time

import pytest
from celery.contrib.testing.worker import start_worker

from clearinghouse.celery import app
from clearinghouse.organisations.roles import Role
from tests.annotation.test_api import MESSAGES, make_text_dataset
from tests.factories import (
    PASSWORD,
    add_member_by_join_request,
    make_operator,
    make_organisation,
    make_user,
)
from tests.portal.test_join_flow_browser import ARTIFACTS

pytestmark = pytest.mark.browser

SHOTS = ARTIFACTS / "annotation"
TRUTH = dict(MESSAGES)  # text -> its true label (the duplicates agree)
KEYS = {"ham": "1", "spam": "2"}  # the labels' shortcut keys, in the order the form gave them


class Annotator:
    def __init__(self, browser, base_url: str, username: str) -> None:
        self.page = browser.new_context(viewport={"width": 1100, "height": 900}).new_page()
        self.base_url, self.username, self.step = base_url, username, 0
        self.page.goto(f"{base_url}/login/")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Log in").click()

    def shot(self, name: str) -> None:
        self.step += 1
        path = SHOTS / f"{self.username}-{self.step:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)

    def item(self) -> tuple[int, str] | None:
        """The item on the labelling page (its id and text), None when the queue is empty."""
        if self.page.get_by_test_id("queue-empty").count():
            return None
        box = self.page.get_by_test_id("item")
        return int(box.get_attribute("data-item")), self.page.get_by_test_id("item-text").inner_text()

    def done(self) -> int:
        return int(self.page.get_by_test_id("done").inner_text())

    def press(self, key: str) -> None:
        """A shortcut key: label.js clicks its button, the form posts, the page comes back."""
        with self.page.expect_navigation():
            self.page.keyboard.press(key)

    def label(self) -> tuple[int, str]:
        item = self.item()
        assert item is not None
        self.press(KEYS[TRUTH[item[1]]])
        return item

    def label_all(self) -> int:
        labelled = 0
        while self.item() is not None:
            self.label()
            labelled += 1
        return labelled


def test_label_with_shortcut_keys_skip_undo_and_agreement(live_server, browser, media_root):
    from playwright.sync_api import expect

    from clearinghouse.annotation.models import AnnotationProject, ItemSkip, Label
    from clearinghouse.annotation.selectors import project_progress

    SHOTS.mkdir(parents=True, exist_ok=True)
    operator = make_operator("operator")
    steward = make_user("ada")
    organisation = make_organisation(operator=operator, admin=steward, slug="lovelace")
    add_member_by_join_request(
        organisation=organisation, admin=steward, user=make_user("carol"), role=Role.ANALYST
    )
    make_text_dataset(steward=steward)  # one ready version of the messages
    spam = sum(1 for _, label in MESSAGES if label == "spam")

    with start_worker(
        app, pool="solo", perform_ping_check=False, queues=["ingestion", "dp", "default"], shutdown_timeout=30
    ):
        # --- The steward creates the project in the portal -------------------------------------------
        ada = Annotator(browser, live_server.url, "ada")
        s = ada.page
        s.get_by_role("link", name="Annotation", exact=True).click()
        s.get_by_role("link", name="New project").click()
        s.get_by_label("Name", exact=True).fill("Spam or ham")
        s.get_by_label("Dataset").select_option("messages")
        s.get_by_label("Text column").fill("text")
        s.get_by_label("Labels").fill("ham\nspam")
        s.get_by_label("Instructions").fill("Spam: unsolicited advertising. Everything else is ham.")
        s.get_by_label("Overlap (%)").fill("50")
        ada.shot("new-project")
        s.get_by_role("checkbox", name=re.compile("carol")).check()
        s.get_by_role("button", name="Create project").click()
        status = s.get_by_test_id("project-status")
        deadline = time.monotonic() + 30
        while status.inner_text() != "Ready" and time.monotonic() < deadline:
            time.sleep(0.3)
            s.reload()
        expect(status).to_have_text("Ready")
        project = AnnotationProject.objects.get()
        overlap = project.items.filter(needs_two=True).count()
        assert project.item_count == len(MESSAGES) and overlap == len(MESSAGES) // 2
        expect(s.get_by_test_id("kappa-pending")).to_be_visible()
        ada.shot("project-ready")

        # --- Labelling with the keys: label, skip, undo ----------------------------------------------
        s.get_by_role("link", name="Label items").click()
        expect(s.get_by_test_id("instructions")).to_contain_text("unsolicited advertising")
        expect(s.get_by_test_id("label-progress")).to_contain_text(f"0 / {len(MESSAGES)}")
        expect(s.get_by_role("button", name="1 ham")).to_be_visible()
        ada.shot("first-item")
        first = ada.label()
        assert ada.done() == 1 and ada.item()[0] != first[0]

        skipped = ada.item()
        ada.press("s")
        assert ada.item()[0] != skipped[0] and ada.done() == 1
        assert ItemSkip.objects.filter(item_id=skipped[0]).exists()

        undone = ada.label()
        assert ada.done() == 2
        ada.shot("before-undo")
        ada.press("u")
        expect(s.get_by_role("status")).to_contain_text("Undone")
        assert ada.item()[0] == undone[0] and ada.done() == 1  # the undone item, shown again
        assert not Label.objects.filter(item_id=undone[0]).exists()
        ada.shot("undone")
        ada.label()
        assert ada.done() == 2

        # The rest, the skipped item last.
        rest = []
        while ada.item() is not None:
            rest.append(ada.label()[0])
        assert rest[-1] == skipped[0] and len(rest) == len(MESSAGES) - 2
        expect(s.get_by_test_id("queue-empty")).to_be_visible()
        assert ada.done() == len(MESSAGES)

        # --- The annotator labels the overlap items --------------------------------------------------
        carol = Annotator(browser, live_server.url, "carol")
        a = carol.page
        a.get_by_role("link", name="Annotation", exact=True).click()
        a.get_by_role("link", name="Spam or ham").click()
        a.get_by_role("link", name="Label items").click()
        carol.shot("overlap-item")
        assert carol.label_all() == overlap
        carol.shot("done")

        # --- κ on the project page ---------------------------------------------------------------------
        s.get_by_role("link", name="Spam or ham").click()
        expect(s.get_by_test_id("kappa")).to_have_text("1.000")
        expect(s.get_by_test_id("progress-done")).to_have_text(str(len(MESSAGES)))
        expect(s.get_by_test_id("progress-remaining")).to_have_text("0")
        expect(s.get_by_test_id("per-label-spam")).to_have_text(str(spam))
        expect(s.get_by_test_id("per-label-ham")).to_have_text(str(len(MESSAGES) - spam))
        expect(s.get_by_test_id("agreement")).to_contain_text(f"{overlap} of {overlap}")
        ada.shot("agreement")

    progress = project_progress(project=project)
    assert progress["done"] == len(MESSAGES) and progress["kappa"] == 1.0
    assert progress["human_labels"] == len(MESSAGES) + overlap
    assert progress["per_label"] == {"ham": len(MESSAGES) - spam, "spam": spam}
    assert Label.objects.filter(annotator__username="carol").count() == overlap
    assert not ItemSkip.objects.exists()  # the skipped item was labelled after all
