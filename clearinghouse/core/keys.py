"""The service's keys, through two loaders that never mix.

* `staging_public_key()`, for the **web process**: the public half of the current staging key pair.
  Uploads are encrypted to it as they stream in; it cannot decrypt anything. Production:
  `STAGING_PUBLIC_KEY_FILE` (a JSON file, not secret) or `STAGING_PUBLIC_KEY_JSON`.
* `keyring()`, for **workers and management commands** only: the KEKs and staging private keys that
  decrypt. Production: `KEYRING_FILE` (a mounted secret, JSON) or `KEYRING_JSON` (the JSON or its
  base64, from a secret store). It refuses to load inside an HTTP request, so no web code path can
  reach it, even by accident (a Celery task run eagerly inside a request, as some tests do, is
  still a task).

Development (`KEYRING_ALLOW_DEV`): a local keyring `var/keyring.dev.json` (mode 0600) is created with
a warning, since a key beside the data it protects protects nothing from someone who can read the
disk, and its staging public key is written beside it (`var/staging-public.dev.json`).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from celery import current_task
from django.conf import settings

from clearinghouse.crypto.errors import KeyringError
from clearinghouse.crypto.keyring import Keyring, StagingPublicKey

from . import request_context

logger = logging.getLogger(__name__)
DEV_KEYRING_NAME = "keyring.dev.json"
DEV_STAGING_PUBLIC_NAME = "staging-public.dev.json"


def dev_keyring_path() -> Path:
    return Path(settings.VAR_DIR) / DEV_KEYRING_NAME


def dev_staging_public_path() -> Path:
    return Path(settings.VAR_DIR) / DEV_STAGING_PUBLIC_NAME


# -- web: the staging public key ------------------------------------------------------------------------


@functools.cache
def staging_public_key() -> StagingPublicKey:
    """The key uploads are encrypted to. Never reads the keyring outside development."""
    if os.environ.get("STAGING_PUBLIC_KEY_JSON"):
        return StagingPublicKey.from_json(os.environ["STAGING_PUBLIC_KEY_JSON"])
    if settings.STAGING_PUBLIC_KEY_FILE:
        return StagingPublicKey.from_file(settings.STAGING_PUBLIC_KEY_FILE)
    if not settings.KEYRING_ALLOW_DEV:
        raise KeyringError(
            "No staging public key configured: set STAGING_PUBLIC_KEY_FILE or STAGING_PUBLIC_KEY_JSON."
        )
    if not dev_staging_public_path().exists():
        ensure_dev_keys()
    return StagingPublicKey.from_file(dev_staging_public_path())


def staging_public_key_path() -> Path:
    """Where `keyring_rotate` writes the new staging public key for the web processes."""
    return (
        Path(settings.STAGING_PUBLIC_KEY_FILE)
        if settings.STAGING_PUBLIC_KEY_FILE
        else dev_staging_public_path()
    )


# -- workers and management commands: the keyring ----------------------------------------------------------


def keyring() -> Keyring:
    """The full keyring (decrypts). Refused inside an HTTP request: the web process never loads it."""
    if request_context.active() is not None and not current_task:
        raise KeyringError(
            "The keyring is loaded only by workers and management commands, never while "
            "serving a web request; web code encrypts to staging_public_key()."
        )
    return _load_keyring()


@functools.cache
def _load_keyring() -> Keyring:
    if os.environ.get("KEYRING_JSON"):
        return Keyring.from_env("KEYRING_JSON")
    if settings.KEYRING_FILE:
        return Keyring.from_file(settings.KEYRING_FILE)
    if not settings.KEYRING_ALLOW_DEV:
        raise KeyringError("No keyring configured: set KEYRING_FILE or KEYRING_JSON.")
    return ensure_dev_keys()


def ensure_dev_keys() -> Keyring:
    """Development only: the dev keyring (created 0600 with a KEK and a staging key pair if missing;
    a staging pair is added to an older one) and its staging public key file beside it."""
    if not settings.KEYRING_ALLOW_DEV:
        raise KeyringError("The development keyring is disabled (KEYRING_ALLOW_DEV is off).")
    path = dev_keyring_path()
    if not path.exists():
        try:
            Keyring.generate().save(path)
            logger.warning(
                "Created a DEVELOPMENT keyring at %s: for one machine only, never for real data.", path
            )
        except KeyringError:
            pass  # another process created it first
    ring = Keyring.from_file(path)
    if not ring.staging_ids:
        ring = ring.with_new_staging_key()
        ring.save(path, overwrite=True)
    public = ring.staging_current.public
    public_path = dev_staging_public_path()
    if not public_path.exists() or StagingPublicKey.from_file(public_path) != public:
        public.save(public_path)
    return ring


def keyring_path() -> Path:
    """Where the keyring file lives (rotation writes the new keyring there)."""
    return Path(settings.KEYRING_FILE) if settings.KEYRING_FILE else dev_keyring_path()


def keyring_reset_cache() -> None:
    _load_keyring.cache_clear()
    staging_public_key.cache_clear()
