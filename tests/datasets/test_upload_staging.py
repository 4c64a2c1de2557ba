"""Who can make the web process write a staging file, and that every staged file either ends up
recorded by a version or is deleted. Real HTTP requests (Django test client / DRF APIClient), the real
upload handlers, CSRF middleware, services and object store."""

from __future__ import annotations

import io
import os
import time
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.db import transaction
from django.test import Client

from clearinghouse.audit.models import AuditEvent
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_staging_sweep, dataset_version_import
from clearinghouse.organisations.services import invitation_accept, invitation_create
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import api_client, make_operator, make_organisation, make_user

CSV = b"age,sex,educ,race,income,married\n30,1,9,1,1000,1\n41,0,12,1,2000,0\n"
UPLOAD_URL = "/api/v1/datasets/acme/pums/versions"
PORTAL_UPLOAD_URL = "/datasets/acme/pums/upload/"


def files_under(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(folder, name), root)
        for folder, _, names in os.walk(root)
        for name in names
    )


def staged(media_root) -> list[str]:
    return [name for name in files_under(media_root) if name.startswith("staging/")]


@pytest.fixture
def acme(db, media_root):
    """An approved organisation with a steward (who may upload), an analyst (who may not), an
    outsider from another organisation, and a dataset `pums` with a confirmed schema."""
    operator = make_operator()
    admin = make_user("admin")
    organisation = make_organisation(operator=operator, admin=admin, slug="acme")
    people = {}
    for name, role in (("steward", "data_steward"), ("analyst", "analyst")):
        people[name] = make_user(name)
        _, token = invitation_create(
            actor=admin, organisation=organisation, email=people[name].email, role=role
        )
        invitation_accept(actor=people[name], token=token)
    outsider = make_user("outsider")
    make_organisation(operator=operator, admin=outsider, slug="other")
    steward = api_client(people["steward"])
    assert (
        steward.post(
            "/api/v1/datasets", {"name": "PUMS", "slug": "pums", "schema": PUMS_SCHEMA}, format="json"
        ).status_code
        == 201
    )
    return SimpleNamespace(
        steward=steward,
        steward_user=people["steward"],
        analyst_user=people["analyst"],
        outsider_user=outsider,
        organisation=organisation,
    )


def csrf_client(user) -> tuple[Client, str]:
    """A browser: CSRF enforced, logged in (unless None), with its CSRF cookie; returns the token."""
    client = Client(enforce_csrf_checks=True)
    if user is not None:
        client.force_login(user)
    client.get("/login/" if user is None else "/datasets/")
    return client, client.cookies["csrftoken"].value


def test_anonymous_multipart_login_post_stages_nothing(acme, media_root):
    client, token = csrf_client(None)
    fields = {"csrfmiddlewaretoken": token, "username": "nobody", "password": "wrong-password-1"}
    fields.update({f"f{i}": io.BytesIO(b"x" * 5000) for i in range(20)})
    response = client.post("/login/", fields)
    assert response.status_code == 200  # the form again, with its error
    assert staged(media_root) == []


def test_multipart_to_other_views_stages_nothing(acme, media_root):
    client, token = csrf_client(acme.steward_user)
    # A portal form (the CSRF middleware reads the body) and a session-authenticated JSON-only API view.
    response = client.post(
        "/datasets/",
        {"csrfmiddlewaretoken": token, "name": "X", "slug": "x", "junk": io.BytesIO(b"a,b\n1,2\n")},
    )
    assert response.status_code == 302
    response = client.post(
        "/api/v1/datasets",
        {"name": "Y", "slug": "y", "junk": io.BytesIO(b"a,b\n1,2\n")},
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 415 and response.json()["code"] == "unsupported_media_type"
    # A forged (token-less) post to the upload view itself stages nothing either.
    response = client.post(PORTAL_UPLOAD_URL, {"file": io.BytesIO(CSV)})
    assert response.status_code == 403
    assert staged(media_root) == []
    assert not DatasetVersion.objects.exists()


@pytest.mark.parametrize("who", ["analyst", "outsider", "anonymous"])
def test_upload_by_someone_not_allowed_reads_nothing(acme, media_root, who):
    user = {"analyst": acme.analyst_user, "outsider": acme.outsider_user, "anonymous": None}[who]
    api = api_client(user)
    response = api.post(UPLOAD_URL, {"file": io.BytesIO(CSV), "other": io.BytesIO(CSV)}, format="multipart")
    assert response.status_code == {"analyst": 403, "outsider": 404, "anonymous": 401}[who], response.content
    assert set(response.json()) >= {"code", "detail"}
    if user is not None:  # the same through the portal, CSRF token and all
        client, token = csrf_client(user)
        response = client.post(
            PORTAL_UPLOAD_URL,
            {"csrfmiddlewaretoken": token, "file": io.BytesIO(CSV), "other": io.BytesIO(CSV)},
        )
        assert response.status_code == {"analyst": 403, "outsider": 404}[who]
    assert staged(media_root) == []
    assert not DatasetVersion.objects.exists()


def test_one_file_field_only(acme, media_root):
    response = acme.steward.post(
        UPLOAD_URL, {"file": io.BytesIO(CSV), "extra": io.BytesIO(CSV)}, format="multipart"
    )
    assert response.status_code == 400 and response.json()["code"] == "unexpected_file_field", (
        response.content
    )
    response = acme.steward.post(UPLOAD_URL, {"file": [io.BytesIO(CSV), io.BytesIO(CSV)]}, format="multipart")
    assert response.status_code == 400 and response.json()["code"] == "unexpected_file_field", (
        response.content
    )
    response = acme.steward.post(UPLOAD_URL, {"format": "csv"}, format="multipart")
    assert response.status_code == 400 and response.json()["code"] == "file_required"
    assert staged(media_root) == []
    assert not DatasetVersion.objects.exists()


def test_refused_upload_leaves_nothing_and_accepted_one_keeps_its_file(acme, media_root):
    response = acme.steward.post(UPLOAD_URL, {"file": io.BytesIO(CSV), "format": "xlsx"}, format="multipart")
    assert response.status_code == 400 and response.json()["code"] == "invalid_format"
    assert staged(media_root) == []
    response = acme.steward.post(UPLOAD_URL, {"file": io.BytesIO(CSV)}, format="multipart")
    assert response.status_code == 202
    version = DatasetVersion.objects.get()
    assert staged(media_root) == [version.staging_path]


def test_staging_quota_per_organisation(acme, media_root, settings):
    settings.DATASET_STAGED_UPLOADS_MAX = 1
    assert acme.steward.post(UPLOAD_URL, {"file": io.BytesIO(CSV)}, format="multipart").status_code == 202
    response = acme.steward.post(UPLOAD_URL, {"file": io.BytesIO(CSV)}, format="multipart")
    assert response.status_code == 409 and response.json()["code"] == "staging_quota_exceeded"
    assert len(staged(media_root)) == 1 and DatasetVersion.objects.count() == 1
    # By bytes too: what waits, plus this upload.
    settings.DATASET_STAGED_UPLOADS_MAX = 10
    settings.DATASET_STAGED_BYTES_MAX = len(CSV) * 2 - 1
    response = acme.steward.post(UPLOAD_URL, {"file": io.BytesIO(CSV)}, format="multipart")
    assert response.status_code == 409 and response.json()["code"] == "staging_quota_exceeded"
    assert len(staged(media_root)) == 1 and DatasetVersion.objects.count() == 1


def test_declared_oversized_body_is_refused_before_reading(acme, media_root, settings):
    settings.DATASET_UPLOAD_MAX_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = acme.steward.post(UPLOAD_URL, {"file": io.BytesIO(b"a" * 200_000)}, format="multipart")
    assert response.status_code == 400 and response.json()["code"] == "file_too_large"
    assert staged(media_root) == []


def test_interrupted_upload_leaves_nothing(acme, media_root):
    boundary = "BoUnDaRy"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.csv"\r\n'
        f"Content-Type: text/csv\r\n\r\n"
    ).encode() + CSV * 100  # the connection ends inside the file
    response = acme.steward.generic(
        "POST", UPLOAD_URL, body, content_type=f"multipart/form-data; boundary={boundary}"
    )
    assert response.status_code == 400, response.content
    assert staged(media_root) == []
    assert not DatasetVersion.objects.exists()


def test_portal_upload_checks_csrf_before_staging(acme, media_root):
    client, token = csrf_client(acme.steward_user)
    # The token after the file: the file part started before CSRF could be checked, so it was not staged.
    response = client.post(PORTAL_UPLOAD_URL, {"file": io.BytesIO(CSV), "csrfmiddlewaretoken": token})
    assert response.status_code == 302 and not DatasetVersion.objects.exists()
    assert staged(media_root) == []
    # A wrong token: 403, nothing staged.
    response = client.post(PORTAL_UPLOAD_URL, {"csrfmiddlewaretoken": "x" * 32, "file": io.BytesIO(CSV)})
    assert response.status_code == 403 and staged(media_root) == []
    # The form as the page renders it (token first): staged, recorded, kept.
    response = client.post(PORTAL_UPLOAD_URL, {"csrfmiddlewaretoken": token, "file": io.BytesIO(CSV)})
    assert response.status_code == 302 and response.url.endswith("/versions/1/")
    version = DatasetVersion.objects.get()
    assert staged(media_root) == [version.staging_path]
    # The header works too (the page's progress-bar upload could send it).
    response = client.post(PORTAL_UPLOAD_URL, {"file": io.BytesIO(CSV)}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 302 and DatasetVersion.objects.count() == 2


def test_session_api_upload_needs_the_csrf_header(acme, media_root):
    client, token = csrf_client(acme.steward_user)
    response = client.post(UPLOAD_URL, {"csrfmiddlewaretoken": token, "file": io.BytesIO(CSV)})
    assert response.status_code == 403 and "X-CSRFToken" in response.json()["detail"]
    assert staged(media_root) == []
    response = client.post(UPLOAD_URL, {"file": io.BytesIO(CSV)}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 202, response.content
    assert staged(media_root) == [DatasetVersion.objects.get().staging_path]


def test_rolled_back_version_leaves_an_orphan_that_the_sweeper_deletes(acme, media_root, settings):
    """The known orphan: a transaction rolled back after the request (or an import) recorded the
    version. Files no version records are deleted once older than DATASET_STAGING_ORPHAN_SECONDS."""
    from clearinghouse.datasets.models import Dataset

    dataset = Dataset.objects.get(slug="pums")
    with pytest.raises(RuntimeError), transaction.atomic():
        dataset_version_import(actor=acme.steward_user, dataset=dataset, data=CSV, name="rolled-back.csv")
        raise RuntimeError("the outer transaction rolls back")
    assert not DatasetVersion.objects.exists()
    (orphan,) = staged(media_root)
    kept = dataset_version_import(actor=acme.steward_user, dataset=dataset, data=CSV, name="kept.csv")
    young = dataset_version_import(actor=acme.steward_user, dataset=dataset, data=CSV, name="young.csv")
    DatasetVersion.objects.filter(pk=young.pk).delete()  # unrecorded, but written just now
    settings.DATASET_STAGING_ORPHAN_SECONDS = 3600
    old = time.time() - 7200
    for name in (orphan, kept.staging_path):
        os.utime(media_root / name, (old, old))

    assert dataset_staging_sweep() == {"deleted": 1, "expired": 0}
    assert sorted(staged(media_root)) == sorted([kept.staging_path, young.staging_path])
    assert AuditEvent.objects.filter(action="dataset_staging.swept", extra__deleted=1).exists()
    assert dataset_staging_sweep() == {"deleted": 0, "expired": 0}


def test_a_failed_version_keeps_its_upload_for_a_retry_then_loses_it(
    acme, media_root, settings, django_capture_on_commit_callbacks
):
    """Failed uploads cannot fill the disk: after DATASET_FAILED_STAGING_SECONDS the upload goes and a
    retry says so."""
    from django.utils import timezone

    from clearinghouse.datasets.models import Dataset

    dataset = Dataset.objects.get(slug="pums")
    failed = dataset_version_import(actor=acme.steward_user, dataset=dataset, data=CSV, name="failed.csv")
    DatasetVersion.objects.filter(pk=failed.pk).update(
        status="failed", error_code="type_errors", finished_at=timezone.now()
    )
    settings.DATASET_FAILED_STAGING_SECONDS = 3600
    assert dataset_staging_sweep() == {"deleted": 0, "expired": 0}
    assert staged(media_root) == [failed.staging_path]
    DatasetVersion.objects.filter(pk=failed.pk).update(finished_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks(execute=True):
        assert dataset_staging_sweep() == {"deleted": 0, "expired": 1}
    assert staged(media_root) == [] and DatasetVersion.objects.get(pk=failed.pk).staging_path == ""
    assert AuditEvent.objects.filter(
        action="dataset_version.upload_expired", target_id=str(failed.pk)
    ).exists()


def test_beat_runs_the_sweepers():
    from clearinghouse.celery import app

    tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert {"datasets.staging_sweep", "datasets.recover_stuck"} <= tasks
    import clearinghouse.datasets.tasks  # noqa: F401 (registers the tasks)

    assert {"datasets.staging_sweep", "datasets.recover_stuck"} <= set(app.tasks)


def test_portal_upload_without_a_header_row(acme, media_root):
    """The upload form's unticked "First row is a header" box sends only its hidden "off": the
    version is stored as headerless (the ticked box sends "off" then "on")."""
    client, token = csrf_client(acme.steward_user)
    assert b'name="header" value="off"' in client.get("/datasets/acme/pums/").content
    for values, expected in ((["off"], False), (["off", "on"], True)):
        response = client.post(
            PORTAL_UPLOAD_URL, {"csrfmiddlewaretoken": token, "header": values, "file": io.BytesIO(CSV)}
        )
        assert response.status_code == 302, response.content
        assert DatasetVersion.objects.order_by("-number").first().has_header is expected
