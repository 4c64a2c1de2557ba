from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from django.db.models import QuerySet

from clearinghouse.accounts.models import User
from clearinghouse.core.errors import PermissionDenied
from clearinghouse.organisations.selectors import membership_active, user_capabilities

from .models import GENESIS_HASH, OWNER_ONLY, AuditChainHead, AuditEvent, UnknownHashVersion


def audit_event_list(*, actor: User, action: str | None = None) -> QuerySet[AuditEvent]:
    """Operators see every event; org admins see their own organisation's; nobody else any. With
    `action`, only the events of that action (the API's and the portal's filter)."""
    events = AuditEvent.objects.select_related("actor", "organisation")
    if action:
        events = events.filter(action=action)
    if actor.is_operator:
        return events.all()
    membership = membership_active(user=actor)
    if membership is None or "view_audit" not in user_capabilities(user=actor):
        raise PermissionDenied("Only organisation admins and operators can read the audit log.")
    return events.filter(organisation=membership.organisation)


def audit_event_extra(*, actor: User, event: AuditEvent) -> dict:
    """An event's details as `actor` may read them: values derived from data (under OWNER_ONLY) only
    for members of the event's own organisation. API and portal both show events through this."""
    extra = dict(event.extra or {})
    if OWNER_ONLY in extra:
        membership = membership_active(user=actor)
        if (
            membership is None
            or event.organisation_id is None
            or membership.organisation_id != event.organisation_id
        ):
            extra.pop(OWNER_ONLY)
    return extra


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    reason: str


def audit_chain_problems() -> Iterator[ChainProblem]:
    """Walks the whole chain in order and yields every broken link (the first is what matters)."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    last_seq = 0
    for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=2000):
        if event.seq != expected_seq:
            yield ChainProblem(
                expected_seq, f"event #{expected_seq} is missing (next stored is #{event.seq})"
            )
        if event.prev_hash != expected_prev:
            yield ChainProblem(event.seq, "its previous-hash does not match the event before it")
        try:
            intact = event.compute_hash() == event.hash
        except UnknownHashVersion:
            yield ChainProblem(
                event.seq, f"its hash format version {event.hash_version!r} is unknown (the row was changed)"
            )
        else:
            if not intact:
                yield ChainProblem(event.seq, "its content does not match its hash (the row was changed)")
        expected_prev = event.hash
        expected_seq = event.seq + 1
        last_seq = event.seq
    head = AuditChainHead.objects.filter(pk=1).first()
    if head is not None and (head.seq != last_seq or head.last_hash != expected_prev):
        yield ChainProblem(head.seq, f"the chain head says #{head.seq} but the newest event is #{last_seq}")
