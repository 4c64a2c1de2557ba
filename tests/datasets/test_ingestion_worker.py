"""Upload through the API, ingestion by a real Celery worker consuming the real broker (Redis in CI,
the embedded SQLite transport otherwise), the version visible as ready through the API."""

import io
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from celery.contrib.testing.worker import start_worker

from clearinghouse.celery import app
from clearinghouse.core import keys
from clearinghouse.crypto import Keyring, parse_header, read_header
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.organisations.services import invitation_accept, invitation_create
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import api_client, make_operator, make_organisation, make_user
from tests.shared_data import DATASETS as SHARED


@contextmanager
def ingestion_worker():
    # The worker runs in a thread of this process, so it sees the test database.
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["ingestion"], shutdown_timeout=30):
        yield


def steward_client():
    operator = make_operator()
    admin = make_user("admin")
    organisation = make_organisation(operator=operator, admin=admin, slug="acme")
    steward = make_user("steward")
    _, token = invitation_create(
        actor=admin, organisation=organisation, email=steward.email, role="data_steward"
    )
    invitation_accept(actor=steward, token=token)
    client = api_client(steward)
    assert (
        client.post(
            "/api/v1/datasets", {"name": "PUMS", "slug": "pums", "schema": PUMS_SCHEMA}, format="json"
        ).status_code
        == 201
    )
    return client


def upload_pums(client):
    response = client.post(
        "/api/v1/datasets/acme/pums/versions",
        {"file": io.BytesIO((SHARED / "pums_1000.csv").read_bytes())},
        format="multipart",
    )
    assert response.status_code == 202, response.content


def wait_until_finished(client) -> dict:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        body = client.get("/api/v1/datasets/acme/pums/versions/1").json()
        if body["status"] in {"ready", "failed", "corrupt"}:
            break
        time.sleep(0.2)
    return body


def test_upload_is_ingested_by_the_worker(transactional_db, media_root):
    client = steward_client()
    with ingestion_worker():
        upload_pums(client)
        body = wait_until_finished(client)
    assert body["status"] == "ready", body
    assert body["row_count"] == 1000 and body["quality_report"]["duplicate_rows"] == 3


@pytest.fixture
def split_keys(settings, tmp_path):
    """As in production: the keyring in a file for workers only, the staging public key in another."""
    ring = Keyring.generate()
    ring.save(tmp_path / "worker-secrets" / "keyring.json")
    ring.staging_current.public.save(tmp_path / "web" / "staging-public.json")
    settings.KEYRING_ALLOW_DEV = False
    settings.STAGING_PUBLIC_KEY_FILE = str(tmp_path / "web" / "staging-public.json")
    keys.keyring_reset_cache()
    yield SimpleNamespace(ring=ring, path=tmp_path / "worker-secrets" / "keyring.json")
    keys.keyring_reset_cache()


def test_the_web_process_never_loads_the_keyring(transactional_db, media_root, split_keys, settings):
    # The web process: a public key only; no keyring anywhere it could read, and no dev fallback.
    settings.KEYRING_FILE = str(split_keys.path.parent.parent / "absent" / "keyring.json")
    client = steward_client()
    upload_pums(client)
    assert keys._load_keyring.cache_info().currsize == 0  # nothing loaded, not even a failed attempt cached
    version = DatasetVersion.objects.get(dataset__slug="pums")
    with open(media_root / version.staging_path, "rb") as handle:
        header = parse_header(read_header(handle))
    staging_id = split_keys.ring.staging_current.id
    assert (header.wrap_kind, header.kek_id, version.kek_id) == (2, staging_id, staging_id)
    assert client.get("/api/v1/datasets/acme/pums/versions/1").json()["status"] == "pending"

    # The ingestion worker has the keyring: it unwraps with the staging private key.
    settings.KEYRING_FILE = str(split_keys.path)
    with ingestion_worker():
        body = wait_until_finished(client)
    assert body["status"] == "ready", body
    version.refresh_from_db()
    assert version.kek_id == split_keys.ring.current_id and not version.staging_path
