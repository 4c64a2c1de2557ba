"""The quality report as tables (`datasets.quality.report_tables`) on reports made by the real checks
of the shared datasets and of broken files, and the version page that shows them to the owner only."""

from __future__ import annotations

import io
import re

import pytest
from django.test import Client
from django.urls import reverse

from clearinghouse.accounts.models import User
from clearinghouse.datasets import reference_schemas
from clearinghouse.datasets.ingest import IngestError, check, read_raw
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.quality import Finding, QualityTables, report_tables
from clearinghouse.datasets.schema import DatasetSchema
from clearinghouse.datasets.services import dataset_version_ingest
from tests.datasets.conftest import PUMS_SCHEMA
from tests.datasets.test_ingest import BAD_CSV, PUMS
from tests.factories import api_client
from tests.shared_data import DATASETS as SHARED

SMS = DatasetSchema.from_dict(reference_schemas.SMS_SPAM)


def refused_report(data: bytes, schema: DatasetSchema = PUMS, **read) -> dict:
    with pytest.raises(IngestError) as info:
        check(read_raw(data, **{"fmt": "csv", **read}), schema)
    assert info.value.report is not None
    return info.value.report


def by_column(tables: QualityTables) -> dict[str, dict[str, Finding | None]]:
    headings = [heading for heading, _ in tables.checks]
    return {row.name: dict(zip(headings, row.findings, strict=True)) for row in tables.columns}


def test_refused_file_has_every_finding_with_its_lines():
    tables = report_tables(refused_report(BAD_CSV))
    assert (tables.rows_read, tables.rows_stored, tables.violations) == (5, 0, 5)
    assert tables.repair is not None and tables.repair.startswith("none")
    # PUMS has no text column: no "Too long" column in the table.
    assert [h for h, _ in tables.checks] == [
        "Empty where required",
        "Type errors",
        "Out of bounds",
        "Not in the schema's categories",
    ]
    cells = by_column(tables)
    assert cells["age"]["Type errors"] == Finding(1, [3])
    assert cells["age"]["Out of bounds"] == Finding(1, [5])
    assert cells["educ"]["Not in the schema's categories"] == Finding(1, [4])
    assert cells["sex"]["Empty where required"] == Finding(1, [6])
    assert cells["income"]["Out of bounds"] == Finding(1, [6])
    assert cells["income"]["Not in the schema's categories"] is None  # not a categorical column
    assert {row.name: row.nulls for row in tables.columns}["sex"] == 1
    assert sum(row.problems for row in tables.columns) == tables.violations


def test_many_findings_keep_the_first_lines_and_say_there_are_more():
    data = b"age,sex,educ,race,income,married\n" + b"200,1,9,1,1000,1\n" * 12
    tables = report_tables(refused_report(data))
    found = by_column(tables)["age"]["Out of bounds"]
    assert found == Finding(12, [2, 3, 4, 5, 6]) and found.more


def test_repaired_file_reports_what_the_repair_did():
    result = check(read_raw(BAD_CSV, fmt="csv"), PUMS, repair="clamp")
    tables = report_tables(result.report)
    assert tables.rows_stored == 2 and tables.repair is not None and "clamp" in tables.repair
    assert dict(tables.repaired) == {
        "rows dropped": 3,
        "numbers clamped to their bounds": 2,
        "texts cut to their maximum length": 0,
    }


def test_shared_pums_counts_its_duplicates():
    result = check(read_raw((SHARED / "pums_1000.csv").read_bytes(), fmt="csv"), PUMS)
    tables = report_tables(result.report)
    assert (tables.rows_read, tables.rows_stored, tables.duplicate_rows, tables.violations) == (
        1000,
        1000,
        3,
        0,
    )
    assert all(f is None or f.count == 0 for row in tables.columns for f in row.findings)
    assert tables.text_lengths == []


def test_shared_sms_has_its_text_lengths():
    data = (SHARED / "sms_spam.tsv").read_bytes()
    result = check(read_raw(data, fmt="csv", delimiter="\t", quote_char=None), SMS)
    tables = report_tables(result.report)
    assert "Too long" in [h for h, _ in tables.checks]
    [lengths] = tables.text_lengths
    assert lengths.name == "SMS"
    shortest, median, p90, longest, mean = lengths.values
    assert all(isinstance(v, int | float) for v in lengths.values)
    assert 0 < shortest <= median <= p90 <= longest  # type: ignore[operator]
    assert shortest <= mean <= longest  # type: ignore[operator]


def test_nul_bytes_report():
    tables = report_tables(refused_report(b"age,sex\n30,\x001\n"))
    assert tables.nul_bytes == {"count": 1, "first_line": 2, "columns": []}
    assert tables.columns == [] and tables.rows_read is None


@pytest.mark.parametrize(
    "report",
    [
        None,
        {},
        [],
        "text",
        {"columns": None, "repaired": "x", "rows_read": "many", "duplicate_rows": True},
        {"columns": {"age": {"type_errors": {"count": "x"}, "out_of_bounds": 3}, "sex": None}},
        {"columns": {"age": {"nulls": -1, "type_errors": {"count": 2, "first_lines": "3"}}}},
        {
            "nul_bytes": {"count": 2, "columns": {"a": 2, "b": None}},
            "contribution_limit": {"dropped_rows": 1},
        },
        {"rows_read": 10},  # an older report, before the per-column checks
    ],
)
def test_old_or_odd_reports_never_raise(report):
    tables = report_tables(report)
    assert isinstance(tables, QualityTables)


def test_an_older_report_keeps_what_it_has():
    tables = report_tables({"rows_read": 10, "columns": {"age": {"nulls": 0, "type_errors": {"count": 2}}}})
    assert tables.rows_read == 10 and tables.duplicate_rows is None and tables.rows_stored is None
    assert tables.checks == [("Type errors", "values that do not parse as the column's type")]
    assert tables.columns[0].findings == [Finding(2, [])]
    assert report_tables(None).empty and not report_tables({"rows_read": 1}).empty


# The version page (real upload through the API, real ingestion).


def _failed_version(world) -> DatasetVersion:
    steward = api_client(world.a.steward)
    response = steward.post(
        "/api/v1/datasets", {"name": "PUMS", "slug": "pums", "schema": PUMS_SCHEMA}, format="json"
    )
    assert response.status_code == 201
    data = b"age,sex,educ,race,income,married\n30,1,9,1,1000.5,1\n" + BAD_CSV.split(b"\n", 2)[2] * 2
    response = steward.post(
        "/api/v1/datasets/org-a/pums/versions", {"file": io.BytesIO(data)}, format="multipart"
    )
    assert response.status_code == 202
    version = DatasetVersion.objects.get(dataset__slug="pums", number=1)
    version = dataset_version_ingest(version_id=version.pk)
    assert version.error_code == "schema_violations"
    return version


def _page(user, version: DatasetVersion) -> str:
    client = Client()
    client.force_login(user)
    url = reverse("portal:dataset_version", args=["org-a", version.dataset.slug, version.number])
    response = client.get(url)
    assert response.status_code == 200
    return response.content.decode()


def _row(page: str, column: str) -> list[str]:
    row = re.search(rf'<tr data-column="{column}">(.*?)</tr>', page, re.S)
    assert row is not None, column
    return [
        re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td>(.*?)</td>", row.group(1), re.S)
    ]


@pytest.mark.usefixtures("media_root")
def test_the_owner_reads_the_report_as_tables(world):
    version = _failed_version(world)
    page = _page(world.a.steward, version)
    assert 'data-testid="quality-columns"' in page
    # age: empty values, empty where required, type errors, out of bounds, categories.
    assert _row(page, "age") == ["age", "0", "0", "2 (lines 3, 7)", "2 (lines 5, 9)", "n/a"]
    assert _row(page, "educ")[-1] == "2 (lines 4, 8)"
    assert _row(page, "sex")[1:3] == ["2", "2 (lines 6, 10)"]
    summary = re.search(r'data-testid="quality-summary">(.*?)</table>', page, re.S)
    assert summary is not None and "<th>Rows read</th><td>9</td>" in summary.group(1)
    assert "No row repeats another exactly." not in page
    assert "4 rows repeat an earlier row exactly" in page
    # The raw report is still there, folded away.
    assert "<details><summary>The raw report (JSON)</summary>" in page and "&quot;first_lines&quot;" in page


@pytest.mark.usefixtures("media_root")
def test_a_grantee_sees_the_version_but_not_its_report(world):
    # The world's dataset of organisation A (one ready version) is granted to organisation C.
    version = DatasetVersion.objects.get(dataset=world.a.dataset, number=1)
    assert version.status == "ready" and version.quality_report
    assert 'data-testid="quality-report"' in _page(world.a.steward, version)
    grantee = User.objects.get(username="admin_org-c")
    page = _page(grantee, version)
    assert 'data-testid="version-status"' in page
    assert "quality-report" not in page and "Rows read" not in page and "first_lines" not in page


@pytest.mark.usefixtures("media_root")
def test_a_large_ready_version_shows_grouped_counts(world):
    steward = api_client(world.a.steward)
    assert (
        steward.post(
            "/api/v1/datasets",
            {"name": "Adult", "slug": "adult", "schema": reference_schemas.ADULT},
            format="json",
        ).status_code
        == 201
    )
    data = (SHARED / "adult.csv").read_bytes()
    response = steward.post(
        "/api/v1/datasets/org-a/adult/versions", {"file": io.BytesIO(data)}, format="multipart"
    )
    assert response.status_code == 202
    version = dataset_version_ingest(version_id=DatasetVersion.objects.get(dataset__slug="adult").pk)
    assert version.status == "ready"
    page = _page(world.a.steward, version)
    assert "30,162 rows stored, encrypted." in page
    assert "<th>Rows stored</th><td>30,162</td>" in page
