from __future__ import annotations

import json
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError, models, transaction
from django.utils import timezone

from clearinghouse.core import request_context

from .models import OWNER_ONLY, AuditChainHead, AuditEvent

__all__ = ["OWNER_ONLY", "audit_lock", "audit_record"]


def _locked_head() -> AuditChainHead:
    """The chain head, locked until the caller's transaction ends. A migration creates it; if the
    table was emptied since (a flushed database), it is recreated, tolerating a concurrent creator."""
    head = AuditChainHead.objects.select_for_update().filter(pk=1).first()
    if head is None:
        try:
            with transaction.atomic():
                AuditChainHead.objects.create(pk=1)
        except IntegrityError:
            pass
        head = AuditChainHead.objects.select_for_update().get(pk=1)
    return head


def audit_lock() -> None:
    """Takes the audit chain head's lock for the rest of the caller's transaction.

    Every audited write ends up holding this one lock until it commits, so it is where concurrent
    writers meet. A transaction that locks (or inserts under a unique key) more than one thing calls
    this *first*: then it waits for the head before it holds anything another writer could want, and
    no two transactions can wait on each other in a cycle. The order is: audit head, then the rows of
    the resource (e.g. queries by id, then the budget, then the allocation)."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("audit_lock must be called inside a transaction")
    _locked_head()


def audit_record(
    *,
    actor: Any | None,
    action: str,
    organisation: Any | None = None,
    target: models.Model | None = None,
    extra: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain. Must run inside the transaction of the change it records, so
    that the change and its record commit or roll back together."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record must be called inside the transaction of the change it records")
    ctx = request_context.current()
    head = _locked_head()
    actor_obj = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    # Normalise extra through JSON now so the hashed form equals what the database gives back.
    extra_clean = json.loads(json.dumps(extra or {}, cls=DjangoJSONEncoder))
    event = AuditEvent(
        seq=head.seq + 1,
        created_at=timezone.now(),
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
        prev_hash=head.last_hash,
    )
    event.hash = event.compute_hash()
    event.save()
    head.seq = event.seq
    head.last_hash = event.hash
    head.save(update_fields=["seq", "last_hash"])
    return event
