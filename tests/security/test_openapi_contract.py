"""The OpenAPI document (/api/schema/) is a true contract of the API.

`test_whole_document_as` runs schemathesis over every operation of the document, as an analyst, an
organisation admin and an operator (each with a real bearer token on the `world` fixture), through
the real Django WSGI application, and checks that no response is a server error, that every status
is documented and that every body matches its documented schema. Each generated request runs in a
savepoint that is rolled back, so every example meets the same world (a suspended organisation or a
revoked token does not blind the examples after it).

`test_every_response_is_documented` is the fast guard: every operation's every response names a
schema (no `responses=dict`, no free-form object), lists come as the one paginated object, error
statuses carry the error body, and path parameters carry no regular expressions.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter, defaultdict
from contextlib import contextmanager

import pytest

# Operations left out of the schemathesis run, each with the reason. None is, today: the streaming
# multipart upload runs in-process (into a per-test store); releases are queued and answered at once
# (202, as `?wait=0` would) because no `dp` worker runs; previews are computed in-process (eager
# Celery); scheduling needs no SuperLink to answer (403/409 before it would be asked).
EXCLUDED: dict[str, str] = {}

EXAMPLES = int(os.environ.get("CONTRACT_EXAMPLES", "12"))  # positive examples per operation and role
NEGATIVE_EXAMPLES = int(os.environ.get("CONTRACT_NEGATIVE_EXAMPLES", "6"))  # schema-violating requests
GENERATED_PATH_EXAMPLES = int(
    os.environ.get("CONTRACT_GENERATED_PATH_EXAMPLES", "3")
)  # objects that may not exist
ROLES = ["analyst", "org_admin", "operator"]
ONLY = os.environ.get("CONTRACT_ONLY", "")  # e.g. "/queries": only the operations whose label holds it


def _schema_document() -> dict:
    """The document /api/schema/ serves, as JSON; fails on any drf-spectacular warning or error and
    on an invalid OpenAPI document (what `manage.py spectacular --validate --fail-on-warn` checks)."""
    import json

    from drf_spectacular.drainage import GENERATOR_STATS
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiJsonRenderer
    from drf_spectacular.validation import validate_schema

    GENERATOR_STATS.reset()
    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert not GENERATOR_STATS, "drf-spectacular warned or failed while generating the document (see stderr)"
    validate_schema(schema)
    return json.loads(OpenApiJsonRenderer().render(schema, renderer_context={}))


def _operations(document: dict):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in {"get", "post", "put", "patch", "delete"}:
                yield f"{method.upper()} {path}", method.upper(), path, operation


def _resolve(document: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_every_response_is_documented():
    """Every operation's every response has a real schema; lists are the paginated object; errors
    are documented with the error body; path templates and parameters carry no regular expressions."""
    document = _schema_document()
    problems: list[str] = []
    operations = list(_operations(document))
    assert len(operations) >= 55
    for label, method, path, operation in operations:
        if re.search(r"[\^$()?*+\\]", path):
            problems.append(f"{label}: a regular expression in the path")
        for parameter in operation.get("parameters", []):
            schema = parameter.get("schema", {})
            if parameter["in"] == "path" and "pattern" in schema:
                problems.append(f"{label}: path parameter {parameter['name']} documented by a pattern")
            if (
                parameter["in"] == "path"
                and (parameter["name"].endswith("_id") or parameter["name"] == "number")
                and schema.get("type") != "integer"
            ):
                problems.append(f"{label}: path parameter {parameter['name']} is not an integer")
        responses = operation["responses"]
        for status, response in responses.items():
            if status == "204":
                continue
            content = response.get("content")
            if not content:
                problems.append(f"{label} {status}: no body documented")
                continue
            for media_type, body in content.items():
                if media_type == "application/octet-stream":
                    continue
                schema = _resolve(document, body.get("schema", {}))
                if "Unspecified response body" in str(body) or (
                    schema.get("type") == "object" and not schema.get("properties")
                ):
                    problems.append(f"{label} {status}: a free-form object (responses=dict?)")
                if schema.get("type") == "array":
                    problems.append(f"{label} {status}: a bare array (lists answer the paginated object)")
                if status.startswith(("4", "5")) and body.get("schema") != {
                    "$ref": "#/components/schemas/Error"
                }:
                    problems.append(f"{label} {status}: not the error body")
        has_limit = any(p["name"] == "limit" for p in operation.get("parameters", []))
        if has_limit:
            page = _resolve(document, responses["200"]["content"]["application/json"]["schema"])
            if set(page.get("properties", {})) != {"count", "next", "previous", "results"}:
                problems.append(f"{label}: a list that is not the paginated object")
        expected = {"429"}
        if operation.get("security") and any(operation["security"]):
            expected |= {"401", "403"}
        if any(p["in"] == "path" for p in operation.get("parameters", [])):
            expected |= {"404"}
        if method != "GET":
            expected |= {"400", "404", "409"}
        if missing := expected - responses.keys():
            problems.append(f"{label}: error statuses {sorted(missing)} undocumented")
    assert not problems, "\n".join(problems)
    lists = [
        label
        for label, method, _, operation in operations
        if any(p["name"] == "limit" for p in operation.get("parameters", []))
    ]
    assert len(lists) >= 14, lists


def _input_serializers():
    """Every request serializer of the API: the views' `InputSerializer`s and what they nest."""
    from django.urls import URLPattern, get_resolver
    from rest_framework import serializers

    found: dict[str, type] = {}

    def walk(patterns):
        for pattern in patterns:
            if isinstance(pattern, URLPattern):
                view = getattr(pattern.callback, "view_class", None)
                for name in dir(view) if view else ():
                    value = getattr(view, name)
                    if (
                        isinstance(value, type)
                        and issubclass(value, serializers.Serializer)
                        and "Input" in name
                    ):
                        found[f"{view.__name__}.{name}"] = value
            else:
                walk(pattern.url_patterns)

    walk(get_resolver().url_patterns)
    from clearinghouse.queries.apis import (
        QueryBatchInputSerializer,
        QueryInputSerializer,
        QueryReleaseInputSerializer,
    )

    for serializer in (QueryInputSerializer, QueryBatchInputSerializer, QueryReleaseInputSerializer):
        found[serializer.__name__] = serializer
    return found


def test_request_text_fields_take_only_strings():
    """No request field turns a number (or a boolean) into text: every text field is strict."""
    from rest_framework import serializers

    from clearinghouse.core.apis import StrictCharField, StrictSlugField

    lax: list[str] = []

    def check(where: str, field) -> None:
        if isinstance(field, serializers.ListSerializer):
            check(where, field.child)
        elif isinstance(field, serializers.Serializer):
            for name, child in field.fields.items():
                check(f"{where}.{name}", child)
        elif isinstance(field, (serializers.ListField, serializers.DictField)):
            check(where + "[]", field.child)
        elif isinstance(field, serializers.CharField) and not isinstance(
            field, (StrictCharField, StrictSlugField)
        ):
            lax.append(where)

    serializers_found = _input_serializers()
    assert len(serializers_found) >= 20, sorted(serializers_found)
    for name, serializer in serializers_found.items():
        check(name, serializer())
    assert not lax, f"text fields that accept numbers: {lax}"


@contextmanager
def _rolled_back():
    """One example's changes, undone afterwards (a savepoint inside the test's transaction)."""
    from django.db import transaction

    with transaction.atomic():
        yield
        transaction.set_rollback(True)


def test_a_number_is_not_text(world):
    """The issue's case: an integer sent as an agreement's text was published as "12345"."""
    from tests.factories import api_client

    a = world.a
    url = f"/api/v1/datasets/{a.organisation.slug}/{a.dataset.slug}/agreement"
    for text in (12345, 1.5, True, ["text"]):
        response = api_client(a.steward).post(url, {"text": text}, format="json")
        assert response.status_code == 400, (text, response.content)
        assert response.json()["fields"] == {"text": ["Not a valid string."]}
    assert api_client(a.steward).post(url, {"text": "12345"}, format="json").status_code == 201


@pytest.fixture
def contract_app(settings, monkeypatch):
    """The real WSGI application, as a server runs it, with three test-only differences, each so
    that examples reach the code under test: no throttling (hundreds of requests a minute from one
    token), DP previews computed in-process instead of by a `dp` worker (none runs here) and releases
    answered at once with 202 (`QUERY_WAIT_SECONDS=0`: nobody would release them)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections
    from rest_framework.views import APIView

    from clearinghouse.celery import app as celery_app

    handler = WSGIHandler()

    def app(environ, start_response):
        # As Django's test client does: the end of a request must not close the test's connection
        # (and with it the transaction every example runs in).
        request_started.disconnect(close_old_connections)
        request_finished.disconnect(close_old_connections)
        try:
            response = handler(environ, start_response)
            try:
                return [b"".join(response)]
            finally:
                response.close()
        finally:
            request_started.connect(close_old_connections)
            request_finished.connect(close_old_connections)

    settings.QUERY_WAIT_SECONDS = 0
    monkeypatch.setattr(APIView, "throttle_classes", ())
    celery_app.conf.task_always_eager = True
    try:
        yield app
    finally:
        celery_app.conf.task_always_eager = False


@pytest.fixture
def contract_world(media_root, world, contract_app):
    """The `world`, plus what its lists would otherwise lack: a released query (through the API and
    the `dp` task, run here in-process), a reported federated round, and a running job whose
    ServerApp token the events endpoint is called with. Returns the path parameters of org A's
    objects, per parameter name."""
    import hashlib

    from django.utils import timezone
    from rest_framework.test import APIClient

    from clearinghouse.accounts.services import api_token_create
    from clearinghouse.queries.ledger import allocation_set
    from clearinghouse.queries.models import Query
    from clearinghouse.queries.tasks import query_execute_task
    from federation.models import FederatedJob, JobRound, JobState
    from federation.services import job_create

    a = world.a
    allocation_set(actor=a.steward, dataset=a.dataset, organisation=a.organisation, amount=2.0)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {api_token_create(actor=a.analyst, name='contract')[1]}")
    response = client.post(
        f"/api/v1/datasets/{a.organisation.slug}/{a.dataset.slug}/queries?wait=0",
        {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.5}},
        format="json",
    )
    assert response.status_code == 202, response.content
    query_id = response.json()["id"]
    query_execute_task([query_id])
    assert Query.objects.get(pk=query_id).status == "released"
    JobRound.objects.create(
        job_id=a.job_id,
        number=1,
        accuracy=0.91,
        macro_f1=0.88,
        loss=0.31,
        clients_trained=1,
        bytes_sent=1024,
        bytes_received=2048,
        seconds=1.5,
        record={
            "event": "round",
            "round": 1,
            "clients": [{"organisation": "org-a", "loss": 0.3}],
            "dropouts": [],
            "flower_overhead_seconds": 0.2,
        },
    )
    running = job_create(
        actor=world.operator,
        name="Contract",
        text_column="SMS",
        label_column="Label",
        labels=["ham", "spam"],
        participants=[{"organisation": a.organisation.slug}],
        min_clients=1,
    )
    job_token = "contract-job-token"
    FederatedJob.objects.filter(pk=running.pk).update(
        state=JobState.RUNNING,
        flower_run_id="4242",
        started_at=timezone.now(),
        callback_token_hash=hashlib.sha256(job_token.encode()).hexdigest(),
    )
    # An annotation project of A's (its analyst annotates), with a finished model run and an export.
    from clearinghouse.annotation.models import AnnotationExport, ModelRun
    from tests.annotation.test_api import make_project, make_text_dataset

    project = make_project(
        manager=a.admin, dataset=make_text_dataset(steward=a.steward), annotators=[a.analyst.username]
    )
    run = ModelRun.objects.create(project=project, kind="propose", status="succeeded", labels_used=2)
    export = AnnotationExport.objects.create(project=project, dataset=project.dataset)
    return {
        "organisation": a.organisation.slug,
        "dataset": a.dataset.slug,
        "grantee": "org-c",
        "number": 1,
        "grant_id": a.grant_id,
        "job_id": a.job_id,
        "key_id": a.node_key_id,
        "membership_id": a.steward.membership.pk,
        "invitation_id": a.invitation.pk,
        "join_request_id": a.join_request.pk,
        "token_id": a.admin_token_id,
        "query_id": query_id,
        "running_job_id": running.pk,
        "job_token": job_token,
        "project_id": project.pk,
        "item_id": project.items.order_by("pk").values_list("pk", flat=True)[0],
        "run_id": run.pk,
        "export_id": export.pk,
    }


def _with_world_examples(document: dict, world, known: dict) -> dict:
    """Adds request examples that name the world's objects (schemathesis sends every example first),
    so that writes get past "no such organisation" to the code behind them. The document's own
    examples (DP queries, budgets) need no such names."""
    from tests.factories import SMALL_SCHEMA
    from tests.security.test_authorization_matrix import fresh_public_key

    examples = {
        "organisations_apply": {
            "name": "Newcomer",
            "slug": "newcomer",
            "country": "DE",
            "contact_email": "x@newcomer.example.org",
        },
        "organisations_update": {"contact_email": "new@example.org"},
        "organisations_decide": {"reason": "audit"},
        "invitations_create": {"email": "new-member@example.org", "role": "analyst"},
        "invitations_accept": {"token": world.a.invitation_token},
        "memberships_change_role": {"role": "analyst"},
        "join_requests_create": {"organisation": world.b.organisation.slug},
        "join_requests_decide": {"role": "analyst"},
        "datasets_register": {"name": "Second", "slug": "second", "schema": SMALL_SCHEMA},
        "datasets_set_schema": {"schema": SMALL_SCHEMA},
        "dataset_grants_create": {"organisation": known["grantee"], "purpose": "training"},
        "dataset_agreement_publish": {"text": "Aggregate research use only, v2."},
        "dataset_agreement_accept": {"version": 1},
        "federated_jobs_create": {
            "name": "Spam filter",
            "text_column": "SMS",
            "label_column": "Label",
            "labels": ["ham", "spam"],
            "min_clients": 1,
            "participants": [{"organisation": known["organisation"]}],
        },
        "federated_jobs_participation": {"decision": "accept"},
        "federated_jobs_event": {
            "event": "round",
            "round": 2,
            "evaluate": {"accuracy": 0.9, "loss": 0.2},
            "clients_trained": 1,
            "bytes_sent": 10,
            "bytes_received": 20,
            "round_seconds": 1.0,
        },
        "supernode_keys_add": {"name": "gpu-2", "public_key": fresh_public_key()},
        "annotation_projects_create": {
            "dataset": "messages",
            "name": "Second pass",
            "text_column": "text",
            "labels": ["ham", "spam"],
        },
        "annotation_projects_update": {"instructions": "Advertising is spam.", "target_precision": 0.98},
        "annotation_items_label": {"label": "ham"},
        "annotation_model_runs_start": {"kind": "propose"},
        "annotation_automatic_apply": {"run": known["run_id"]},
        "annotation_exports_start": {"name": "Spam labelled"},
    }
    for _, _, _, operation in _operations(document):
        value = examples.pop(operation["operationId"], None)
        if value is not None:
            media = operation["requestBody"]["content"]["application/json"]
            media["examples"] = {**media.get("examples", {}), "world": {"value": value}}
    assert not examples, f"examples for operations the document lacks: {sorted(examples)}"
    return document


def _closed(document: dict) -> dict:
    """Response objects with no properties beyond the documented ones, so that an undocumented field
    in a body fails the run too (the served document leaves them open, for clients' sake)."""
    for name, schema in document["components"]["schemas"].items():
        if not name.endswith("Request") and "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
    return document


def _known_path_parameters(known: dict, path: str) -> dict:
    """Org A's real objects for the operation's path parameters (the enum `action` is generated)."""
    values = {
        **known,
        "slug": known["dataset"] if path.startswith("/api/v1/datasets/") else known["organisation"],
    }
    if path.endswith("/events"):
        values["job_id"] = known["running_job_id"]
    return {name: values[name] for name in re.findall(r"{(\w+)}", path) if name in values}


def _check_examples(strategy, *, examples: int, headers: dict, statuses: Counter) -> None:
    """Sends `examples` generated requests; each response must be no server error, have a documented
    status and content type, and match its documented schema."""
    from hypothesis import HealthCheck, Phase, given
    from hypothesis import settings as hypothesis_settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    checks = [
        not_a_server_error,
        status_code_conformance,
        content_type_conformance,
        response_schema_conformance,
    ]

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case):
        with _rolled_back():
            response = case.call(headers=headers)
            statuses[response.status_code] += 1
            if os.environ.get("CONTRACT_DEBUG") and os.environ["CONTRACT_DEBUG"] in case.operation.label:
                print("DEBUG", case.operation.label, case.body, response.status_code, response.text[:300])
            case.validate_response(response, checks=checks, headers=headers)

    check()


@pytest.mark.slow
@pytest.mark.parametrize("role", ROLES)
def test_whole_document_as(role, media_root, world, contract_world, contract_app):
    """Per operation: positive examples on org A's real objects, schema-violating (negative) ones on
    them, and positive ones on generated path parameters (mostly objects that do not exist)."""
    import schemathesis
    from hypothesis.errors import Unsatisfiable
    from schemathesis.core.failures import FailureGroup

    from clearinghouse.accounts.services import api_token_create

    schema = schemathesis.openapi.from_dict(
        _closed(_with_world_examples(_schema_document(), world, contract_world))
    )
    schema.app = contract_app
    user_headers = {
        "Authorization": f"Bearer {api_token_create(actor=world.actor(role), name=f'contract-{role}')[1]}"
    }
    job_headers = {"Authorization": f"Bearer {contract_world['job_token']}"}
    failures: list[str] = []
    seen: dict[str, Counter] = defaultdict(Counter)  # statuses answered, per operation (printed: -s or -rP)
    ran = 0
    started = time.monotonic()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.label in EXCLUDED or ONLY not in operation.label:
            continue
        known = _known_path_parameters(contract_world, operation.path)
        headers = job_headers if operation.path.endswith("/events") else user_headers
        runs = [
            (f"example {index}", strategy, 1)
            for index, strategy in enumerate(
                operation.get_strategies_from_examples(path_parameters=known or None)
            )
        ]
        runs += [
            ("positive", operation.as_strategy(path_parameters=known or None), EXAMPLES),
            (
                "negative",
                operation.as_strategy(
                    generation_mode=schemathesis.GenerationMode.NEGATIVE, path_parameters=known or None
                ),
                NEGATIVE_EXAMPLES,
            ),
        ]
        if known:
            runs.append(("generated paths", operation.as_strategy(), GENERATED_PATH_EXAMPLES))
        for name, strategy, examples in runs:
            if not examples:
                continue
            try:
                _check_examples(strategy, examples=examples, headers=headers, statuses=seen[operation.label])
            except Unsatisfiable as exc:
                # Negative: nothing of the operation can be made invalid (its only input is the fixed path).
                if name != "negative":
                    failures.append(
                        f"--- {operation.label} ({name}) as {role}: no example could be made: {exc}"
                    )
            except (Exception, FailureGroup) as exc:  # noqa: BLE001 - collected: one run lists every failure
                failures.append(f"--- {operation.label} ({name}) as {role}:\n{exc}"[:3000])
            ran += 1
    print(f"{ran} runs of {len(seen)} operations as {role} in {time.monotonic() - started:.1f}s")
    assert ONLY or len(seen) + len(EXCLUDED) == len(list(schema.get_all_operations()))
    for label, statuses in sorted(seen.items()):
        print(f"  {label}: {dict(sorted(statuses.items()))}")
    assert not failures, f"{len(failures)} operation run(s) break the contract as {role}:\n" + "\n".join(
        failures
    )
