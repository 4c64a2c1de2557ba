"""The annotation portal pages, as a browser without JavaScript uses them (Django's test client): the
new-project form and its errors, the project page (progress, κ, automatic labelling, exports), the
labelling page (one item at a time: label, skip, undo, the review queue), the duplicates and review
lists, and who sees what (another organisation's project is a 404). Texts come from the worker task,
run in-process here (eager Celery). Who may open which page is also in
tests/security/test_authorization_matrix.py; the labelling flow in Chromium is
test_labelling_browser.py."""

from __future__ import annotations

import html
import re

import pytest
from django.test import Client
from django.urls import reverse

from clearinghouse.annotation.models import AnnotationExport, AnnotationItem, AnnotationProject, Label
from clearinghouse.organisations.roles import Role
from tests.annotation.test_api import (
    MESSAGES,
    eager,  # noqa: F401 (a fixture)
    make_project,
    make_text_dataset,
)
from tests.factories import add_member_by_join_request, make_user


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def page(client: Client, name: str, *args, **query) -> str:
    response = client.get(reverse(f"portal:{name}", args=list(args)), query)
    assert response.status_code == 200, (name, response.status_code)
    return response.content.decode()


@pytest.fixture
def dataset(world, media_root, eager):  # noqa: F811
    return make_text_dataset(steward=world.a.steward)


@pytest.fixture
def project(world, dataset):
    return make_project(
        manager=world.a.admin, dataset=dataset, annotators=[world.a.analyst.username], overlap=0.5
    )


def shown_item(body: str) -> AnnotationItem:
    match = re.search(r'data-testid="item" data-item="(\d+)"', body)
    assert match, "no item on the labelling page"
    return AnnotationItem.objects.get(pk=int(match.group(1)))


def label_next(client: Client, project: AnnotationProject, value: str | None = None) -> AnnotationItem:
    """Labels the item the labelling page shows with `value` (else its true label), as its form posts."""
    item = shown_item(page(client, "annotation_label", project.pk))
    response = client.post(
        reverse("portal:annotation_item_label", args=[project.pk, item.pk]),
        {"label": value or MESSAGES[item.row][1]},
    )
    assert response.status_code == 302 and response["Location"] == reverse(
        "portal:annotation_label", args=[project.pk]
    )
    return item


def new_project_form(**overrides) -> dict:
    data = {
        "name": "Spam or ham",
        "dataset": "messages",
        "text_column": "text",
        "labels": "ham\r\nspam\r\n\r\n",
        "instructions": "Spam: unsolicited advertising.",
        "overlap": "20",
        "annotators": ["analyst_org-a"],
    }
    data.update(overrides)
    return data


# --- Creating a project --------------------------------------------------------------------------------


def test_a_manager_creates_a_project_through_the_form(
    world,
    dataset,
    django_capture_on_commit_callbacks,
):
    admin = logged_in(world.a.admin)
    projects = page(admin, "annotation_projects")
    assert reverse("portal:annotation_project_new") in projects  # the "New project" button
    form = page(admin, "annotation_project_new")
    assert 'value="messages"' in form and 'value="analyst_org-a"' in form
    assert '<option value="text">' in form  # the text column is suggested; not the categorical one
    assert '<option value="label">' not in form

    with django_capture_on_commit_callbacks(execute=True):  # annotation.prepare, in-process
        response = admin.post(reverse("portal:annotation_project_new"), new_project_form())
    project = AnnotationProject.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:annotation_project", args=[project.pk])
    assert (project.labels, project.overlap, project.text_column) == (["ham", "spam"], 0.2, "text")
    assert [u.username for u in project.annotators.all()] == ["analyst_org-a"]
    assert project.status == "ready" and project.item_count == len(MESSAGES)

    body = page(admin, "annotation_project", project.pk)
    assert 'data-testid="progress-done">0<' in body
    assert f'data-testid="progress-total">{len(MESSAGES)}<' in body
    assert "Spam: unsolicited advertising." in body
    assert reverse("portal:annotation_label", args=[project.pk]) in body
    assert reverse("portal:annotation_duplicates", args=[project.pk]) in body
    # Members find it from the nav and the list; the listed annotator too.
    assert reverse("portal:annotation_projects") in body
    assert reverse("portal:annotation_project", args=[project.pk]) in page(
        logged_in(world.a.analyst), "annotation_projects"
    )


@pytest.mark.parametrize(
    "overrides,field,message",
    [
        ({"labels": "ham"}, "labels", "At least two."),
        ({"labels": "ham\nham"}, "labels", "Duplicates."),
        ({"text_column": "label"}, "text_column", "Not a text column."),
        ({"text_column": "nope"}, "text_column", "No such column."),
        ({"overlap": "60"}, "overlap", "In [0.0, 0.5]."),
        ({"overlap": "lots"}, "overlap", "Enter a number."),
        ({"dataset": "survey-missing"}, "dataset", "Select a valid choice."),
    ],
)
def test_bad_input_is_shown_on_the_form_and_nothing_is_created(world, dataset, overrides, field, message):
    response = logged_in(world.a.admin).post(
        reverse("portal:annotation_project_new"), new_project_form(**overrides)
    )
    assert response.status_code == 200
    body = response.content.decode()
    # The error sits under its field (the field, then its help text, then the error list).
    errors = re.search(
        rf'name="{field}".*?<ul class="errorlist" role="alert">(.*?)</ul>', body, flags=re.DOTALL
    )
    assert errors and message in html.unescape(errors.group(1)), body
    assert not AnnotationProject.objects.exists()


def test_only_managers_open_the_new_project_form(world):
    assert logged_in(world.a.analyst).get(reverse("portal:annotation_project_new")).status_code == 403
    assert logged_in(world.operator).get(reverse("portal:annotation_project_new")).status_code == 404
    assert "New project" not in page(logged_in(world.a.analyst), "annotation_projects")


def test_the_form_offers_only_the_organisations_own_datasets(world, dataset):
    make_text_dataset(steward=world.b.steward, slug="b-messages")
    form = page(logged_in(world.a.admin), "annotation_project_new")
    assert 'value="messages"' in form and "b-messages" not in form and "analyst_org-b" not in form
    response = logged_in(world.a.admin).post(
        reverse("portal:annotation_project_new"), new_project_form(dataset="b-messages")
    )
    assert response.status_code == 200 and not AnnotationProject.objects.exists()


# --- Who sees a project ----------------------------------------------------------------------------


def test_another_organisation_and_unlisted_members_get_404(world, project):
    outsider = make_user("analyst2_org-a")
    add_member_by_join_request(
        organisation=world.a.organisation, admin=world.a.admin, user=outsider, role=Role.ANALYST
    )
    item = project.items.order_by("pk").first()
    gets = [
        reverse("portal:annotation_project", args=[project.pk]),
        reverse("portal:annotation_label", args=[project.pk]),
        reverse("portal:annotation_duplicates", args=[project.pk]),
        reverse("portal:annotation_review", args=[project.pk]),
    ]
    posts = [
        reverse("portal:annotation_item_label", args=[project.pk, item.pk]),
        reverse("portal:annotation_item_skip", args=[project.pk, item.pk]),
        reverse("portal:annotation_undo", args=[project.pk]),
        reverse("portal:annotation_archive", args=[project.pk]),
        reverse("portal:annotation_exports", args=[project.pk]),
    ]
    for user in (world.b.admin, outsider, world.operator):
        client = logged_in(user)
        for url in gets:
            assert client.get(url).status_code == 404, (user.username, url)
        for url in posts:
            assert client.post(url, {"label": "ham"}).status_code == 404, (user.username, url)
        assert (
            reverse("portal:annotation_project", args=[project.pk])
            not in client.get(reverse("portal:annotation_projects")).content.decode()
        )
    assert not Label.objects.exists()
    project.refresh_from_db()
    assert project.status == "ready"


def test_an_annotator_labels_but_does_not_manage(world, project):
    annotator = logged_in(world.a.analyst)
    body = page(annotator, "annotation_project", project.pk)
    assert "Label items" in body
    assert 'data-testid="export-form"' not in body and 'data-testid="automatic-form"' not in body
    assert reverse("portal:annotation_archive", args=[project.pk]) not in body
    response = annotator.post(
        reverse("portal:annotation_exports", args=[project.pk]), {"export-name": "Mine now"}
    )
    assert response.status_code == 403
    assert annotator.post(reverse("portal:annotation_archive", args=[project.pk])).status_code == 403
    assert not AnnotationExport.objects.exists()


# --- Labelling -------------------------------------------------------------------------------------


def test_label_skip_and_undo_without_javascript(world, project):
    annotator = logged_in(world.a.analyst)
    body = page(annotator, "annotation_label", project.pk)
    item = shown_item(body)
    assert html.escape(MESSAGES[item.row][0]) in body  # the text, read by the worker task
    assert 'data-shortcut="1"' in body and 'data-shortcut="2"' in body  # ham, spam
    assert 'data-shortcut="s"' in body and 'data-shortcut="u"' in body
    assert "Spam: unsolicited advertising." in body  # the instructions at hand
    assert 'data-testid="done">0<' in body and f'data-testid="total">{len(MESSAGES)}<' in body
    assert "annotation/label.js" in body

    first = label_next(annotator, project)
    assert Label.objects.get().item_id == first.pk
    body = page(annotator, "annotation_label", project.pk)
    second = shown_item(body)
    assert second.pk != first.pk

    # Skip: the next item is another one; the skipped one comes back only after all others.
    response = annotator.post(reverse("portal:annotation_item_skip", args=[project.pk, second.pk]))
    assert response.status_code == 302
    third = shown_item(page(annotator, "annotation_label", project.pk))
    assert third.pk not in (first.pk, second.pk)

    # Undo: the label is taken back and its item is shown again, to be labelled anew.
    response = annotator.post(reverse("portal:annotation_undo", args=[project.pk]))
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:annotation_label", args=[project.pk]) + f"?item={first.pk}"
    body = annotator.get(response["Location"]).content.decode()
    assert shown_item(body).pk == first.pk and "Undone:" in body
    assert not Label.objects.exists()

    # A label outside the set is refused with a message; nothing is recorded.
    response = annotator.post(
        reverse("portal:annotation_item_label", args=[project.pk, first.pk]), {"label": "eggs"}, follow=True
    )
    assert "not in the project" in response.content.decode() and not Label.objects.exists()
    # Nothing left to undo: a message, not an error page.
    response = annotator.post(reverse("portal:annotation_undo", args=[project.pk]), follow=True)
    assert response.status_code == 200 and "no label to undo" in response.content.decode()


def test_agreement_appears_once_two_people_label_the_overlap(world, project):
    manager, annotator = logged_in(world.a.admin), logged_in(world.a.analyst)
    assert 'data-testid="kappa-pending"' in page(manager, "annotation_project", project.pk)
    overlap = project.items.filter(needs_two=True).count()
    assert overlap >= 2
    # The manager labels every item; the annotator then gets the overlap items, and agrees.
    for _ in range(len(MESSAGES)):
        label_next(manager, project)
    assert 'data-testid="queue-empty"' in page(manager, "annotation_label", project.pk)
    for _ in range(overlap):
        item = label_next(annotator, project)
        assert item.needs_two
    assert 'data-testid="queue-empty"' in page(annotator, "annotation_label", project.pk)

    body = page(manager, "annotation_project", project.pk)
    assert f'data-testid="progress-done">{len(MESSAGES)}<' in body
    assert 'data-testid="progress-remaining">0<' in body
    spam = sum(1 for _, label in MESSAGES if label == "spam")
    assert f'data-testid="per-label-spam">{spam}<' in body
    assert f'data-testid="per-label-ham">{len(MESSAGES) - spam}<' in body
    assert 'data-testid="kappa">1.000<' in body
    assert f"Overlap items labelled twice: {overlap} of {overlap}" in body


def test_a_disagreement_goes_to_the_review_queue(world, project):
    manager, annotator = logged_in(world.a.admin), logged_in(world.a.analyst)
    first = label_next(manager, project)
    while not first.needs_two:  # overlap 0.5: one of the first few is an overlap item
        first = label_next(manager, project)
    item = shown_item(page(annotator, "annotation_label", project.pk))
    assert item.pk == first.pk  # an overlap item someone started comes first
    wrong = "ham" if MESSAGES[item.row][1] == "spam" else "spam"
    label_next(annotator, project, wrong)
    item.refresh_from_db()
    assert item.flagged and item.final_label == ""

    manager = logged_in(world.a.steward)  # a manager who gave neither label settles it
    review = page(manager, "annotation_review", project.pk)
    assert f'data-testid="review-{item.pk}"' in review
    assert html.escape(MESSAGES[item.row][0]) in review
    body = page(manager, "annotation_label", project.pk, review="1")
    assert shown_item(body).pk == item.pk and 'name="review" value="1"' in body
    assert re.search(r"People disagree. Given: <strong>(ham, spam|spam, ham)</strong>", body)
    response = manager.post(
        reverse("portal:annotation_item_label", args=[project.pk, item.pk]),
        {"label": MESSAGES[item.row][1], "review": "1"},
    )
    assert response["Location"] == reverse("portal:annotation_label", args=[project.pk]) + "?review=1"
    item.refresh_from_db()
    assert (item.flagged, item.final_source, item.final_label) == (False, "reviewed", MESSAGES[item.row][1])
    assert 'data-testid="queue-empty"' in page(manager, "annotation_label", project.pk, review="1")


def test_duplicates_page_lists_the_groups_with_their_texts(world, project):
    body = page(logged_in(world.a.analyst), "annotation_duplicates", project.pk)
    exact = project.items.filter(row__in=[0, 1]).order_by("row")
    assert all(item.duplicate_group is not None for item in exact)
    for item in exact:
        assert f'data-testid="duplicate-{item.pk}"' in body
    assert html.escape(MESSAGES[0][0]) in body and "exact" in body
    summary = page(logged_in(world.a.admin), "annotation_project", project.pk)
    assert re.search(r'data-testid="duplicates-summary">\d+ exact and \d+ near-duplicate items', summary)


# --- Managing -------------------------------------------------------------------------------------


def test_the_automatic_target_is_set_in_percent_and_checked_by_the_service(world, project):
    manager = logged_in(world.a.admin)
    url = reverse("portal:annotation_automatic", args=[project.pk])
    response = manager.post(url, {"automatic-target_precision": "98", "automatic-confidence_level": "90"})
    assert response.status_code == 302
    project.refresh_from_db()
    assert (project.target_precision, project.confidence_level) == (0.98, 0.9)

    response = manager.post(url, {"automatic-target_precision": "100", "automatic-confidence_level": "90"})
    assert response.status_code == 400
    body = html.unescape(response.content.decode())
    assert re.search(r'name="automatic-target_precision".*?errorlist.*?In \(0\.0, 1\.0\)', body, re.DOTALL)
    project.refresh_from_db()
    assert project.target_precision == 0.98


def test_model_runs_and_exports_report_their_refusals_on_the_form(world, project):
    manager = logged_in(world.a.admin)
    response = manager.post(reverse("portal:annotation_model_runs", args=[project.pk]), {"kind": "propose"})
    assert response.status_code == 400
    assert "at least two different labels" in response.content.decode()
    response = manager.post(reverse("portal:annotation_exports", args=[project.pk]), {"export-name": "Out"})
    assert response.status_code == 400 and "No labelled row is left to export." in response.content.decode()
    assert not project.model_runs.exists() and not AnnotationExport.objects.exists()


def test_an_export_is_listed_with_a_link_to_its_new_dataset(world, project):
    manager = logged_in(world.a.admin)
    label_next(manager, project)
    response = manager.post(
        reverse("portal:annotation_exports", args=[project.pk]),
        {"export-name": "Spam labelled", "export-drop_conflicts": "on", "export-include_model_labels": "on"},
    )
    assert response.status_code == 302
    export = AnnotationExport.objects.get()
    assert (export.drop_duplicates, export.drop_conflicts, export.include_model_labels) == (False, True, True)
    body = page(manager, "annotation_project", project.pk)
    assert reverse("portal:dataset", args=["org-a", export.dataset.slug]) in body
    assert "Spam labelled" in body


def test_archiving_stops_labelling(world, project):
    manager = logged_in(world.a.admin)
    assert manager.post(reverse("portal:annotation_archive", args=[project.pk])).status_code == 302
    project.refresh_from_db()
    assert project.status == "archived"
    body = page(logged_in(world.a.analyst), "annotation_label", project.pk)
    assert 'data-testid="not-ready"' in body and "archived" in body
