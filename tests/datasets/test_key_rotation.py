import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from clearinghouse.core.keys import keyring, keyring_path, keyring_reset_cache, staging_public_key_path
from clearinghouse.crypto import UnknownKeyError, read_header
from clearinghouse.datasets.models import DatasetVersion
from tests.datasets.test_datasets import decrypted_table

pytestmark = pytest.mark.usefixtures("media_root")


@pytest.fixture
def fresh_keyring(settings, tmp_path):
    settings.VAR_DIR = tmp_path  # a dev keyring of this test's own
    keyring_reset_cache()
    yield
    keyring_reset_cache()


def _segments(path) -> bytes:
    with open(path, "rb") as handle:
        read_header(handle)
        return handle.read()


def test_rotation_rewraps_headers_only_and_old_files_stay_readable(fresh_keyring, world, media_root):
    versions = list(DatasetVersion.objects.filter(status="ready"))
    old_kek = keyring().current_id
    assert {v.kek_id for v in versions} == {old_kek}
    before = {v.pk: _segments(media_root / v.data_path) for v in versions}
    tables = {v.pk: decrypted_table(v) for v in versions}

    call_command("keyring_rotate")

    new_kek = keyring().current_id
    assert new_kek != old_kek and old_kek in keyring().ids
    for version in DatasetVersion.objects.filter(status="ready"):
        assert version.kek_id == new_kek
        assert _segments(media_root / version.data_path) == before[version.pk]  # no data rewritten
        assert decrypted_table(version).equals(tables[version.pk])

    call_command("keyring_rotate", "--retire", old_kek)
    assert old_kek not in keyring().ids
    assert decrypted_table(versions[0]).equals(tables[versions[0].pk])


def test_a_kek_still_in_use_cannot_be_retired(fresh_keyring, world):
    old_kek = keyring().current_id
    rotated = keyring().rotated()
    rotated.save(keyring_path(), overwrite=True)
    keyring_reset_cache()
    with pytest.raises(CommandError, match="still use"):
        call_command("keyring_rotate", "--retire", old_kek)
    # Removing it behind the command's back makes those files unreadable: the check matters.
    keyring().without(old_kek).save(keyring_path(), overwrite=True)
    keyring_reset_cache()
    with pytest.raises(UnknownKeyError):
        decrypted_table(DatasetVersion.objects.filter(status="ready").first())


def _staged_upload(world) -> DatasetVersion:
    from tests.datasets.test_datasets import register, upload
    from tests.factories import api_client
    from tests.shared_data import DATASETS as SHARED

    client = api_client(world.a.steward)
    register(client)
    assert upload(client, "pums", (SHARED / "pums_1000.csv").read_bytes()).status_code == 202
    return DatasetVersion.objects.get(dataset__slug="pums")


def test_rotation_covers_staging_keys_and_uploads_in_flight(fresh_keyring, world, media_root):
    from clearinghouse.core.keys import staging_public_key, staging_public_key_path
    from clearinghouse.crypto import StagingPublicKey, parse_header
    from clearinghouse.datasets.services import dataset_version_ingest

    old_staging = keyring().staging_current.id
    staged = _staged_upload(world)  # encrypted to the old staging public key
    assert staged.kek_id == old_staging

    call_command("keyring_rotate")

    ring = keyring()
    assert ring.staging_current.id != old_staging and old_staging in ring.staging_ids
    assert StagingPublicKey.from_file(staging_public_key_path()) == ring.staging_current.public
    assert staging_public_key().id == ring.staging_current.id
    # The staged upload was re-wrapped (header only) under the new KEK, so the old staging key can go.
    staged.refresh_from_db()
    with open(media_root / staged.staging_path, "rb") as handle:
        header = parse_header(read_header(handle))
    assert (header.wrap_kind, header.kek_id, staged.kek_id) == (1, ring.current_id, ring.current_id)
    call_command("keyring_rotate", "--retire", old_staging)
    assert old_staging not in keyring().staging_ids
    assert dataset_version_ingest(version_id=staged.pk).status == "ready"
    with pytest.raises(CommandError, match="current staging key"):
        call_command("keyring_rotate", "--retire", keyring().staging_current.id)


def test_an_upload_to_the_previous_public_key_still_ingests_after_rotation(fresh_keyring, world):
    """A web process not yet given the new public key keeps encrypting to the old one."""
    from clearinghouse.datasets.services import dataset_version_ingest

    old_public = keyring().staging_current.public
    keyring().rotated().save(keyring_path(), overwrite=True)
    keyring_reset_cache()
    old_public.save(staging_public_key_path())  # the web still has the old public key
    keyring_reset_cache()
    staged = _staged_upload(world)
    assert staged.kek_id == old_public.id != keyring().staging_current.id
    assert dataset_version_ingest(version_id=staged.pk).status == "ready"


def test_a_staging_file_does_not_open_with_a_wrong_private_key(fresh_keyring, world):
    from clearinghouse.audit.models import AuditEvent
    from clearinghouse.crypto import Keyring, StagingKey
    from clearinghouse.datasets.services import dataset_version_ingest

    staged = _staged_upload(world)
    ring = keyring()
    impostor = StagingKey.generate(ring.staging_current.id)  # same id, another private key
    Keyring(
        [ring.current], current_id=ring.current_id, staging=[impostor], staging_current_id=impostor.id
    ).save(keyring_path(), overwrite=True)
    keyring_reset_cache()
    version = dataset_version_ingest(version_id=staged.pk)
    assert version.status == "corrupt" and version.error_code == "integrity_error"
    assert AuditEvent.objects.filter(action="dataset_version.corrupt", target_id=str(staged.pk)).exists()
