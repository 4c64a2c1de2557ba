"""Every Prometheus metric of the service, in one module (the names are the contract with dashboards).

Processes: gunicorn's workers and Celery's worker processes each count in their own memory, so the
service runs prometheus_client's multiprocess mode whenever PROMETHEUS_MULTIPROC_DIR is set (compose
sets it to a volume that web and workers on one host share): each process writes its values to files
there and `/metrics` (web) sums them. A worker on another host sets WORKER_METRICS_PORT as well and
serves its own host's sum (see `clearinghouse/celery.py`). Without the variable (`make run`, one
process each) each process counts in memory and `/metrics` shows the web process only.

Counts that follow a database write are taken in `transaction.on_commit` (`count_on_commit`), so a
rolled-back debit or release is never counted.
"""

from __future__ import annotations

import os

from django.db import transaction
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUEST_LATENCY = Histogram(
    "clearinghouse_http_request_duration_seconds",
    "Time to answer an HTTP request, by method, URL route pattern and status code.",
    ["method", "route", "status"],
)
QUERIES_RELEASED = Counter("clearinghouse_queries_released", "DP query results released (paid and answered).")
QUERIES_REFUSED = Counter(
    "clearinghouse_queries_refused", "DP queries refused by the budget ledger, by refusal code.", ["code"]
)
PRIVACY_LOSS_SPENT = Counter(
    "clearinghouse_privacy_loss_spent",
    "Privacy loss debited from dataset budgets: epsilon for measure=pure and approx, rho for measure=zcdp.",
    ["measure"],
)
INGESTION_BYTES = Counter(
    "clearinghouse_ingestion_bytes",
    "Bytes of uploaded files whose ingestion finished, by outcome.",
    ["outcome"],
)
# Incremented by the federation app when a round of a federated job completes.
FEDERATED_ROUNDS = Counter(
    "clearinghouse_federated_rounds", "Federated training rounds completed, by strategy.", ["strategy"]
)


def count_on_commit(counter, amount: float = 1.0) -> None:
    """Adds `amount` to `counter` (a Counter or one of its labelled children) once the current
    transaction commits; immediately outside a transaction."""
    transaction.on_commit(lambda: counter.inc(amount))


def registry() -> CollectorRegistry:
    """The sum over every process of this host in multiprocess mode; this process's own otherwise."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        collected = CollectorRegistry()
        multiprocess.MultiProcessCollector(collected)
        return collected
    return REGISTRY


def exposition() -> tuple[bytes, str]:
    return generate_latest(registry()), CONTENT_TYPE_LATEST
