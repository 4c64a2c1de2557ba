"""The two key loaders: the staging public key (web) and the keyring (workers, commands only)."""

import pytest

from clearinghouse.core import keys, request_context
from clearinghouse.crypto import Keyring, KeyringError


@pytest.fixture
def worker_keyring(settings, tmp_path):
    ring = Keyring.generate()
    ring.save(tmp_path / "keyring.json")
    ring.staging_current.public.save(tmp_path / "staging-public.json")
    settings.KEYRING_ALLOW_DEV = False
    settings.KEYRING_FILE = str(tmp_path / "keyring.json")
    settings.STAGING_PUBLIC_KEY_FILE = str(tmp_path / "staging-public.json")
    keys.keyring_reset_cache()
    yield ring
    keys.keyring_reset_cache()


def test_the_keyring_is_refused_while_serving_a_request(worker_keyring):
    token = request_context.activate(request_context.RequestContext(request_id="r" * 16, ip="127.0.0.1"))
    try:
        with pytest.raises(KeyringError, match="never while serving a web request"):
            keys.keyring()
        assert keys.staging_public_key() == worker_keyring.staging_current.public
    finally:
        request_context.deactivate(token)
    assert keys._load_keyring.cache_info().currsize == 0
    # Outside a request (a worker, a management command) it loads.
    assert keys.keyring().staging_current.id == worker_keyring.staging_current.id


def test_the_public_key_needs_no_keyring(worker_keyring, settings, tmp_path):
    settings.KEYRING_FILE = str(tmp_path / "absent.json")
    assert keys.staging_public_key().id == worker_keyring.staging_current.id
    with pytest.raises(KeyringError, match="cannot read keyring file"):
        keys.keyring()


def test_without_configuration_production_refuses_both(settings):
    settings.KEYRING_ALLOW_DEV = False
    settings.KEYRING_FILE = settings.STAGING_PUBLIC_KEY_FILE = ""
    keys.keyring_reset_cache()
    try:
        with pytest.raises(KeyringError, match="STAGING_PUBLIC_KEY_FILE"):
            keys.staging_public_key()
        with pytest.raises(KeyringError, match="KEYRING_FILE"):
            keys.keyring()
    finally:
        keys.keyring_reset_cache()


def test_dev_keys_are_created_private_with_the_public_key_beside(settings, tmp_path):
    settings.VAR_DIR = tmp_path
    settings.KEYRING_FILE = settings.STAGING_PUBLIC_KEY_FILE = ""
    keys.keyring_reset_cache()
    try:
        public = keys.staging_public_key()
        assert (tmp_path / keys.DEV_KEYRING_NAME).stat().st_mode & 0o777 == 0o600
        assert "private" not in (tmp_path / keys.DEV_STAGING_PUBLIC_NAME).read_text()
        assert keys.keyring().staging_current.public == public
    finally:
        keys.keyring_reset_cache()
