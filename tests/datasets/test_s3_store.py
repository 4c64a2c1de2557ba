"""The encrypted object store on an S3-compatible service (issue 15, "beyond one machine"): the store
operations the service code performs, in this process, against a real S3 server over HTTP (moto's, in a
process of its own: tests/s3.py). The bucket only ever holds ciphertext. The same path with the
ingestion and dp workers as separate processes: tests/queries/test_s3_store.py."""

from __future__ import annotations

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.core.management import call_command

from clearinghouse.core.keys import keyring, keyring_reset_cache
from clearinghouse.crypto.header import MAGIC
from clearinghouse.datasets import storage
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_staging_sweep
from clearinghouse.datasets.uploads import STAGING_DIR, open_for_write
from tests.datasets.test_datasets import decrypted_table, ingest, register, upload
from tests.factories import api_client

MARKER = b"Zebulon-Quixotic-4471"  # a distinctive value of the uploaded rows (the log check knows it)
SCHEMA = {
    "columns": [
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "group", "type": "categorical", "categories": ["a", "b"]},
        {"name": "note", "type": "text"},
    ]
}


def rows(count: int) -> bytes:
    """A CSV of `count` rows whose `note` column holds MARKER on every row."""
    return b"age,group,note\n" + b"".join(
        b"%d,%s,%s row %d\n" % (20 + i % 60, b"ab"[i % 2 : i % 2 + 1], MARKER, i) for i in range(count)
    )


ENCRYPTED = ("datasets/", "staging/", "annotation/")  # row-derived files (federation/ holds model artifacts)


def assert_only_ciphertext(objects: dict[str, bytes]) -> None:
    assert any(key.startswith(ENCRYPTED) for key in objects), "nothing was stored"
    for key, body in objects.items():
        assert MARKER not in body, f"plaintext found in s3://{key}"
        if key.startswith(ENCRYPTED):
            assert body.startswith(MAGIC), key


@pytest.fixture
def fresh_keyring(settings, tmp_path):
    settings.VAR_DIR = tmp_path  # a dev keyring of this test's own
    keyring_reset_cache()
    yield
    keyring_reset_cache()


def test_upload_ingest_read_and_rotate_on_s3(
    fresh_keyring, s3_store, world, django_capture_on_commit_callbacks
):
    """The world's datasets are on S3 too (s3_store comes first); the checks look at this upload's."""
    before = set(s3_store.objects())
    client = api_client(world.a.steward)
    register(client, "notes", SCHEMA)
    data = rows(170_000)  # ~6.5 MB: the staging file is a multipart upload of two parts
    assert len(data) > 6 * 1024 * 1024
    assert upload(client, "notes", data).status_code == 202
    staged = DatasetVersion.objects.get(dataset__slug="notes")
    objects = s3_store.objects()
    assert_only_ciphertext(objects)
    assert set(objects) - before == {staged.staging_path}
    assert len(objects[staged.staging_path]) > len(data)  # all of it, encrypted

    with django_capture_on_commit_callbacks(execute=True):  # the staging file's deletion, on commit
        version = ingest("notes")
    assert version.status == "ready", (version.error_code, version.error_message)
    objects = s3_store.objects()
    assert set(objects) - before == {version.data_path}  # the staging file is gone once ready
    assert_only_ciphertext(objects)
    table = decrypted_table(version)
    assert table.height == 170_000 and table["note"][5] == f"{MARKER.decode()} row 5"
    ids = {
        "organisation_id": version.dataset.organisation_id,
        "dataset_id": version.dataset_id,
        "number": version.number,
    }
    # by segment, only the columns asked for (SegmentReader over django-storages' S3File)
    ages = storage.read_table(version.data_path, storage.data_context(**ids), columns=["age"])
    assert ages.columns == ["age"] and ages["age"].sum() == table["age"].sum()

    # Key rotation re-wraps the header in place (storage.replace: copy then delete on S3).
    stored = objects[version.data_path]
    call_command("keyring_rotate")
    objects = s3_store.objects()
    assert set(objects) - before == {version.data_path}  # no `.rewrap` copy left behind
    assert_only_ciphertext(objects)
    after = objects[version.data_path]
    assert after != stored and after.startswith(MAGIC)
    assert after.endswith(stored[-4096:])  # the segments are copied byte for byte
    assert DatasetVersion.objects.get(pk=version.pk).kek_id == keyring().current_id
    assert decrypted_table(version).equals(table)


def test_a_refused_upload_leaves_nothing_in_the_bucket(world, s3_store, settings):
    """Over the limit after a first 5 MB part went up: the staged object is deleted, and no multipart
    upload is left open (its parts would be invisible to the staging sweeper)."""
    settings.DATASET_UPLOAD_MAX_BYTES = 5 * 1024 * 1024 + 512 * 1024
    client = api_client(world.a.steward)
    register(client, "notes", SCHEMA)
    parts: list[int] = []
    events = default_storage.connection.meta.client.meta.events
    events.register("after-call.s3.UploadPart", lambda **_: parts.append(1), unique_id="count-parts")
    try:
        response = upload(client, "notes", rows(170_000))
    finally:
        events.unregister("after-call.s3.UploadPart", unique_id="count-parts")
    assert parts, "no part was uploaded before the limit"
    assert response.status_code == 400 and response.json()["code"] == "file_too_large", response.content
    assert s3_store.objects() == {}
    assert s3_store.service.client().list_multipart_uploads(Bucket=s3_store.bucket).get("Uploads", []) == []


def test_replace_and_remove_data_files_on_s3(s3_store):
    folder = storage.version_folder(organisation_id=1, dataset_id=2, number=3)
    keep = f"{folder}/data.keep.parquet.enc"
    with open_for_write(keep) as target:  # no folders to make on S3 (no local path)
        target.write(b"old")
    default_storage.save(f"{folder}/data.dead.parquet.enc", ContentFile(b"dead"))
    default_storage.save(f"{folder}/data.parquet.enc.rewrap", ContentFile(b"new"))
    default_storage.save(f"{folder}/other.txt", ContentFile(b"other"))

    storage.replace(f"{folder}/data.parquet.enc.rewrap", keep)
    assert storage.remove_data_files(folder, keep=keep) == 1
    assert s3_store.objects() == {keep: b"new", f"{folder}/other.txt": b"other"}
    assert storage.remove_data_files("datasets/9/9/v9") == 0  # an empty "folder" is no error


def test_replace_on_s3_keeps_the_old_file_when_the_new_write_fails(s3_store):
    """The network fails while the new file is written over the old one (fault injected in boto3, below
    our code): the old file stays whole. Deleting it before writing the new one, as a move between
    folders would, left nothing at the name (a key rotation that failed there lost the data file)."""
    default_storage.save("data.enc", ContentFile(b"old"))
    default_storage.save("data.enc.rewrap", ContentFile(b"new"))
    client = default_storage.connection.meta.client

    def fail(**_):
        raise ConnectionError("injected: the store went away")

    client.meta.events.register("before-call.s3.PutObject", fail)
    try:
        with pytest.raises(ConnectionError):
            storage.replace("data.enc.rewrap", "data.enc")
    finally:
        client.meta.events.unregister("before-call.s3.PutObject", fail)
    assert s3_store.objects() == {"data.enc": b"old", "data.enc.rewrap": b"new"}
    storage.replace("data.enc.rewrap", "data.enc")  # tried again: done
    assert s3_store.objects() == {"data.enc": b"new"}


def test_staging_sweep_on_s3(db, s3_store, settings):
    settings.DATASET_STAGING_ORPHAN_SECONDS = -60  # every unrecorded staging file counts as orphaned
    default_storage.save(f"{STAGING_DIR}/orphan.enc", ContentFile(b"CHENC..."))
    default_storage.save("datasets/1/1/v1/data.parquet.enc", ContentFile(b"CHENC..."))
    assert dataset_staging_sweep()["deleted"] == 1
    assert set(s3_store.objects()) == {"datasets/1/1/v1/data.parquet.enc"}
