"""The processes of docker/compose.yaml, run here as compose runs them: the same programs, the same
production settings module, configured only through the environment."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tests import log_secrets
from tests.processes import child_env, start, stop

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtual environment's programs (gunicorn, celery), as on the image's PATH
SECRET_KEY = "entrypoint-test-secret-key-0123456789-abcdefghijklmnopqrstuvwxyz"
METRICS_TOKEN = "entrypoint-metrics-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def production_env(tmp_path):
    """A production environment as compose gives it: its own database file, the run's broker."""
    log_secrets.remember(SECRET_KEY, "production SECRET_KEY")
    log_secrets.remember(METRICS_TOKEN, "production METRICS_TOKEN")
    drop = {"KEYRING_FILE", "KEYRING_JSON", "DEBUG", "CLEARINGHOUSE_VAR_DIR"}
    env = {k: v for k, v in child_env().items() if k not in drop}
    (tmp_path / "metrics").mkdir()
    env.update(DJANGO_SETTINGS_MODULE="clearinghouse.settings.production", SECRET_KEY=SECRET_KEY,
               ALLOWED_HOSTS="clearinghouse.example.org,127.0.0.1", CLEARINGHOUSE_VAR_DIR=str(tmp_path / "var"),
               DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}", STATIC_ROOT=str(tmp_path / "static"),
               STAGING_PUBLIC_KEY_FILE=str(tmp_path / "staging-public.json"), METRICS_TOKEN=METRICS_TOKEN,
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "metrics"), CELERY_BROKER_URL=settings.CELERY_BROKER_URL,
               CELERY_RESULT_BACKEND=settings.CELERY_RESULT_BACKEND)
    return env




def run(args: list[str], env: dict[str, str], timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def probe(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "clearinghouse.core.probe", *args], env, timeout=60)






def wait_for(condition, what: str, output: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s: {output.read_text()[-3000:]}")


def test_migrate_then_gunicorn_serve_health_readiness_and_metrics(production_env):
    migrated = run([sys.executable, "manage.py", "migrate", "--noinput"], production_env)
    assert migrated.returncode == 0, migrated.stderr
    port = free_port()
    web, output = start([str(BIN / "gunicorn"), "clearinghouse.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "2",
                         "--timeout", "120"], production_env, "gunicorn")
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: probe("http", f"{base}/healthz", env=production_env).returncode == 0, "healthz", output)
        ready = probe("http", f"{base}/readyz", env=production_env)
        assert ready.returncode == 0, (ready.stdout, output.read_text()[-3000:])
        # Probes are exempt from the HTTPS redirect; everything else is redirected.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/api/v1/me")
        redirected = connection.getresponse()
        assert redirected.status == 301 and redirected.getheader("Location").startswith("https://")
        connection.close()
        request = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        with urllib.request.urlopen(request, timeout=10) as response:
            exposition = response.read().decode()
        # Two gunicorn workers, one sum: multiprocess mode.
        assert 'clearinghouse_http_request_duration_seconds_count{method="GET",route="healthz",status="200"}' in exposition
    finally:
        stop(web)
    lines = [json.loads(line) for line in output.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("logger") == "clearinghouse.access"]
    assert access and all(line["request_id"] for line in access)
    assert {line["route"] for line in access} >= {"healthz", "readyz", "metrics"}


def test_the_probe_reports_what_is_down(production_env):
    assert probe("http", f"http://127.0.0.1:{free_port()}/healthz", env=production_env).returncode == 1
    assert probe("tcp", f"127.0.0.1:{free_port()}", env=production_env).returncode == 1
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert probe("tcp", f"127.0.0.1:{listener.getsockname()[1]}", env=production_env).returncode == 0
    assert probe("broker", env=production_env).returncode == 0
    assert probe("bogus", env=production_env).returncode == 2


def test_beat_starts_with_production_settings(production_env, tmp_path):
    beat, output = start([str(BIN / "celery"), "-A", "clearinghouse", "beat", "--schedule", str(tmp_path / "schedule"),
                          "--pidfile", "", "--loglevel", "INFO"], production_env, "beat")
    try:
        wait_for(lambda: "beat: Starting" in output.read_text(), "beat did not start", output)
        time.sleep(1)
        assert beat.poll() is None, output.read_text()[-3000:]
    finally:
        stop(beat)


def test_a_worker_answers_inspect_ping(celery_worker_process, production_env):
    """The workers' health check. Needs a broker with broadcast (Redis, as in production)."""
    if not settings.CELERY_BROKER_URL.startswith("redis"):
        pytest.skip("the embedded SQLite transport has no broadcast: set CELERY_BROKER_URL to Redis")
    destination = f"test-{os.getpid()}@{socket.gethostname()}"
    answered = run([str(BIN / "celery"), "-A", "clearinghouse", "inspect", "ping", "--timeout", "10", "--destination",
                    destination], production_env, timeout=60)
    assert answered.returncode == 0, answered.stdout + answered.stderr
    assert "pong" in answered.stdout
