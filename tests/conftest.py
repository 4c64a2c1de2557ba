"""Shared fixtures. Django is imported lazily, so the pure cores' tests (crypto, dp, training) run
without it (e.g. `pytest -p no:django tests/crypto`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests import log_secrets


@pytest.fixture
def world(db):
    """Operator + two approved organisations, each with admin, analyst, steward, a pending join
    request, an open invitation and an admin API token (see tests/factories.py)."""
    from tests.factories import build_world

    world = build_world()
    for side in (world.a, world.b):
        log_secrets.remember(side.invitation_token, "invitation token")
    return world


@pytest.fixture(scope="session", autouse=True)
def _remember_api_token_secrets(request):
    """Records every API token secret the run creates, for the log check below. A pass-through
    wrapper: the real generator runs and its result is returned unchanged."""
    if not request.config.pluginmanager.hasplugin("django"):
        yield  # a pure-core run (-p no:django) makes no tokens
        return
    from clearinghouse.accounts import services

    original = services.token_generate

    def generate_and_remember():
        text, prefix, secret_hash = original()
        log_secrets.remember(text.split("_", 2)[2], "API token secret")
        return text, prefix, secret_hash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services, "token_generate", generate_and_remember)
        yield


def _fixed_secrets() -> dict[str, str]:
    """Secrets every run uses: settings, factory and demo passwords, the dev keyring's key bytes,
    distinctive dataset values."""
    from django.conf import settings

    from clearinghouse.queries.management.commands.demo import PASSWORD as DEMO_PASSWORD
    from tests.factories import PASSWORD

    found = {
        settings.SECRET_KEY: "SECRET_KEY",
        settings.METRICS_TOKEN: "METRICS_TOKEN",
        PASSWORD: "factory password",
        DEMO_PASSWORD: "demo password",
        # tests/datasets/test_datasets.py::test_no_plaintext_in_storage_or_temp uploads it.
        "Zebulon-Quixotic-4471": "dataset value",
    }
    found.update(log_secrets.keyring_material(Path(settings.VAR_DIR) / "keyring.dev.json"))
    return found


def pytest_sessionfinish(session, exitstatus):
    """No log line of the run may hold a secret the tests used: fails the run (exit status 1) and
    says where, without printing the secret."""
    log_dir = os.environ.get("CLEARINGHOUSE_TEST_LOG_DIR")
    if not log_dir or not session.config.pluginmanager.hasplugin("django"):
        return
    from django.apps import apps

    directory = Path(log_dir)
    log_secrets.write_secrets(directory, _fixed_secrets() if apps.ready else {})
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the main process scans once every worker has written its secrets
    findings = log_secrets.scan(directory, log_secrets.read_secrets(directory))
    if findings:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [
            "",
            "=" * 30 + " SECRETS IN LOGS " + "=" * 30,
            f"{len(findings)} log line(s) under {directory} hold a secret the tests used:",
            *findings[:50],
        ]
        for line in lines:
            reporter.write_line(line, red=True, bold=True) if reporter else print(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def celery_worker_process():
    """A real `celery worker` process on the configured broker (Redis in CI, the embedded SQLite
    transport otherwise), the same command the service runs."""
    import sys

    from clearinghouse.core.tasks import ping_task
    from tests.processes import child_env, start, stop

    process, output = start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "clearinghouse",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "WARNING",
            "--queues",
            "default",
            "--hostname",
            f"test-{os.getpid()}@%h",
        ],
        child_env(DJANGO_SETTINGS_MODULE="clearinghouse.settings.test"),
        "celery-worker",
    )
    # Readiness by a task round trip: the embedded SQLite transport has no broadcast for control.ping.
    try:
        ping_task.delay().get(timeout=90)
    except Exception:  # noqa: BLE001 - any failure to answer means the worker did not start
        process.kill()
        raise RuntimeError(
            f"celery worker did not answer within 90 s: {output.read_text()[-2000:]}"
        ) from None
    yield process
    stop(process)


@pytest.fixture
def media_root(settings, tmp_path):
    """A fresh object store per test, so the no-plaintext search sees only this test's files."""
    store = tmp_path / "store"
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(store)},
        },
    }
    yield store  # Django's setting_changed signal makes default_storage re-read STORAGES


@pytest.fixture(scope="session")
def s3_server():
    """An S3-compatible service (moto's server) in a process of its own on 127.0.0.1 (tests/s3.py)."""
    from tests.s3 import serve

    yield from serve()


@pytest.fixture
def s3_store(settings, s3_server):
    """The object store on a fresh bucket of `s3_server`, for this process (settings.STORAGES) and for
    the worker processes a test starts (`s3_store.env`)."""
    log_secrets.remember(s3_server.secret_key, "S3 secret key")
    store = s3_server.bucket()
    settings.STORAGES = {**settings.STORAGES, "default": store.storages}
    yield store


# ------------------------------------------------------------------ headless Chromium (browser tests)
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


@pytest.fixture
def browser():
    if not os.path.exists(CHROMIUM):
        message = "Debian's chromium is not installed (apt-get install chromium)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still
    # synchronous and safe, so lift Django's guard for the duration of the test.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield browser
        browser.close()
    os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
