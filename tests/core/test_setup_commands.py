"""First-start commands of a deployment: the production keyring and the first operator."""

from __future__ import annotations

import json
import stat

import pytest
from django.core.management import CommandError, call_command

from clearinghouse.accounts.models import User
from clearinghouse.crypto.keyring import Keyring, StagingPublicKey


def test_keyring_init_writes_a_private_keyring_and_its_public_staging_key(tmp_path, capsys):
    ring_path, public_path = tmp_path / "keyring.json", tmp_path / "staging-public.json"
    call_command("keyring_init", "--out", str(ring_path), "--public-out", str(public_path))
    assert stat.S_IMODE(ring_path.stat().st_mode) == 0o600
    ring = Keyring.from_json(ring_path.read_bytes())
    public = StagingPublicKey.from_file(public_path)
    assert public.id == ring.staging_current.id and public.key == ring.staging_current.public.key
    assert "private" not in json.loads(public_path.read_text())  # the web's file holds no secret
    out = capsys.readouterr().out
    assert ring.current.id in out
    with pytest.raises(CommandError, match="already exists"):
        call_command("keyring_init", "--out", str(ring_path), "--public-out", str(public_path))
    assert Keyring.from_json(ring_path.read_bytes()).current.id == ring.current.id  # not overwritten


@pytest.mark.django_db
def test_operator_create_prints_the_password_once(capsys):
    call_command("operator_create", "--username", "ops", "--email", "ops@example.org")
    password = capsys.readouterr().out.rsplit(": ", 1)[1].strip()
    user = User.objects.get(username="ops")
    assert user.is_operator and not user.is_superuser and user.check_password(password)
    with pytest.raises(CommandError, match="duplicate_username"):
        call_command("operator_create", "--username", "ops", "--email", "other@example.org")
