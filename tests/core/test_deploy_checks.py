"""`manage.py check --deploy` with production settings reports nothing but what needs a real host."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {
    "DJANGO_SETTINGS_MODULE": "clearinghouse.settings.production",
    "SECRET_KEY": "k" * 20 + "Zx9!q" * 10,
    "ALLOWED_HOSTS": "clearinghouse.example.org",
    "DATABASE_URL": "sqlite:////tmp/clearinghouse-deploy-check.sqlite3",
    "KEYRING_FILE": "/run/secrets/clearinghouse-keyring.json",
}


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "KEYRING_JSON"}}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_check_deploy_is_clean():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize("override,message", [
    ({"SECRET_KEY": ""}, "SECRET_KEY must be set"),
    ({"DEBUG": "1"}, "DEBUG must be off"),
    ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must name"),
    ({"KEYRING_FILE": ""}, "production needs a real keyring"),
])
def test_production_refuses_unsafe_configuration(override, message):
    result = _manage("check", env={**PRODUCTION_ENV, **override})
    assert result.returncode != 0
    assert message in result.stderr
