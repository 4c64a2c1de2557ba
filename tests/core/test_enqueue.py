"""Tasks are sent one way (clearinghouse.core.enqueue, by registered name), so that no service imports a
tasks module; the names must exist, eager mode must still run them in-process, and on-commit sends
wait for the commit."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from celery.result import EagerResult
from celery.signals import task_postrun

from clearinghouse.celery import app
from clearinghouse.core.enqueue import enqueue, enqueue_on_commit, registered_task
from tests.processes import ROOT, child_env

SENDERS = {"enqueue", "enqueue_on_commit"}


def _sent_task_names() -> dict[str, list[str]]:
    """Every task name the service's code passes to enqueue / enqueue_on_commit, with where."""
    found: dict[str, list[str]] = {}
    for package in ("clearinghouse", "federation"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                    continue
                if node.func.id not in SENDERS or path.name == "enqueue.py":
                    continue
                first = node.args[0] if node.args else None
                assert isinstance(first, ast.Constant) and isinstance(first.value, str), (
                    f"{path.relative_to(ROOT)}:{node.lineno}: send a task by its literal registered name"
                )
                found.setdefault(first.value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_task_the_code_sends_is_registered_under_that_name():
    sent = _sent_task_names()
    assert {
        "queries.execute",
        "queries.plan",
        "datasets.ingest_version",
        "federation.job_submit",
        "federation.job_stop",
        "federation.job_finalize",
        "federation.supernode_key_register",
        "federation.supernode_key_unregister",
    } <= set(sent)
    for name, where in sent.items():
        assert registered_task(name).name == name, where


def test_a_misspelt_name_is_an_error_not_a_silent_no_op():
    with pytest.raises(KeyError):
        registered_task("queries.exceute")


def test_a_publishing_process_imports_no_tasks_module_until_it_sends_one():
    """As the web process: services load without any tasks module (no cycle to break), and the first
    send finds its task by name all the same."""
    probe = """
import json, sys
import django
django.setup()
import clearinghouse.accounts.services, clearinghouse.datasets.services, clearinghouse.queries.services
import clearinghouse.organisations.services, federation.services
from clearinghouse.core.enqueue import registered_task
before = sorted(m for m in sys.modules if m.endswith(".tasks") and m.startswith(("clearinghouse", "federation")))
task = registered_task("queries.execute")
after = sorted(m for m in sys.modules if m.endswith(".tasks") and m.startswith(("clearinghouse", "federation")))
print(json.dumps({"before": before, "task": task.name, "after": after}))
"""
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=child_env(DJANGO_SETTINGS_MODULE="clearinghouse.settings.test"),
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    seen = json.loads(out.strip().splitlines()[-1])
    assert seen["before"] == []
    assert seen["task"] == "queries.execute"
    assert {"clearinghouse.queries.tasks", "clearinghouse.datasets.tasks", "federation.tasks"} <= set(
        seen["after"]
    )


@pytest.fixture
def eager():
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.fixture
def ran():
    """(task name, task id) of every task run in this process while the test lasts."""
    seen: list[tuple[str, str]] = []

    def record(task_id=None, task=None, **_):
        seen.append((task.name, task_id))

    task_postrun.connect(record, weak=False)
    yield seen
    task_postrun.disconnect(record)


def test_eager_mode_runs_the_task_in_process_with_its_id(eager, ran):
    result = enqueue("core.ping", task_id="ping-1")
    assert isinstance(result, EagerResult)
    assert (result.id, result.get(timeout=5)) == ("ping-1", "pong")
    assert ran == [("core.ping", "ping-1")]


@pytest.mark.django_db
def test_on_commit_sends_only_once_the_transaction_commits(eager, ran, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        enqueue_on_commit("core.ping", task_id="ping-2")
        assert ran == []
    assert len(callbacks) == 1
    assert ran == [("core.ping", "ping-2")]


@pytest.mark.django_db
def test_a_robust_send_that_fails_is_logged_not_raised(eager, django_capture_on_commit_callbacks, caplog):
    with django_capture_on_commit_callbacks(execute=True):
        enqueue_on_commit("core.no_such_task", 1, robust=True)
    assert any("on_commit" in record.getMessage() for record in caplog.records)

    with pytest.raises(KeyError), django_capture_on_commit_callbacks(execute=True):
        enqueue_on_commit("core.no_such_task", 1)


def test_the_source_sends_no_task_another_way():
    """No `.delay(` / `.apply_async(` / `send_task(` outside clearinghouse/core/enqueue.py."""
    offenders = []
    for package in ("clearinghouse", "federation"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "clearinghouse/core/enqueue.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in {"delay", "apply_async", "send_task"}
                ):
                    offenders.append(f"{Path(path).relative_to(ROOT)}:{node.lineno}")
    assert offenders == []
