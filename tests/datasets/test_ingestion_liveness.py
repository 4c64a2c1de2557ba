"""No version stays pending or validating forever: whatever a run raises ends the version failed with
a code; runs lost with their worker are found by the recovery sweep (beat) and queued again, a
bounded number of times; retry takes a stuck version; two racing runs finish a version once. Real
uploads through the API, the real ingestion service and worker."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.utils import timezone

from clearinghouse.audit.models import AuditEvent
from clearinghouse.celery import app
from clearinghouse.datasets import services, storage
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_version_ingest, dataset_versions_recover
from clearinghouse.organisations.services import invitation_accept, invitation_create
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import api_client, make_operator, make_organisation, make_user

CSV = b"age,sex,educ,race,income,married\n30,1,9,1,1000,1\n41,0,12,1,2000,0\n"
VERSIONS = "/api/v1/datasets/acme/pums/versions"


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


@pytest.fixture
def steward(db, media_root):
    return steward_client()


def upload(client, data: bytes = CSV, **fields) -> DatasetVersion:
    response = client.post(VERSIONS, {"file": io.BytesIO(data), **fields}, format="multipart")
    assert response.status_code == 202, response.content
    return DatasetVersion.objects.get(dataset__slug="pums", number=response.json()["number"])


def as_left_by_a_killed_worker(version: DatasetVersion, *, started_ago: float, attempts: int = 1) -> None:
    """The row a worker leaves when it is killed (-9) after claiming the version."""
    DatasetVersion.objects.filter(pk=version.pk).update(
        status="validating",
        ingest_claim="f" * 32,
        attempts=attempts,
        validation_started_at=timezone.now() - timedelta(seconds=started_ago),
    )


@pytest.mark.parametrize(
    "data,code",
    [
        (b"30\n40\n", "column_count_mismatch"),  # one column where six are declared: polars' ShapeError
        (b"30,1,9,1,1000,1,7\n", "column_count_mismatch"),  # one too many: would shift or drop silently
    ],
)
def test_headerless_file_of_the_wrong_width_fails_with_a_code(steward, data, code):
    version = dataset_version_ingest(version_id=upload(steward, data, header="false").pk)
    assert (version.status, version.error_code) == ("failed", code), version.error_message
    assert "6 declared columns" in version.error_message
    assert version.staging_path  # kept, as for any failed version: it can be retried
    assert steward.get(f"{VERSIONS}/{version.number}").json()["error_code"] == code


@pytest.mark.parametrize(
    "data,first",
    [
        # In a categorical value: read (and stored) as it is, before.
        (b"age,sex,educ,race,income,married\n30,1,9,1\x00,1000,1\n", {"first_offset": 41, "first_line": 2}),
        (
            "age,sex,educ,race,income,married\n30,1,9,1,1000,1\n".encode("utf-16-le"),
            {"first_offset": 1, "first_line": 1},
        ),
    ],
)
def test_text_with_nul_bytes_is_refused(steward, data, first):
    version = dataset_version_ingest(version_id=upload(steward, data).pk)
    assert (version.status, version.error_code) == ("failed", "nul_bytes")
    assert "UTF-8" in version.error_message
    report = steward.get(f"{VERSIONS}/{version.number}").json()["quality_report"]
    assert report["nul_bytes"].items() >= first.items()


def test_parquet_text_values_with_nul_are_refused(steward):
    import polars as pl

    buffer = io.BytesIO()
    pl.DataFrame(
        {"age": [30], "sex": [1], "educ": [9], "race": [1], "income": [1000.0], "married": ["1\x00"]}
    ).write_parquet(buffer)
    version = dataset_version_ingest(version_id=upload(steward, buffer.getvalue(), format="parquet").pk)
    assert (version.status, version.error_code) == ("failed", "nul_bytes")
    assert version.quality_report["nul_bytes"]["columns"] == {"married": 1}


def test_an_unexpected_error_fails_the_version_instead_of_leaving_it_validating(steward, media_root):
    version = upload(steward)
    staging = media_root / version.staging_path
    staging.unlink()
    staging.mkdir()  # reading the upload now raises IsADirectoryError, which nothing expects
    version = dataset_version_ingest(version_id=version.pk)
    assert (version.status, version.error_code) == ("failed", "ingestion_error")
    assert "IsADirectoryError" in version.error_message and not version.ingest_claim
    assert AuditEvent.objects.filter(
        action="dataset_version.failed", target_id=str(version.pk), extra__code="ingestion_error"
    ).exists()
    # Once the file is back, retry finishes it.
    staging.rmdir()
    assert steward.post(f"{VERSIONS}/1/retry", {}, format="json").status_code == 202
    assert dataset_version_ingest(version_id=version.pk).error_code == "upload_gone"


def test_retry_takes_a_version_stuck_validating_but_not_a_live_one(steward, settings):
    settings.INGESTION_STUCK_SECONDS = 600
    version = upload(steward)
    as_left_by_a_killed_worker(version, started_ago=60)
    response = steward.post(f"{VERSIONS}/1/retry", {}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "not_retryable"
    assert "600 s" in response.json()["detail"]

    as_left_by_a_killed_worker(version, started_ago=601)
    response = steward.post(f"{VERSIONS}/1/retry", {}, format="json")
    assert response.status_code == 202 and response.json()["status"] == "pending"
    version.refresh_from_db()
    assert (version.attempts, version.ingest_claim, version.validation_started_at) == (0, "", None)
    assert AuditEvent.objects.filter(action="dataset_version.retried", extra__was="validating").exists()
    assert dataset_version_ingest(version_id=version.pk).status == "ready"


def test_a_live_run_is_not_run_again_and_a_finished_one_is_a_no_op(steward, settings):
    settings.INGESTION_STUCK_SECONDS = 600
    version = upload(steward)
    as_left_by_a_killed_worker(version, started_ago=5)  # another worker is on it right now
    assert dataset_version_ingest(version_id=version.pk).status == "validating"
    version.refresh_from_db()
    assert (version.attempts, version.ingest_claim) == (1, "f" * 32)
    assert not AuditEvent.objects.filter(action="dataset_version.validation_started").exists()

    as_left_by_a_killed_worker(version, started_ago=601)  # that worker died: the next delivery takes over
    done = dataset_version_ingest(version_id=version.pk)
    assert (done.status, done.attempts) == ("ready", 2)
    again = dataset_version_ingest(version_id=version.pk)  # a duplicate delivery
    assert (again.status, again.data_path, again.attempts) == ("ready", done.data_path, 2)
    assert AuditEvent.objects.filter(action="dataset_version.ready").count() == 1


def test_a_run_that_lost_its_claim_cannot_overwrite_the_result(steward, media_root):
    version = upload(steward)
    first = services._ingest_claim(version.pk)  # run A claims, then stalls (e.g. a long GC pause)
    assert first is not None
    stalled, claim_a = first
    DatasetVersion.objects.filter(pk=version.pk).update(
        validation_started_at=timezone.now() - timedelta(days=1)
    )
    winner = dataset_version_ingest(version_id=version.pk)  # run B takes over and finishes
    assert winner.status == "ready"
    late = services._ingest_run(stalled, claim_a)  # A wakes up and finishes its work
    assert (late.status, late.data_path) == ("ready", winner.data_path)
    folder = media_root / storage.version_folder(
        organisation_id=winner.dataset.organisation_id, dataset_id=winner.dataset_id, number=1
    )
    assert [p.name for p in folder.iterdir()] == [winner.data_path.rsplit("/", 1)[1]]
    context = storage.data_context(
        organisation_id=winner.dataset.organisation_id, dataset_id=winner.dataset_id, number=1
    )
    assert storage.read_table(winner.data_path, context).height == 2
    assert AuditEvent.objects.filter(action="dataset_version.ready").count() == 1


def test_recovery_requeues_lost_runs_and_fails_after_the_attempts(
    steward, settings, django_capture_on_commit_callbacks
):
    settings.INGESTION_STUCK_SECONDS = 600
    settings.INGESTION_MAX_ATTEMPTS = 2
    killed, lost_message, live, exhausted = (upload(steward) for _ in range(4))
    as_left_by_a_killed_worker(killed, started_ago=3600)
    DatasetVersion.objects.filter(pk=lost_message.pk).update(enqueued_at=timezone.now() - timedelta(hours=1))
    as_left_by_a_killed_worker(live, started_ago=10)
    as_left_by_a_killed_worker(exhausted, started_ago=3600, attempts=2)

    with django_capture_on_commit_callbacks() as queued:
        assert dataset_versions_recover() == {"requeued": 2, "failed": 1}
    # one ingestion task each, sent once the transaction commits
    assert sum(callback.__qualname__.startswith("_enqueue_on_commit") for callback in queued) == 2
    statuses = dict(DatasetVersion.objects.values_list("pk", "status"))
    assert [statuses[v.pk] for v in (killed, lost_message, live, exhausted)] == [
        "pending",
        "pending",
        "validating",
        "failed",
    ]
    exhausted.refresh_from_db()
    assert exhausted.error_code == "ingestion_stuck" and "2 attempts" in exhausted.error_message
    assert AuditEvent.objects.filter(action="dataset_version.requeued").count() == 2
    with django_capture_on_commit_callbacks() as queued:
        assert dataset_versions_recover() == {"requeued": 0, "failed": 0}
    assert queued == []

    # The requeued versions are finished by the next run; a killed one keeps counting its attempts.
    assert dataset_version_ingest(version_id=lost_message.pk).status == "ready"
    as_left_by_a_killed_worker(killed, started_ago=3600, attempts=2)
    assert dataset_version_ingest(version_id=killed.pk).error_code == "ingestion_stuck"


def test_redis_redelivers_and_the_task_stops_before_a_run_counts_as_stuck(settings):
    from clearinghouse.datasets.tasks import dataset_version_ingest_task

    visibility = settings.BROKER_VISIBILITY_TIMEOUT_SECONDS
    assert visibility < 3600  # kombu's default: an hour of a version waiting on a dead worker
    assert dataset_version_ingest_task.soft_time_limit < dataset_version_ingest_task.time_limit
    assert dataset_version_ingest_task.time_limit < settings.INGESTION_STUCK_SECONDS <= visibility
    if settings.CELERY_BROKER_URL.startswith("redis"):  # CI; the embedded transport never redelivers
        assert app.conf.broker_transport_options["visibility_timeout"] == visibility
    # The settings as a Redis deployment gets them.
    env = {
        **os.environ,
        "CELERY_BROKER_URL": "redis://redis:6379/0",
        "CELERY_RESULT_BACKEND": "redis://redis:6379/1",
        "DJANGO_SETTINGS_MODULE": "clearinghouse.settings.test",
    }
    probe = (
        "from django.conf import settings as s; print(s.CELERY_BROKER_TRANSPORT_OPTIONS['visibility_timeout'], "
        "s.CELERY_RESULT_BACKEND_TRANSPORT_OPTIONS['visibility_timeout'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {probe}"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert out == [str(visibility), str(visibility)]


@contextmanager
def ingestion_worker():
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["ingestion"], shutdown_timeout=30):
        yield


def wait_until_finished(*versions: DatasetVersion) -> None:
    deadline = time.monotonic() + 60
    while (
        time.monotonic() < deadline
        and DatasetVersion.objects.filter(
            pk__in=[v.pk for v in versions], status__in=["pending", "validating"]
        ).exists()
    ):
        time.sleep(0.2)
    for version in versions:
        version.refresh_from_db()


def test_worker_fails_a_headerless_one_column_file_and_finishes_a_killed_run(
    transactional_db, media_root, settings
):
    settings.INGESTION_STUCK_SECONDS = 600
    client = steward_client()
    good = upload(client)
    # The worker that took `good` was killed (-9) while validating it; its message went with it (the
    # embedded broker never redelivers; Redis would, after the visibility timeout).
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("ingestion")
    as_left_by_a_killed_worker(good, started_ago=3600)
    bad = upload(client, b"30\n40\n", header="false")
    assert dataset_versions_recover() == {"requeued": 1, "failed": 0}  # beat's sweep
    with ingestion_worker():
        wait_until_finished(good, bad)
    assert (bad.status, bad.error_code) == ("failed", "column_count_mismatch")
    assert (good.status, good.attempts) == ("ready", 2)
