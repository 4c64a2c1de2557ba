"""Key rotation re-wraps a project's stored embeddings beside the dataset files (`keyring_rotate` ->
`embeddings_rewrap` -> `datasets.storage.rewrap_file`): only the header changes, and the next model
run reads them back under the new KEK instead of embedding again. The keyring is this test's own
(`fresh_keyring`), switched to before any project data exists: the session's dev keyring is never
rotated."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from clearinghouse.annotation import services
from clearinghouse.annotation.models import AnnotationProject
from clearinghouse.core.keys import keyring
from clearinghouse.crypto import parse_header, read_header
from tests.datasets.test_key_rotation import fresh_keyring  # noqa: F401 (a fixture)
from tests.factories import make_dataset

from .conftest import TEXT_SCHEMA, text_csv
from .test_core import _label_all

pytestmark = pytest.mark.django_db(transaction=True)


def _header_and_segments(path) -> tuple[bytes, str, bytes]:
    """The file's header, the KEK its data key is wrapped under, and the segments after it."""
    with open(path, "rb") as handle:
        header = read_header(handle)
        return header, parse_header(header).kek_id, handle.read()


def test_rotation_rewraps_the_embeddings_and_the_next_run_reads_them_back(
    fresh_keyring,  # noqa: F811 (first: every key below is this test's)
    media_root,  # before `world`: its dataset files are rotated too
    world,
    eager_tasks,
):
    csv, _, labels = text_csv()
    dataset = make_dataset(steward=world.a.steward, slug="messages", csv=csv, schema=TEXT_SCHEMA)
    steward = world.a.steward
    project = services.project_create(
        actor=steward, dataset=dataset, name="Spam", text_column="text", labels=["ham", "spam"]
    )
    project.refresh_from_db()
    assert project.status == "ready", project.error_code
    _label_all(project, steward, 50, dict(enumerate(labels)))
    first = services.model_run_start(actor=steward, project=project)
    first.refresh_from_db()
    assert first.status == "succeeded", first.error_code
    assert first.metrics["embed_seconds"] > 0  # embedded: the file did not exist yet
    project.refresh_from_db()
    old_kek, name = keyring().current_id, project.embeddings_path
    assert project.embeddings_kek_id == old_kek
    header, kek_in_file, segments = _header_and_segments(media_root / name)
    assert kek_in_file == old_kek

    call_command("keyring_rotate")

    new_kek = keyring().current_id
    assert new_kek != old_kek
    project.refresh_from_db()
    assert project.embeddings_path == name and project.embeddings_kek_id == new_kek
    new_header, kek_in_file, new_segments = _header_and_segments(media_root / name)
    assert kek_in_file == new_kek and new_header != header
    assert new_segments == segments  # only the header was rewritten
    assert not (media_root / f"{name}.rewrap").exists()  # no temporary copy left beside it

    call_command("keyring_rotate", "--retire", old_kek)  # nothing is wrapped under the old KEK any more
    assert old_kek not in keyring().ids
    second = services.model_run_start(actor=steward, project=AnnotationProject.objects.get(pk=project.pk))
    second.refresh_from_db()
    assert second.status == "succeeded", second.error_code
    assert second.metrics["embed_seconds"] == 0  # read back (decrypted under the new KEK), not re-embedded
    assert AnnotationProject.objects.get(pk=project.pk).embeddings_path == name
