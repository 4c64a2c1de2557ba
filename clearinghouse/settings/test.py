"""Test settings: the database and broker come from DATABASE_URL / CELERY_BROKER_URL when set
(CI points them at PostgreSQL and Redis); otherwise the embedded defaults."""

import os
import tempfile
from pathlib import Path

os.environ.setdefault("CLEARINGHOUSE_VAR_DIR", tempfile.mkdtemp(prefix="clearinghouse-test-"))
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel test processes must not share the embedded broker, keyring or object store.
    os.environ["CLEARINGHOUSE_VAR_DIR"] = tempfile.mkdtemp(
        prefix=f"clearinghouse-test-{os.environ['PYTEST_XDIST_WORKER']}-"
    )

# Metrics in multiprocess mode, as on a server: a Celery worker started by a test counts into the same
# directory the test process reads /metrics from. Set before prometheus_client is first imported.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(Path(os.environ["CLEARINGHOUSE_VAR_DIR"]) / "metrics")
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)
# Every log record of the run (this process, xdist workers, worker subprocesses) also goes to a JSON
# file here; tests/conftest.py checks at the end that none holds a secret the tests used.
TEST_LOG_DIR = Path(
    os.environ.setdefault("CLEARINGHOUSE_TEST_LOG_DIR", tempfile.mkdtemp(prefix="clearinghouse-logs-"))
)

from .base import *  # noqa: E402, F403
from .base import DATABASES, LOGGING, STATIC_ROOT, STORAGES, VAR_DIR  # noqa: E402

# Tests open connections from threads and subprocesses; none outlives its test (the test database is
# dropped at the end), whatever the deployment default is.
DATABASES["default"]["CONN_MAX_AGE"] = 0
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # A file, not the shared in-memory database: tests that run a worker in a thread read while it
    # writes, and only a file database waits for the lock (timeout, WAL) instead of failing at once.
    DATABASES["default"]["TEST"] = {"NAME": str(Path(VAR_DIR) / "test-database.sqlite3")}

SECRET_KEY = "test-only-secret-key-not-for-production-0123456789abcdef"
DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}
EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
Path(VAR_DIR).mkdir(parents=True, exist_ok=True)
Path(STATIC_ROOT).mkdir(parents=True, exist_ok=True)
METRICS_TOKEN = "test-metrics-token-7c1f0e9a2b4d4c8e9f3a6b5d1e2c7a90"
LOGGING["handlers"]["test_log_file"] = {
    "class": "logging.FileHandler",
    "filename": str(TEST_LOG_DIR / f"process-{os.getpid()}.jsonl"),
    "formatter": "json",
    "filters": ["request_id", "redact_paths"],
    "delay": True,
}
LOGGING["root"]["handlers"] = [*LOGGING["root"]["handlers"], "test_log_file"]
# Our own code's debug lines are scanned for secrets too.
LOGGING["loggers"].update({"clearinghouse": {"level": "DEBUG"}, "federation": {"level": "DEBUG"}})

# Every transaction takes audit stream heads in one order (clearinghouse/audit/services.py): tests
# refuse the out-of-order lock that could deadlock two writers in production.
AUDIT_STRICT_LOCK_ORDER = True
