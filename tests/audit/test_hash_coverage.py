"""The audit hash covers every column of an event (hash format v3), and events written with the
older formulas (v1, which left out organisation_id; v2, from before streams) still verify."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from clearinghouse.audit.models import (
    HASH_VERSION,
    HASHED_COLUMNS,
    UNHASHED_COLUMNS,
    AuditChainHead,
    AuditEvent,
)
from clearinghouse.audit.services import audit_record
from tests.factories import make_operator, make_organisation, make_user


@pytest.fixture
def chain(db):
    """Events by several actors about two organisations; returns the one to tamper with (an
    organisation-scoped event with an actor, a target, an ip and extra) and what to change it to."""
    operator = make_operator()
    admin_a, admin_b = make_user("admin_a"), make_user("admin_b")
    org_a = make_organisation(operator=operator, admin=admin_a, slug="org-a")
    org_b = make_organisation(operator=operator, admin=admin_b, slug="org-b")
    with transaction.atomic():
        event = audit_record(
            actor=admin_a,
            action="organisation.updated",
            organisation=org_a,
            target=org_a,
            extra={"fields": ["name"]},
        )
    AuditEvent.objects.filter(pk=event.pk).update(ip="10.0.0.7")  # as if recorded from a request
    _rehash(AuditEvent.objects.get(pk=event.pk))
    make_user("later")  # an event after it, so a change cannot hide at the end of the chain
    call_command("audit_verify")
    return AuditEvent.objects.get(pk=event.pk), {"actor": admin_b, "organisation": org_b}


def _rehash(event: AuditEvent) -> None:
    """Stores the event's hash again and relinks the rest of its stream (test set-up only)."""
    previous = event.prev_hash
    later_events = AuditEvent.objects.filter(stream=event.stream, stream_seq__gte=event.stream_seq)
    for later in later_events.order_by("stream_seq"):
        later.prev_hash = previous
        later.hash = later.compute_hash()
        AuditEvent.objects.filter(pk=later.pk).update(prev_hash=later.prev_hash, hash=later.hash)
        previous = later.hash
    AuditChainHead.objects.filter(stream=event.stream).update(last_hash=previous)


def _columns() -> list[str]:
    return [field.attname for field in AuditEvent._meta.concrete_fields]


def test_the_current_hash_covers_every_column():
    assert HASH_VERSION == max(HASHED_COLUMNS)
    covered = set(HASHED_COLUMNS[HASH_VERSION])
    assert covered | UNHASHED_COLUMNS == set(_columns()), "a new column must join a new hash version"
    assert {
        "organisation_id",
        "actor_id",
        "target_type",
        "target_id",
        "request_id",
        "ip",
        "created_at",
        "extra",
        "hash_version",
    } <= covered


def test_new_events_use_the_current_hash_version(chain):
    event, _ = chain
    assert event.hash_version == HASH_VERSION


def _changed_value(column: str, event: AuditEvent, other: dict):
    return {
        "seq": event.seq + 1000,
        "stream": 999_999,
        "stream_seq": event.stream_seq + 1000,
        "created_at": event.created_at + timedelta(seconds=1),
        "actor_id": other["actor"].pk,
        "actor_label": "mallory",
        "organisation_id": other["organisation"].pk,
        "organisation_label": "org-b",
        "action": "organisation.viewed",
        "target_type": "accounts.user",
        "target_id": "999",
        "request_id": "f" * 32,
        "ip": "192.0.2.66",
        "extra": {"fields": ["country"]},
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
        "hash_version": 1,
    }[column]


EDITABLE = [c for c in (f.attname for f in AuditEvent._meta.concrete_fields) if c != "id"]


def test_every_column_but_the_surrogate_key_is_edited_below():
    assert set(EDITABLE) | {"id"} == set(_columns())


@pytest.mark.parametrize("column", EDITABLE)
def test_editing_any_column_is_named_by_audit_verify(chain, column):
    event, other = chain
    changed = _changed_value(column, event, other)
    AuditEvent.objects.filter(pk=event.pk).update(**{column: changed})
    named = changed if column == "seq" else event.seq  # (the row is named by the number it now has)
    with pytest.raises(CommandError, match=rf"broken at event #{named}:"):
        call_command("audit_verify")


@pytest.mark.parametrize("column", ["actor_id", "organisation_id"])
def test_clearing_a_key_is_named_too(chain, column):
    event, _ = chain
    AuditEvent.objects.filter(pk=event.pk).update(**{column: None})
    with pytest.raises(CommandError, match=rf"broken at event #{event.seq}: its content does not match"):
        call_command("audit_verify")


def test_an_unknown_hash_version_is_named(chain):
    event, _ = chain
    AuditEvent.objects.filter(pk=event.pk).update(hash_version=99)
    with pytest.raises(
        CommandError, match=rf"broken at event #{event.seq}: its hash format version 99 is unknown"
    ):
        call_command("audit_verify")


def test_events_hashed_with_v1_still_verify_and_the_chain_continues_in_v2(chain, capsys):
    """A chain written before hash_version existed: the migration gives its rows version 1 (the
    database default), whose formula is the old one."""
    AuditEvent.objects.update(hash_version=1)
    for stream in set(AuditEvent.objects.values_list("stream", flat=True)):
        _rehash(AuditEvent.objects.filter(stream=stream).order_by("stream_seq").first())
    assert set(AuditEvent.objects.values_list("hash_version", flat=True)) == {1}
    call_command("audit_verify")
    make_user("after_upgrade")
    assert AuditEvent.objects.order_by("-seq").first().hash_version == HASH_VERSION
    call_command("audit_verify")
    assert "events verified" in capsys.readouterr().out


def test_the_v1_formula_is_the_one_events_were_written_with(db):
    """The exact canonical form of a v1 event, so that a change of `chained_fields` that would break
    every stored chain fails here."""
    import hashlib
    import json
    from datetime import UTC, datetime

    event = AuditEvent(
        seq=7,
        hash_version=1,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        actor_id=3,
        actor_label="alice",
        organisation_id=9,
        organisation_label="acme",
        action="organisation.updated",
        target_type="organisations.organisation",
        target_id="9",
        request_id="r" * 32,
        ip="10.0.0.1",
        extra={"b": 1, "a": [1, 2]},
        prev_hash="0" * 64,
    )
    legacy = {
        "seq": 7,
        "created_at": "2026-01-02T03:04:05.000006+00:00",
        "actor_id": 3,
        "actor_label": "alice",
        "organisation_label": "acme",
        "action": "organisation.updated",
        "target_type": "organisations.organisation",
        "target_id": "9",
        "request_id": "r" * 32,
        "ip": "10.0.0.1",
        "extra": {"b": 1, "a": [1, 2]},
        "prev_hash": "0" * 64,
    }
    expected = hashlib.sha256(json.dumps(legacy, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert event.compute_hash() == expected


def test_the_migration_gives_existing_rows_version_1(db):
    """Rows inserted without the column (as before the migration, or by an older release) are v1."""
    operator = make_operator()
    event = AuditEvent.objects.get(target_id=str(operator.pk))
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audit_auditevent (seq, stream, stream_seq, created_at, actor_label, organisation_label, "
            "action, target_type, target_id, request_id, extra, prev_hash, hash) "
            "VALUES (%s, -1, 1, %s, '', '', 'x', '', '', '', '{}', %s, %s)",
            [event.seq + 1, event.created_at, event.hash, "c" * 64],
        )
    assert AuditEvent.objects.get(seq=event.seq + 1).hash_version == 1


def test_referenced_users_and_organisations_cannot_be_deleted(chain):
    """Their keys are hashed: deleting one (SET NULL on the events) would break the chain."""
    from django.db.models import ProtectedError

    event, other = chain
    with pytest.raises(ProtectedError):
        other["organisation"].delete()
    with pytest.raises(ProtectedError):
        event.actor.delete()


def test_the_v3_formula_covers_the_stream_and_the_place_in_it(db):
    """The exact canonical form of a v3 event (so that a change of `chained_fields` that would break
    every stored chain fails here), and that moving an event to another stream or place changes it."""
    import hashlib
    import json
    from datetime import UTC, datetime

    event = AuditEvent(
        seq=70,
        stream=9,
        stream_seq=4,
        hash_version=3,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
        actor_id=3,
        actor_label="alice",
        organisation_id=9,
        organisation_label="acme",
        action="organisation.updated",
        target_type="organisations.organisation",
        target_id="9",
        request_id="r" * 32,
        ip="10.0.0.1",
        extra={"b": 1},
        prev_hash="0" * 64,
    )
    canonical = {
        "seq": 70,
        "stream": 9,
        "stream_seq": 4,
        "hash_version": 3,
        "created_at": "2026-01-02T03:04:05.000006+00:00",
        "actor_id": 3,
        "actor_label": "alice",
        "organisation_id": 9,
        "organisation_label": "acme",
        "action": "organisation.updated",
        "target_type": "organisations.organisation",
        "target_id": "9",
        "request_id": "r" * 32,
        "ip": "10.0.0.1",
        "extra": {"b": 1},
        "prev_hash": "0" * 64,
    }
    expected = hashlib.sha256(
        json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    assert event.compute_hash() == expected
    original = event.compute_hash()
    event.stream = 10
    assert event.compute_hash() != original
    event.stream, event.stream_seq = 9, 5
    assert event.compute_hash() != original
