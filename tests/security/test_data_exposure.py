"""Nothing derived from a dataset's rows reaches anyone but its owner organisation (see
docs/data-exposure.md).

Organisation A owns two datasets: `proposed`, whose schema was inferred from an upload and not yet
confirmed (the proposal holds the data's exact minima and maxima, its categories, its longest text),
and `ready`, a ready version with distinctive values, a row count, a quality report and file sizes.
Organisation B holds query and training grants on both (on `ready`, listed in the catalogue, by access
requests that A approved) and trains with A in a federated job whose rounds carry each member's own
metrics (example counts, confusion matrices). A's analyst and B's each released a query.

Every dataset, version, budget, query and federation endpoint and portal page that a non-owner
(B's analyst, B's admin, the consortium operator) can reach is fetched, and:

- no data-derived value of A's appears in any body, refusals and downloads included (distinctive
  numbers and categories, the row count, quality-report keys, byte sizes, the upload's file name, A's
  per-member training metrics, a version awaiting its schema);
- nobody reads another organisation's query answer (API, result page, CSV), the owner-only pages
  (quality download, schema editor) or, unless an operator, the operators' overview; previews and
  plans carry their warnings (computed from public bounds and the stated row bound only);
- every API body holds only keys from `ALLOWED` below, so a field added later fails this test until
  someone decides whether non-owners may see it (and adds it here, and to docs/data-exposure.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
from celery.contrib.testing.worker import start_worker
from django.template.defaultfilters import filesizeformat
from django.test import Client
from django.urls import reverse

from clearinghouse.celery import app
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_grant_create, dataset_version_ingest
from clearinghouse.queries.ledger import allocation_set, budget_set
from federation.models import FederatedJob, JobState
from federation.services import job_finalize
from tests.annotation.test_api import MESSAGES as ANNOTATION_MESSAGES
from tests.factories import api_client, build_world

# ---------------------------------------------------------------------------------------- the data
ROWS = 1373  # the ready version's row count (a size signal: owners only)
SCORE_MIN, SCORE_MAX = 48213, 77731  # exact extremes of an integer column (bounds are 0..100000)
WEIGHT_MIN, WEIGHT_MAX = "3.14159", "271.828"  # exact extremes of a float column (bounds are 0..1000)
SOURCE_NAME = "Hush-Export-Q3.csv"
FINISHED = datetime(2031, 7, 19, 4, 5, 6, tzinfo=UTC)

READY_SCHEMA = {
    "columns": [
        {"name": "score", "type": "integer", "lower": 0, "upper": 100_000},
        {"name": "weight", "type": "float", "lower": 0, "upper": 1000},
        {"name": "region", "type": "categorical", "categories": ["north", "south"]},
    ]
}

# The unconfirmed proposal's own distinctive values: column names from the header, exact bounds,
# categories and the longest text, all read from the data.
PROPOSED_COLUMNS = ("reading_qz", "ratio_qz", "species_qz", "memo_qz", "maybe_qz")
PROPOSED_INT = (39187, 86423)
PROPOSED_FLOAT = ("0.7321", "912.0457")
PROPOSED_CATEGORIES = ("Quokka-Vermilion", "Zebrawood-Ochre")
PROPOSED_TEXT_MAX = 4111

# A's member metrics in the federated job: its local example counts and confusion matrix, and the
# pooled (A + B) counts from which B could subtract its own.
A_TRAIN_EXAMPLES, A_EVAL_EXAMPLES, A_CONFUSION = ROWS, 8115, [[3057, 1016], [1026, 3016]]
A_CLIENT_ACCURACY = 0.98713
B_EVAL_EXAMPLES, B_CONFUSION = 4230, [[1102, 1019], [1013, 1096]]
POOLED_N, POOLED_CONFUSION = 12345, [[4159, 2035], [2039, 4112]]
QUALITY_REPORT_KEYS = (
    "rows_read",
    "duplicate_rows",
    "rows_stored",
    "ignored_columns",
    "clamped_values",
    "out_of_bounds",
    "first_lines",
)


def _ready_csv() -> bytes:
    lines = ["score,weight,region"]
    for i in range(ROWS):
        score = SCORE_MIN if i == 0 else SCORE_MAX if i == 1 else 50_000 + (i * 7) % 27_000
        weight = WEIGHT_MIN if i == 2 else WEIGHT_MAX if i == 3 else f"{10 + (i * 13) % 250}.5"
        lines.append(f"{score},{weight},{'north' if i < 1000 else 'south'}")
    return ("\n".join(lines) + "\n").encode()


def _proposed_csv() -> bytes:
    lines = [",".join(PROPOSED_COLUMNS)]
    for i in range(60):  # > 50 distinct memos: the memo column is proposed as text (with its max length)
        reading = PROPOSED_INT[0] if i == 0 else PROPOSED_INT[1] if i == 1 else 40_000 + i
        ratio = PROPOSED_FLOAT[0] if i == 0 else PROPOSED_FLOAT[1] if i == 1 else f"{1 + i}.5"
        memo = "m" * PROPOSED_TEXT_MAX if i == 5 else f"memo {i}"
        lines.append(f"{reading},{ratio},{PROPOSED_CATEGORIES[i % 2]},{memo},{'' if i == 7 else i}")
    return ("\n".join(lines) + "\n").encode()


def _upload(client, slug: str, data: bytes, name: str) -> DatasetVersion:
    upload = io.BytesIO(data)
    upload.name = name
    response = client.post(f"/api/v1/datasets/org-a/{slug}/versions", {"file": upload}, format="multipart")
    assert response.status_code == 202, response.content
    version = DatasetVersion.objects.get(dataset__organisation__slug="org-a", dataset__slug=slug, number=1)
    return dataset_version_ingest(version_id=version.pk)


def _token_client(token: str):
    client = api_client(None)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def _member(
    organisation: str, node: int, train_examples: int, eval_examples: int, confusion, accuracy: float
):
    return {
        "node_id": node,
        "organisation": organisation,
        "train": {"num-examples": train_examples, "train-loss": 0.41, "train-seconds": 12.5},
        "evaluate": {"num-examples": eval_examples, "eval-accuracy": accuracy, "confusion": confusion},
    }


@pytest.fixture
def exposure(transactional_db, media_root, settings, tmp_path):
    settings.FLOWER_SHARED_DIR = str(tmp_path / "flower")
    world = build_world()
    steward = api_client(world.a.steward)
    b = world.b.organisation

    assert (
        steward.post("/api/v1/datasets", {"name": "Proposed", "slug": "proposed"}, format="json").status_code
        == 201
    )
    proposed = _upload(steward, "proposed", _proposed_csv(), "proposal-source.csv")
    assert proposed.status == "awaiting_schema" and proposed.error_code == "schema_unconfirmed"
    assert (
        steward.post(
            "/api/v1/datasets", {"name": "Ready", "slug": "ready", "schema": READY_SCHEMA}, format="json"
        ).status_code
        == 201
    )
    ready = _upload(steward, "ready", _ready_csv(), SOURCE_NAME)
    assert ready.status == "ready" and ready.row_count == ROWS and ready.finished_at is not None
    # A recognisable ingestion end (far from every other timestamp of the test) to look for below.
    DatasetVersion.objects.filter(pk=ready.pk).update(finished_at=FINISHED)
    for purpose in ("query", "training"):
        dataset_grant_create(actor=world.a.steward, dataset=proposed.dataset, organisation=b, purpose=purpose)
    # `ready` is offered in the catalogue; B asks for it there and A's steward approves (the grants).
    listing = steward.put("/api/v1/datasets/org-a/ready/listing", {"listed": True}, format="json")
    assert listing.status_code == 200, listing.json()
    for purpose in ("query", "training"):
        asked = api_client(world.b.analyst).post(
            "/api/v1/datasets/org-a/ready/access-requests",
            {"purpose": purpose, "reason": f"Regional {purpose} study."},
            format="json",
        )
        assert asked.status_code == 201, asked.json()
        decided = steward.post(
            f"/api/v1/access-requests/{asked.json()['id']}/decide",
            {"decision": "approve", "note": "Approved for the study."},
            format="json",
        )
        assert decided.status_code == 200 and decided.json()["grant_id"], decided.json()
    budget_set(actor=world.a.steward, dataset=ready.dataset, measure="pure", total=10.0, max_rows=5000)
    for organisation in (world.a.organisation, b):
        allocation_set(actor=world.a.steward, dataset=ready.dataset, organisation=organisation, amount=5.0)

    # A federated job of A and B, both training on A's ready dataset, with one round and a model.
    operator = api_client(world.operator)
    job = operator.post(
        "/api/v1/federated-jobs",
        {
            "name": "Exposure",
            "text_column": "region",
            "label_column": "region",
            "labels": ["north", "south"],
            "participants": [
                {"organisation": "org-a", "dataset": "org-a/ready"},
                {"organisation": "org-b", "dataset": "org-a/ready"},
            ],
            "num_rounds": 1,
            "min_clients": 2,
        },
        format="json",
    )
    assert job.status_code == 201, job.json()
    job_id = job.json()["id"]
    for admin in (world.a.admin, world.b.admin):
        response = api_client(admin).post(
            f"/api/v1/federated-jobs/{job_id}/participation", {"decision": "accept"}, format="json"
        )
        assert response.status_code == 200, response.json()
    token = "exposure-callback-token"
    FederatedJob.objects.filter(pk=job_id).update(
        state=JobState.RUNNING,
        flower_run_id="77",
        callback_token_hash=hashlib.sha256(token.encode()).hexdigest(),
    )
    pooled = {
        "accuracy": 0.95,
        "macro_f1": 0.94,
        "loss": 0.2,
        "per_class_f1": {"north": 0.95, "south": 0.93},
        "confusion": POOLED_CONFUSION,
        "n": POOLED_N,
        "clients": 2,
        "mean_client_accuracy": 0.96,
        "mean_client_macro_f1": 0.95,
    }
    record = {
        "event": "round",
        "round": 1,
        "clients_trained": 2,
        "bytes_sent": 2048,
        "bytes_received": 2048,
        "round_seconds": 30.0,
        "evaluate": pooled,
        "train": {"num-examples": 1500.25, "train-loss": 0.4},
        "clients": [
            _member("org-a", 1, A_TRAIN_EXAMPLES, A_EVAL_EXAMPLES, A_CONFUSION, A_CLIENT_ACCURACY),
            _member("org-b", 2, 888, B_EVAL_EXAMPLES, B_CONFUSION, 0.91),
        ],
        "dropouts": [],
    }
    events = _token_client(token)
    assert events.post(f"/api/v1/federated-jobs/{job_id}/events", record, format="json").status_code == 200
    assert (
        events.post(
            f"/api/v1/federated-jobs/{job_id}/events",
            {"event": "finished", "final_evaluation": pooled},
            format="json",
        ).status_code
        == 200
    )
    out = tmp_path / "flower" / "jobs" / str(FederatedJob.objects.get(pk=job_id).uid) / "out"
    out.mkdir(parents=True)
    (out / "adapter.safetensors").write_bytes(b"adapter")
    (out / "report.json").write_text(
        json.dumps(
            {
                "status": "succeeded",
                "reason": "",
                "rounds_completed": 1,
                "final_evaluation": pooled,
                "rounds": [record],
                "organisations": {"1": "org-a", "2": "org-b"},
                "seconds": 31.0,
            }
        )
    )
    assert job_finalize(job_id=job_id).state == JobState.SUCCEEDED

    world.annotation = _annotation_project(world)

    with start_worker(app, pool="solo", perform_ping_check=False, queues=["dp"], shutdown_timeout=30):
        # B's analyst and A's own analyst each release a query (B sees only its own; the operator
        # sees that queries ran, not their answers).
        for analyst in (world.b.analyst, world.a.analyst):
            released = api_client(analyst).post(
                "/api/v1/datasets/org-a/ready/queries",
                {"sql": "SELECT region, COUNT(*) FROM ready GROUP BY region", "privacy": {"epsilon": 1.0}},
                format="json",
            )
            assert released.status_code == 200, released.json()
        yield world, ready, job_id


def _annotation_project(world) -> dict:
    """An annotation project of A's on a text dataset of A's (`messages`), with people's labels, a
    model run and an export: all of it is A's (texts, labels, figures), so non-owners get 404 on every
    route of it and an empty list of projects."""
    from clearinghouse.annotation.models import AnnotationExport, ModelRun
    from clearinghouse.annotation.services import label_record
    from tests.annotation.test_api import make_project, make_text_dataset

    project = make_project(
        manager=world.a.admin,
        dataset=make_text_dataset(steward=world.a.steward),
        annotators=[world.a.analyst.username],
    )
    items = list(project.items.order_by("pk")[:4])
    for item in items:
        label_record(
            actor=world.a.analyst, project=project, item=item, value=ANNOTATION_MESSAGES[item.row][1]
        )
    run = ModelRun.objects.create(
        project=project,
        kind="propose",
        status="succeeded",
        labels_used=len(items),
        threshold=0.9,
        estimated_precision=0.99,
        coverage=0.5,
    )
    export = AnnotationExport.objects.create(project=project, dataset=project.dataset)
    return {"project": project.pk, "item": items[0].pk, "run": run.pk, "export": export.pk}


# ------------------------------------------------------------------------- what non-owners may see
# Lists may be paginated (count, next, previous, results). Key paths: "a.b" for nested objects,
# "a[]" for list items. A path in OPAQUE is not descended into (its keys are chosen by people, not by
# us: metric names, labels, settings, query specs).
_SCHEMA = {
    "schema",
    "schema.columns",
    "schema.columns[]",
    "schema.columns[].name",
    "schema.columns[].type",
    "schema.columns[].nullable",
    "schema.columns[].lower",
    "schema.columns[].upper",
    "schema.columns[].categories",
    "schema.columns[].categories[]",
    "schema.columns[].max_length",
    "schema.privacy_unit",
    "schema.privacy_unit.kind",
    "schema.privacy_unit.column",
    "schema.privacy_unit.max_rows_per_person",
}
_DATASET = {"organisation", "slug", "name", "description", "schema_confirmed", "created_at", *_SCHEMA}
_PAGE = {"count", "next", "previous", "results", "results[]"}
_VERSION = {"number", "status", "created_at"}
_LEFT = {
    "left",
    "left.measure",
    "left.organisation",
    "left.dataset",
    "left.analyst",
    "left.delta_organisation",
    "left.per_query_max",
    "left.organisation_allocated",
    "left.organisation_spent",
}
_QUERY = {
    "id",
    "url",
    "status",
    "dataset",
    "version",
    "query_hash",
    "spec",
    "sql",
    "cost",
    "cost.amount",
    "cost.delta",
    "replayed",
    "created_at",
    "finished_at",
    "error",
    "error.code",
    "error.detail",
    # the requesting organisation's own differentially private answer (never the operator's)
    "result",
    "result.columns",
    "result.columns[]",
    "result.rows",
    "result.intervals",
    "result.aggregates",
    "result.group_by",
    "result.group_by[]",
    "result.cost",
}
_EVALUATION = {
    "accuracy",
    "macro_f1",
    "loss",
    "mean_client_accuracy",
    "mean_client_macro_f1",
    "per_class_f1",
    "clients",
}
_JOB = {
    "id",
    "uid",
    "url",
    "name",
    "state",
    "reason",
    "base_model",
    "task",
    "task.text_column",
    "task.label_column",
    "task.labels",
    "task.labels[]",
    "strategy",
    "num_rounds",
    "min_clients",
    "settings",
    "created_at",
    "scheduled_at",
    "started_at",
    "finished_at",
    "rounds_completed",
    # a private job's DP-SGD target (stated by the operator who created it)
    "privacy",
    "privacy.epsilon",
    "privacy.delta",
    "privacy.max_grad_norm",
}
_JOB_DETAIL = {
    *_JOB,
    "participants",
    "participants[]",
    "participants[].organisation",
    "participants[].status",
    "participants[].data_description",
    "participants[].dataset",
    "participants[].decided_at",
    "my_participation",
    "flower_run_id",
    "artifact",
    "artifact.size",
    "artifact.sha256",
    "artifact.created_at",
    "artifact.download_url",
    "artifact.published_at",
    "artifact.report",
    "artifact.report.status",
    "artifact.report.rounds_completed",
    "artifact.report.final_evaluation",
    "final_evaluation",
    *{f"final_evaluation.{k}" for k in _EVALUATION},
    *{f"artifact.report.final_evaluation.{k}" for k in _EVALUATION},
}
_ROUND = {
    "round",
    "accuracy",
    "macro_f1",
    "loss",
    "clients_trained",
    "bytes_sent",
    "bytes_received",
    "seconds",
    "flower_overhead_seconds",
    "dropouts",
    "dropouts[]",
    "dropouts[].node_id",
    "dropouts[].organisation",
    "dropouts[].reason",
    # the viewer's own organisation's member entries only (checked below)
    "clients",
    "clients[]",
    "clients[].node_id",
    "clients[].organisation",
    "clients[].train",
    "clients[].evaluate",
    "clients[].evaluate_error",
}

_PREVIEW = {
    "spec_hash",
    "schema_fingerprint",
    "cost",
    "cost.measure",
    "cost.epsilon",
    "cost.delta",
    "cost.rho",
    "aggregates",
    "aggregates[]",
    "group_by",
    "group_by[]",
    "public_groups",
    "threshold",
    *{
        f"aggregates[].{k}"
        for k in (
            "name",
            "type",
            "column",
            "q",
            "mechanism",
            "scale",
            "half_width_95",
            "components",
            "components[]",
            "note",
            "candidates",
        )
    },
    *{f"aggregates[].components[].{k}" for k in ("role", "mechanism", "scale", "half_width", "confidence")},
    # what to know before spending (`dp.planner.preview_warnings`): from the public bounds, the stated
    # row bound (`max_rows`) and the spec, never from the data
    "warnings",
    "warnings[]",
    "warnings[].code",
    "warnings[].aggregate",
    "warnings[].message",
    "warnings[].details",
    "warnings[].details.half_width_95",
    "warnings[].details.public_range",
    "warnings[].details.min_group_size",
}
_ACCESS_REQUEST = {
    "id",
    "dataset_organisation",
    "dataset",
    "dataset_name",
    "organisation",
    "organisation_name",
    "requested_by",
    "purpose",
    "reason",
    "status",
    "decided_by",
    "decided_at",
    "decision_note",
    "grant_id",
    "created_at",
    "updated_at",
}
_OVERVIEW = {
    "organisations": ("name", "slug", "country", "status", "members", "created_at"),
    # of versions, the ready ones only (as non-owners list them): never a row count, size or file name
    "datasets": (
        "organisation",
        "slug",
        "name",
        "schema_confirmed",
        "listed",
        "versions_ready",
        "latest_version",
        "latest_version_at",
        "created_at",
    ),
    "budgets": ("dataset", "measure", "total", "spent", "left", "delta_total", "delta_spent", "allocations"),
    "jobs": (
        "id",
        "name",
        "state",
        "participants",
        "participants_accepted",
        "rounds_completed",
        "num_rounds",
        "created_at",
    ),
}

ALLOWED: dict[str, set[str]] = {
    "datasets": _PAGE | {f"results[].{k}" for k in _DATASET},
    "dataset": _DATASET | {"agreement_version", "agreement_accepted"},
    "dataset_versions": _PAGE | {f"results[].{k}" for k in _VERSION},
    "dataset_version": _VERSION,
    "dataset_grants": _PAGE
    | {f"results[].{k}" for k in ("id", "organisation", "purpose", "granted_at", "revoked_at")},
    "dataset_agreement": {"version", "text", "created_at", "accepted"},
    "dataset_budget": _LEFT
    | {
        "measure",
        "total",
        "spent",
        "delta_total",
        "delta_spent",
        "per_query_max",
        "per_analyst_cap",
        "max_rows",
        "training",  # the training policy (forbidden, dp, any): stated
        # an approximate-DP budget's composition: privacy accounting, as `spent` (operators only)
        "composition",
        *{
            f"composition.{k}"
            for k in (
                "events",
                "delta",
                "epsilon",
                "accountant",
                "epsilon_pld",
                "epsilon_rdp",
                "epsilon_naive",
            )
        },
        "allocations",
        "allocations[]",
        "allocations[].organisation",
        "allocations[].amount",
        "allocations[].spent",
        "allocations[].left",
        "allocations[].delta_amount",
        "allocations[].delta_spent",
        "daily",
        "daily[]",
        "daily[].day",
        "daily[].organisation",
        "daily[].amount",
    },
    # every paid use with its privacy event: privacy accounting (owner organisation and operators);
    # a training's q and steps carry its size, as the plan does (docs/data-exposure.md)
    "dataset_budget_ledger": _PAGE
    | {
        f"results[].{k}"
        for k in (
            "id",
            "kind",
            "organisation",
            "analyst",
            "query",
            "job",
            "amount",
            "delta",
            "event",
            "event.type",
            "event.epsilon",
            "event.delta",
            "event.noise_multiplier",
            "event.sample_rate",
            "event.steps",
            "created_at",
        )
    },
    "queries": _PAGE | {f"results[].{k}" for k in _QUERY},
    "query": _QUERY,
    "query_preview": _PREVIEW | {"version"} | _LEFT,
    # the accuracy planner: computed from the schema's public bounds, the stated row bound and the
    # query only (`dp.planner`), like the preview
    "query_plan": {
        "measure",
        "target_half_width",
        "level",
        "preview",
        *{f"preview.{k}" for k in _PREVIEW},
        "unplanned",
        "unplanned[]",
        "unplanned[].aggregate",
        "unplanned[].type",
        "unplanned[].reason",
        "min_group_sizes",
        "calibrations",
        "curve",
        "curve[]",
        "curve[].level",
        "curve[].half_widths",
        "curve[].min_group_sizes",
        "version",
        *_LEFT,
    },
    # listed datasets only: the steward's public facts (a confirmed schema) and the policy's terms
    "catalogue": _PAGE
    | {
        f"results[].{k}"
        for k in (
            *_SCHEMA,
            "organisation",
            "organisation_name",
            "slug",
            "name",
            "description",
            "budget",
            "budget.measure",
            "budget.total",
            "budget.per_query_max",
            "yours",
            "access",
            "access.granted",
            "access.pending",
        )
    },
    "access_requests": _PAGE | {f"results[].{k}" for k in _ACCESS_REQUEST},
    "dataset_access_requests": _PAGE | {f"results[].{k}" for k in _ACCESS_REQUEST},
    # operators only: metadata of every organisation, dataset, budget and job
    "operator_overview": {"q", "page"}
    | {
        f"{section}.{k}"
        for section, fields in _OVERVIEW.items()
        for k in ("count", "results", "results[]", *(f"results[].{f}" for f in fields))
    }
    | set(_OVERVIEW),
    # a non-owner's list of annotation projects is empty: every other annotation route answers 404
    "annotation_projects": _PAGE,
    "federated_jobs": _PAGE | {f"results[].{k}" for k in _JOB},
    "federated_job": _JOB_DETAIL,
    "federated_job_rounds": _PAGE | {f"results[].{k}" for k in _ROUND},
    # a job's DP-SGD price per participating dataset. The plan's keys are left unclassified on purpose:
    # its q (batch size / training rows) with the batch size states a member's training row count, so
    # a private job's plan fails this test until someone decides what non-owners may read of it.
    "federated_job_privacy": {
        "private",
        "epsilon",
        "delta",
        "max_grad_norm",
        "participants",
        "participants[]",
        *{
            f"participants[].{k}"
            for k in (
                "organisation",
                "status",
                "dataset",
                "plan",
                "debited",
                "refusal",
                "refusal.code",
                "refusal.detail",
            )
        },
    },
}
OPAQUE = {
    "settings",
    "spec",
    "result.rows",
    "result.intervals",
    "result.aggregates",
    "result.cost",
    "per_class_f1",
    "train",
    "evaluate",
    # aggregate name -> 95% half-width, or -> a mean's least group size: the keys are the aggregates'
    # names (the analyst's query), the values computed from the public bounds, the stated row bound and
    # the privacy level only (`dp.planner`), never from the data
    "half_widths",
    "min_group_sizes",
}


def key_paths(body: Any, prefix: str = "") -> set[str]:
    paths: set[str] = set()
    if isinstance(body, dict):
        for key, value in body.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            paths.add(path)
            if not any(path == o or path.endswith(f".{o}") for o in OPAQUE):
                paths |= key_paths(value, path)
    elif isinstance(body, list):
        for item in body:
            if isinstance(item, (dict, list)):
                paths.add(f"{prefix}[]")
                paths |= key_paths(item, f"{prefix}[]")
    return paths


# ----------------------------------------------------------------------------------- the checks
def _forbidden(ready: DatasetVersion, *, viewer: str) -> list[str]:
    """Regular expressions of A's data-derived values that must not appear in a body `viewer` gets."""

    def number(value) -> str:  # a whole number, not a run of digits inside another one
        return rf"(?<![\w.]){re.escape(str(value))}(?![\w])"

    values = [
        ROWS,
        SCORE_MIN,
        SCORE_MAX,
        WEIGHT_MIN,
        WEIGHT_MAX,
        ready.source_bytes,
        ready.data_bytes,
        *PROPOSED_INT,
        *PROPOSED_FLOAT,
        PROPOSED_TEXT_MAX,
        A_EVAL_EXAMPLES,
        A_CLIENT_ACCURACY,
        *[v for row in A_CONFUSION for v in row],
        POOLED_N,
        *[v for row in POOLED_CONFUSION for v in row],
    ]
    if viewer == "operator":  # B's member metrics are B's: its own members may see them, nobody else
        values += [B_EVAL_EXAMPLES, *[v for row in B_CONFUSION for v in row]]
    patterns = [number(v) for v in values]
    # as the portal's `sig` filter writes whole numbers: with thousands separators
    patterns += [number(f"{v:,}") for v in values if isinstance(v, int) and v >= 1000]
    patterns += [
        re.escape(s)
        for s in (
            SOURCE_NAME,
            *PROPOSED_CATEGORIES,
            *PROPOSED_COLUMNS,
            *QUALITY_REPORT_KEYS,
            filesizeformat(ready.source_bytes),
            filesizeformat(ready.data_bytes),
        )
    ]
    patterns.append(re.escape(f"{A_CLIENT_ACCURACY:.4f}"))  # as the portal rounds it
    patterns.append(re.escape(FINISHED.date().isoformat()))  # ingestion's end: with created_at, a size signal
    # annotation: the items' texts and the project's own words are A's
    patterns += [re.escape(text) for text, _ in ANNOTATION_MESSAGES]
    patterns.append(re.escape("Spam or ham"))
    # a version that is not ready (`proposed`'s awaits its schema) is the owner's alone, as a value
    patterns += [re.escape('"awaiting_schema"'), re.escape("Awaiting schema confirmation")]
    return patterns


def _leaks(text: str, patterns: list[str]) -> list[str]:
    return [p for p in patterns if re.search(p, text)]


def _api_reads(world, job_id: int, query_ids: list[int]) -> list[tuple[str, str, str, dict | None]]:
    """(route name, method, url, data) of every read a non-owner can make."""
    reads = [("datasets", "get", "/api/v1/datasets", None)]
    for slug in ("proposed", "ready"):
        base = f"/api/v1/datasets/org-a/{slug}"
        reads += [
            ("dataset", "get", base, None),
            ("dataset_versions", "get", f"{base}/versions", None),
            ("dataset_version", "get", f"{base}/versions/1", None),
            ("dataset_grants", "get", f"{base}/grants", None),
            ("dataset_agreement", "get", f"{base}/agreement", None),
            ("dataset_budget", "get", f"{base}/budget", None),
            ("dataset_budget_ledger", "get", f"{base}/budget/ledger", None),
            ("queries", "get", f"{base}/queries", None),
            # so small an ε that every warning comes (a count's, a sum's, a mean's)
            (
                "query_preview",
                "post",
                f"{base}/queries/preview",
                {"sql": _warned_sql(slug), "privacy": {"epsilon": 0.001}},
            ),
            (
                "query_plan",
                "post",
                f"{base}/queries/plan",
                {"sql": _warned_sql(slug), "target_half_width": 50, "curve": True},
            ),
            ("dataset_access_requests", "get", f"{base}/access-requests", None),
            # B holds both grants (409), operators ask for nothing (403): the refusals are scanned too
            (
                "dataset_access_requests",
                "post",
                f"{base}/access-requests",
                {"purpose": "query", "reason": "Once more."},
            ),
        ]
    reads += [("query", "get", f"/api/v1/queries/{query_id}", None) for query_id in query_ids]
    reads += [
        ("catalogue", "get", "/api/v1/catalogue", None),
        ("access_requests", "get", "/api/v1/access-requests", None),
        ("operator_overview", "get", "/api/v1/operator/overview", None),
    ]
    annotation = world.annotation
    base = f"/api/v1/annotation/projects/{annotation['project']}"
    reads += [
        ("annotation_projects", "get", "/api/v1/annotation/projects", None),
        ("annotation_project", "get", base, None),
        ("annotation_next", "get", f"{base}/next", None),
        ("annotation_next", "get", f"{base}/next?review=1", None),
        ("annotation_items", "get", f"{base}/items?ids={annotation['item']}", None),
        ("annotation_model_runs", "get", f"{base}/model-runs", None),
        ("annotation_model_run", "get", f"{base}/model-runs/{annotation['run']}", None),
        ("annotation_duplicates", "get", f"{base}/duplicates", None),
        ("annotation_review", "get", f"{base}/review", None),
        ("annotation_exports", "get", f"{base}/exports", None),
        ("annotation_export", "get", f"{base}/exports/{annotation['export']}", None),
    ]
    reads += [
        ("federated_jobs", "get", "/api/v1/federated-jobs", None),
        ("federated_job", "get", f"/api/v1/federated-jobs/{job_id}", None),
        ("federated_job_rounds", "get", f"/api/v1/federated-jobs/{job_id}/rounds", None),
        ("federated_job_privacy", "get", f"/api/v1/federated-jobs/{job_id}/privacy", None),
    ]
    return reads


def _warned_sql(slug: str) -> str:
    """A count, a sum and a mean: at a small ε, each gets its warning before spending."""
    return f"SELECT SUM(weight), COUNT(*), AVG(score) FROM {slug}"


def _portal_pages(job_id: int, query_ids: list[int]) -> list[tuple[str, str]]:
    """(route name, url) of every page a non-owner might open."""
    pages = [
        (name, reverse(f"portal:{name}"))
        for name in (
            "datasets",
            "my_budgets",
            "federated_jobs",
            "catalogue",
            "access_requests",
            "operator_overview",
        )
    ]
    pages.append(("federated_job", reverse("portal:federated_job", args=[job_id])))
    for slug in ("proposed", "ready"):
        pages += [
            (name, reverse(f"portal:{name}", args=["org-a", slug, *extra]))
            for name, extra in (
                ("dataset", ()),
                ("dataset_version", (1,)),
                ("dataset_version_quality", (1,)),
                ("dataset_schema_edit", ()),
                ("query_console", ()),
                ("budget_dashboard", ()),
            )
        ]
    for query_id in query_ids:
        pages += [
            (name, reverse(f"portal:{name}", args=["org-a", "ready", query_id]))
            for name in ("query_result", "query_result_csv")
        ]
    return pages


def _portal_posts() -> list[tuple[str, str, dict]]:
    """(route name, url, form) of the console's preview and plan (they spend nothing)."""
    console = reverse("portal:query_console", args=["org-a", "ready"])
    sql = _warned_sql("ready")
    return [
        ("query_console_preview", console, {"action": "preview", "sql": sql, "epsilon": "0.001"}),
        ("query_console_plan", console, {"action": "plan", "sql": sql, "target": "50"}),
    ]


NON_OWNERS = ["grantee_analyst", "grantee_admin", "operator"]
RESULT_TABLE = 'data-testid="result-table"'  # a released answer's table (`queries/_result.html`)


def _actor(world, name: str):
    return {"grantee_analyst": world.b.analyst, "grantee_admin": world.b.admin, "operator": world.operator}[
        name
    ]


def test_no_data_derived_value_reaches_a_non_owner(exposure):
    from clearinghouse.queries.models import Query

    world, ready, job_id = exposure
    query_ids = list(Query.objects.filter(dataset=ready.dataset).values_list("pk", flat=True))
    assert len(query_ids) == 2
    owner = api_client(world.a.steward)
    # The owner itself sees what the others must not (so the checks below look for the right things).
    owner_body = json.dumps(owner.get("/api/v1/datasets/org-a/proposed").json())
    assert str(PROPOSED_INT[1]) in owner_body and PROPOSED_CATEGORIES[0] in owner_body
    assert owner.get("/api/v1/datasets/org-a/ready/versions/1").json()["row_count"] == ROWS
    assert owner.get("/api/v1/datasets/org-a/proposed/versions/1").json()["status"] == "awaiting_schema"

    # ... its quality report, its proposal on the schema editor, and the answer of its own analyst's query
    steward = Client()
    steward.force_login(world.a.steward)
    quality = steward.get(reverse("portal:dataset_version_quality", args=["org-a", "ready", 1]))
    assert quality.status_code == 200 and "rows_read" in quality.json()
    editor = steward.get(reverse("portal:dataset_schema_edit", args=["org-a", "proposed"]))
    assert editor.status_code == 200 and PROPOSED_COLUMNS[0] in editor.content.decode()
    b_queries = set(Query.objects.filter(organisation=world.b.organisation).values_list("pk", flat=True))
    (a_query,) = set(query_ids) - b_queries
    answer = steward.get(reverse("portal:query_result", args=["org-a", "ready", a_query]))
    assert RESULT_TABLE in answer.content.decode()

    problems: list[str] = []
    reached: set[tuple[str, str]] = set()
    pages = 0
    for name in NON_OWNERS:
        user = _actor(world, name)
        client = api_client(user)
        patterns = _forbidden(ready, viewer=name)
        for route, method, url, data in _api_reads(world, job_id, query_ids):
            response = (
                getattr(client, method)(url, data, format="json") if data else getattr(client, method)(url)
            )
            if response.status_code >= 500:
                problems.append(f"{name} {method.upper()} {url}: {response.status_code}")
                continue
            # Refusals too: no error message may name a data-derived value.
            for pattern in _leaks(response.content.decode(), patterns):
                problems.append(f"{name} {method.upper()} {url}: holds {pattern!r}")
            if response.status_code != 200:
                continue
            reached.add((name, route))
            body = response.json()
            text = json.dumps(body, default=str)
            for pattern in _leaks(text, patterns):
                problems.append(f"{name} {method.upper()} {url}: holds {pattern!r}")
            for path in sorted(key_paths(body) - ALLOWED[route]):
                problems.append(
                    f"{name} {method.upper()} {url}: key {path!r} is not classified for non-owners"
                )
            if route in {"query", "queries"}:
                queries = body["results"] if route == "queries" else [body]
                for query in queries:
                    own = query["id"] in b_queries
                    if "result" in query and (name == "operator" or not own):
                        problems.append(f"{name} {url}: sees the answer of query {query['id']} (not its own)")
            if route == "federated_job_rounds":
                mine = "org-b" if name != "operator" else None
                for entry in body["results"]:
                    for member in entry["clients"]:
                        if member["organisation"] != mine:
                            problems.append(f"{name} {url}: sees {member['organisation']}'s member metrics")
            if route == "annotation_projects" and body["count"]:
                problems.append(f"{name} {url}: lists {body['count']} annotation project(s) of A's")
            if route == "catalogue":  # listed datasets only: `proposed` (unconfirmed) cannot be
                listed = {f"{e['organisation']}/{e['slug']}" for e in body["results"]}
                if listed != {"org-a/ready"}:
                    problems.append(f"{name} {url}: lists {sorted(listed)}")
            if route in {"query_preview", "query_plan"}:
                preview = body if route == "query_preview" else body["preview"]
                reached |= {(name, f"{route}:{w['code']}") for w in preview["warnings"]}
        portal = Client()
        portal.force_login(user)
        for route, page in _portal_pages(job_id, query_ids):
            response = portal.get(page)
            if response.status_code >= 500:
                problems.append(f"{name} portal {page}: {response.status_code}")
                continue
            content = response.content.decode()
            for pattern in _leaks(content, patterns):
                problems.append(f"{name} portal {page}: holds {pattern!r}")
            if response.status_code != 200:
                continue
            pages += 1
            reached.add((name, f"portal:{route}"))
            if route in {"query_result", "query_result_csv"}:
                query_id = int(page.rstrip("/").split("/")[-1 if route == "query_result" else -2])
                may_read = name != "operator" and query_id in b_queries
                shows = route == "query_result_csv" or RESULT_TABLE in content
                if shows and not may_read:
                    problems.append(f"{name} portal {page}: shows the answer of query {query_id}")
                if route == "query_result" and may_read and not shows:
                    problems.append(f"{name} portal {page}: hides the answer of its own query {query_id}")
        for route, page, form in _portal_posts():
            response = portal.post(page, form)
            if response.status_code >= 500:
                problems.append(f"{name} portal POST {page} ({route}): {response.status_code}")
                continue
            content = response.content.decode()
            for pattern in _leaks(content, patterns):
                problems.append(f"{name} portal POST {page} ({route}): holds {pattern!r}")
            if response.status_code == 200:
                reached.add((name, f"portal:{route}"))
                shown = "plan-warnings" if route.endswith("plan") else "preview-warnings"
                if f'data-testid="{shown}"' not in content:  # the warnings are on the page
                    problems.append(f"{name} portal POST {page} ({route}): no warning shown")
    assert not problems, "\n".join(problems)
    # The non-owners really reached what was checked (a 404 everywhere would prove nothing).
    everyone = {
        "datasets",
        "dataset",
        "dataset_versions",
        "dataset_version",
        "dataset_budget",
        "queries",
        "query",
        "federated_jobs",
        "federated_job",
        "federated_job_rounds",
        "federated_job_privacy",
        "annotation_projects",
        "catalogue",
        "access_requests",
        "dataset_access_requests",
        "portal:catalogue",
        "portal:access_requests",
        "portal:query_result",
        "portal:budget_dashboard",
    }
    grantees = ("grantee_analyst", "grantee_admin")
    expected = {(name, route) for name in NON_OWNERS for route in everyone}
    expected |= {
        (name, route)
        for name in grantees
        for route in (
            "query_preview",
            "query_plan",
            "query_preview:interval_covers_range",
            "query_plan:group_too_small_for_mean",
            "portal:query_result_csv",
            "portal:query_console_preview",
            "portal:query_console_plan",
        )
    }
    expected |= {("operator", "dataset_grants"), ("operator", "operator_overview")}
    expected |= {("operator", "portal:operator_overview")}
    assert expected <= reached, sorted(expected - reached)
    # ... and not what is the owner's alone (or the operators'; the answers were checked above).
    owner_only = {"portal:dataset_version_quality", "portal:dataset_schema_edit"}
    owner_only |= {
        route for _, route in reached if route.startswith("annotation_") and route != "annotation_projects"
    }
    operators_only = {"operator_overview", "portal:operator_overview"}
    unexpected = {
        (name, route)
        for name, route in reached
        if route in owner_only or (route in operators_only and name != "operator")
    }
    assert not unexpected, sorted(unexpected)
    assert pages >= 3 * 7


def test_key_paths_walks_nested_bodies():
    body = {"a": 1, "b": {"c": [{"d": 2}]}, "settings": {"x": 1}, "e": [1, 2]}
    assert key_paths(body) == {"a", "b", "b.c", "b.c[]", "b.c[].d", "settings", "e"}
