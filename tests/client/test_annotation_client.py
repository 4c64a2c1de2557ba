"""The annotation verbs of the Python client and of `clearinghouse annotation ...`.

First without the service: a small stateful stand-in for the annotation API behind httpx.MockTransport
(the client's transport only, as in test_client_unit.py). Then against the real service (live_server,
real Celery workers on the ingestion and annotation queues): a text dataset of organisation A, a
project its steward creates, labelled by its analyst from the CLI, proposals, automatic labelling,
duplicates and the export."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from clearinghouse_client import ClearinghouseError, Client, cli
from tests.client.test_client_contract import RecordingTransport

TOKEN = "chp_unit-test-secret"
ROOT = Path(__file__).resolve().parents[2]
BASE = "/api/v1/annotation/projects"


# --------------------------------------------------------------------------------------------
# a stand-in for the annotation API (shapes as in clearinghouse/annotation/apis.py)


class FakeAnnotationApi:
    """Project 1: items 1..5 (rows 0..4, texts "text 0".."text 4"), labels ham/spam. The queue serves
    the first item that has no label of yours and that you did not skip. Model runs and exports are
    `queued` when started and succeed (or fail) after `polls_to_finish` reads."""

    def __init__(self, *, run_fails: bool = False, page_size: int = 2):
        self.labels = ["ham", "spam"]
        self.items = {i: {"row": i - 1, "text": f"text {i - 1}"} for i in range(1, 6)}
        self.given: dict[int, str] = {}
        self.order: list[int] = []
        self.skipped: set[int] = set()
        self.runs: dict[int, dict] = {}
        self.exports: dict[int, dict] = {}
        self.polls: dict[str, int] = {}
        self.polls_to_finish = 2
        self.run_fails = run_fails
        self.page_size = page_size
        self.project = {
            "id": 1,
            "url": f"{BASE}/1",
            "organisation": "org-a",
            "name": "Spam",
            "slug": "spam",
            "dataset": "org-a/sms",
            "version": 1,
            "text_column": "text",
            "labels": self.labels,
            "instructions": "Spam sells something.",
            "overlap": 0.1,
            "target_precision": None,
            "confidence_level": 0.95,
            "annotators": ["alice"],
            "status": "ready",
            "error_code": None,
            "item_count": 5,
            "duplicate_summary": {"exact_items": 2, "near_items": 0, "groups": 1},
            "created_by": "steward",
            "created_at": "2026-12-05T10:00:00Z",
        }
        self.requests: list[tuple[str, str, dict | None]] = []

    # helpers
    def progress(self) -> dict:
        per_label: dict[str, int] = {}
        for value in self.given.values():
            per_label[value] = per_label.get(value, 0) + 1
        return {
            "total": 5,
            "done": len(self.given),
            "auto": 0,
            "remaining": 5 - len(self.given),
            "human_labels": len(self.given),
            "overlap_items": 0,
            "overlap_done": 0,
            "kappa": None,
            "per_label": per_label,
            "flagged": 0,
        }

    def page(self, request: httpx.Request, results: list[dict]) -> dict:
        offset = int(request.url.params.get("offset", 0))
        end = offset + self.page_size
        following = str(request.url.copy_merge_params({"limit": self.page_size, "offset": end}))
        return {
            "count": len(results),
            "next": following if end < len(results) else None,
            "previous": None,
            "results": results[offset:end],
        }

    def item_text(self, item_id: int) -> dict:
        return {
            "id": item_id,
            "row": self.items[item_id]["row"],
            "text": self.items[item_id]["text"],
            "proposal": {"label": "spam", "confidence": 0.75} if item_id == 2 else None,
            "flagged": False,
            "given_label": None,
        }

    def finishing(self, key: str, body: dict) -> dict:
        self.polls[key] = self.polls.get(key, 0) + 1
        if body["status"] in {"queued", "running"} and self.polls[key] >= self.polls_to_finish:
            body["status"] = "failed" if (self.run_fails and key.startswith("run")) else "succeeded"
            if body["status"] == "failed":
                body["error_code"] = "training_failed"
        elif body["status"] == "queued":
            body["status"] = "running"
        return body

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        body = json.loads(request.content) if request.content else None
        path, method = request.url.path, request.method
        self.requests.append((method, path, body))
        if path == BASE and method == "GET":
            return httpx.Response(200, json=self.page(request, [self.project, {**self.project, "id": 2}]))
        if path == BASE and method == "POST":
            if body["text_column"] != "text":
                return httpx.Response(400, json={"code": "unknown_column", "detail": "No such column."})
            return httpx.Response(
                201, json={**self.project, "status": "preparing", "progress": self.progress()}
            )
        if not path.startswith(f"{BASE}/1"):
            return httpx.Response(404, json={"code": "not_found", "detail": "Not found."})
        rest = path[len(f"{BASE}/1") :]
        if rest == "" and method == "GET":
            return httpx.Response(200, json={**self.project, "manager": True, "progress": self.progress()})
        if rest == "" and method == "PATCH":
            if not 0 < body.get("target_precision", 0.5) < 1:
                return httpx.Response(400, json={"code": "threshold_out_of_range", "detail": "In (0, 1)."})
            self.project.update(body)
            return httpx.Response(200, json={**self.project, "manager": True, "progress": self.progress()})
        if rest == "/next":
            queue = [i for i in self.items if i not in self.given and i not in self.skipped]
            item = self.item_text(queue[0]) if queue else None
            return httpx.Response(200, json={"item": item, "progress": self.progress()})
        if rest == "/items":
            ids = [int(i) for i in request.url.params["ids"].split(",")]
            return httpx.Response(200, json={"items": [self.item_text(i) for i in ids]})
        if rest.startswith("/items/") and rest.endswith("/label"):
            item_id = int(rest.split("/")[2])
            if body["label"] not in self.labels:
                return httpx.Response(400, json={"code": "label_not_in_set", "detail": "Not a label."})
            if item_id in self.given:
                return httpx.Response(409, json={"code": "item_complete", "detail": "Labelled already."})
            self.given[item_id] = body["label"]
            self.order.append(item_id)
            return httpx.Response(
                201, json={"id": len(self.order), "item": item_id, "label": body["label"], "source": "human"}
            )
        if rest.startswith("/items/") and rest.endswith("/skip"):
            self.skipped.add(int(rest.split("/")[2]))
            return httpx.Response(204)
        if rest == "/undo":
            if not self.order:
                return httpx.Response(409, json={"code": "nothing_to_undo", "detail": "No label of yours."})
            item_id = self.order.pop()
            return httpx.Response(200, json={"item": item_id, "label": self.given.pop(item_id)})
        if rest == "/model-runs" and method == "POST":
            run_id = len(self.runs) + 1
            self.runs[run_id] = {
                "id": run_id,
                "url": f"{BASE}/1/model-runs/{run_id}",
                "kind": body["kind"],
                "status": "queued",
                "labels_used": len(self.given),
                "metrics": {"macro_f1": 0.9},
                "target_precision": self.project["target_precision"],
                "confidence_level": self.project["confidence_level"],
                "threshold": 0.8 if self.project["target_precision"] else None,
                "estimated_precision": 0.99 if self.project["target_precision"] else None,
                "precision_lower_bound": 0.985 if self.project["target_precision"] else None,
                "coverage": 0.6 if self.project["target_precision"] else None,
                "error_code": None,
                "created_by": "steward",
                "created_at": "2026-12-05T10:00:00Z",
                "started_at": None,
                "finished_at": None,
            }
            return httpx.Response(202, json=self.runs[run_id])
        if rest == "/model-runs":
            return httpx.Response(200, json=self.page(request, list(self.runs.values())))
        if rest.startswith("/model-runs/"):
            run_id = int(rest.split("/")[2])
            return httpx.Response(200, json=self.finishing(f"run{run_id}", self.runs[run_id]))
        if rest == "/automatic":
            run = self.runs[body["run"]]
            if run["threshold"] is None:
                return httpx.Response(409, json={"code": "no_threshold", "detail": "No threshold."})
            return httpx.Response(200, json={"labelled": 3, "progress": self.progress()})
        if rest == "/duplicates":
            groups = [
                {
                    "group": 1,
                    "kind": "exact",
                    "item_ids": [4, 5],
                    "labels": ["ham", "spam"],
                    "conflicting": True,
                }
            ]
            return httpx.Response(200, json=self.page(request, groups))
        if rest == "/review":
            return httpx.Response(200, json=self.page(request, []))
        if rest == "/exports" and method == "POST":
            if not self.given:
                return httpx.Response(409, json={"code": "nothing_to_export", "detail": "No labels."})
            export_id = len(self.exports) + 1
            self.exports[export_id] = {
                "id": export_id,
                "url": f"{BASE}/1/exports/{export_id}",
                "dataset": f"org-a/{body.get('slug') or 'sms-labelled'}",
                "version": None,
                "status": "queued",
                "drop_duplicates": body["drop_duplicates"],
                "drop_conflicts": body["drop_conflicts"],
                "include_model_labels": body["include_model_labels"],
                "rows": None,
                "error_code": None,
                "created_by": "steward",
                "created_at": "2026-12-05T10:00:00Z",
                "finished_at": None,
            }
            return httpx.Response(202, json=self.exports[export_id])
        if rest == "/exports":
            return httpx.Response(200, json=self.page(request, list(self.exports.values())))
        if rest.startswith("/exports/"):
            export = self.finishing(f"export{rest.split('/')[2]}", self.exports[int(rest.split("/")[2])])
            if export["status"] == "succeeded":
                export.update(version=1, rows=len(self.given))
            return httpx.Response(200, json=export)
        return httpx.Response(404, json={"code": "not_found", "detail": "Not found."})


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setattr("clearinghouse_client.client.time.sleep", lambda s: None)
    return FakeAnnotationApi()


def client_of(fake: FakeAnnotationApi) -> Client:
    return Client("http://service.test/", TOKEN, transport=httpx.MockTransport(fake))


@pytest.fixture
def run_cli(fake, monkeypatch, tmp_path, capsys):
    """`clearinghouse ...` in-process with the stand-in as the client's transport."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLEARINGHOUSE_URL", "http://service.test")
    monkeypatch.setenv("CLEARINGHOUSE_TOKEN", TOKEN)
    monkeypatch.setattr(
        cli,
        "make_client",
        lambda args: Client(*cli.settings(), timeout=args.timeout, transport=httpx.MockTransport(fake)),
    )

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = cli.main(list(args))
        out = capsys.readouterr()
        assert TOKEN not in out.out + out.err
        return code, out.out, out.err

    return run


# --------------------------------------------------------------------------------------------
# the client, without the service


def test_projects_follow_the_pagination_and_create_sends_the_contract(fake):
    fake.page_size = 1
    client = client_of(fake)
    assert [p["id"] for p in client.annotation_projects()] == [1, 2]
    assert sum(1 for m, p, _ in fake.requests if p == BASE and m == "GET") == 2  # two pages
    project = client.annotation_project_create(
        "org-a/sms", "Spam", "text", "ham, spam", instructions="Read it.", overlap=0.2, annotators=["alice"]
    )
    assert project["status"] == "preparing"
    assert fake.requests[-1][2] == {
        "dataset": "org-a/sms",
        "name": "Spam",
        "text_column": "text",
        "labels": ["ham", "spam"],
        "instructions": "Read it.",
        "overlap": 0.2,
        "annotators": ["alice"],
    }
    client.annotation_project_create("sms", "Spam", "text", ["ham", "spam"], version=2, slug="s")
    assert fake.requests[-1][2] == {
        "dataset": "sms",
        "name": "Spam",
        "text_column": "text",
        "labels": ["ham", "spam"],
        "instructions": "",
        "version": 2,
        "slug": "s",
    }
    with pytest.raises(ClearinghouseError) as caught:
        client.annotation_project_create("org-a/sms", "Spam", "body", ["ham", "spam"])
    assert (caught.value.status, caught.value.code) == (400, "unknown_column")
    with pytest.raises(ClearinghouseError) as caught:
        client.annotation_project(99)
    assert (caught.value.status, caught.value.code) == (404, "not_found")


def test_update_checks_its_fields_before_asking(fake):
    client = client_of(fake)
    updated = client.annotation_project_update(1, target_precision=0.98, confidence_level=0.9)
    assert updated["target_precision"] == 0.98 and updated["progress"]["total"] == 5
    sent = len(fake.requests)
    with pytest.raises(ClearinghouseError) as caught:
        client.annotation_project_update(1, threshold=0.5)
    assert caught.value.status == 0 and caught.value.code == "invalid_arguments"
    assert len(fake.requests) == sent  # nothing sent
    with pytest.raises(ClearinghouseError) as caught:
        client.annotation_project_update(1, target_precision=1.5)
    assert (caught.value.status, caught.value.code) == (400, "threshold_out_of_range")


def test_label_skip_undo_and_items(fake):
    client = client_of(fake)
    answer = client.annotation_next(1)
    assert answer["item"]["id"] == 1 and answer["item"]["text"] == "text 0"
    assert client.annotation_label(1, 1, "ham") == {"id": 1, "item": 1, "label": "ham", "source": "human"}
    assert client.annotation_skip(1, 2) is None
    assert client.annotation_next(1)["item"]["id"] == 3
    assert client.annotation_undo(1) == {"item": 1, "label": "ham"}
    with pytest.raises(ClearinghouseError) as caught:
        client.annotation_undo(1)
    assert (caught.value.status, caught.value.code) == (409, "nothing_to_undo")
    with pytest.raises(ClearinghouseError) as caught:
        client.annotation_label(1, 1, "eggs")
    assert caught.value.code == "label_not_in_set"
    assert [i["text"] for i in client.annotation_items(1, [2, 4])] == ["text 1", "text 3"]
    assert fake.requests[-1][1] == f"{BASE}/1/items"
    client.annotation_next(1, review=True)
    assert fake.requests[-1][1].endswith("/next")


def test_model_run_waits_until_it_ends_and_a_failure_raises(fake):
    client = client_of(fake)
    run = client.annotation_model_run(1)
    assert run["status"] == "queued" and fake.requests[-1][2] == {"kind": "propose"}
    finished = client.annotation_model_run(1, kind="review", wait=True)
    assert finished["status"] == "succeeded" and finished["kind"] == "review"
    fake.page_size = 1
    assert [r["id"] for r in client.annotation_model_runs(1)] == [1, 2]  # every page
    assert [(m, p) for m, p, _ in fake.requests[-2:]] == [("GET", f"{BASE}/1/model-runs")] * 2
    failing = FakeAnnotationApi(run_fails=True)
    with pytest.raises(ClearinghouseError) as caught:
        client_of(failing).annotation_model_run(1, wait=True)
    assert caught.value.status == 0 and caught.value.code == "training_failed"
    slow = FakeAnnotationApi()
    slow.polls_to_finish = 10**6
    pending = client_of(slow).annotation_model_run(1, wait=True, timeout=0)
    assert pending["status"] == "queued"  # the time ran out: returned as it is


def test_automatic_duplicates_review_and_export(fake):
    client = client_of(fake)
    client.annotation_project_update(1, target_precision=0.98)
    run = client.annotation_model_run(1, wait=True)
    assert client.annotation_automatic(1, run["id"])["labelled"] == 3
    assert fake.requests[-1][2] == {"run": run["id"]}
    (group,) = client.annotation_duplicates(1)
    assert group["conflicting"] is True and group["item_ids"] == [4, 5]
    assert client.annotation_review(1) == []
    with pytest.raises(ClearinghouseError) as caught:
        client.annotation_export(1, "SMS labelled")
    assert (caught.value.status, caught.value.code) == (409, "nothing_to_export")
    client.annotation_label(1, 1, "spam")
    export = client.annotation_export(
        1, "SMS labelled", slug="sms-out", drop_duplicates=True, include_model_labels=False, wait=True
    )
    assert fake.requests[-1][1] == f"{BASE}/1/exports/1"
    assert (export["status"], export["dataset"], export["rows"]) == ("succeeded", "org-a/sms-out", 1)
    posted = [body for m, p, body in fake.requests if m == "POST" and p.endswith("/exports")][-1]
    assert posted == {
        "name": "SMS labelled",
        "slug": "sms-out",
        "drop_duplicates": True,
        "drop_conflicts": True,
        "include_model_labels": False,
    }
    assert [e["id"] for e in client.annotation_exports(1)] == [1]


# --------------------------------------------------------------------------------------------
# the command line, without the service


def test_cli_projects_show_and_create(run_cli, fake, tmp_path):
    code, out, err = run_cli("annotation", "projects")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "NAME", "DATASET", "STATUS", "ITEMS", "LABELS"]
    assert lines[2].split()[:4] == ["1", "Spam", "org-a/sms", "ready"]

    code, out, err = run_cli("annotation", "show", "1")
    assert code == 0, err
    assert "Spam sells something." in out and "0 / 5" in out and "2 exact, 0 near items in 1 groups" in out

    guide = tmp_path / "guide.txt"
    guide.write_text("Label spam as spam.\n")
    code, out, err = run_cli(
        "annotation",
        "create",
        "org-a/sms",
        "--name",
        "Spam",
        "--text-column",
        "text",
        "--labels",
        "ham,spam",
        "--instructions-file",
        str(guide),
        "--overlap",
        "0.1",
        "--annotator",
        "alice",
        "--annotator",
        "bob,carol",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["status"] == "preparing"
    assert fake.requests[-1][2] == {
        "dataset": "org-a/sms",
        "name": "Spam",
        "text_column": "text",
        "labels": ["ham", "spam"],
        "instructions": "Label spam as spam.\n",
        "overlap": 0.1,
        "annotators": ["alice", "bob", "carol"],
    }
    code, out, err = run_cli(
        "annotation", "create", "org-a/sms", "--name", "S", "--text-column", "body", "--labels", "a,b"
    )
    assert code == 1 and err.startswith("error (unknown_column): ")
    code, out, err = run_cli("annotation", "show", "99")
    assert code == 1 and err.startswith("error (not_found): ")


def test_cli_label_from_csv_answers_by_row_and_skips_the_rest(run_cli, fake, tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text("row,label\n0,ham\n2,spam\n3,\n")
    code, out, err = run_cli("annotation", "label", "1", "--from-csv", str(answers))
    assert code == 0, err
    # row 0 → item 1 labelled, row 1 (item 2) not in the file: skipped, row 2 labelled, row 3 skipped
    assert fake.given == {1: "ham", 3: "spam"} and fake.skipped == {2, 4}
    assert "labelled 2, skipped 2" in out and "2 of 5 done" in out

    bad = tmp_path / "bad.csv"
    bad.write_text("4,eggs\n")
    code, out, err = run_cli("annotation", "label", "1", "--from-csv", str(bad))
    assert code == 1 and err.startswith("error (invalid_arguments): ") and "eggs" in err
    assert fake.given == {1: "ham", 3: "spam"}  # nothing sent

    code, out, err = run_cli("annotation", "label", "1", "--from-csv", str(answers), "--json")
    assert code == 0, err
    done = json.loads(out)
    assert done["labelled"] == 0 and done["unanswered_rows"] == [
        0,
        2,
        3,
    ]  # item 5 (row 4) was served: skipped


def test_cli_label_interactively(run_cli, fake):
    # item 1: "2" (spam); item 2: "x" (not a command: the menu again), "a" (accept the proposal, spam);
    # item 3: "u" (undo item 2's label); item 2 again: "s" (skip); item 3: "q"
    code, out, err = run_cli("annotation", "label", "1", stdin="2\nx\na\nu\ns\nq\n")
    assert code == 0, err
    assert fake.given == {1: "spam"} and fake.skipped == {2}
    assert "Spam sells something." in out and "text 0" in out and "proposal: spam (0.75)" in out
    assert "undone: spam on item 2" in out
    assert "labelled 2, skipped 1, undid 1" in out

    code, out, err = run_cli("annotation", "label", "1", stdin="")  # end of input: quits
    assert code == 0 and "labelled 0, skipped 0" in out


def test_cli_propose_auto_review_duplicates_export(run_cli, fake):
    code, out, err = run_cli("annotation", "propose", "1", "--wait")
    assert code == 0, err
    assert "succeeded" in out and "macro f1" in out

    code, out, err = run_cli("annotation", "auto", "1", "--target-precision", "0.98", "--confidence", "0.9")
    assert code == 0, err
    assert fake.project["target_precision"] == 0.98 and fake.project["confidence_level"] == 0.9
    assert "threshold" in out and "60.0%" in out and "add --apply (with --run 2)" in out
    code, out, err = run_cli("annotation", "auto", "1", "--target-precision", "0.98", "--run", "2", "--apply")
    assert code == 0, err
    assert "labelled 3 items by model (confidence ≥ 0.8)" in out
    assert len(fake.runs) == 2  # --run: no new run
    code, out, err = run_cli("annotation", "auto", "1", "--target-precision", "0.99", "--run", "2", "--apply")
    assert code == 1 and err.startswith("error (invalid_arguments): ")

    code, out, err = run_cli("annotation", "review-run", "1")
    assert code == 0 and "annotation runs 1" in out and fake.runs[3]["kind"] == "review"
    code, out, err = run_cli("annotation", "runs", "1")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["ID", "KIND", "STATUS"]
    code, out, err = run_cli("annotation", "review", "1")
    assert code == 0 and "no items flagged" in out
    code, out, err = run_cli("annotation", "duplicates", "1")
    assert code == 0 and out.splitlines()[2].split() == ["1", "exact", "4", "5", "ham,", "spam", "yes"]

    code, out, err = run_cli("annotation", "export", "1", "--name", "Out")
    assert code == 1 and err.startswith("error (nothing_to_export): ")
    fake.given[1] = "ham"
    code, out, err = run_cli(
        "annotation",
        "export",
        "1",
        "--name",
        "Out",
        "--drop-duplicates",
        "--keep-conflicts",
        "--no-model-labels",
        "--wait",
    )
    assert code == 0, err
    assert "succeeded" in out and "org-a/sms-labelled" in out
    assert fake.requests[-3][2] == {
        "name": "Out",
        "drop_duplicates": True,
        "drop_conflicts": False,
        "include_model_labels": False,
    }
    code, out, err = run_cli("annotation", "exports", "1")
    assert code == 0 and "succeeded" in out


# --------------------------------------------------------------------------------------------
# against the real service


def _core_ready() -> bool:
    """The annotation app, its API routes and its workers' tasks are there."""
    try:
        from django.urls import NoReverseMatch, reverse

        from clearinghouse.annotation import selectors, services, tasks  # noqa: F401

        reverse("api:annotation_projects")
    except (ImportError, NoReverseMatch):
        return False
    return True


live = pytest.mark.skipif(
    not _core_ready(), reason="the annotation app (services, tasks, API routes) is not there yet"
)


@dataclass
class AnnotationService:
    url: str
    manager: str  # org A's steward's token
    annotator: str  # org A's analyst's token
    outsider: str  # org B's admin's token
    world: object


@pytest.fixture
def annotation_service(transactional_db, live_server, media_root):
    """org A's text dataset `messages` (tests/annotation/test_api.py's MESSAGES), tokens of its steward
    (a manager) and analyst (an annotator) and of org B's admin, and a real Celery worker thread on the
    queues the annotation tasks use (texts on `dp`, preparation, model runs and exports on `ingestion`)."""
    from celery.contrib.testing.worker import start_worker

    from clearinghouse.accounts.services import api_token_create
    from clearinghouse.celery import app
    from tests.annotation.test_api import make_text_dataset
    from tests.factories import build_world

    world = build_world()
    make_text_dataset(steward=world.a.steward)
    tokens = [
        api_token_create(actor=user, name="annotation-client-tests")[1]
        for user in (world.a.steward, world.a.analyst, world.b.admin)
    ]
    with start_worker(
        app, pool="solo", perform_ping_check=False, queues=["dp", "ingestion"], shutdown_timeout=60
    ):
        yield AnnotationService(live_server.url, *tokens, world=world)


@pytest.fixture
def openapi_document(db) -> dict:
    """The OpenAPI document the service publishes (as test_client_contract.py builds it)."""
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer

    schema = SchemaGenerator().get_schema(request=None, public=True)
    return json.loads(OpenApiJsonRenderer().render(schema, renderer_context={}))


def _truth() -> dict[str, str]:
    from tests.annotation.test_api import MESSAGES

    return dict(MESSAGES)


def _ready(client: Client, project_id: int, seconds: float = 120) -> dict:
    import time

    deadline = time.monotonic() + seconds
    project = client.annotation_project(project_id)
    while project["status"] == "preparing" and time.monotonic() < deadline:
        time.sleep(0.2)
        project = client.annotation_project(project_id)
    assert project["status"] == "ready", project
    return project


@live
def test_client_against_the_service(annotation_service, openapi_document):
    """Every call of the client, as a manager, an annotator and an outsider; every answer it received
    then checked against the OpenAPI document (as test_client_contract.py does for the others)."""
    service = annotation_service
    truth = _truth()
    analyst = service.world.a.analyst.username
    transport = RecordingTransport()
    with (
        Client(service.url, service.manager, timeout=60, transport=transport) as lead,
        Client(service.url, service.annotator, timeout=60, transport=transport) as annotator,
        Client(service.url, service.outsider, timeout=60, transport=transport) as outsider,
    ):
        with pytest.raises(ClearinghouseError) as caught:
            lead.annotation_project_create("org-a/messages", "Bad", "length", ["ham", "spam"])
        assert (caught.value.status, caught.value.code) == (400, "column_not_text")
        with pytest.raises(ClearinghouseError) as caught:
            lead.annotation_project_create("org-a/messages", "Bad", "text", ["ham"])
        assert (caught.value.status, caught.value.code) == (400, "labels_too_few")
        with pytest.raises(ClearinghouseError) as caught:
            annotator.annotation_project_create("org-a/messages", "Mine", "text", ["ham", "spam"])
        assert caught.value.status == 403

        created = lead.annotation_project_create(
            "org-a/messages",
            "Spam or ham",
            "text",
            "ham,spam",
            instructions="Spam sells something.",
            overlap=0,
            annotators=[analyst],
        )
        assert created["dataset"] == "org-a/messages" and created["annotators"] == [analyst]
        pid = created["id"]
        project = _ready(lead, pid)
        assert project["item_count"] == 24 and project["progress"]["done"] == 0
        assert [p["id"] for p in annotator.annotation_projects()] == [pid]
        assert outsider.annotation_projects() == []
        with pytest.raises(ClearinghouseError) as caught:
            outsider.annotation_project(pid)
        assert (caught.value.status, caught.value.code) == (404, "not_found")

        # people label: the texts come from a worker; undo and skip
        first = annotator.annotation_next(pid)["item"]
        assert first["text"] in truth and first["proposal"] is None
        label = annotator.annotation_label(pid, first["id"], truth[first["text"]])
        assert (label["item"], label["source"]) == (first["id"], "human")
        assert annotator.annotation_undo(pid) == {"item": first["id"], "label": truth[first["text"]]}
        with pytest.raises(ClearinghouseError) as caught:
            annotator.annotation_label(pid, first["id"], "eggs")
        assert (caught.value.status, caught.value.code) == (400, "label_not_in_set")
        annotator.annotation_skip(pid, first["id"])
        assert annotator.annotation_next(pid)["item"]["id"] != first["id"]
        for _ in range(12):
            item = annotator.annotation_next(pid)["item"]
            annotator.annotation_label(pid, item["id"], truth[item["text"]])
        (again,) = annotator.annotation_items(pid, [first["id"]])
        assert again["text"] == first["text"]
        assert annotator.annotation_project(pid)["progress"]["human_labels"] == 12

        # the model proposes; the queue shows its proposals
        with pytest.raises(ClearinghouseError) as caught:
            annotator.annotation_model_run(pid)
        assert caught.value.status == 403
        run = lead.annotation_model_run(pid, wait=True, timeout=300)
        assert run["status"] == "succeeded" and run["labels_used"] == 12 and run["threshold"] is None
        assert lead.annotation_model_run_get(pid, run["id"]) == run
        assert [r["id"] for r in lead.annotation_model_runs(pid)] == [run["id"]]
        proposal = annotator.annotation_next(pid)["item"]["proposal"]
        assert proposal["label"] in {"ham", "spam"} and 0 <= proposal["confidence"] <= 1
        with pytest.raises(ClearinghouseError) as caught:
            lead.annotation_automatic(pid, run["id"])
        assert (caught.value.status, caught.value.code) == (409, "no_threshold")

        # automatic labelling at a target precision (a lenient one: a dozen labels certify little)
        with pytest.raises(ClearinghouseError) as caught:
            lead.annotation_project_update(pid, target_precision=1.5)
        assert (caught.value.status, caught.value.code) == (400, "threshold_out_of_range")
        updated = lead.annotation_project_update(pid, target_precision=0.6, confidence_level=0.5)
        assert (updated["target_precision"], updated["confidence_level"]) == (0.6, 0.5)
        run = lead.annotation_model_run(pid, wait=True, timeout=300)
        assert (run["target_precision"], run["confidence_level"]) == (0.6, 0.5)
        if run["threshold"] is None:
            with pytest.raises(ClearinghouseError) as caught:
                lead.annotation_automatic(pid, run["id"])
            assert caught.value.code == "no_threshold"
        else:
            assert 0 <= run["coverage"] <= 1
            labelled = lead.annotation_automatic(pid, run["id"])["labelled"]
            assert lead.annotation_project(pid)["progress"]["auto"] == labelled

        # quality: duplicates (rows 0 and 1 are the same text), likely label errors
        groups = lead.annotation_duplicates(pid)
        assert any(g["kind"] == "exact" and len(g["item_ids"]) == 2 for g in groups)
        review = lead.annotation_model_run(pid, kind="review", wait=True, timeout=300)
        assert review["status"] == "succeeded" and review["kind"] == "review"
        assert isinstance(lead.annotation_review(pid), list)

        # the export: a new dataset of org A
        with pytest.raises(ClearinghouseError) as caught:
            annotator.annotation_export(pid, "Mine")
        assert caught.value.status == 403
        export = lead.annotation_export(
            pid, "Messages labelled", slug="messages-labelled", wait=True, timeout=300
        )
        assert export["status"] == "succeeded" and export["dataset"] == "org-a/messages-labelled"
        assert export["version"] == 1 and export["rows"] >= 12
        assert lead.annotation_export_get(pid, export["id"]) == export
        assert [e["id"] for e in lead.annotation_exports(pid)] == [export["id"]]
        columns = {c["name"] for c in lead.dataset("org-a/messages-labelled")["schema"]["columns"]}
        assert {
            "text",
            "label",
            "annotation_label",
            "annotation_label_source",
        } <= columns  # `label` was taken
        assert {"annotation_label_confidence", "annotation_label_model_run"} <= columns

        archived = lead.annotation_archive(pid)
        assert archived["status"] == "archived"

    import schemathesis
    from schemathesis.core.transport import Response

    schema = schemathesis.openapi.from_dict(openapi_document)
    checked: set[str] = set()
    for response in transport.responses:
        method, path = response.request.method, response.request.url.path
        operation = schema.find_operation_by_path(method, path)
        assert operation is not None, f"{method} {path}: the client calls an operation the document lacks"
        schema.validate_response(operation, Response.from_any(response))
        checked.add(f"{method} {operation.path} {response.status_code}")
    annotation = {label for label in checked if "/annotation/" in label}
    assert len(annotation) >= 20, sorted(annotation)


@live
def test_cli_against_the_service(annotation_service, tmp_path):
    service = annotation_service
    truth = _truth()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARINGHOUSE_")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), CLEARINGHOUSE_URL=service.url)

    def run(
        *args: str, token: str = service.manager, stdin: str | None = None
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "clearinghouse_client", "annotation", *args],
            check=False,
            cwd=tmp_path,
            env={**env, "CLEARINGHOUSE_TOKEN": token},
            input=stdin,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for secret in (service.manager, service.annotator):
            assert secret not in done.stdout + done.stderr
        return done

    guide = tmp_path / "guide.txt"
    guide.write_text("Spam sells something.\n")
    analyst = service.world.a.analyst.username
    done = run(
        "create", "org-a/messages", "--name", "Spam", "--text-column", "text", "--labels", "ham,spam",
        "--instructions-file", str(guide), "--overlap", "0", "--annotator", analyst, "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    pid = json.loads(done.stdout)["id"]
    with Client(service.url, service.manager) as lead:
        _ready(lead, pid)

    done = run("projects")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2].split()[:5] == [str(pid), "Spam", "org-a/messages", "ready", "24"]
    done = run("create", "org-a/messages", "--name", "X", "--text-column", "length", "--labels", "a,b")
    assert done.returncode == 1 and done.stderr.startswith("error (column_not_text): ")

    # the annotator answers from a file of row,label pairs (the true labels), ten of them
    from tests.annotation.test_api import MESSAGES

    answers = tmp_path / "answers.csv"
    answers.write_text("row,label\n" + "".join(f"{row},{label}\n" for row, (_, label) in enumerate(MESSAGES)))
    done = run(
        "label", str(pid), "--from-csv", str(answers), "--limit", "10", "--json", token=service.annotator
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["labelled"] == 10 and result["skipped"] == 0 and result["progress"]["human_labels"] == 10

    # ... and two more at the keyboard: the first as its true label's number, then quits
    with Client(service.url, service.annotator) as annotator:
        upcoming = annotator.annotation_next(pid)["item"]
    number = ["ham", "spam"].index(truth[upcoming["text"]]) + 1
    done = run("label", str(pid), token=service.annotator, stdin=f"{number}\ns\nq\n")
    assert done.returncode == 0, done.stderr
    assert "Spam sells something." in done.stdout and upcoming["text"] in done.stdout
    assert "labelled 1, skipped 1" in done.stdout and "11 of 24 done" in done.stdout

    done = run("propose", str(pid), "--wait")
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "11" in done.stdout
    done = run("auto", str(pid), "--target-precision", "0.6", "--confidence", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    run_id = json.loads(done.stdout)["run"]["id"]
    done = run("auto", str(pid), "--target-precision", "0.6", "--run", str(run_id), "--apply")
    assert done.returncode in {0, 1}
    assert (
        ("labelled" in done.stdout)
        if done.returncode == 0
        else done.stderr.startswith("error (no_threshold)")
    )
    done = run("runs", str(pid))
    assert done.returncode == 0 and done.stdout.splitlines()[0].split()[:3] == ["ID", "KIND", "STATUS"]

    done = run("review-run", str(pid), "--wait")
    assert done.returncode == 0 and "review" in done.stdout, done.stderr
    done = run("review", str(pid))
    assert done.returncode == 0, done.stderr
    done = run("duplicates", str(pid))
    assert done.returncode == 0 and "exact" in done.stdout, done.stderr

    done = run("export", str(pid), "--name", "Out", token=service.annotator)
    assert done.returncode == 1 and done.stderr.startswith("error (role_forbidden): ")
    done = run(
        "export", str(pid), "--name", "Messages out", "--label-column", "verdict", "--drop-duplicates",
        "--no-model-labels", "--wait",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "succeeded" in done.stdout and "org-a/messages-out" in done.stdout
    with Client(service.url, service.manager) as lead:
        columns = [c["name"] for c in lead.dataset("org-a/messages-out")["schema"]["columns"]]
    assert columns[-4:] == ["verdict", "verdict_source", "verdict_confidence", "verdict_model_run"]
    done = run("show", str(pid))
    assert done.returncode == 0, done.stderr
    shown = {line[:23].strip(): line[23:].strip() for line in done.stdout.splitlines() if len(line) > 23}
    assert shown["status"] == "ready" and shown["human labels"] == "11" and shown["remaining"] != "-"
    assert shown["done"].endswith(" / 24") and "Spam sells something." in done.stdout
