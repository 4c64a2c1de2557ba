"""The queries of one request are recorded together (`_record_batch`, issue 15): one read of the live
identical queries, one INSERT of the new ones and one of their audit events, with the outcome of
recording them one after the other (`_record_one_by_one`): a query asked twice is recorded once, a
released one answers again (a replay, audited), the events in the request's order, the chain intact.
When an identical query is recorded concurrently the batch is undone and the request answered one
by one, with that query."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from clearinghouse.audit.models import AuditEvent
from clearinghouse.audit.selectors import audit_chain_problems
from clearinghouse.queries import services
from clearinghouse.queries.models import Query, QueryStatus
from tests.factories import build_world

A = {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.1}}
B = {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.2}}
C = {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.3}}


def _submit(world, items):
    return services.query_submit_many(actor=world.a.analyst, dataset=world.a.dataset, items=items)


def _events(action):
    return list(AuditEvent.objects.filter(action=action).order_by("seq").values_list("target_id", flat=True))


@pytest.fixture
def survey(world):
    dataset = world.a.dataset
    dataset.slug = "survey"
    dataset.save(update_fields=["slug"])
    return world


def test_a_request_is_recorded_in_one_insert_each_query_once(survey, django_capture_on_commit_callbacks):
    with CaptureQueriesContext(connection) as statements, django_capture_on_commit_callbacks() as enqueued:
        outcomes = _submit(survey, [A, B, A])
    inserts = [
        s["sql"] for s in statements.captured_queries if s["sql"].startswith('INSERT INTO "queries_query"')
    ]
    assert len(inserts) == 1
    (a, replayed_a), (b, _), (a_again, replayed_again) = outcomes
    assert a.pk == a_again.pk != b.pk and not replayed_a and not replayed_again
    assert Query.objects.count() == 2 and {a.task_id} == {q.task_id for q in Query.objects.all()}
    assert _events("query.submitted") == [str(a.pk), str(b.pk)]  # once each, in the request's order
    assert len(enqueued) == 1  # one task for the request

    # A replay and a new query in one request: the events in the request's order, the chain intact.
    Query.objects.filter(pk=a.pk).update(status=QueryStatus.RELEASED, result={"rows": []})
    (c, replayed_c), (a_replay, replayed) = _submit(survey, [C, A])
    assert not replayed_c and replayed and a_replay.pk == a.pk
    submitted = AuditEvent.objects.get(action="query.submitted", target_id=str(c.pk))
    replay = AuditEvent.objects.get(action="query.replayed", target_id=str(a.pk))
    assert submitted.seq < replay.seq
    assert list(audit_chain_problems()) == []

    # pending (asked by another request): answered with the same one, nothing recorded
    ((b_again, replayed_b),) = _submit(survey, [B])
    assert b_again.pk == b.pk and not replayed_b and Query.objects.count() == 3
    assert _events("query.submitted") == [str(a.pk), str(b.pk), str(c.pk)]


@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="a second connection writing meanwhile: PostgreSQL"
)
def test_a_concurrent_identical_query_is_answered_with(transactional_db, monkeypatch):
    world = build_world()
    world.a.dataset.slug = "survey"
    world.a.dataset.save(update_fields=["slug"])
    real_bulk_create = Query.objects.bulk_create
    concurrent: list[Query] = []

    def another_request_first(objs, *args, **kwargs):
        """Another request commits the same query between this one's read and its insert."""
        template = objs[0]

        def other():
            try:
                concurrent.append(
                    Query.objects.create(
                        dataset_id=template.dataset_id,
                        version_id=template.version_id,
                        organisation_id=template.organisation_id,
                        analyst_id=template.analyst_id,
                        spec=template.spec,
                        query_hash=template.query_hash,
                        cost=0.0,
                        task_id="another-request",
                    )
                )
            finally:
                connection.close()

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
        return real_bulk_create(objs, *args, **kwargs)

    monkeypatch.setattr(Query.objects, "bulk_create", another_request_first)
    (a, replayed), (b, _) = _submit(world, [A, B])
    assert a.pk == concurrent[0].pk and a.task_id == "another-request" and not replayed
    assert b.pk != a.pk and Query.objects.count() == 2
    assert _events("query.submitted") == [str(b.pk)]  # the other request audits its own
    assert list(audit_chain_problems()) == []
