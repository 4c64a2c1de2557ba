"""/metrics: who may read it, and counts taken in a separate Celery worker process reaching it
(multiprocess mode, as on a server)."""

import json
import os
import re
import sys
import time

import pytest
from django.db import connection

from clearinghouse.audit.models import AuditEvent
from tests.factories import api_client
from tests.processes import child_env, start, stop

TOKEN_HEADER = {"HTTP_AUTHORIZATION": "Bearer test-metrics-token-7c1f0e9a2b4d4c8e9f3a6b5d1e2c7a90"}


def test_metrics_answers_only_the_metrics_token(client, settings):
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = client.get("/metrics", **TOKEN_HEADER)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    assert "clearinghouse_http_request_duration_seconds_bucket" in response.content.decode()

    settings.METRICS_TOKEN = ""
    assert client.get("/metrics", **TOKEN_HEADER).status_code == 404  # off


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = re.escape(name + (f"{{{label_text}}}" if labels else "")) + r" ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_latency_is_labelled_by_route_not_path(client):
    client.get("/invitations/some-secret-looking-token/")
    text = client.get("/metrics", **TOKEN_HEADER).content.decode()
    assert 'route="invitations/<str:token>/"' in text
    assert "some-secret-looking-token" not in text


@pytest.fixture
def dp_worker_process(transactional_db):
    """A `celery worker -Q dp` process of its own, on the test database (PostgreSQL: a second process
    cannot open the in-memory SQLite test database)."""
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.skip("needs PostgreSQL (DATABASE_URL): the worker process must open the test database")
    url = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT'] or 5432}/{db['NAME']}"
    process, output = start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "clearinghouse",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--queues",
            "dp",
            "--hostname",
            f"dp-{os.getpid()}@%h",
        ],
        child_env(DJANGO_SETTINGS_MODULE="clearinghouse.settings.test", DATABASE_URL=url),
        "dp-worker",
    )
    yield output
    stop(process)


def run_query(client, url: str, epsilon: float, request_id: str) -> dict:
    response = client.post(
        url,
        {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": epsilon}},
        format="json",
        HTTP_X_REQUEST_ID=request_id,
    )
    assert response.status_code == 202, response.content
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = client.get(response.json()["url"]).json()
        if body["status"] not in {"pending", "running"}:
            return body
        time.sleep(0.3)
    raise AssertionError("the dp worker did not finish the query in 120 s")


def test_worker_process_counts_reach_metrics_and_carry_the_request_id(dp_worker_process, settings):
    from clearinghouse.queries.ledger import allocation_set
    from tests.factories import build_world

    settings.QUERY_WAIT_SECONDS = 0
    world = build_world()
    scraper = api_client(None)
    before = scraper.get("/metrics", **TOKEN_HEADER).content.decode()
    analyst = api_client(world.a.analyst)
    url = f"/api/v1/datasets/{world.a.organisation.slug}/{world.a.dataset.slug}/queries"

    # Organisation A has no allocation on its own dataset yet: the ledger refuses.
    assert run_query(analyst, url, 0.25, "req-refused-0123456789")["status"] == "refused"
    allocation_set(
        actor=world.a.steward, dataset=world.a.dataset, organisation=world.a.organisation, amount=1.0
    )
    body = run_query(analyst, url, 0.25, "req-released-0123456789")
    assert body["status"] == "released", (body, dp_worker_process.read_text()[-3000:])

    after = scraper.get("/metrics", **TOKEN_HEADER).content.decode()
    assert (
        sample(after, "clearinghouse_queries_released_total")
        == sample(before, "clearinghouse_queries_released_total") + 1
    )
    refused = "clearinghouse_queries_refused_total"
    assert (
        sample(after, refused, code="budget_exceeded") == sample(before, refused, code="budget_exceeded") + 1
    )
    spent = sample(after, "clearinghouse_privacy_loss_spent_total", measure="pure") - sample(
        before, "clearinghouse_privacy_loss_spent_total", measure="pure"
    )
    assert spent == pytest.approx(0.25, rel=0.01)  # the refused query spent nothing

    # The id of the request that queued the release follows it into the worker: audit events and log lines.
    assert AuditEvent.objects.filter(action="query.released", request_id="req-released-0123456789").exists()
    assert AuditEvent.objects.filter(action="query.refused", request_id="req-refused-0123456789").exists()
    worker_lines = [
        json.loads(line) for line in dp_worker_process.read_text().splitlines() if line.startswith("{")
    ]
    assert any(
        line["request_id"] == "req-released-0123456789" and line["logger"] == "celery.app.trace"
        for line in worker_lines
    )
