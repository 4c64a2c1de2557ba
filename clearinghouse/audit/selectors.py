from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta

from django.db.models import QuerySet
from django.utils import timezone

from clearinghouse.accounts.models import User
from clearinghouse.core.errors import PermissionDenied, ValidationFailed
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.selectors import dataset_list
from clearinghouse.organisations.selectors import membership_active, user_capabilities
from clearinghouse.queries.models import Query
from federation.selectors import job_list

from .models import (
    CHECKPOINT_ACTION,
    CONSORTIUM_STREAM,
    GENESIS_HASH,
    OWNER_ONLY,
    AuditChainHead,
    AuditEvent,
    UnknownHashVersion,
    heads_digest,
)


def audit_event_list(
    *,
    actor: User,
    action: str | None = None,
    actor_username: str | None = None,
    organisation_slug: str | None = None,
    date_from: date | None = None,
    date_to: date | None = None,
) -> QuerySet[AuditEvent]:
    """Operators see every event; org admins see their own organisation's; nobody else any. The
    filters (the API's and the portal's, parsed by each) only narrow what the actor sees: `action`
    exact, or a prefix when it ends with "." or "*" (`dataset.`); `actor_username` and
    `organisation_slug` as the rows show them (the names at the time of the event); `date_from` and
    `date_to` whole days, both included, in the server's time zone. A range that ends before it
    starts is `invalid_date_range`."""
    events = AuditEvent.objects.select_related("actor", "organisation")
    if not actor.is_operator:
        membership = membership_active(user=actor)
        if membership is None or "view_audit" not in user_capabilities(user=actor):
            raise PermissionDenied("Only organisation admins and operators can read the audit log.")
        events = events.filter(organisation=membership.organisation)
    if date_from is not None and date_to is not None and date_from > date_to:
        raise ValidationFailed(
            "The start date is after the end date.",
            code="invalid_date_range",
            fields={"date_to": ["Must be on or after the start date."]},
        )
    if action:
        if action.endswith(("*", ".")):
            events = events.filter(action__startswith=action.rstrip("*"))
        else:
            events = events.filter(action=action)
    if actor_username:
        events = events.filter(actor_label=actor_username)
    if organisation_slug:
        events = events.filter(organisation_label=organisation_slug)
    if date_from is not None:
        events = events.filter(created_at__gte=_day_start(date_from))
    if date_to is not None and date_to < date.max:  # the last representable day bounds nothing
        events = events.filter(created_at__lt=_day_start(date_to + timedelta(days=1)))
    return events.all()


def _day_start(day: date) -> datetime:
    """Midnight at the start of `day` in the server's time zone (an index-friendly bound, unlike
    `created_at__date`)."""
    return timezone.make_aware(datetime.combine(day, time.min))


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
class AuditTarget:
    """The object an event is about, as a portal page names it: `kind` is "organisation" (with
    `organisation` the slug; `own` when it is the viewer's, whose page is "my organisation"),
    "dataset" or "query_console" (`organisation` and `dataset` slugs) or "federated_job" (`job_id`)."""

    kind: str
    organisation: str = ""
    dataset: str = ""
    job_id: int = 0
    own: bool = False


def audit_event_targets(*, actor: User, events: Iterable[AuditEvent]) -> dict[int, AuditTarget]:
    """Per event seq, the object it is about, only where the actor may see that object (the same
    selectors as its own page: `dataset_list`, `job_list`, operators for any organisation, members
    for their own); events about anything else, or about what the actor may not see, get none. Four
    queries at most for a page of events."""
    events = list(events)
    by_type: dict[str, set[int]] = {}
    for event in events:
        if event.target_id.isdigit():
            by_type.setdefault(event.target_type, set()).add(int(event.target_id))
    version_dataset = dict(
        DatasetVersion.objects.filter(pk__in=by_type.get("datasets.datasetversion", ())).values_list(
            "pk", "dataset_id"
        )
    )
    query_dataset = dict(
        Query.objects.filter(pk__in=by_type.get("queries.query", ())).values_list("pk", "dataset_id")
    )
    dataset_ids = (
        by_type.get("datasets.dataset", set()) | set(version_dataset.values()) | set(query_dataset.values())
    )
    datasets = (
        {
            dataset.pk: (dataset.organisation.slug, dataset.slug)
            for dataset in dataset_list(actor=actor).filter(pk__in=dataset_ids)
        }
        if dataset_ids
        else {}
    )
    job_ids = by_type.get("federation.federatedjob", set())
    jobs = (
        set(job_list(actor=actor).filter(pk__in=job_ids).values_list("pk", flat=True)) if job_ids else set()
    )
    membership = membership_active(user=actor)
    own_organisation_id = membership.organisation_id if membership is not None else None
    targets: dict[int, AuditTarget] = {}
    for event in events:
        if not event.target_id.isdigit():
            continue
        pk = int(event.target_id)
        target: AuditTarget | None = None
        if event.target_type == "organisations.organisation" and event.organisation_id == pk:
            assert event.organisation is not None
            own = pk == own_organisation_id
            if own or actor.is_operator:
                target = AuditTarget("organisation", organisation=event.organisation.slug, own=own)
        elif event.target_type == "federation.federatedjob" and pk in jobs:
            target = AuditTarget("federated_job", job_id=pk)
        else:
            dataset_id = {
                "datasets.dataset": pk,
                "datasets.datasetversion": version_dataset.get(pk),
                "queries.query": query_dataset.get(pk),
            }.get(event.target_type)
            if dataset_id in datasets:
                organisation, slug = datasets[dataset_id]
                kind = "query_console" if event.target_type == "queries.query" else "dataset"
                target = AuditTarget(kind, organisation=organisation, dataset=slug)
        if target is not None:
            targets[event.seq] = target
    return targets


@dataclass(frozen=True)
class ChainProblem:
    seq: int  # the global number of the event where the stream breaks (0 when there is none)
    reason: str


def _checkpointed() -> dict[int, tuple[int, str]]:
    """Per stream, the furthest position a checkpoint recorded and its hash: the stream must still
    hold that event (its chain then vouches for everything before it)."""
    furthest: dict[int, tuple[int, str]] = {}
    for extra in AuditEvent.objects.checkpoints().values_list("extra", flat=True).iterator(chunk_size=500):
        heads = extra.get("heads", {}) if isinstance(extra, dict) else {}
        for stream, (position, hash_) in heads.items():
            if int(position) > furthest.get(int(stream), (0, ""))[0]:
                furthest[int(stream)] = (int(position), hash_)
    return furthest


def _checkpoint_digest_problems(event: AuditEvent) -> Iterator[ChainProblem]:
    if event.stream == CONSORTIUM_STREAM and event.action == CHECKPOINT_ACTION:
        extra = event.extra if isinstance(event.extra, dict) else {}
        if heads_digest(extra.get("heads", {})) != extra.get("digest"):
            yield ChainProblem(event.seq, "the checkpoint's digest does not match the heads it lists")


def audit_chain_problems() -> Iterator[ChainProblem]:
    """Walks every stream in order and yields every broken link (the first is what matters): an
    event whose content does not match its hash, a missing or reordered event, a stream whose head
    row disagrees with its newest event, and a stream that no longer holds what a checkpoint
    recorded of it. Run it in one snapshot (`audit_verify` does) on a log being written to."""
    heads = {head.stream: head for head in AuditChainHead.objects.all()}
    checkpointed = _checkpointed()
    stream: int | None = None
    expected_prev, expected_position, last_seq = GENESIS_HASH, 1, 0

    def stream_end(stream: int, position: int, last_hash: str, last_seq: int) -> Iterator[ChainProblem]:
        head = heads.pop(stream, None)
        if head is None:
            yield ChainProblem(last_seq, f"stream {stream} has events but no head row")
        elif head.seq != position:
            yield ChainProblem(
                last_seq,
                f"stream {stream} ends at its event {position} but its head says {head.seq} "
                "(events were cut off)",
            )
        elif head.last_hash != last_hash:
            yield ChainProblem(last_seq, f"stream {stream}'s head does not match its newest event")
        recorded, _ = checkpointed.pop(stream, (0, ""))
        if recorded > position:
            yield ChainProblem(
                last_seq,
                f"stream {stream} ends at its event {position}, but a checkpoint recorded its event "
                f"{recorded} (events were cut off)",
            )

    for event in AuditEvent.objects.order_by("stream", "stream_seq").iterator(chunk_size=2000):
        if event.stream != stream:
            if stream is not None:
                yield from stream_end(stream, expected_position - 1, expected_prev, last_seq)
            stream, expected_prev, expected_position = event.stream, GENESIS_HASH, 1
        if event.stream_seq != expected_position:
            yield ChainProblem(
                event.seq,
                f"event {expected_position} of stream {stream} is missing (next stored is its "
                f"event {event.stream_seq})",
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
        position, recorded = checkpointed.get(event.stream, (0, ""))
        if position == event.stream_seq and recorded != event.hash:
            yield ChainProblem(event.seq, "a checkpoint recorded another event at its place")
        yield from _checkpoint_digest_problems(event)
        expected_prev, expected_position, last_seq = event.hash, event.stream_seq + 1, event.seq
    if stream is not None:
        yield from stream_end(stream, expected_position - 1, expected_prev, last_seq)
    for head in heads.values():
        if head.seq != 0:
            yield ChainProblem(0, f"stream {head.stream}'s head says #{head.seq} but it has no events")
    for lost in sorted(checkpointed):
        yield ChainProblem(0, f"stream {lost} has no events, but a checkpoint recorded some")


def audit_checkpoint_latest() -> AuditEvent | None:
    """The newest checkpoint (its digest is what an operator keeps outside the database)."""
    return AuditEvent.objects.checkpoints().first()


def audit_checkpoint_with_digest(digest: str) -> AuditEvent | None:
    """The checkpoint whose digest is `digest`, if the log still holds it."""
    return AuditEvent.objects.checkpoints().filter(extra__digest=digest).first()


def audit_stream_count() -> int:
    """How many streams hold events."""
    return AuditEvent.objects.values("stream").distinct().count()
