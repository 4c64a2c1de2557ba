"""`audit_lock` takes several stream heads in one statement, in stream order, and still makes the
head of a stream that has none; each lock holds until the transaction ends (checked from a second
connection, which cannot take a held head)."""

from __future__ import annotations

import psycopg
import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from clearinghouse.audit.models import CONSORTIUM_STREAM, AuditChainHead
from clearinghouse.audit.services import audit_lock
from tests.factories import build_world


def _held_by_another(streams: list[int]) -> dict[int, bool]:
    """For each stream: is its head locked by someone else (a second connection cannot take it)?"""
    settings = connection.settings_dict
    held = {}
    with psycopg.connect(
        host=settings["HOST"], port=settings["PORT"] or 5432, user=settings["USER"], dbname=settings["NAME"]
    ) as other:
        for stream in streams:
            # Taking the head (or, for a head made but not committed yet, making it) must wait.
            try:
                with other.transaction(force_rollback=True):
                    other.execute("SET LOCAL lock_timeout = '200ms'")
                    other.execute(
                        "INSERT INTO audit_auditchainhead (stream, seq, last_hash) VALUES (%s, 0, '') "
                        "ON CONFLICT (stream) DO UPDATE SET seq = audit_auditchainhead.seq",
                        [stream],
                    )
                held[stream] = False
            except psycopg.errors.LockNotAvailable:
                held[stream] = True
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
            audit_lock(b, None, a)  # any order given: taken in stream order
        assert len(_locks(statements)) == 1, _locks(statements)
        assert "ORDER BY stream FOR UPDATE" in _locks(statements)[0]
        assert _held_by_another(streams) == dict.fromkeys(streams, True)
    assert _held_by_another(streams) == dict.fromkeys(streams, False)  # released at the commit


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
