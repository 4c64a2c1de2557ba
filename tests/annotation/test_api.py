"""The annotation API (/api/v1/annotation/...): every endpoint as a project's manager, its annotator,
a member of the same organisation who is not listed, another organisation's admin, an operator and an
anonymous client; the issue's bad inputs (a label outside the set, a project on a non-text column, a
threshold outside (0, 1), an export with no labels), each a 4xx with its code and nothing half-written;
texts served by a worker (run in-process here: eager Celery) and never stored.

`make_text_dataset` and `make_project` are used by the security tests' matrix too.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

import pytest
from django.test import TestCase
from django.urls import reverse

from clearinghouse.accounts.models import User
from clearinghouse.organisations.roles import Role
from tests.factories import add_member_by_join_request, api_client, make_dataset, make_user

TEXT_SCHEMA = {
    "columns": [
        {"name": "text", "type": "text", "max_length": 500},
        {"name": "label", "type": "categorical", "categories": ["ham", "spam"]},
        {"name": "length", "type": "integer", "lower": 0, "upper": 1000},
    ]
}
# SMS-like messages: the first two are the same text (an exact duplicate), the third and fourth near
# duplicates. Distinct words so that every row's text is recognisable in a body.
MESSAGES = [
    ("Free entry to win a brand new car text WIN now", "spam"),
    ("Free entry to win a brand new car text WIN now", "spam"),
    ("Are we still meeting for lunch at noon today", "ham"),
    ("Are we still meeting for lunch at noon today?", "ham"),
    ("Congratulations you have been selected for a cash prize call now", "spam"),
    ("I will be home late tonight so start dinner without me", "ham"),
    ("URGENT your account has been suspended click the link to verify", "spam"),
    ("Can you pick up milk and bread on your way back", "ham"),
    ("You won a free holiday to the sun reply YES to claim", "spam"),
    ("Thanks for the birthday wishes it was a lovely day", "ham"),
    ("Limited offer cheap loans approved in minutes apply today", "spam"),
    ("The train is delayed by twenty minutes see you soon", "ham"),
    ("Claim your reward voucher worth five hundred pounds now", "spam"),
    ("Did you finish reading the book I lent you last month", "ham"),
    ("Exclusive deal for you only ringtones at half price send STOP to end", "spam"),
    ("Mum says hello and wants to know if you are coming on Sunday", "ham"),
    ("Your mobile number has won our weekly draw call the hotline", "spam"),
    ("Meeting moved to three in the afternoon room four", "ham"),
    ("Hot singles in your area are waiting text CHAT now", "spam"),
    ("Good luck with the exam tomorrow you will do great", "ham"),
    ("Final notice your parcel is waiting pay the customs fee here", "spam"),
    ("Shall we watch the match at the pub on Saturday", "ham"),
    ("Act now to double your savings guaranteed returns", "spam"),
    ("Sorry I missed your call I was in the shower", "ham"),
]


def messages_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["text", "label", "length"])
    for text, label in MESSAGES:
        writer.writerow([text, label, len(text)])
    return out.getvalue().encode()


def make_text_dataset(*, steward: User, slug: str = "messages"):
    """A dataset of the steward's organisation with one ready version of `MESSAGES` (a text column
    `text`, a categorical `label`, an integer `length`), uploaded and ingested for real."""
    return make_dataset(steward=steward, slug=slug, csv=messages_csv(), schema=TEXT_SCHEMA)


def make_project(*, manager: User, dataset, annotators: list[str] = (), slug: str = "spam", **options):
    """A project on `dataset`'s `text` column, prepared by the `annotation.prepare` task (run here,
    in-process, when the creating transaction would commit)."""
    from clearinghouse.annotation.models import AnnotationProject
    from clearinghouse.annotation.services import project_create
    from clearinghouse.celery import app as celery_app

    eager = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    try:
        with TestCase.captureOnCommitCallbacks(execute=True):
            project = project_create(
                actor=manager,
                dataset=dataset,
                name="Spam or ham",
                slug=slug,
                text_column="text",
                labels=["ham", "spam"],
                instructions="Spam: unsolicited advertising.",
                annotators=list(annotators),
                **options,
            )
    finally:
        celery_app.conf.task_always_eager = eager
    project = AnnotationProject.objects.get(pk=project.pk)
    assert project.status == "ready", (project.status, project.error_code)
    return project


@pytest.fixture
def eager():
    """Workers' tasks run in-process (texts, model runs, exports)."""
    from clearinghouse.celery import app as celery_app

    celery_app.conf.task_always_eager = True
    yield
    celery_app.conf.task_always_eager = False


@dataclass
class Setup:
    world: object
    project: object
    manager: User  # org A's admin
    annotator: User  # org A's analyst, listed
    outsider: User  # org A's second analyst, not listed
    other_admin: User  # org B's admin
    operator: User

    clients: dict = field(default_factory=dict)

    def client(self, who: str):
        """An API client of `who` (one token each, made up front: making one is audited)."""
        if who not in self.clients:
            user = None if who == "anonymous" else getattr(self, who)
            self.clients[who] = api_client(user)
            self.clients[who].raise_request_exception = False
        return self.clients[who]


@pytest.fixture
def setup(world, media_root, eager) -> Setup:
    a = world.a
    outsider = make_user("analyst2_org-a")
    add_member_by_join_request(organisation=a.organisation, admin=a.admin, user=outsider, role=Role.ANALYST)
    dataset = make_text_dataset(steward=a.steward)
    project = make_project(manager=a.admin, dataset=dataset, annotators=[a.analyst.username])
    s = Setup(world, project, a.admin, a.analyst, outsider, world.b.admin, world.operator)
    for who in ("manager", "annotator", "outsider", "other_admin", "operator", "anonymous"):
        s.client(who)
    return s


def url(name: str, *args) -> str:
    return reverse(f"api:{name}", args=list(args))


def counts() -> dict[str, int]:
    """What a refused request must not have changed."""
    from clearinghouse.annotation.models import (
        AnnotationExport,
        AnnotationItem,
        AnnotationProject,
        ItemSkip,
        Label,
        ModelRun,
    )
    from clearinghouse.audit.models import AuditEvent
    from clearinghouse.datasets.models import Dataset, DatasetVersion

    return {
        model.__name__: model.objects.count()
        for model in (
            AnnotationProject,
            AnnotationItem,
            Label,
            ItemSkip,
            ModelRun,
            AnnotationExport,
            Dataset,
            DatasetVersion,
            AuditEvent,
        )
    }


def row_text(row: int) -> str:
    return MESSAGES[row][0]


def error(response) -> str:
    body = response.json()
    assert set(body) >= {"code", "detail"}, body
    return body["code"]


def label_items(s: Setup, n: int, *, who: str = "annotator") -> list[int]:
    """Labels the next `n` items of `who`'s queue with their true label, through the API."""
    client = s.client(who)
    done = []
    for _ in range(n):
        body = client.get(url("annotation_next", s.project.pk)).json()
        item = body["item"]
        assert item is not None, body
        truth = MESSAGES[item["row"]][1]
        response = client.post(
            url("annotation_item_label", s.project.pk, item["id"]), {"label": truth}, format="json"
        )
        assert response.status_code == 201, response.content
        done.append(item["id"])
    return done


# --- Projects -----------------------------------------------------------------------------------------


def test_manager_creates_lists_reads_updates_and_archives(setup, django_capture_on_commit_callbacks):
    s = setup
    manager = s.client("manager")
    dataset = s.project.dataset
    with django_capture_on_commit_callbacks(execute=True):
        response = manager.post(
            url("annotation_projects"),
            {
                "dataset": f"{dataset.organisation.slug}/{dataset.slug}",
                "name": "Second pass",
                "slug": "second",
                "text_column": "text",
                "labels": ["ham", "spam", "unsure"],
                "overlap": 0.2,
                "annotators": [s.annotator.username],
            },
            format="json",
        )
    assert response.status_code == 201, response.content
    created = response.json()
    assert created["dataset"] == f"{dataset.organisation.slug}/{dataset.slug}"
    assert created["version"] == 1 and created["labels"] == ["ham", "spam", "unsure"]
    assert created["annotators"] == [s.annotator.username] and created["manager"] is True
    # prepared by the worker once the request committed
    detail = manager.get(url("annotation_project", created["id"])).json()
    assert detail["status"] == "ready" and detail["item_count"] == len(MESSAGES)
    assert detail["progress"]["total"] == len(MESSAGES) and detail["progress"]["done"] == 0
    assert detail["duplicate_summary"]["exact_items"] >= 2

    # a dataset named by its slug alone is one of the manager's organisation
    response = manager.post(
        url("annotation_projects"),
        {
            "dataset": dataset.slug,
            "name": "Third",
            "slug": "third",
            "text_column": "text",
            "labels": ["a", "b"],
        },
        format="json",
    )
    assert response.status_code == 201, response.content

    listed = manager.get(url("annotation_projects")).json()
    assert listed["count"] == 3 and {p["slug"] for p in listed["results"]} == {"spam", "second", "third"}
    assert set(listed["results"][0]) >= {"id", "url", "status", "labels", "annotators"}

    response = manager.patch(
        url("annotation_project", s.project.pk),
        {"instructions": "Ham: anything personal.", "target_precision": 0.98, "confidence_level": 0.9},
        format="json",
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["instructions"] == "Ham: anything personal."
    assert body["target_precision"] == 0.98 and body["confidence_level"] == 0.9

    response = manager.patch(
        url("annotation_project", s.project.pk), {"annotators": [s.outsider.username]}, format="json"
    )
    assert response.status_code == 200 and response.json()["annotators"] == [s.outsider.username]
    assert s.client("outsider").get(url("annotation_project", s.project.pk)).status_code == 200
    assert s.client("annotator").get(url("annotation_project", s.project.pk)).status_code == 404

    response = manager.post(url("annotation_project_archive", s.project.pk))
    assert response.status_code == 200, response.content
    assert response.json()["status"] == "archived"


def test_annotator_sees_only_listed_projects(setup):
    s = setup
    listed = s.client("annotator").get(url("annotation_projects")).json()
    assert [p["id"] for p in listed["results"]] == [s.project.pk]
    detail = s.client("annotator").get(url("annotation_project", s.project.pk)).json()
    assert detail["manager"] is False and detail["progress"]["total"] == len(MESSAGES)
    for who in ("outsider", "other_admin", "operator"):
        assert s.client(who).get(url("annotation_projects")).json()["count"] == 0, who


def test_dataset_of_another_organisation_is_not_found(setup):
    s = setup
    before = counts()
    dataset = s.project.dataset
    response = s.client("other_admin").post(
        url("annotation_projects"),
        {
            "dataset": f"{dataset.organisation.slug}/{dataset.slug}",
            "name": "Theirs",
            "text_column": "text",
            "labels": ["ham", "spam"],
        },
        format="json",
    )
    assert response.status_code == 404 and error(response) == "not_found"
    assert counts() == before


# --- Labelling ----------------------------------------------------------------------------------------


def test_annotator_labels_undoes_skips_and_reads_texts(setup):
    s = setup
    client = s.client("annotator")
    body = client.get(url("annotation_next", s.project.pk)).json()
    item = body["item"]
    assert set(item) == {"id", "row", "text", "proposal", "flagged", "flag_reason", "given_label"}
    assert item["text"] == row_text(item["row"]) and item["proposal"] is None and item["flagged"] is False
    assert body["progress"]["done"] == 0

    response = client.post(
        url("annotation_item_label", s.project.pk, item["id"]), {"label": "spam"}, format="json"
    )
    assert response.status_code == 201, response.content
    label = response.json()
    assert label["item"] == item["id"] and label["label"] == "spam" and label["source"] == "human"
    assert client.get(url("annotation_project", s.project.pk)).json()["progress"]["human_labels"] == 1

    response = client.post(url("annotation_undo", s.project.pk))
    assert response.status_code == 200, response.content
    assert response.json() == {"item": item["id"], "label": "spam"}
    assert client.get(url("annotation_project", s.project.pk)).json()["progress"]["human_labels"] == 0
    response = client.post(url("annotation_undo", s.project.pk))
    assert response.status_code == 409 and error(response) == "nothing_to_undo"

    response = client.post(url("annotation_item_skip", s.project.pk, item["id"]))
    assert response.status_code == 204, response.content
    following = client.get(url("annotation_next", s.project.pk)).json()["item"]
    assert following is not None and following["id"] != item["id"]

    ids = [item["id"], following["id"]]
    response = client.get(url("annotation_items", s.project.pk), {"ids": ",".join(map(str, ids))})
    assert response.status_code == 200, response.content
    items = response.json()["items"]
    assert [i["id"] for i in items] == ids
    assert all(i["text"] == row_text(i["row"]) for i in items)

    # the manager labels too
    response = s.client("manager").post(
        url("annotation_item_label", s.project.pk, following["id"]), {"label": "ham"}, format="json"
    )
    assert response.status_code == 201, response.content

    duplicates = client.get(url("annotation_duplicates", s.project.pk)).json()
    assert duplicates["count"] >= 1
    group = duplicates["results"][0]
    assert set(group) == {"group", "kind", "item_ids", "items", "labels", "conflicting"}
    assert any(g["kind"] == "exact" and len(g["item_ids"]) == 2 for g in duplicates["results"])

    review = client.get(url("annotation_review", s.project.pk)).json()
    assert review["count"] == 0 and review["results"] == []


def test_texts_are_not_stored(setup):
    """What the API stores of an item is its row and labels: no message text is in any of the app's
    tables (every text and JSON field of every row, read back)."""
    from django.apps import apps
    from django.db import models

    s = setup
    label_items(s, 3)
    client = s.client("annotator")
    ids = ",".join(str(i) for i in s.project.items.values_list("pk", flat=True)[:10])
    assert client.get(url("annotation_items", s.project.pk), {"ids": ids}).status_code == 200
    fragments = [text[:24] for text, _ in MESSAGES]
    found = []
    for model in apps.get_app_config("annotation").get_models():
        fields = [
            f.name
            for f in model._meta.concrete_fields
            if isinstance(f, (models.CharField, models.TextField, models.JSONField))
        ]
        for row in model.objects.values_list(*fields) if fields else ():
            stored = repr(row)
            found += [(model.__name__, fragment) for fragment in fragments if fragment in stored]
    assert not found


def test_queue_ends_with_a_null_item(setup):
    s = setup
    client = s.client("annotator")
    seen = set()
    for _ in range(len(MESSAGES) + 5):
        item = client.get(url("annotation_next", s.project.pk)).json()["item"]
        if item is None:
            break
        assert item["id"] not in seen
        seen.add(item["id"])
        response = client.post(
            url("annotation_item_label", s.project.pk, item["id"]),
            {"label": MESSAGES[item["row"]][1]},
            format="json",
        )
        assert response.status_code == 201, response.content
    else:
        pytest.fail("the queue never ended")
    assert len(seen) == len(MESSAGES)
    body = client.get(url("annotation_next", s.project.pk)).json()
    assert body == {"item": None, "progress": body["progress"]}
    assert body["progress"]["human_labels"] == len(MESSAGES)


def test_items_ids_are_checked(setup):
    s = setup
    client = s.client("annotator")
    for ids in ("", "x", "1,,2", "-1", "0", ",".join(str(n) for n in range(1, 52)), "1,1", "9" * 30):
        response = client.get(url("annotation_items", s.project.pk), {"ids": ids})
        assert response.status_code == 400, (ids, response.content)
        assert error(response) == "invalid" and "ids" in response.json()["fields"]
    assert client.get(url("annotation_items", s.project.pk)).status_code == 400
    # an item of no project of the annotator's: 404, as for one that does not exist
    response = client.get(url("annotation_items", s.project.pk), {"ids": "999999"})
    assert response.status_code == 404 and error(response) == "not_found"


def test_texts_unavailable_without_a_worker(setup, settings):
    """No worker answers (Celery not eager, nobody consuming): 503 `texts_unavailable`."""
    from clearinghouse.celery import app as celery_app

    s = setup
    settings.ANNOTATION_TEXTS_WAIT_SECONDS = 0.1
    celery_app.conf.task_always_eager = False
    try:
        response = s.client("annotator").get(url("annotation_next", s.project.pk))
    finally:
        celery_app.conf.task_always_eager = True
    assert response.status_code == 503 and error(response) == "texts_unavailable"


# --- Model runs, automatic labelling, exports ---------------------------------------------------------


def test_model_runs_and_automatic_labelling(setup, django_capture_on_commit_callbacks):
    s = setup
    manager = s.client("manager")
    response = manager.post(url("annotation_model_runs", s.project.pk), {"kind": "propose"}, format="json")
    assert response.status_code == 409 and error(response) == "too_few_labels"

    label_items(s, 12)
    with django_capture_on_commit_callbacks(execute=True):
        response = manager.post(
            url("annotation_model_runs", s.project.pk), {"kind": "propose"}, format="json"
        )
    assert response.status_code == 202, response.content
    started = response.json()
    assert started["kind"] == "propose" and started["status"] == "queued"
    run = manager.get(url("annotation_model_run", s.project.pk, started["id"])).json()
    assert run["status"] == "succeeded", run
    assert run["labels_used"] >= 12
    listed = s.client("annotator").get(url("annotation_model_runs", s.project.pk)).json()
    assert [r["id"] for r in listed["results"]] == [started["id"]]

    # the annotator's next item now carries the model's proposal
    item = s.client("annotator").get(url("annotation_next", s.project.pk)).json()["item"]
    assert item["proposal"]["label"] in {"ham", "spam"} and 0 <= item["proposal"]["confidence"] <= 1

    response = manager.post(url("annotation_automatic", s.project.pk), {"run": started["id"]}, format="json")
    if run["threshold"] is None:
        assert response.status_code == 409 and error(response) == "no_threshold"
    else:
        assert response.status_code == 200, response.content
        assert response.json()["labelled"] >= 0

    response = manager.post(url("annotation_automatic", s.project.pk), {"run": 999999}, format="json")
    assert response.status_code == 404 and error(response) == "not_found"

    with django_capture_on_commit_callbacks(execute=True):
        response = manager.post(url("annotation_model_runs", s.project.pk), {"kind": "review"}, format="json")
    assert response.status_code == 202, response.content
    review_run = manager.get(url("annotation_model_run", s.project.pk, response.json()["id"])).json()
    assert review_run["kind"] == "review" and review_run["status"] in {"succeeded", "failed"}, review_run
    review = s.client("annotator").get(url("annotation_review", s.project.pk)).json()
    for entry in review["results"]:
        assert entry["flagged"] is True and "text" not in entry


def test_export_writes_a_new_dataset(setup, django_capture_on_commit_callbacks):
    from clearinghouse.datasets.models import Dataset

    s = setup
    manager = s.client("manager")
    label_items(s, 6)
    with django_capture_on_commit_callbacks(execute=True):
        response = manager.post(
            url("annotation_exports", s.project.pk),
            {"name": "Spam labelled", "slug": "spam-labelled", "drop_duplicates": True},
            format="json",
        )
    assert response.status_code == 202, response.content
    started = response.json()
    assert started["dataset"] == f"{s.project.organisation.slug}/spam-labelled"
    export = manager.get(url("annotation_export", s.project.pk, started["id"])).json()
    assert export["status"] == "succeeded", export
    assert export["version"] == 1 and export["rows"] >= 1
    listed = manager.get(url("annotation_exports", s.project.pk)).json()
    assert [e["id"] for e in listed["results"]] == [started["id"]]
    dataset = Dataset.objects.get(organisation=s.project.organisation, slug="spam-labelled")
    assert dataset.versions.get(number=1).status == "ready"
    columns = [c["name"] for c in dataset.schema["columns"]]
    # the data has a `label` column already: the project's labels are `annotation_label`
    assert columns == [
        "text",
        "label",
        "length",
        "annotation_label",
        "annotation_label_source",
        "annotation_label_confidence",
        "annotation_label_model_run",
    ]


def test_export_label_column_is_checked(setup):
    s = setup
    label_items(s, 2)
    manager = s.client("manager")
    before = counts()
    for column, code in (
        ("label", "label_column_taken"),
        ("length", "label_column_taken"),
        ("no way", "label_column_invalid"),
    ):
        response = manager.post(
            url("annotation_exports", s.project.pk), {"name": "Out", "label_column": column}, format="json"
        )
        assert response.status_code == 400, (column, response.content)
        assert error(response) == code, column
    assert counts() == before


# --- The bad inputs: a code each, nothing half-written ----------------------------------------


def test_label_outside_the_set_is_refused(setup):
    s = setup
    client = s.client("annotator")
    item = client.get(url("annotation_next", s.project.pk)).json()["item"]
    before = counts()
    for value in ("eggs", "HAM", "", " ham"):
        response = client.post(
            url("annotation_item_label", s.project.pk, item["id"]), {"label": value}, format="json"
        )
        assert response.status_code == 400, (value, response.content)
        assert error(response) == "label_not_in_set", value
    for value in (1, None, ["ham"], True):
        response = client.post(
            url("annotation_item_label", s.project.pk, item["id"]), {"label": value}, format="json"
        )
        assert response.status_code == 400, (value, response.content)
    assert counts() == before


def test_project_on_a_non_text_column_is_refused(setup):
    s = setup
    dataset = s.project.dataset
    before = counts()
    for column, code in (
        ("label", "column_not_text"),
        ("length", "column_not_text"),
        ("nope", "unknown_column"),
    ):
        response = s.client("manager").post(
            url("annotation_projects"),
            {"dataset": dataset.slug, "name": "Wrong", "text_column": column, "labels": ["ham", "spam"]},
            format="json",
        )
        assert response.status_code == 400, (column, response.content)
        assert error(response) == code, column
    assert counts() == before


@pytest.mark.parametrize("field", ["target_precision", "confidence_level"])
def test_threshold_outside_zero_one_is_refused(setup, field):
    from clearinghouse.annotation.models import AnnotationProject

    s = setup
    before = counts()
    stored = AnnotationProject.objects.filter(pk=s.project.pk).values().get()
    for value in (0, 1, 1.5, -0.1, 0.0):
        response = s.client("manager").patch(
            url("annotation_project", s.project.pk), {field: value}, format="json"
        )
        assert response.status_code == 400, (value, response.content)
        assert error(response) == "threshold_out_of_range", value
    for value in ("high", None, [0.9]):
        response = s.client("manager").patch(
            url("annotation_project", s.project.pk), {field: value}, format="json"
        )
        assert response.status_code == 400, (value, response.content)
    assert counts() == before
    assert AnnotationProject.objects.filter(pk=s.project.pk).values().get() == stored


def test_export_with_no_labels_is_refused(setup):
    s = setup
    before = counts()
    response = s.client("manager").post(
        url("annotation_exports", s.project.pk), {"name": "Empty"}, format="json"
    )
    assert response.status_code == 409 and error(response) == "nothing_to_export"
    assert counts() == before


# --- Who may do what ----------------------------------------------------------------------------------

ANNOTATOR_READ = {"manager": 200, "annotator": 200}
HIDDEN = {"outsider": 404, "other_admin": 404, "operator": 404, "anonymous": 401}


def _run(s: Setup) -> int:
    """A finished propose run that certified no threshold (made directly: no model runs here)."""
    from clearinghouse.annotation.models import ModelRun

    run = s.project.model_runs.first() or ModelRun.objects.create(
        project=s.project, kind="propose", status="succeeded", labels_used=2
    )
    return run.pk


def _first_item(s: Setup) -> int:
    return s.project.items.order_by("pk").values_list("pk", flat=True)[0]


# (method, route, args(setup), body, expected per actor); manager writes that need state they lack here
# answer 409 to the manager (past authorization); annotators are refused 403 `role_forbidden`.
ENDPOINTS = [
    (
        "get",
        "annotation_projects",
        lambda s: [],
        None,
        {**ANNOTATOR_READ, **HIDDEN, **{"outsider": 200, "other_admin": 200, "operator": 200}},
    ),
    ("get", "annotation_project", lambda s: [s.project.pk], None, {**ANNOTATOR_READ, **HIDDEN}),
    (
        "patch",
        "annotation_project",
        lambda s: [s.project.pk],
        {"instructions": "x"},
        {"manager": 200, "annotator": 403, **HIDDEN},
    ),
    (
        "post",
        "annotation_project_archive",
        lambda s: [s.project.pk],
        None,
        {"manager": 200, "annotator": 403, **HIDDEN},
    ),
    ("get", "annotation_next", lambda s: [s.project.pk], None, {**ANNOTATOR_READ, **HIDDEN}),
    (
        "post",
        "annotation_item_label",
        lambda s: [s.project.pk, _first_item(s)],
        {"label": "ham"},
        {"manager": 201, "annotator": 201, **HIDDEN},
    ),
    (
        "post",
        "annotation_item_skip",
        lambda s: [s.project.pk, _first_item(s)],
        None,
        {"manager": 204, "annotator": 204, **HIDDEN},
    ),
    ("post", "annotation_undo", lambda s: [s.project.pk], None, {"manager": 409, "annotator": 409, **HIDDEN}),
    ("get", "annotation_items", lambda s: [s.project.pk], {"ids": None}, {**ANNOTATOR_READ, **HIDDEN}),
    ("get", "annotation_model_runs", lambda s: [s.project.pk], None, {**ANNOTATOR_READ, **HIDDEN}),
    (
        "post",
        "annotation_model_runs",
        lambda s: [s.project.pk],
        {"kind": "propose"},
        {"manager": 409, "annotator": 403, **HIDDEN},
    ),
    (
        "get",
        "annotation_model_run",
        lambda s: [s.project.pk, _run(s)],
        None,
        {**ANNOTATOR_READ, **HIDDEN},
    ),
    (
        "post",
        "annotation_automatic",
        lambda s: [s.project.pk],
        lambda s: {"run": _run(s)},
        {"manager": 409, "annotator": 403, **HIDDEN},
    ),
    ("get", "annotation_duplicates", lambda s: [s.project.pk], None, {**ANNOTATOR_READ, **HIDDEN}),
    ("get", "annotation_review", lambda s: [s.project.pk], None, {**ANNOTATOR_READ, **HIDDEN}),
    (
        "get",
        "annotation_exports",
        lambda s: [s.project.pk],
        None,
        {"manager": 200, "annotator": 403, **HIDDEN},
    ),
    (
        "post",
        "annotation_exports",
        lambda s: [s.project.pk],
        {"name": "Out"},
        {"manager": 409, "annotator": 403, **HIDDEN},
    ),
    (
        "get",
        "annotation_export",
        lambda s: [s.project.pk, 999999],
        None,
        {"manager": 404, "annotator": 403, **HIDDEN},
    ),
]
ACTORS = ["manager", "annotator", "outsider", "other_admin", "operator", "anonymous"]


def test_every_annotation_route_is_covered():
    from django.urls import get_resolver

    from tests.security.test_authorization_matrix import _route_names

    routes = {name for name in _route_names(get_resolver()) if name.startswith("api:annotation_")}
    assert routes == {f"api:{route}" for _, route, *_ in ENDPOINTS}


@pytest.mark.parametrize(
    "index,actor",
    [(i, actor) for i in range(len(ENDPOINTS)) for actor in ACTORS],
    ids=[f"{m}-{r}-{actor}" for m, r, *_ in ENDPOINTS for actor in ACTORS],
)
def test_who_may_do_what(setup, index, actor):
    s = setup
    method, route, args, body, expected = ENDPOINTS[index]
    target = url(route, *args(s))
    client = s.client(actor)
    if route == "annotation_items":
        response = client.get(target, {"ids": str(_first_item(s))})
    elif method == "get":
        response = client.get(target)
    else:
        data = body(s) if callable(body) else body or {}
        before = counts()
        response = getattr(client, method)(target, data, format="json")
    assert response.status_code == expected[actor], (method, target, actor, response.content)
    if response.status_code >= 400:
        code = error(response)
        if response.status_code == 404 and actor != "manager" and actor != "annotator":
            assert code == "not_found"
            # nothing of the project reaches those who may not see it
            text = response.content.decode()
            assert s.project.name not in text and "ham" not in text
        if response.status_code == 403 and actor == "annotator":
            assert code == "role_forbidden"
        if method != "get":
            assert counts() == before, (method, target, actor)
