"""Shared fixtures. Django is imported lazily, so the pure cores' tests (crypto, dp, training) run
without it (e.g. `pytest -p no:django tests/crypto`)."""

from __future__ import annotations

import pytest


@pytest.fixture
def world(db):
    """Operator + two approved organisations, each with admin, analyst, steward, a pending join
    request, an open invitation and an admin API token (see tests/factories.py)."""
    from tests.factories import build_world

    return build_world()


@pytest.fixture(scope="session")
def celery_worker_process():
    """A real `celery worker` process on the configured broker (Redis in CI, the embedded SQLite
    transport otherwise), the same command the service runs."""
    import os
    import subprocess
    import sys

    from clearinghouse.core.tasks import ping_task

    env = dict(os.environ, DJANGO_SETTINGS_MODULE="clearinghouse.settings.test")
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "clearinghouse", "worker", "--pool", "solo", "--loglevel", "WARNING",
         "--queues", "default", "--hostname", f"test-{os.getpid()}@%h"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    # Readiness by a task round trip: the embedded SQLite transport has no broadcast for control.ping.
    try:
        ping_task.delay().get(timeout=90)
    except Exception:
        process.kill()
        raise RuntimeError(f"celery worker did not answer within 90 s: {process.stdout.read()[-2000:]}") from None
    yield process
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture
def media_root(settings, tmp_path):
    """A fresh object store per test, so the no-plaintext search sees only this test's files."""
    store = tmp_path / "store"
    settings.STORAGES = {**settings.STORAGES,
                         "default": {"BACKEND": "django.core.files.storage.FileSystemStorage",
                                     "OPTIONS": {"location": str(store)}}}
    yield store  # Django's setting_changed signal makes default_storage re-read STORAGES
