"""Test settings: the database and broker come from DATABASE_URL / CELERY_BROKER_URL when set
(CI points them at PostgreSQL and Redis); otherwise the embedded defaults."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("CLEARINGHOUSE_VAR_DIR", tempfile.mkdtemp(prefix="clearinghouse-test-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel test processes must not share the embedded broker, keyring or object store.
    os.environ["CLEARINGHOUSE_VAR_DIR"] = tempfile.mkdtemp(prefix=f"clearinghouse-test-{os.environ['PYTEST_XDIST_WORKER']}-")

from .base import *  # noqa: E402,F401,F403
from .base import STATIC_ROOT, STORAGES, VAR_DIR  # noqa: E402

SECRET_KEY = "test-only-secret-key-not-for-production-0123456789abcdef"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
Path(VAR_DIR).mkdir(parents=True, exist_ok=True)
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
