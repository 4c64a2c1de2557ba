"""The steward's first upload: a dataset without a confirmed schema gets a schema proposed from its
first file, and the version waits ("awaiting schema confirmation", never "failed"); confirming the
schema validates the waiting version again by itself, so it becomes ready with no other click. A file
that breaks the confirmed schema still fails, with its report. Real uploads (encrypted), real
ingestion (in-process, and once by a real Celery worker), the portal's pages and the API."""

from __future__ import annotations

import io
import json
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from clearinghouse.audit.models import AuditEvent
from clearinghouse.celery import app
from clearinghouse.datasets.models import Dataset, DatasetVersion
from clearinghouse.datasets.services import (
    dataset_schema_set,
    dataset_staging_sweep,
    dataset_version_ingest,
)
from tests.factories import api_client

pytestmark = pytest.mark.usefixtures("media_root")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

CSV = b"age,group\n30,a\n41,b\n29,a\n"
PUBLIC = {  # the column form with public facts for CSV's columns
    "columns[0].type": "integer",
    "columns[0].lower": "0",
    "columns[0].upper": "120",
    "columns[1].type": "categorical",
    "columns[1].categories": "a, b, c",
    "privacy_unit.kind": "row",
}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def first_upload(world, data: bytes = CSV, slug: str = "fresh") -> DatasetVersion:
    steward = api_client(world.a.steward)
    assert steward.post("/api/v1/datasets", {"name": "Fresh", "slug": slug}, format="json").status_code == 201
    response = steward.post(
        f"/api/v1/datasets/org-a/{slug}/versions", {"file": io.BytesIO(data)}, format="multipart"
    )
    assert response.status_code == 202, response.json()
    return DatasetVersion.objects.get(dataset__slug=slug, number=1)


def pages(world, dataset: Dataset) -> tuple[str, str]:
    client = logged_in(world.a.steward)
    args = [dataset.organisation.slug, dataset.slug]
    detail = client.get(reverse("portal:dataset", args=args)).content.decode()
    version = client.get(reverse("portal:dataset_version", args=[*args, 1])).content.decode()
    return detail, version


@pytest.fixture
def eager():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


def test_first_upload_waits_for_the_schema_and_never_shows_failed(world):
    version = dataset_version_ingest(version_id=first_upload(world).pk)
    assert (version.status, version.error_code) == ("awaiting_schema", "schema_unconfirmed")
    assert version.staging_path and version.quality_report is None
    dataset = version.dataset
    dataset.refresh_from_db()
    assert not dataset.schema_confirmed and dataset.schema["columns"][0]["name"] == "age"
    assert AuditEvent.objects.filter(
        action="dataset_version.awaiting_schema", target_id=str(version.pk)
    ).exists()
    assert not AuditEvent.objects.filter(action="dataset_version.failed", target_id=str(version.pk)).exists()

    detail, page = pages(world, dataset)
    edit = reverse("portal:dataset_schema_edit", args=["org-a", "fresh"])
    assert "Awaiting schema confirmation" in detail and "Failed" not in detail
    assert 'class="status status-awaiting"' in detail and "status-rejected" not in detail
    assert 'data-testid="awaiting-schema-cta"' in detail and f'href="{edit}"' in detail
    assert "Version 1 is waiting for the schema." in detail
    assert "Awaiting schema confirmation" in page and 'data-testid="awaiting-schema"' in page
    assert 'class="errorlist"' not in page and "Validate again" not in page and f'href="{edit}"' in page
    # The API says the same.
    body = api_client(world.a.steward).get("/api/v1/datasets/org-a/fresh/versions/1").json()
    assert body["status"] == "awaiting_schema"
    # Nobody else learns of a version that is not ready.
    assert api_client(world.operator).get("/api/v1/datasets/org-a/fresh/versions").json()["results"] == []


def test_confirming_the_schema_makes_the_waiting_version_ready_with_no_other_click(
    world, eager, django_capture_on_commit_callbacks
):
    version = dataset_version_ingest(version_id=first_upload(world).pk)
    assert version.status == "awaiting_schema"
    with django_capture_on_commit_callbacks(execute=True):
        response = logged_in(world.a.steward).post(
            reverse("portal:dataset_schema", args=["org-a", "fresh"]), PUBLIC
        )
    assert response.status_code == 302
    assert response["Location"] == reverse("portal:dataset_version", args=["org-a", "fresh", 1])
    version.refresh_from_db()
    assert (version.status, version.row_count, version.error_code) == ("ready", 3, "")
    assert version.schema["columns"][0] == {
        "name": "age",
        "type": "integer",
        "nullable": False,
        "lower": 0,
        "upper": 120,
    }
    assert AuditEvent.objects.filter(
        action="dataset_version.revalidating", target_id=str(version.pk), extra__was="awaiting_schema"
    ).exists()
    confirmed = AuditEvent.objects.get(action="dataset.schema_confirmed", target_id=str(version.dataset_id))
    assert confirmed.extra["revalidating"] == [1]
    detail, page = pages(world, version.dataset)
    assert "Ready" in page and "Awaiting schema confirmation" not in detail


def test_a_file_breaking_the_confirmed_schema_still_fails_with_its_report(
    world, eager, django_capture_on_commit_callbacks
):
    version = dataset_version_ingest(version_id=first_upload(world).pk)
    tight = {**PUBLIC, "columns[0].upper": "40"}  # 41 on line 3 is out of these (public) bounds
    with django_capture_on_commit_callbacks(execute=True):
        assert (
            logged_in(world.a.steward)
            .post(reverse("portal:dataset_schema", args=["org-a", "fresh"]), tight)
            .status_code
            == 302
        )
    version.refresh_from_db()
    assert (version.status, version.error_code) == ("failed", "schema_violations")
    assert version.quality_report["columns"]["age"]["out_of_bounds"]["first_lines"] == [3]
    _, page = pages(world, version.dataset)
    assert "Failed" in page and "Validate again" in page and 'data-testid="quality-report"' in page
    row = page[page.index('<tr data-column="age">') :]
    assert '<strong class="bad">1</strong> <span class="muted">(line 3)</span>' in row[: row.index("</tr>")]
    assert "No row repeats another exactly." in page and "Download JSON" in page
    # ... and a chart of the columns with findings: age, its one value out of bounds.
    chart = page[page.index('data-testid="quality-chart-figure"') :]
    chart = chart[: chart.index("</figure>")]
    assert "<svg" in chart and ">age<" in chart and "breaking the schema" in chart


def test_a_schema_confirmed_while_the_first_run_reads_the_file_is_applied(world):
    version = first_upload(world)  # queued without a schema
    dataset_schema_set(
        actor=world.a.steward,
        dataset=version.dataset,
        schema={"columns": [{"name": "age", "type": "integer", "lower": 0, "upper": 120}]},
    )
    again = dataset_version_ingest(version_id=version.pk)
    assert again.status == "pending" and again.schema["columns"][0]["upper"] == 120
    assert dataset_version_ingest(version_id=version.pk).status == "ready"


def test_a_version_waiting_too_long_loses_its_upload_and_fails(
    world, settings, django_capture_on_commit_callbacks
):
    version = dataset_version_ingest(version_id=first_upload(world).pk)
    settings.DATASET_FAILED_STAGING_SECONDS = 3600
    assert dataset_staging_sweep()["expired"] == 0
    DatasetVersion.objects.filter(pk=version.pk).update(finished_at=timezone.now() - timedelta(hours=2))
    with django_capture_on_commit_callbacks(execute=True):
        assert dataset_staging_sweep()["expired"] == 1
    version.refresh_from_db()
    assert (version.status, version.error_code, version.staging_path) == ("failed", "upload_gone", "")


def test_quality_report_downloads_as_json_for_the_owner_only(world):
    dataset = world.a.dataset
    version = dataset.versions.get(number=1)
    url = reverse("portal:dataset_version_quality", args=[dataset.organisation.slug, dataset.slug, 1])
    response = logged_in(world.a.analyst).get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response["Content-Disposition"] == 'attachment; filename="org-a-survey-v1-quality.json"'
    assert (
        json.loads(response.content) == version.quality_report and "duplicate_rows" in version.quality_report
    )
    page = logged_in(world.a.analyst).get(
        reverse("portal:dataset_version", args=[dataset.organisation.slug, dataset.slug, 1])
    )
    assert f'href="{url}"' in page.content.decode() and "Download JSON" in page.content.decode()
    from clearinghouse.accounts.models import User

    grantee = User.objects.get(username="admin_org-c")
    for outsider in (grantee, world.operator, world.b.admin):
        assert logged_in(outsider).get(url).status_code == 404


def test_dataset_page_in_sections_with_a_labelled_grant_form(world):
    dataset = world.a.dataset
    page = (
        logged_in(world.a.steward)
        .get(reverse("portal:dataset", args=["org-a", dataset.slug]))
        .content.decode()
    )
    for anchor, heading in (
        ("overview", "Overview"),
        ("schema", "Schema"),
        ("versions", "Versions &amp; uploads"),
        ("access", "Access"),
    ):
        assert f'<section class="card" id="{anchor}"' in page and f'href="#{anchor}"' in page
        assert f'<h2 id="{anchor}-heading">{heading}' in page
    form = page[page.index('data-testid="grant-form"') :]
    form = form[: form.index("</form>")]
    assert (
        '<label for="grant-organisation">Organisation</label>' in form and 'id="grant-organisation"' in form
    )
    assert "<legend>Purpose</legend>" in form
    assert "differentially private queries; each answer spends privacy budget" in form
    assert "federated training jobs" in form


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_takes_the_first_upload_to_ready_after_confirmation(media_root):
    """Uploaded through the API, ingested by a Celery worker (a thread of this process on the real
    broker), confirmed through the portal's form: ready without any retry."""
    from celery.contrib.testing.worker import start_worker

    from tests.factories import build_world

    world = build_world()
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["ingestion"], shutdown_timeout=30):
        version = first_upload(world, slug="live")
        assert wait_for(version, {"awaiting_schema", "failed", "ready"}) == "awaiting_schema"
        response = logged_in(world.a.steward).post(
            reverse("portal:dataset_schema", args=["org-a", "live"]), PUBLIC
        )
        assert response.status_code == 302
        assert wait_for(version, {"ready", "failed"}) == "ready"


def wait_for(version: DatasetVersion, states: set[str]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = DatasetVersion.objects.get(pk=version.pk).status
        if status in states:
            return status
        time.sleep(0.2)
    return DatasetVersion.objects.get(pk=version.pk).status


@pytest.mark.browser
def test_the_stewards_first_upload_in_the_browser(live_server, browser, eager):
    """Register without a schema, upload, review the proposal in the column form, confirm: the version
    page goes from "Awaiting schema confirmation" to "Ready" without a retry (ingestion in-process)."""
    from playwright.sync_api import expect

    from tests.factories import PASSWORD, build_world

    world = build_world()
    ARTIFACTS.mkdir(exist_ok=True)
    page = browser.new_page()
    page.goto(f"{live_server.url}/login/")
    page.get_by_label("Username").fill(world.a.steward.username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.goto(f"{live_server.url}{reverse('portal:datasets')}")
    page.get_by_label("Name").fill("Clinic visits")
    page.get_by_label("Slug").fill("visits")
    page.get_by_role("button", name="Register").click()
    page.get_by_label("File (CSV/TSV or Parquet)").set_input_files(
        files=[{"name": "visits.csv", "mimeType": "text/csv", "buffer": CSV}]
    )
    page.get_by_role("button", name="Upload and encrypt").click()
    expect(page.get_by_test_id("version-status")).to_have_text("Awaiting schema confirmation")
    expect(page.get_by_text("Failed")).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "first-upload-awaiting-schema.png"), full_page=True)
    page.get_by_role("link", name="Review and confirm the schema").click()
    expect(page.get_by_test_id("schema-public-rule")).to_contain_text("must come from public knowledge")
    page.get_by_label("Upper bound of age").fill("120")
    page.get_by_label("Lower bound of age").fill("0")
    page.get_by_label("Categories of group").fill("a\nb\nc")
    page.screenshot(path=str(ARTIFACTS / "schema-editor.png"), full_page=True)
    page.get_by_role("button", name="Confirm schema").first.click()
    expect(page.get_by_test_id("version-status")).to_have_text("Ready", timeout=15_000)
    page.get_by_role("link", name="Clinic visits").click()
    page.screenshot(path=str(ARTIFACTS / "dataset-sections.png"), full_page=True)
    version = DatasetVersion.objects.get(dataset__slug="visits", number=1)
    assert version.status == "ready" and version.schema["columns"][0]["upper"] == 120


def test_a_version_uploaded_before_the_confirmation_is_checked_against_the_confirmed_schema(world):
    """A second upload while the first awaits the schema, ingested only after the steward confirmed
    it: it is checked against the confirmed (public) bounds, never against the proposal read from the
    first file's rows — which would clamp and calibrate its queries with the data's own extremes."""
    first = dataset_version_ingest(version_id=first_upload(world).pk)
    dataset = first.dataset
    dataset.refresh_from_db()
    assert first.status == "awaiting_schema" and dataset.schema["columns"][0]["upper"] == 41  # from the rows
    steward = api_client(world.a.steward)
    assert (
        steward.post(
            "/api/v1/datasets/org-a/fresh/versions", {"file": io.BytesIO(CSV)}, format="multipart"
        ).status_code
        == 202
    )
    second = DatasetVersion.objects.get(dataset=dataset, number=2)
    assert second.status == "pending" and second.schema == {}  # no proposal copied into it
    confirmed = {
        "columns": [
            {"name": "age", "type": "integer", "lower": 0, "upper": 120},
            {"name": "group", "type": "categorical", "categories": ["a", "b", "c"]},
        ],
        "privacy_unit": {"kind": "row"},
    }
    dataset_schema_set(actor=world.a.steward, dataset=dataset, schema=confirmed)
    # The second version's run (its message was queued at upload) finds the schema confirmed since.
    second = dataset_version_ingest(version_id=second.pk)
    if second.status == "pending":  # queued again against the confirmed schema: its next run checks it
        second = dataset_version_ingest(version_id=second.pk)
    assert second.status == "ready"
    assert [c.get("upper") for c in second.schema["columns"]] == [120, None]
    # A retry of the first (it was queued again on confirmation) checks the confirmed schema too.
    first = dataset_version_ingest(version_id=first.pk)
    assert first.status == "ready" and first.schema["columns"][0]["upper"] == 120
