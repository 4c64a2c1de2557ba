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
    # A web process: only the staging public key, never the keyring (workers add KEYRING_FILE).
    "STAGING_PUBLIC_KEY_FILE": "/etc/clearinghouse/staging-public.json",
}


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "SECRET_KEY", "KEYRING_JSON", "KEYRING_FILE", "STAGING_PUBLIC_KEY_JSON"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_is_clean():
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=PRODUCTION_ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.parametrize(
    "override,message",
    [
        ({"SECRET_KEY": ""}, "SECRET_KEY must be set"),
        ({"DEBUG": "1"}, "DEBUG must be off"),
        ({"ALLOWED_HOSTS": ""}, "ALLOWED_HOSTS must name"),
        ({"STAGING_PUBLIC_KEY_FILE": ""}, "Set STAGING_PUBLIC_KEY_FILE or STAGING_PUBLIC_KEY_JSON"),
        (
            {"KEYRING_FILE": "/srv/clearinghouse/var/keyring.dev.json"},
            "KEYRING_FILE is the development keyring",
        ),
        ({"KEYRING_FILE": str(ROOT / "keyring.json")}, "lies beside the code or data"),
        ({"FLOWER_SUPERLINK": "superlink:9093"}, "TLS only"),
        (
            {"FLOWER_SUPERLINK": "superlink:9093", "FLOWER_ROOT_CERTIFICATES": "/nonexistent/ca.crt"},
            "names no readable file",
        ),
        ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 32"),
    ],
)
def test_production_refuses_unsafe_configuration(override, message):
    result = _manage("check", env={**PRODUCTION_ENV, **override})
    assert result.returncode != 0
    assert message in result.stderr
