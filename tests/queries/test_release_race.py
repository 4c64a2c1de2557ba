"""Fifty analysts' requests at once over HTTP on PostgreSQL: distinct paid queries on one dataset,
the web inserting queries and audit events while the worker locks, debits and stores. Before the
lock order (audit head first, FOR NO KEY UPDATE, no locks on joined rows) this deadlocked: 10-25% of
the requests answered 500 and paid queries stayed `running` forever."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from django.core.servers.basehttp import ThreadedWSGIServer
from django.db import connection, connections
from django.test.testcases import LiveServerThread, _StaticFilesHandler

from clearinghouse.queries.ledger import allocation_set, budget_set
from clearinghouse.queries.models import LedgerEntry, PrivacyBudget, Query, QueryStatus
from tests.factories import api_client

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks and deadlocks need PostgreSQL"),
]

THREADS = 50
EPSILON = 0.1


class _Server(ThreadedWSGIServer):
    request_queue_size = 128  # fifty connections at once (the default backlog of 10 resets some)


class _ServerThread(LiveServerThread):
    server_class = _Server


@pytest.fixture
def served(setup):
    thread = _ServerThread("127.0.0.1", _StaticFilesHandler)
    thread.daemon = True
    thread.start()
    thread.is_ready.wait()
    if thread.error:
        raise thread.error
    yield setup, f"http://127.0.0.1:{thread.port}"
    thread.terminate()


def test_fifty_concurrent_release_requests_end_with_no_5xx_none_stuck_and_exact_spending(served):
    (world, dataset), base = served
    # Room for exactly ten of the fifty (and a per-analyst cap high enough not to matter).
    budget_set(actor=world.a.steward, dataset=dataset, measure="pure", total=3.0, per_query_max=1.0)
    allocation_set(
        actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, amount=10 * EPSILON
    )
    tokens = []
    for _ in range(THREADS):  # one token per thread, as fifty analysts' clients would have
        tokens.append(api_client(world.b.analyst)._credentials["HTTP_AUTHORIZATION"])
    connections.close_all()
    barrier = threading.Barrier(THREADS)
    statuses: list[int] = []
    bodies: list[dict] = []
    lock = threading.Lock()

    def ask(index: int) -> None:
        body = {"sql": f"SELECT COUNT(*) FROM pums WHERE age >= {index}", "privacy": {"epsilon": EPSILON}}
        with httpx.Client(base_url=base, headers={"Authorization": tokens[index]}, timeout=120) as client:
            barrier.wait(timeout=60)
            response = client.post("/api/v1/datasets/org-a/pums/queries", json=body)
        with lock:
            statuses.append(response.status_code)
            bodies.append(response.json())

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)
    assert len(statuses) == THREADS
    assert not [s for s in statuses if s >= 500], [
        b for s, b in zip(statuses, bodies, strict=True) if s >= 500
    ]
    assert all("code" in b or "status" in b for b in bodies)

    deadline = time.monotonic() + 60  # any 202 must still end, on its own
    while Query.objects.filter(status__in=[QueryStatus.PENDING, QueryStatus.RUNNING]).exists():
        assert time.monotonic() < deadline, list(Query.objects.values_list("status", flat=True))
        time.sleep(0.5)
    released = Query.objects.filter(status=QueryStatus.RELEASED).count()
    refused = Query.objects.filter(status=QueryStatus.REFUSED, error_code="budget_exceeded").count()
    assert (released, refused) == (10, THREADS - 10)
    assert sorted(statuses) == sorted([200] * 10 + [409] * (THREADS - 10))
    budget = PrivacyBudget.objects.get(dataset=dataset)
    assert budget.spent == pytest.approx(10 * EPSILON) and budget.spent <= budget.total
    assert LedgerEntry.objects.filter(budget=budget).count() == released
    assert not Query.objects.filter(status=QueryStatus.FAILED).exists()
