"""How every task is sent: by its registered name, through `enqueue` (now) or `enqueue_on_commit`
(once the current transaction commits). Services call these instead of importing a `tasks` module:
`tasks.py` modules (thin wrappers around services) import services, never the other way round (an
import-linter contract in pyproject.toml).

The task is looked up in the Celery app's registry and sent with its own `apply_async`, as
`task.delay(...)` would: its options apply and `task_always_eager` runs it in-process (tests);
`app.send_task` would do neither.
"""

from __future__ import annotations

import threading
from typing import Any

from celery import Task
from celery.result import AsyncResult
from django.db import transaction

from clearinghouse.celery import app

# One discovery at a time: a thread that missed while another was importing the `tasks` modules
# would otherwise find a module half-imported (already in sys.modules) and its task not registered.
_discovery = threading.Lock()


def discover_tasks() -> None:
    """Imports every installed app's `tasks` module, registering its tasks (the web process calls it
    at start, so that no request pays for it)."""
    with _discovery:
        app.autodiscover_tasks(force=True)


def registered_task(task_name: str) -> Task:
    """The task registered as `task_name`. A process that only publishes (web) and has not imported
    the `tasks` modules yet imports every installed app's on its first miss (as a worker does at
    start); threads that miss together wait for that one import."""
    try:
        return app.tasks[task_name]
    except KeyError:
        pass
    with _discovery:
        if task_name not in app.tasks:
            app.autodiscover_tasks(force=True)
    return app.tasks[task_name]  # still missing: a misspelt name, raised as KeyError


def enqueue(task_name: str, *args: Any, task_id: str | None = None, **options: Any) -> AsyncResult:
    """Sends the task now and returns its result handle (for callers that wait on it, such as the
    accuracy planner); raises what the broker raises."""
    return registered_task(task_name).apply_async(args, task_id=task_id, **options)


def enqueue_on_commit(
    task_name: str, *args: Any, task_id: str | None = None, robust: bool = False, **options: Any
) -> None:
    """Sends the task once the current transaction commits (at once outside one), so a worker never
    reads rows that are not there yet. `robust`: a failure to send is logged by Django instead of
    raised into the code that committed."""
    transaction.on_commit(lambda: enqueue(task_name, *args, task_id=task_id, **options), robust=robust)
