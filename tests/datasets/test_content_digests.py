"""Content digests at ingestion (`datasets.ingest.content_digests`, `training.digest`): the real SMS
Spam file registered through the real (encrypting) upload and ingestion has, for its (SMS, Label)
pair, the digest that a member's training loader computes from the same file; a first upload
revalidated after its schema is confirmed gets its digests too; a repaired version's digest is that of
the rows it stored, not the file's; the owner reads them on the version, nobody else."""

from __future__ import annotations

import io

import pytest
from django.test import Client
from django.urls import reverse

from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_schema_set, dataset_version_ingest
from tests.factories import api_client
from tests.shared_data import DATASETS
from training.data import load_labelled_table
from training.digest import labelled_table_digest

pytestmark = pytest.mark.usefixtures("media_root")
SMS_SPAM = DATASETS / "sms_spam.tsv"
SMS_SCHEMA = {
    "columns": [
        {"name": "Label", "type": "categorical", "categories": ["ham", "spam"]},
        {"name": "SMS", "type": "text", "max_length": 1000},
    ]
}


def _upload(world, data: bytes, *, slug: str, schema: dict | None, **options) -> DatasetVersion:
    steward = api_client(world.a.steward)
    body = {"name": slug.title(), "slug": slug, **({"schema": schema} if schema else {})}
    assert steward.post("/api/v1/datasets", body, format="json").status_code == 201
    response = steward.post(
        f"/api/v1/datasets/org-a/{slug}/versions", {"file": io.BytesIO(data), **options}, format="multipart"
    )
    assert response.status_code == 202, response.json()
    return DatasetVersion.objects.get(dataset__organisation__slug="org-a", dataset__slug=slug, number=1)


def _loader_digest(path, **options):
    table = load_labelled_table(
        path, text_column="SMS", label_column="Label", labels=["ham", "spam"], **options
    )
    return labelled_table_digest(table)


def test_the_registered_sms_file_digests_as_the_members_loader_reads_it(world):
    # The TSV holds unbalanced quotes: registered without quoting, as the training loader reads TSV.
    version = _upload(
        world, SMS_SPAM.read_bytes(), slug="sms", schema=SMS_SCHEMA, delimiter="tab", quote="none"
    )
    version = dataset_version_ingest(version_id=version.pk)
    assert version.status == "ready" and version.row_count == 5574
    local = _loader_digest(SMS_SPAM)
    assert version.content_digests == {
        "scheme": "rows-sha256-v1",
        "rows": 5574,
        "parse": {"format": "csv", "delimiter": "\t", "quote_char": None},
        "pairs": [{"text_column": "SMS", "label_column": "Label", "digest": local.digest}],
    }
    assert local.rows == 5574
    # The owner reads them on the version; an operator (who sees every dataset) does not.
    owner = api_client(world.a.steward).get("/api/v1/datasets/org-a/sms/versions/1").json()
    assert owner["content_digests"] == version.content_digests
    operator = api_client(world.operator).get("/api/v1/datasets/org-a/sms/versions/1")
    assert operator.status_code == 200 and "content_digests" not in operator.json()
    page = Client()
    page.force_login(world.a.steward)
    html = page.get(reverse("portal:dataset_version", args=["org-a", "sms", 1])).content.decode()
    assert 'data-testid="content-digests"' in html and local.digest in html
    page.force_login(world.operator)
    html = page.get(reverse("portal:dataset_version", args=["org-a", "sms", 1])).content.decode()
    assert "Ready" in html and local.digest not in html


def test_a_shuffled_copy_matches_and_a_changed_row_does_not(world, tmp_path):
    version = dataset_version_ingest(
        version_id=_upload(
            world, SMS_SPAM.read_bytes(), slug="sms", schema=SMS_SCHEMA, delimiter="tab", quote="none"
        ).pk
    )
    registered = version.content_digests["pairs"][0]["digest"]
    header, *lines = SMS_SPAM.read_text(encoding="utf-8").splitlines(keepends=True)
    shuffled = tmp_path / "shuffled.tsv"
    shuffled.write_text(header + "".join(reversed(lines)), encoding="utf-8")
    assert _loader_digest(shuffled).digest == registered
    changed = tmp_path / "changed.tsv"
    first = lines[0].replace("ham\t", "spam\t", 1)
    changed.write_text(header + first + "".join(lines[1:]), encoding="utf-8")
    assert _loader_digest(changed).digest != registered


def test_a_first_upload_gets_its_digests_when_revalidated_after_the_schema_is_confirmed(world):
    data = b"Label,SMS\nham,see you later\nspam,win a prize now\nham,lunch?\n"
    version = dataset_version_ingest(version_id=_upload(world, data, slug="fresh", schema=None).pk)
    assert version.status == "awaiting_schema" and version.content_digests is None
    dataset_schema_set(actor=world.a.steward, dataset=version.dataset, schema=SMS_SCHEMA)
    version = dataset_version_ingest(version_id=version.pk)  # the revalidation the confirmation queued
    assert version.status == "ready"
    (pair,) = version.content_digests["pairs"]
    assert (pair["text_column"], pair["label_column"]) == ("SMS", "Label")


def test_a_repaired_version_digests_the_rows_it_stored(world, tmp_path):
    """Rows dropped at ingestion are not registered: the original file does not match, the file
    without them does."""
    data = b"Label,SMS\nham,see you later\nmaybe,not a label\nspam,win a prize now\n"
    version = _upload(world, data, slug="repaired", schema=SMS_SCHEMA, repair="drop")
    version = dataset_version_ingest(version_id=version.pk)
    assert version.status == "ready" and version.row_count == 2
    registered = version.content_digests["pairs"][0]["digest"]
    kept = tmp_path / "kept.csv"
    kept.write_text("Label,SMS\nspam,win a prize now\nham,see you later\n", encoding="utf-8")
    assert _loader_digest(kept).digest == registered


def test_a_table_without_a_text_column_has_no_pairs(world):
    schema = {
        "columns": [
            {"name": "age", "type": "integer", "lower": 0, "upper": 100},
            {"name": "group", "type": "categorical", "categories": ["a", "b"]},
        ]
    }
    version = _upload(world, b"age,group\n30,a\n41,b\n", slug="survey2", schema=schema)
    version = dataset_version_ingest(version_id=version.pk)
    assert version.content_digests == {
        "scheme": "rows-sha256-v1",
        "rows": 2,
        "parse": {"format": "csv", "delimiter": ",", "quote_char": '"'},
        "pairs": [],
    }


def test_labels_are_categorical_or_integer_columns_never_text_or_boolean(world):
    """A free-text column is no label (T×L pairs, never T×T); a boolean is stored normalised
    (true/false), which a member's file need not spell so, so it is no label either."""
    schema = {
        "columns": [
            {"name": "SMS", "type": "text", "max_length": 100},
            {"name": "Note", "type": "text", "max_length": 100},
            {"name": "Label", "type": "categorical", "categories": ["ham", "spam"]},
            {"name": "stars", "type": "integer", "lower": 0, "upper": 5},
            {"name": "flag", "type": "boolean"},
        ]
    }
    data = b"SMS,Note,Label,stars,flag\nhi,a,ham,1,yes\nwin,b,spam,5,no\n"
    version = dataset_version_ingest(version_id=_upload(world, data, slug="mixed", schema=schema).pk)
    assert version.status == "ready", version.quality_report
    pairs = {(p["text_column"], p["label_column"]) for p in version.content_digests["pairs"]}
    assert pairs == {("SMS", "Label"), ("SMS", "stars"), ("Note", "Label"), ("Note", "stars")}


def test_a_quoted_tsv_registered_with_quoting_is_read_by_the_member_as_it_was_parsed(world, tmp_path):
    """A TSV uploaded with the default quote character whose texts hold quoted fields: the digest
    is of the unquoted cells, the parse options are recorded, and the member's loader, reading its
    file with them, matches; read with the loader's TSV default (no quoting), it would not."""
    data = b'Label\tSMS\nham\t"hello, ""friend"""\nspam\t"win a prize"\nham\tplain\n'
    version = _upload(world, data, slug="quoted", schema=SMS_SCHEMA, delimiter="tab")
    version = dataset_version_ingest(version_id=version.pk)
    assert version.status == "ready" and version.row_count == 3
    parse = version.content_digests["parse"]
    assert parse == {"format": "csv", "delimiter": "\t", "quote_char": '"'}
    registered = version.content_digests["pairs"][0]["digest"]
    path = tmp_path / "quoted.tsv"
    path.write_bytes(data)
    assert (
        _loader_digest(path, delimiter=parse["delimiter"], quote_char=parse["quote_char"]).digest
        == registered
    )
    assert _loader_digest(path).digest != registered
    page = Client()
    page.force_login(world.a.steward)
    html = page.get(reverse("portal:dataset_version", args=["org-a", "quoted", 1])).content.decode()
    assert "Digested as the upload was parsed: tab-separated text, quote character &quot;" in html
