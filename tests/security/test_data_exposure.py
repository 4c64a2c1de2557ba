"""Nothing derived from a dataset's rows reaches anyone but its owner organisation (see
docs/data-exposure.md).

Organisation A owns two datasets: `proposed`, whose schema was inferred from an upload and not yet
confirmed (the proposal holds the data's exact minima and maxima, its categories, its longest text),
and `ready`, a ready version with distinctive values, a row count, a quality report and file sizes.
Organisation B holds query and training grants on both and trains with A in a federated job whose
rounds carry each member's own metrics (example counts, confusion matrices).

Every dataset, version, budget, query and federation endpoint and portal page that a non-owner
(B's analyst, B's admin, the consortium operator) can reach is fetched, and:

- no data-derived value of A's appears in any body (distinctive numbers and categories, the row
  count, quality-report keys, byte sizes, the upload's file name, A's per-member training metrics);
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
    assert proposed.error_code == "schema_unconfirmed"
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
    for version in (proposed, ready):
        for purpose in ("query", "training"):
            dataset_grant_create(
                actor=world.a.steward, dataset=version.dataset, organisation=b, purpose=purpose
            )
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
    "queries": _PAGE | {f"results[].{k}" for k in _QUERY},
    "query": _QUERY,
    "query_preview": {
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
        "version",
        *_LEFT,
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
        *{
            f"aggregates[].components[].{k}"
            for k in ("role", "mechanism", "scale", "half_width", "confidence")
        },
    },
    "federated_jobs": _PAGE | {f"results[].{k}" for k in _JOB},
    "federated_job": _JOB_DETAIL,
    "federated_job_rounds": _PAGE | {f"results[].{k}" for k in _ROUND},
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
            ("queries", "get", f"{base}/queries", None),
            (
                "query_preview",
                "post",
                f"{base}/queries/preview",
                {"sql": f"SELECT SUM(weight), COUNT(*) FROM {slug}", "privacy": {"epsilon": 1.0}},
            ),
        ]
    reads += [("query", "get", f"/api/v1/queries/{query_id}", None) for query_id in query_ids]
    reads += [
        ("federated_jobs", "get", "/api/v1/federated-jobs", None),
        ("federated_job", "get", f"/api/v1/federated-jobs/{job_id}", None),
        ("federated_job_rounds", "get", f"/api/v1/federated-jobs/{job_id}/rounds", None),
    ]
    return reads


def _portal_pages(job_id: int) -> list[str]:
    pages = [
        reverse("portal:datasets"),
        reverse("portal:federated_jobs"),
        reverse("portal:federated_job", args=[job_id]),
        reverse("portal:my_budgets"),
    ]
    for slug in ("proposed", "ready"):
        pages += [
            reverse("portal:dataset", args=["org-a", slug]),
            reverse("portal:dataset_version", args=["org-a", slug, 1]),
            reverse("portal:query_console", args=["org-a", slug]),
            reverse("portal:budget_dashboard", args=["org-a", slug]),
        ]
    return pages


NON_OWNERS = ["grantee_analyst", "grantee_admin", "operator"]


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
                    own = query["id"] in set(
                        Query.objects.filter(organisation=world.b.organisation).values_list("pk", flat=True)
                    )
                    if "result" in query and (name == "operator" or not own):
                        problems.append(f"{name} {url}: sees the answer of query {query['id']} (not its own)")
            if route == "federated_job_rounds":
                mine = "org-b" if name != "operator" else None
                for entry in body["results"]:
                    for member in entry["clients"]:
                        if member["organisation"] != mine:
                            problems.append(f"{name} {url}: sees {member['organisation']}'s member metrics")
        portal = Client()
        portal.force_login(user)
        for page in _portal_pages(job_id):
            response = portal.get(page)
            if response.status_code >= 500:
                problems.append(f"{name} portal {page}: {response.status_code}")
                continue
            if response.status_code != 200:
                continue
            pages += 1
            for pattern in _leaks(response.content.decode(), patterns):
                problems.append(f"{name} portal {page}: holds {pattern!r}")
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
    }
    expected = {(name, route) for name in NON_OWNERS for route in everyone}
    expected |= {(name, "query_preview") for name in ("grantee_analyst", "grantee_admin")}
    expected |= {("operator", "dataset_grants")}
    assert expected <= reached, sorted(expected - reached)
    assert pages >= 3 * 7


def test_key_paths_walks_nested_bodies():
    body = {"a": 1, "b": {"c": [{"d": 2}]}, "settings": {"x": 1}, "e": [1, 2]}
    assert key_paths(body) == {"a", "b", "b.c", "b.c[]", "b.c[].d", "settings", "e"}
