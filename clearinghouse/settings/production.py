"""Production: every value that matters comes from the environment, and the process refuses to
start when a secret is missing or a development default would leak into a server."""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import (
    BASE_DIR,
    FLOWER_ROOT_CERTIFICATES,
    FLOWER_SUPERLINK,
    KEYRING_FILE,
    METRICS_TOKEN,
    VAR_DIR,
    env_bool,
    env_list,
)

DEV_KEYRING_NAME = (
    "keyring.dev.json"  # clearinghouse.core.keys.DEV_KEYRING_NAME (not imported: it needs settings)
)

DEBUG = env_bool("DEBUG", False)
if DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production.")

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if len(SECRET_KEY) < 50:
    raise ImproperlyConfigured("SECRET_KEY must be set to at least 50 random characters in production.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name the service's host names in production.")

# The development keyring (a key file beside the data) is refused on servers. Web processes get only
# the staging public key; workers also get KEYRING_FILE or KEYRING_JSON (checked when first loaded).
KEYRING_ALLOW_DEV = False
if not (os.environ.get("STAGING_PUBLIC_KEY_FILE") or os.environ.get("STAGING_PUBLIC_KEY_JSON")):
    raise ImproperlyConfigured(
        "Set STAGING_PUBLIC_KEY_FILE or STAGING_PUBLIC_KEY_JSON: production web processes "
        "encrypt uploads to the staging public key (workers also need KEYRING_FILE or KEYRING_JSON)."
    )

# A keyring file named like the development one, or inside the code or data directory (it would end
# up in an image or a backup of the data), is refused: mount the production keyring as a secret.
if KEYRING_FILE:
    _keyring = Path(KEYRING_FILE).resolve()
    if (
        _keyring.name == DEV_KEYRING_NAME
        or _keyring.is_relative_to(BASE_DIR)
        or _keyring.is_relative_to(VAR_DIR)
    ):
        raise ImproperlyConfigured(
            "KEYRING_FILE is the development keyring or lies beside the code or data: "
            "mount the production keyring as a secret (e.g. /run/secrets/keyring)."
        )

# Federation: TLS to the SuperLink is required on servers (insecure is for one machine only).
if FLOWER_SUPERLINK and not FLOWER_ROOT_CERTIFICATES:
    raise ImproperlyConfigured(
        "FLOWER_SUPERLINK is set without FLOWER_ROOT_CERTIFICATES: production talks "
        "to the SuperLink over TLS only."
    )
if FLOWER_ROOT_CERTIFICATES and not Path(FLOWER_ROOT_CERTIFICATES).is_file():
    raise ImproperlyConfigured("FLOWER_ROOT_CERTIFICATES names no readable file.")

if METRICS_TOKEN and len(METRICS_TOKEN) < 32:
    raise ImproperlyConfigured(
        "METRICS_TOKEN must be at least 32 random characters (or empty: /metrics off)."
    )

# Behind a TLS-terminating reverse proxy that sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
# Probes and the metrics scraper talk plain HTTP to the container, not through the proxy.
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "31536000"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
