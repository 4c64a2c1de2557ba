"""The service's keyring of key-encryption keys (KEKs), loaded once per process.

Production: `KEYRING_FILE` (a mounted secret, JSON) or `KEYRING_JSON` (the JSON or its base64, from a
secret store). Development: a local file under `var/` created with mode 0600, with a warning, since a
key beside the data it protects protects nothing from someone who can read the disk.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

from django.conf import settings

from clearinghouse.crypto.keyring import Keyring, create_dev_keyring_file

logger = logging.getLogger(__name__)
DEV_KEYRING_NAME = "keyring.dev.json"


def dev_keyring_path() -> Path:
    return Path(settings.VAR_DIR) / DEV_KEYRING_NAME


@functools.cache
def keyring() -> Keyring:
    if os.environ.get("KEYRING_JSON"):
        return Keyring.from_env("KEYRING_JSON")
    path = settings.KEYRING_FILE
    if path:
        return Keyring.from_file(path)
    if not settings.KEYRING_ALLOW_DEV:
        raise RuntimeError("No keyring configured: set KEYRING_FILE or KEYRING_JSON.")
    dev = dev_keyring_path()
    if not dev.exists():
        try:
            create_dev_keyring_file(dev)
        except FileExistsError:
            pass  # another process created it first
        logger.warning("Created a DEVELOPMENT keyring at %s: for one machine only, never for real data.", dev)
    return Keyring.from_file(dev)


def keyring_path() -> Path:
    """Where the keyring file lives (rotation writes the new keyring there)."""
    return Path(settings.KEYRING_FILE) if settings.KEYRING_FILE else dev_keyring_path()


def keyring_reset_cache() -> None:
    keyring.cache_clear()
