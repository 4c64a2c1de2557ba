"""Upload through the API, ingestion by a real Celery worker consuming the real broker (Redis in CI,
the embedded SQLite transport otherwise), the version visible as ready through the API."""

import io
import time

import pytest
from celery.contrib.testing.worker import start_worker

from clearinghouse.celery import app
from clearinghouse.organisations.services import invitation_accept, invitation_create
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import api_client, make_operator, make_organisation, make_user
from tests.shared_data import DATASETS as SHARED


@pytest.fixture
def ingestion_worker(transactional_db):
    # The worker runs in a thread of this process, so it sees the test database.
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["ingestion"], shutdown_timeout=30):
        yield


def test_upload_is_ingested_by_the_worker(ingestion_worker, media_root):
    operator = make_operator()
    admin = make_user("admin")
    organisation = make_organisation(operator=operator, admin=admin, slug="acme")
    steward = make_user("steward")
    _, token = invitation_create(actor=admin, organisation=organisation, email=steward.email, role="data_steward")
    invitation_accept(actor=steward, token=token)
    client = api_client(steward)
    assert client.post("/api/v1/datasets", {"name": "PUMS", "slug": "pums", "schema": PUMS_SCHEMA},
                       format="json").status_code == 201
    response = client.post("/api/v1/datasets/acme/pums/versions",
                           {"file": io.BytesIO((SHARED / "pums_1000.csv").read_bytes())}, format="multipart")
    assert response.status_code == 202
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = client.get("/api/v1/datasets/acme/pums/versions/1").json()
        if body["status"] in {"ready", "failed", "corrupt"}:
            break
        time.sleep(0.2)
    assert body["status"] == "ready", body
    assert body["row_count"] == 1000 and body["quality_report"]["duplicate_rows"] == 3
