"""The Celery application; workers start with `celery -A clearinghouse worker`.

Also here, since every process that publishes or runs tasks imports this module:
- the request id travels with each task (a message header) and is active while the task runs, so a
  worker's log lines and audit events carry the id of the request that queued the work;
- workers log through Django's LOGGING (JSON lines) instead of Celery's own format;
- a worker on a host of its own serves that host's metrics on WORKER_METRICS_PORT.
"""

import logging
import logging.config
import os

from celery import Celery
from celery.signals import before_task_publish, setup_logging, task_postrun, task_prerun, worker_ready
from django.conf import settings

from clearinghouse.core import request_context

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clearinghouse.settings.dev")

app = Celery("clearinghouse")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

REQUEST_ID_HEADER = "request_id"
_task_contexts: dict[str, object] = {}


@before_task_publish.connect
def _send_request_id(headers=None, **_):
    ctx = request_context.active()
    if ctx is not None and headers is not None:
        headers.setdefault(REQUEST_ID_HEADER, ctx.request_id)


@task_prerun.connect
def _receive_request_id(task_id=None, task=None, **_):
    request_id = task.request.get(REQUEST_ID_HEADER) or (task.request.headers or {}).get(REQUEST_ID_HEADER)
    if request_id is None and request_context.active() is not None:
        return  # run eagerly inside a request: its context already holds
    # A task queued outside any request gets its own id, so that all its lines still share one.
    _task_contexts[task_id] = request_context.activate(
        request_context.RequestContext(request_id=request_id or task_id, ip=None)
    )


@task_postrun.connect
def _forget_request_id(task_id=None, **_):
    token = _task_contexts.pop(task_id, None)
    if token is not None:
        request_context.deactivate(token)


@setup_logging.connect
def _django_logging(loglevel=None, **_):
    """Connecting this signal stops Celery from installing its own log format. The level is the
    command's --loglevel (Celery's default: WARNING), as Celery would set it."""
    logging.config.dictConfig(settings.LOGGING)
    if loglevel:
        logging.getLogger().setLevel(loglevel)


@worker_ready.connect
def _serve_metrics(**_):
    port = os.environ.get("WORKER_METRICS_PORT")
    if port:
        # Not at the top: `celery -A clearinghouse` imports this module before Django's settings, and
        # prometheus_client fixes its (multiprocess) mode from PROMETHEUS_MULTIPROC_DIR, which settings
        # may set, when it is first imported.
        from prometheus_client import start_http_server

        from clearinghouse.core.metrics import registry

        start_http_server(int(port), registry=registry())
