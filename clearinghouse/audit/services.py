from __future__ import annotations

import json
import logging
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, connections, models, transaction
from django.db.models import Max, sql
from django.utils import timezone

from clearinghouse.core import request_context

from .models import (
    CHECKPOINT_ACTION,
    CONSORTIUM_STREAM,
    OWNER_ONLY,
    AuditChainHead,
    AuditEvent,
    heads_digest,
    stream_of,
)

logger = logging.getLogger(__name__)

__all__ = ["OWNER_ONLY", "audit_checkpoint", "audit_lock", "audit_record", "audit_record_many"]

# The database sequence that numbers every event (`seq`) across streams (migration 0004).
SEQ_SEQUENCE = "audit_event_seq"


def _postgresql() -> bool:
    return transaction.get_connection().vendor == "postgresql"


def _held_streams() -> set[int]:
    """The streams whose head this transaction has locked so far. Only for the lock-order check.

    The transaction is the caller's outermost `atomic` block: kept on the connection under the
    database's transaction id and that block's savepoint (a test case wraps every test in blocks of
    its own, which are not the service's, so they are skipped)."""
    connection = transaction.get_connection()
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_xact_id()::text")
        xid = cursor.fetchone()[0]
    blocks = connection.atomic_blocks
    outermost = next((i for i, block in enumerate(blocks) if not getattr(block, "_from_testcase", False)), 0)
    key = (xid, connection.savepoint_ids[outermost - 1] if outermost > 0 else None)
    held = getattr(connection, "_audit_streams_held", None)
    if held is None or held[0] != key:
        held = (key, set())
        connection._audit_streams_held = held  # type: ignore[attr-defined]
    return held[1]


def forget_held_streams(**_: Any) -> None:
    """Starts the lock-order check afresh (at each request: see AuditConfig.ready)."""
    for connection in connections.all(initialized_only=True):
        connection.__dict__.pop("_audit_streams_held", None)


def _check_order(streams: list[int]) -> None:
    """With AUDIT_STRICT_LOCK_ORDER (the tests), refuses to lock a stream's head after the head of a
    later stream: two transactions that did so in opposite orders could deadlock."""
    if not getattr(settings, "AUDIT_STRICT_LOCK_ORDER", False) or not _postgresql():
        return  # (SQLite, for development, runs one writer at a time anyway)
    held = _held_streams()
    late = [stream for stream in streams if stream not in held and held and stream < max(held)]
    if late:
        raise RuntimeError(
            f"audit stream heads locked out of order: {late} after {sorted(held)}; "
            "name every organisation this transaction records events for in its first audit_lock()"
        )
    held.update(streams)


def _locked_head(stream: int, *, next_seq: bool = False) -> AuditChainHead:
    """The stream's head, locked until the caller's transaction ends (with `next_seq`, it also carries
    the next event number as `next_seq`, in the same round trip). A stream's first writer creates its
    head, tolerating a concurrent creator."""
    head = _lock_and_number(stream) if next_seq else _lock(stream)
    if head is None:
        try:
            with transaction.atomic():
                AuditChainHead.objects.create(stream=stream)
        except IntegrityError:
            pass
        head = _lock_and_number(stream) if next_seq else _lock(stream)
        assert head is not None  # created, by us or by a concurrent first writer
    return head


def _lock(stream: int) -> AuditChainHead | None:
    return AuditChainHead.objects.select_for_update().filter(stream=stream).first()


def _lock_and_number(stream: int) -> AuditChainHead | None:
    """The locked head with the next event number as `next_seq`, drawn only once the lock is held
    (so that a stream's numbers rise with its chain), in one round trip."""
    if not _postgresql():  # SQLite (development): no sequences, and one writer at a time
        head = _lock(stream)
        if head is not None:
            head.next_seq = (AuditEvent.objects.aggregate(top=Max("seq"))["top"] or 0) + 1  # type: ignore[attr-defined]
        return head
    with transaction.get_connection().cursor() as cursor:
        # MATERIALIZED: the lock is taken in the CTE, before the outer SELECT draws the number.
        cursor.execute(
            "WITH head AS MATERIALIZED (SELECT id, seq, last_hash FROM audit_auditchainhead "
            "WHERE stream = %s FOR UPDATE) SELECT id, seq, last_hash, nextval(%s) FROM head",
            [stream, SEQ_SEQUENCE],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    head = AuditChainHead(id=row[0], stream=stream, seq=row[1], last_hash=row[2])
    head.next_seq = row[3]  # type: ignore[attr-defined]
    return head


def audit_lock(*organisations: Any) -> None:
    """Takes the heads of the streams of `organisations` (instances, ids, or None for the consortium's
    stream) for the rest of the caller's transaction, in stream order (ascending ids).

    Every audited write holds its stream's head until it commits, so it is where concurrent writers
    of one organisation meet (writers of different organisations do not). A transaction that locks
    (or inserts under a unique key) anything else calls this *first*, naming every organisation it
    will record events for: then it waits for the heads before it holds anything another writer could
    want, and heads are always taken in the same order. The order is: the heads (by stream), then the
    rows of the resource (e.g. queries by id, then the budget, then the allocation). Transactions of
    different organisations hold different heads and run side by side, so rows both may lock are
    locked in one global order too (see clearinghouse.core.db)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_lock must be called inside a transaction")
    if not organisations:
        raise TypeError("audit_lock needs the organisations (None: the consortium) it records events for")
    streams = sorted({stream_of(organisation) for organisation in organisations})
    _check_order(streams)
    _lock_heads(streams)


def _lock_heads(streams: list[int]) -> None:
    """Locks the heads of `streams` (ascending). On PostgreSQL in one statement when every one of
    them has a head (made with its organisation's first event): the rows are locked in the order the
    sort returns them (the lock is taken above the sort), so always in stream order. Otherwise that
    statement locks nothing, and the heads are taken one at a time, in order, each made if missing:
    a head is then never made while a later stream's head is held."""
    if _postgresql():
        with transaction.get_connection().cursor() as cursor:
            cursor.execute(
                "SELECT stream FROM audit_auditchainhead WHERE stream = ANY(%s) "
                "AND (SELECT count(*) FROM audit_auditchainhead WHERE stream = ANY(%s)) = %s "
                "ORDER BY stream FOR UPDATE",
                [streams, streams, len(streams)],
            )
            locked = len(cursor.fetchall())
        if locked == len(streams):
            return
        if locked:  # a head deleted while being locked (heads are never deleted): out of order from here
            raise RuntimeError("an audit stream head disappeared while it was being locked")
    for stream in streams:
        _locked_head(stream)


def _event(
    *,
    actor: Any | None,
    action: str,
    organisation: Any | None = None,
    target: models.Model | None = None,
    extra: dict[str, Any] | None = None,
) -> AuditEvent:
    """An event of `organisation`'s stream, not yet placed in its chain (no numbers, no hashes)."""
    ctx = request_context.current()
    actor_obj = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    # Normalise extra through JSON now so the hashed form equals what the database gives back.
    extra_clean = json.loads(json.dumps(extra or {}, cls=DjangoJSONEncoder))
    return AuditEvent(
        stream=stream_of(organisation),
        actor=actor_obj,
        actor_label=actor_obj.get_username() if actor_obj else "",
        organisation=organisation,
        organisation_label=getattr(organisation, "slug", "") or "",
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        request_id=ctx.request_id,
        ip=ctx.ip,
        extra=extra_clean,
    )


def audit_record(
    *,
    actor: Any | None,
    action: str,
    organisation: Any | None = None,
    target: models.Model | None = None,
    extra: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to its organisation's stream. Must run inside the transaction of the change
    it records, so that the change and its record commit or roll back together."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record must be called inside the transaction of the change it records")
    event = _event(actor=actor, action=action, organisation=organisation, target=target, extra=extra)
    _check_order([event.stream])
    head = _locked_head(event.stream, next_seq=True)
    event.created_at = timezone.now()  # once the head is held: a stream's times rise with its chain
    event.seq = head.next_seq  # type: ignore[attr-defined]  # annotated by _locked_head
    event.stream_seq = head.seq + 1
    event.prev_hash = head.last_hash
    event.hash = event.compute_hash()
    _insert_and_move_head([event], head_pk=head.pk, seq=event.stream_seq, last_hash=event.hash)
    return event


def _insert_and_move_head(events: list[AuditEvent], *, head_pk: int, seq: int, last_hash: str) -> None:
    """Inserts `events` (numbered and hashed, under their head's lock) and moves the head to the last
    of them: on PostgreSQL in one statement (the head's UPDATE as a data-modifying CTE of the INSERT),
    a round trip fewer on every audited change."""
    if not _postgresql():
        AuditEvent.objects.bulk_create(events)
        AuditChainHead.objects.filter(pk=head_pk).update(seq=seq, last_hash=last_hash)
        return
    connection = transaction.get_connection()
    meta = AuditEvent._meta
    insert = sql.InsertQuery(AuditEvent)
    # The columns `bulk_create` writes: every concrete one but the generated primary key.
    rows: list[models.Model] = list(events)
    insert.insert_values([field for field in meta.concrete_fields if field is not meta.pk], rows)
    compiler = insert.get_compiler(connection=connection)
    compiler.returning_fields = [meta.pk]
    ((insert_sql, params),) = compiler.as_sql()
    head = connection.ops.quote_name(AuditChainHead._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(
            f"WITH moved AS (UPDATE {head} SET seq = %s, last_hash = %s WHERE id = %s) {insert_sql}",
            [seq, last_hash, head_pk, *params],
        )
        ids = [row[0] for row in cursor.fetchall()]
    if len(ids) != len(events):  # pragma: no cover - PostgreSQL returns one id per row inserted
        raise RuntimeError("audit events were not all inserted")
    for event, pk in zip(events, ids, strict=True):
        event.pk = pk
        event._state.adding = False
        event._state.db = connection.alias


def _lock_and_number_many(stream: int, count: int) -> tuple[AuditChainHead, list[int]] | None:
    """As `_lock_and_number`, with `count` event numbers (ascending) drawn under the lock."""
    if not _postgresql():
        head = _lock(stream)
        if head is None:
            return None
        top = AuditEvent.objects.aggregate(top=Max("seq"))["top"] or 0
        return head, list(range(top + 1, top + 1 + count))
    with transaction.get_connection().cursor() as cursor:
        cursor.execute(
            "WITH head AS MATERIALIZED (SELECT id, seq, last_hash FROM audit_auditchainhead "
            "WHERE stream = %s FOR UPDATE) SELECT id, seq, last_hash, nextval(%s) "
            "FROM head, generate_series(1, %s)",
            [stream, SEQ_SEQUENCE, count],
        )
        rows = cursor.fetchall()
    if not rows:
        return None
    head = AuditChainHead(id=rows[0][0], stream=stream, seq=rows[0][1], last_hash=rows[0][2])
    return head, sorted(row[3] for row in rows)


def _append_run(events: list[AuditEvent]) -> None:
    """Places `events` (one stream's, in order) at the end of their chain: one statement locks the
    head and draws their numbers, one inserts them and moves the head."""
    stream = events[0].stream
    _check_order([stream])
    numbered = _lock_and_number_many(stream, len(events))
    if numbered is None:
        _locked_head(stream)  # the stream's first writer creates its head
        numbered = _lock_and_number_many(stream, len(events))
        assert numbered is not None
    head, numbers = numbered
    stream_seq, last_hash = head.seq, head.last_hash
    for event, seq in zip(events, numbers, strict=True):
        event.created_at = timezone.now()  # once the head is held, as `audit_record` does
        stream_seq += 1
        event.seq, event.stream_seq, event.prev_hash = seq, stream_seq, last_hash
        event.hash = last_hash = event.compute_hash()
    _insert_and_move_head(events, head_pk=head.pk, seq=stream_seq, last_hash=last_hash)


def audit_record_many(records: list[dict[str, Any]]) -> list[AuditEvent]:
    """Appends several events, each given as `audit_record`'s keyword arguments, with exactly the
    chains (links, `stream_seq`, and `seq` in this order) that calling `audit_record` for each in turn
    would give; consecutive events of one stream are written in one INSERT. Same rule: inside the
    transaction of the change they record."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_record_many must be called inside the transaction of the change it records")
    events = [_event(**record) for record in records]
    start = 0
    for end in range(1, len(events) + 1):
        if end == len(events) or events[end].stream != events[start].stream:
            _append_run(events[start:end])
            start = end
    return events


def audit_checkpoint() -> AuditEvent | None:
    """Records every other stream's head as it is committed now, with their digest, as an event of
    the consortium's stream (beat runs it every AUDIT_CHECKPOINT_SECONDS); nothing when no head moved
    since the last checkpoint. Takes no other stream's lock: a committed head names committed events."""
    with transaction.atomic():
        audit_lock(None)
        heads = {
            str(stream): [seq, last_hash]
            for stream, seq, last_hash in AuditChainHead.objects.exclude(stream=CONSORTIUM_STREAM)
            .filter(seq__gt=0)
            .order_by("stream")
            .values_list("stream", "seq", "last_hash")
        }
        last = AuditEvent.objects.checkpoints().values_list("extra", flat=True).first()
        if last is not None and last.get("heads") == heads:
            return None
        event = audit_record(
            actor=None, action=CHECKPOINT_ACTION, extra={"heads": heads, "digest": heads_digest(heads)}
        )
    # Outside the database too (the logs are kept elsewhere): what the checkpoints themselves are
    # checked against if someone with write access to the database cut them off.
    logger.info(
        "audit checkpoint: event #%s, stream 0 event %s, %s streams, digest %s",
        event.seq,
        event.stream_seq,
        len(heads),
        event.extra["digest"],
    )
    return event
