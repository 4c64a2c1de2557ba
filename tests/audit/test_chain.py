import itertools

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from clearinghouse.audit.models import CONSORTIUM_STREAM, GENESIS_HASH, AuditEvent
from clearinghouse.audit.services import audit_record
from tests.factories import make_operator, make_user


@pytest.fixture
def events(db):
    operator = make_operator()
    for index in range(5):
        make_user(f"user{index}")
    assert AuditEvent.objects.count() == 6
    return operator


def test_intact_chain_verifies(events, capsys):
    call_command("audit_verify")
    assert "6 events verified in 1 streams" in capsys.readouterr().out


def test_each_event_links_to_the_one_before(events):
    ordered = list(AuditEvent.objects.order_by("seq"))
    assert {event.stream for event in ordered} == {CONSORTIUM_STREAM}  # no organisation: one stream
    assert [event.stream_seq for event in ordered] == [1, 2, 3, 4, 5, 6]
    assert ordered[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(ordered):
        assert after.prev_hash == before.hash
        assert after.seq > before.seq


def _third() -> AuditEvent:
    return AuditEvent.objects.get(stream=CONSORTIUM_STREAM, stream_seq=3)


def test_tampered_row_is_named(events):
    # Change one stored row behind the application's back, as someone with database access could.
    third = _third()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE audit_auditevent SET action = %s WHERE id = %s", ["user.promoted", third.pk])
    with pytest.raises(
        CommandError, match=rf"broken at event #{third.seq}: its content does not match its hash"
    ):
        call_command("audit_verify")


def test_deleted_row_is_named(events):
    third = _third()
    fourth = AuditEvent.objects.get(stream=CONSORTIUM_STREAM, stream_seq=4)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [third.pk])
    with pytest.raises(CommandError, match=rf"broken at event #{fourth.seq}: event 3 of stream 0 is missing"):
        call_command("audit_verify")


def test_deleted_newest_row_is_named_by_the_head(events):
    newest = AuditEvent.objects.get(stream=CONSORTIUM_STREAM, stream_seq=6)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [newest.pk])
    with pytest.raises(CommandError, match=r"stream 0 ends at its event 5 but its head says 6"):
        call_command("audit_verify")


def test_rehashed_row_breaks_the_next_link(events):
    # A forger who also recomputes the changed row's hash is caught by the next event's prev_hash.
    event = AuditEvent.objects.get(stream=CONSORTIUM_STREAM, stream_seq=2)
    event.extra = {"forged": True}
    forged_hash = event.compute_hash()
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE audit_auditevent SET extra = %s, hash = %s WHERE id = %s",
            ['{"forged": true}', forged_hash, event.pk],
        )
    with pytest.raises(CommandError, match=rf"broken at event #{_third().seq}: its previous-hash"):
        call_command("audit_verify")


def test_events_are_append_only_in_the_application(events):
    event = AuditEvent.objects.order_by("seq").first()
    event.action = "changed"
    with pytest.raises(RuntimeError, match="append-only"):
        event.save()
    with pytest.raises(RuntimeError, match="append-only"):
        event.delete()


def test_recording_outside_a_transaction_is_refused(transactional_db):
    with pytest.raises(RuntimeError, match="inside the transaction"):
        audit_record(actor=None, action="x")


def test_rolled_back_change_leaves_no_event_and_no_gap(events):
    with pytest.raises(ZeroDivisionError):
        with transaction.atomic():
            audit_record(actor=None, action="doomed")
            raise ZeroDivisionError
    make_user("after")
    assert not AuditEvent.objects.filter(action="doomed").exists()
    call_command("audit_verify")
