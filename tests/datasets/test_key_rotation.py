import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from clearinghouse.core.keys import keyring, keyring_reset_cache
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
    from clearinghouse.core.keys import keyring_path

    rotated.save(keyring_path(), overwrite=True)
    keyring_reset_cache()
    with pytest.raises(CommandError, match="still use"):
        call_command("keyring_rotate", "--retire", old_kek)
    # Removing it behind the command's back makes those files unreadable: the check matters.
    keyring().without(old_kek).save(keyring_path(), overwrite=True)
    keyring_reset_cache()
    with pytest.raises(UnknownKeyError):
        decrypted_table(DatasetVersion.objects.filter(status="ready").first())
