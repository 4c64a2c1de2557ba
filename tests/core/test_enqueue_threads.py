"""Threads of a fresh web process that send their first tasks at the same moment all find them
registered (a discovery raced by another thread once answered NotRegistered: 503s and stuck queries
after every web start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROGRAM = """
import json, threading
import django
django.setup()
from clearinghouse.celery import app
from clearinghouse.core.enqueue import registered_task
assert "queries.plan" not in app.tasks  # nothing imported the tasks modules yet
barrier = threading.Barrier(8)
outcomes = []
def first_send(name):
    barrier.wait()
    try:
        outcomes.append(registered_task(name).name == name)
    except Exception as exc:
        outcomes.append(type(exc).__name__)
names = ["queries.plan", "queries.execute", "datasets.ingest_version", "annotation.prepare"] * 2
threads = [threading.Thread(target=first_send, args=(name,)) for name in names]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(json.dumps(outcomes))
"""


def test_threads_sending_their_first_tasks_together_all_find_them(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "clearinghouse.settings.test"}
    env["CLEARINGHOUSE_VAR_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True] * 8


def test_the_web_application_registers_the_tasks_at_start(tmp_path):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "clearinghouse.settings.test"}
    env["CLEARINGHOUSE_VAR_DIR"] = str(tmp_path)
    program = (
        "import clearinghouse.wsgi\n"
        "from clearinghouse.celery import app\n"
        "print('queries.execute' in app.tasks and 'audit.checkpoint' in app.tasks)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "True"
