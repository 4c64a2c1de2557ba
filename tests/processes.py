"""Starting and stopping the real processes tests run (Celery workers, gunicorn, beat). Their output
goes to the run's log directory, so the secrets check at the end of the run reads it too."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def log_file(name: str) -> Path:
    return Path(os.environ["CLEARINGHOUSE_TEST_LOG_DIR"]) / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"


def child_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a child, less the xdist worker name: the child must share this
    process's var dir (keyring, store), not make its own."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_XDIST_WORKER"}
    env.update(overrides)
    return env


def start(args: list[str], env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path]:
    output = log_file(name)
    with output.open("w") as sink:
        process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return process, output


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
