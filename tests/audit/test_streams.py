"""The audit log is one chain per stream (an organisation's, the consortium's): writers of different
organisations do not wait for each other, and periodic checkpoints of every stream's head make a
stream deleted whole, or cut short, visible to audit_verify."""

from __future__ import annotations

import threading

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import OperationalError, connection, connections, transaction

from clearinghouse.audit.models import CHECKPOINT_ACTION, CONSORTIUM_STREAM, AuditChainHead, AuditEvent
from clearinghouse.audit.services import audit_checkpoint, audit_lock, audit_record
from tests.factories import make_operator, make_organisation, make_user

_POSTGRESQL = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the lock order and row locks are checked on PostgreSQL only"
)


@pytest.fixture
def two_orgs(db):
    operator = make_operator()
    org_a = make_organisation(operator=operator, admin=make_user("admin_a"), slug="org-a")
    org_b = make_organisation(operator=operator, admin=make_user("admin_b"), slug="org-b")
    return org_a, org_b


def test_events_go_to_their_organisations_stream(two_orgs):
    org_a, org_b = two_orgs
    with transaction.atomic():
        audit_lock(org_a, org_b)
        first = audit_record(actor=None, action="x.a", organisation=org_a)
        second = audit_record(actor=None, action="x.b", organisation=org_b)
    assert (first.stream, second.stream) == (org_a.pk, org_b.pk)
    a_events = list(AuditEvent.objects.filter(stream=org_a.pk).order_by("stream_seq"))
    assert [e.stream_seq for e in a_events] == list(range(1, len(a_events) + 1))
    assert a_events[-1] == first and first.prev_hash == a_events[-2].hash
    assert AuditChainHead.objects.get(stream=org_a.pk).last_hash == first.hash
    call_command("audit_verify")


@_POSTGRESQL
def test_heads_locked_out_of_order_are_refused_in_tests(two_orgs):
    org_a, org_b = sorted(two_orgs, key=lambda org: org.pk)
    with pytest.raises(RuntimeError, match="out of order"):
        with transaction.atomic():
            audit_lock(org_b)
            audit_record(actor=None, action="x", organisation=org_a)
    with transaction.atomic():  # named first, in any order: fine
        audit_lock(org_b, org_a)
        audit_record(actor=None, action="x", organisation=org_b)
        audit_record(actor=None, action="x", organisation=org_a)


def test_audit_lock_needs_its_organisations(db):
    with pytest.raises(TypeError), transaction.atomic():
        audit_lock()


@_POSTGRESQL
def test_writers_of_different_organisations_do_not_wait_for_each_other(transactional_db):
    operator = make_operator()
    org_a = make_organisation(operator=operator, admin=make_user("admin_a"), slug="org-a")
    org_b = make_organisation(operator=operator, admin=make_user("admin_b"), slug="org-b")
    holding, release = threading.Event(), threading.Event()

    def hold_org_a() -> None:
        try:
            with transaction.atomic():
                audit_record(actor=None, action="slow.change", organisation=org_a)
                holding.set()
                release.wait(30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_org_a)
    holder.start()
    try:
        assert holding.wait(30)
        with transaction.atomic():  # another organisation: goes through at once
            connection.cursor().execute("SET LOCAL lock_timeout = '2s'")
            audit_record(actor=None, action="quick.change", organisation=org_b)
        with pytest.raises(OperationalError), transaction.atomic():  # the same one: waits for the holder
            connection.cursor().execute("SET LOCAL lock_timeout = '300ms'")
            audit_record(actor=None, action="blocked.change", organisation=org_a)
    finally:
        release.set()
        holder.join(30)
    assert not AuditEvent.objects.filter(action="blocked.change").exists()
    call_command("audit_verify")


def test_checkpoint_records_every_other_streams_head_once(two_orgs):
    org_a, org_b = two_orgs
    checkpoint = audit_checkpoint()
    assert checkpoint is not None and checkpoint.stream == CONSORTIUM_STREAM
    heads = checkpoint.extra["heads"]
    for org in (org_a, org_b):
        head = AuditChainHead.objects.get(stream=org.pk)
        assert heads[str(org.pk)] == [head.seq, head.last_hash]
    assert str(CONSORTIUM_STREAM) not in heads
    assert audit_checkpoint() is None  # nothing moved since
    with transaction.atomic():
        audit_record(actor=None, action="x", organisation=org_a)
    assert audit_checkpoint() is not None
    call_command("audit_verify")


def _delete_stream(stream: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE stream = %s", [stream])
        cursor.execute("DELETE FROM audit_auditchainhead WHERE stream = %s", [stream])


def test_a_stream_deleted_whole_after_a_checkpoint_is_named(two_orgs):
    org_a, _ = two_orgs
    audit_checkpoint()
    _delete_stream(org_a.pk)
    with pytest.raises(CommandError, match=rf"stream {org_a.pk} has no events, but a checkpoint recorded"):
        call_command("audit_verify")


def test_a_stream_cut_short_with_its_head_rewound_is_named(two_orgs):
    org_a, _ = two_orgs
    audit_checkpoint()
    newest = AuditEvent.objects.filter(stream=org_a.pk).order_by("-stream_seq").first()
    before = AuditEvent.objects.get(stream=org_a.pk, stream_seq=newest.stream_seq - 1)
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [newest.pk])
    AuditChainHead.objects.filter(stream=org_a.pk).update(seq=before.stream_seq, last_hash=before.hash)
    with pytest.raises(CommandError, match=r"but a checkpoint recorded its event"):
        call_command("audit_verify")


def test_a_checkpoint_whose_heads_were_edited_is_named(two_orgs):
    checkpoint = audit_checkpoint()
    forged = {**checkpoint.extra, "heads": {}}
    AuditEvent.objects.filter(pk=checkpoint.pk).update(extra=forged)
    with pytest.raises(CommandError, match=rf"broken at event #{checkpoint.seq}:"):
        call_command("audit_verify")


def test_without_a_checkpoint_a_deleted_stream_goes_unseen_which_is_why_beat_runs_it(two_orgs):
    org_a, _ = two_orgs
    _delete_stream(org_a.pk)
    call_command("audit_verify")  # the limit the checkpoints close
    assert not AuditEvent.objects.filter(action=CHECKPOINT_ACTION).exists()


def test_beat_runs_the_checkpoint():
    from django.conf import settings

    assert settings.CELERY_BEAT_SCHEDULE["audit-checkpoint"]["task"] == "audit.checkpoint"


def _cut_tail_of_consortium_stream(keep: int) -> None:
    """Deletes stream 0's events after its event `keep` and rewinds its head, as a database writer
    could (the checkpoints there go too)."""
    kept = AuditEvent.objects.get(stream=CONSORTIUM_STREAM, stream_seq=keep)
    with connection.cursor() as cursor:
        cursor.execute(
            "DELETE FROM audit_auditevent WHERE stream = %s AND stream_seq > %s", [CONSORTIUM_STREAM, keep]
        )
    AuditChainHead.objects.filter(stream=CONSORTIUM_STREAM).update(seq=keep, last_hash=kept.hash)


def test_a_digest_kept_outside_catches_checkpoints_cut_off(two_orgs, capsys):
    org_a, _ = two_orgs
    before = AuditChainHead.objects.get(stream=CONSORTIUM_STREAM).seq
    checkpoint = audit_checkpoint()
    digest = checkpoint.extra["digest"]
    call_command("audit_verify", expect_digest=[digest])
    assert digest in capsys.readouterr().out  # printed, for the operator to keep
    # Someone cuts the checkpoint off and then org A's newest event, rewinding both heads.
    _cut_tail_of_consortium_stream(before)
    newest = AuditEvent.objects.filter(stream=org_a.pk).order_by("-stream_seq").first()
    previous = AuditEvent.objects.get(stream=org_a.pk, stream_seq=newest.stream_seq - 1)
    AuditEvent.objects.filter(pk=newest.pk)._raw_delete(AuditEvent.objects.db)
    AuditChainHead.objects.filter(stream=org_a.pk).update(seq=previous.stream_seq, last_hash=previous.hash)
    call_command("audit_verify")  # the log alone cannot tell
    with pytest.raises(CommandError, match=rf"no longer holds the checkpoint with digest {digest}"):
        call_command("audit_verify", expect_digest=[digest])
