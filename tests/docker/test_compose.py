"""docker/: the compose files are valid (`docker compose config`, Docker Compose v2, installed by
scripts/ensure-compose), every command in them is one this suite runs outside Docker, every service
has a health check, .env.example lists every setting, and the images run as a non-root user."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE, DEMO = DOCKER / "compose.yaml", DOCKER / "compose.demo.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
REQUIRED = {"SECRET_KEY": "x" * 50, "POSTGRES_PASSWORD": "postgres-password", "REDIS_PASSWORD": "redis-password"}

# Each program a compose file starts (as its command or its health check), and the file of this
# suite (or the code it drives) that runs the same program outside Docker.
ENTRYPOINTS: list[tuple[list[str], str]] = [
    (["gunicorn", "clearinghouse.wsgi"], "tests/docker/test_entrypoints.py"),
    (["python", "manage.py", "migrate"], "tests/docker/test_entrypoints.py"),
    (["celery", "-A", "clearinghouse", "worker"], "tests/conftest.py"),
    (["celery", "-A", "clearinghouse", "beat"], "tests/docker/test_entrypoints.py"),
    (["celery", "-A", "clearinghouse", "inspect", "ping"], "tests/docker/test_entrypoints.py"),
    (["python", "-m", "clearinghouse.core.probe"], "tests/docker/test_entrypoints.py"),
    (["flower-superlink"], "federation/flower/local.py"),  # started by tests/federation/test_*deployment.py
    (["python", "-m", "federation.agent", "run"], "tests/federation/test_agent.py"),
]
# The official PostgreSQL and Redis images' own programs (.ci/run runs the same outside Docker).
INFRASTRUCTURE = [["pg_isready"], ["redis-server"], ["redis-cli"]]


def compose_available() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], check=False, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="module")
def compose(tmp_path_factory):
    if not compose_available():
        message = "Docker Compose v2 (`docker compose`) is not installed: run scripts/ensure-compose"
        if os.environ.get("REQUIRE_COMPOSE") == "1":
            pytest.fail(message)
        pytest.skip(message)

    def run(*files: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
        env_file = tmp_path_factory.mktemp("compose") / ".env"
        env_file.write_text("".join(f"{key}={value}\n" for key, value in env.items()))
        args = ["docker", "compose", "--project-directory", str(DOCKER), "--env-file", str(env_file)]
        for file in files:
            args += ["-f", str(file)]
        clean = {k: v for k, v in os.environ.items() if k not in env and k not in REQUIRED}
        return subprocess.run([*args, "config", "--format", "json"], check=False, capture_output=True, text=True, timeout=60,
                              env=clean)
    return run


def example_env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if re.match(r"^[A-Z_]+=", line))
    return dict(pairs)


@pytest.mark.parametrize("files", [[COMPOSE], [COMPOSE, DEMO]], ids=["node", "node+demo"])
def test_compose_files_are_valid(compose, files):
    result = compose(*files, env={**example_env(), **REQUIRED})
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    assert {"postgres", "redis", "migrate", "web", "worker-ingestion", "worker-dp", "worker-federation", "beat",
            "superlink"} <= services.keys()
    if DEMO in files:
        assert {"member-a", "member-b"} <= services.keys()


def test_a_missing_secret_stops_compose(compose):
    result = compose(COMPOSE, env={**example_env(), **REQUIRED, "SECRET_KEY": ""})
    assert result.returncode != 0
    assert "set SECRET_KEY" in result.stderr


def services_of(*files: Path) -> dict[str, dict]:
    """The services as YAML says them (anchors merged; ${...} left as written)."""
    services: dict[str, dict] = {}
    for file in files:
        services.update(yaml.safe_load(file.read_text())["services"])
    return services


def programs(service: dict) -> list[list[str]]:
    found = []
    if service.get("command"):
        found.append(service["command"])
    test = (service.get("healthcheck") or {}).get("test")
    if test and test[0] == "CMD":
        found.append(test[1:])
    elif test and test[0] == "CMD-SHELL":
        found += [shlex.split(part) for part in re.split(r"\|\||&&|\|", test[1].replace("$$", "$"))]
    return found


def test_every_command_is_one_the_suite_runs_outside_docker():
    for prefix, evidence in ENTRYPOINTS:
        text = (ROOT / evidence).read_text()
        assert prefix[-1] in text or " ".join(prefix[-2:]) in text, f"{evidence} no longer runs {prefix}"
    allowed = [prefix for prefix, _ in ENTRYPOINTS] + INFRASTRUCTURE + [["grep"]]
    for name, service in services_of(COMPOSE, DEMO).items():
        for argv in programs(service):
            assert any(argv[:len(prefix)] == prefix for prefix in allowed), f"{name}: {argv} is not run by the suite"
            if argv[:1] == ["python"] and argv[1:2] != ["manage.py"]:
                assert argv[1] == "-m", f"{name}: {argv}"


def test_workers_consume_every_routed_queue():
    from django.conf import settings

    queues = set()
    for service in services_of(COMPOSE).values():
        command = service.get("command") or []
        if command[:4] == ["celery", "-A", "clearinghouse", "worker"]:
            queues |= set(command[command.index("--queues") + 1].split(","))
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()} | {settings.CELERY_TASK_DEFAULT_QUEUE}
    assert routed == queues


def test_every_long_running_service_has_a_health_check_and_production_settings():
    for name, service in services_of(COMPOSE, DEMO).items():
        if service.get("restart") == "no":
            continue  # one-shot (migrate)
        assert (service.get("healthcheck") or {}).get("test"), f"{name} has no health check"
    for name, service in services_of(COMPOSE).items():
        module = (service.get("environment") or {}).get("DJANGO_SETTINGS_MODULE")
        assert module in (None, "clearinghouse.settings.production"), name


def test_only_workers_get_the_keyring():
    for name, service in services_of(COMPOSE).items():
        has_keyring = "keyring" in (service.get("secrets") or [])
        # Only the workers that decrypt (ingestion, DP releases) get it; the federation worker does not.
        assert has_keyring == (name in {"worker-ingestion", "worker-dp"}), name
        assert "KEYRING_JSON" not in (service.get("environment") or {}), name


def _settings_read_from_environment() -> set[str]:
    names = set()
    for path in [*(ROOT / "clearinghouse" / "settings").glob("*.py"), ROOT / "clearinghouse" / "celery.py",
                 ROOT / "clearinghouse" / "core" / "keys.py"]:
        names |= set(re.findall(r"(?:environ\.get|environ\.setdefault|env_bool|env_list)\(\s*\"([A-Z_]+)\"",
                                path.read_text()))
        names |= set(re.findall(r"environ\[\"([A-Z_]+)\"\]", path.read_text()))
    return names - {"CLEARINGHOUSE_TEST_LOG_DIR", "PYTEST_XDIST_WORKER"}  # the test settings' own


def test_env_example_lists_every_setting_and_every_compose_variable():
    listed = example_env().keys()
    assert _settings_read_from_environment() - listed == set()
    referenced = set()
    for file in (COMPOSE, DEMO):
        referenced |= set(re.findall(r"\$\{([A-Z_]+)", file.read_text()))
    assert referenced - listed == set()


def test_images_run_as_a_non_root_user_without_build_tools():
    text = (DOCKER / "Dockerfile").read_text()
    stages = re.split(r"^FROM ", text, flags=re.MULTILINE)[1:]
    final = [stage for stage in stages if re.match(r"\S+ AS (service|agent)\b", stage)]
    assert len(final) == 2
    for stage in final:
        assert "USER clearinghouse" in stage
    runtime = next(stage for stage in stages if " AS runtime" in stage.splitlines()[0])
    assert "COPY --from=builder" in runtime and "build-essential" not in runtime and "apt-get" not in runtime
    assert "collectstatic" in next(stage for stage in stages if " AS builder" in stage.splitlines()[0])
    pinned = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert f"ARG TORCH_VERSION={pinned}\n" in text
