"""`audit_lock` takes several stream heads in one statement, in stream order, and still makes the
head of a stream that has none; each lock holds until the transaction ends. Checked from other
connections: one that cannot take a head sees it held; one that holds a head makes `audit_lock`
wait there, having taken the lower heads and none of the higher ones."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from django.db import OperationalError, connection, connections, transaction
from django.test.utils import CaptureQueriesContext

from clearinghouse.audit.models import CONSORTIUM_STREAM, AuditChainHead
from clearinghouse.audit.services import audit_lock
from tests.factories import build_world

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="row locks on the heads: PostgreSQL (SQLite runs one writer at a time)",
)


def _other_connection():
    """A second connection to the test database (the same settings, password and options included)."""
    other = connections.create_connection("default")
    other.set_autocommit(False)
    return other


def _held_by_another(streams: list[int]) -> dict[int, bool]:
    """For each stream: is its head held by another transaction? Taking it (or, for a head made but
    not committed yet, making it) must then wait."""
    other = _other_connection()
    held = {}
    try:
        for stream in streams:
            try:
                with other.cursor() as cursor:
                    cursor.execute("SET LOCAL lock_timeout = '200ms'")
                    cursor.execute(
                        "INSERT INTO audit_auditchainhead (stream, seq, last_hash) VALUES (%s, 0, '') "
                        "ON CONFLICT (stream) DO UPDATE SET seq = audit_auditchainhead.seq",
                        [stream],
                    )
                held[stream] = False
            except OperationalError as exc:
                assert isinstance(exc.__cause__, psycopg.errors.LockNotAvailable), exc
                held[stream] = True
            finally:
                other.rollback()
    finally:
        other.close()
    return held


def _locks(statements) -> list[str]:
    return [s["sql"] for s in statements.captured_queries if "FOR UPDATE" in s["sql"]]


@pytest.mark.django_db(transaction=True)
def test_the_heads_of_several_streams_are_taken_in_one_statement_and_held():
    world = build_world()
    a, b = world.a.organisation.pk, world.b.organisation.pk
    streams = [CONSORTIUM_STREAM, a, b]
    assert _held_by_another(streams) == dict.fromkeys(streams, False)
    with transaction.atomic():
        with CaptureQueriesContext(connection) as statements:
            audit_lock(b, None, a)  # any order given
        assert len(_locks(statements)) == 1, _locks(statements)
        assert _held_by_another(streams) == dict.fromkeys(streams, True)
    assert _held_by_another(streams) == dict.fromkeys(streams, False)  # released at the commit


@pytest.mark.django_db(transaction=True)
def test_the_heads_are_taken_in_stream_order():
    # Another transaction holds the middle head: audit_lock waits there, holding the lower head and
    # not yet the higher one (taken in any other order, the higher one would be held too).
    world = build_world()
    low, middle, high = sorted([CONSORTIUM_STREAM, world.a.organisation.pk, world.b.organisation.pk])
    blocker = _other_connection()
    with blocker.cursor() as cursor:
        cursor.execute("SELECT 1 FROM audit_auditchainhead WHERE stream = %s FOR UPDATE", [middle])
    done = threading.Event()

    def lock_all():
        try:
            with transaction.atomic():
                audit_lock(high, low, middle)
                done.set()
        finally:
            connections.close_all()  # this thread's connection

    waiter = threading.Thread(target=lock_all)
    waiter.start()
    try:
        time.sleep(0.5)  # audit_lock reaches the middle head and waits for it
        assert not done.is_set()
        held = _held_by_another([low, high])
        assert held == {low: True, high: False}, held
    finally:
        blocker.rollback()
        blocker.close()
        waiter.join(timeout=10)
    assert done.is_set()


@pytest.mark.django_db(transaction=True)
def test_a_stream_without_a_head_gets_one_and_it_is_held():
    world = build_world()
    a = world.a.organisation.pk
    AuditChainHead.objects.filter(stream=a).delete()  # as if the organisation had never been written to
    with transaction.atomic():
        audit_lock(None, a)
        assert AuditChainHead.objects.filter(stream=a).exists()
        assert _held_by_another([CONSORTIUM_STREAM, a]) == {CONSORTIUM_STREAM: True, a: True}
    assert AuditChainHead.objects.get(stream=a).seq == 0
