"""`audit_record_many` writes several events with the chains that calling `audit_record` for each in
turn gives: in every stream, consecutive numbers and hash links; `seq` rising in the order given;
the heads moved to the last event; the verifier finds nothing wrong, and still finds an edit."""

from __future__ import annotations

import itertools

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from clearinghouse.audit.models import AuditChainHead, AuditEvent
from clearinghouse.audit.selectors import audit_chain_problems
from clearinghouse.audit.services import audit_lock, audit_record, audit_record_many


def _shape(events):
    """Per event: its stream, action, its number in its stream relative to the first, extra."""
    first = {}
    out = []
    for event in events:
        first.setdefault(event.stream, event.stream_seq)
        out.append((event.stream, event.action, event.stream_seq - first[event.stream], event.extra))
    return out


def test_a_batch_chains_as_the_same_events_one_by_one(world):
    a, b = world.a.organisation, world.b.organisation
    records = [
        {"actor": world.a.admin, "action": "test.one", "organisation": a, "extra": {"n": 1}},
        {"actor": world.a.admin, "action": "test.two", "organisation": a, "target": a, "extra": {"n": 2}},
        {"actor": None, "action": "test.three", "organisation": b, "extra": {"n": 3}},
        {"actor": world.a.admin, "action": "test.four", "organisation": a, "extra": {"n": 4}},
        {"actor": None, "action": "test.five", "organisation": None, "extra": {"n": 5}},
    ]
    with transaction.atomic():
        audit_lock(None, a, b)
        batch = audit_record_many(records)
    with transaction.atomic():
        audit_lock(None, a, b)
        single = [audit_record(**record) for record in records]
    assert _shape(batch) == _shape(single)
    stored = list(AuditEvent.objects.filter(pk__in=[e.pk for e in batch]).order_by("seq"))
    assert [e.pk for e in stored] == [e.pk for e in batch]  # seq rises in the order given
    for stream in {e.stream for e in batch}:
        chain = [e for e in stored if e.stream == stream]
        assert [e.stream_seq for e in chain] == list(
            range(chain[0].stream_seq, chain[0].stream_seq + len(chain))
        )
        assert all(later.prev_hash == earlier.hash for earlier, later in itertools.pairwise(chain))
        assert all(e.hash == e.compute_hash() for e in chain)
    # Each stream's last batch event is followed by the first of the one-by-one calls.
    for stream in {e.stream for e in batch}:
        last = [e for e in batch if e.stream == stream][-1]
        after = next(e for e in single if e.stream == stream)
        assert after.prev_hash == last.hash and after.stream_seq == last.stream_seq + 1
        newest = [e for e in single if e.stream == stream][-1]
        head = AuditChainHead.objects.get(stream=stream)
        assert (head.seq, head.last_hash) == (newest.stream_seq, newest.hash)
    assert list(audit_chain_problems()) == []
    # The verifier still finds an edited batch event.
    AuditEvent.objects.filter(pk=batch[1].pk).update(extra={"n": 20})
    assert list(audit_chain_problems())


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the statements of PostgreSQL's path")
def test_one_stream_takes_two_statements_whatever_the_number(world):
    a = world.a.organisation
    records = [{"actor": None, "action": f"test.{i}", "organisation": a} for i in range(5)]
    with transaction.atomic():
        audit_lock(a)
        with CaptureQueriesContext(connection) as captured:
            audit_record_many(records)
    statements = [q["sql"] for q in captured.captured_queries if "pg_current_xact_id" not in q["sql"]]
    assert len(statements) == 2, statements  # lock and number; INSERT with the head's UPDATE
