"""The append-only, hash-chained audit log.

The log is a set of chains, one per *stream*: an organisation's events (its id) form one stream, the
consortium's events (no organisation) stream 0, and the events written before streams existed stream
-1 (`LEGACY_STREAM`). Each event stores the hash of the one before it in its stream and its number in
it (`stream_seq`), so changing, removing or reordering any stored event breaks its stream at that
point, and `manage.py audit_verify` names the first broken link. Each stream has a head row that its
writers lock: writers of different organisations never wait for each other. `seq` numbers all events
in the order they were written (from a database sequence: it may skip numbers, never repeats).

A periodic checkpoint (`audit.checkpoint`, in stream 0) records every stream's head (number and hash)
and a digest over them: a whole stream deleted, or its newest events cut off with its head row
rewound, no longer contains what an earlier checkpoint says it did, and audit_verify names it.

The hash covers every column of the event but its surrogate `id` and the hash itself. Its formula is
versioned (`hash_version`): an event keeps the formula it was written with, so events written before a
column joined the hash still verify. v1 left out `organisation_id` (which decides who sees the event);
v2 covers every column. A new column must join a new version here (tests/audit check that the current
version covers them all).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import models

GENESIS_HASH = "0" * 64

# The columns each hash format covers, in the form `chained_fields` gives them. Never change a listed
# version (stored events were hashed with it): add a new one and make it HASH_VERSION.
_V2 = (
    "seq",
    "hash_version",
    "created_at",
    "actor_id",
    "actor_label",
    "organisation_id",
    "organisation_label",
    "action",
    "target_type",
    "target_id",
    "request_id",
    "ip",
    "extra",
    "prev_hash",
)
HASHED_COLUMNS: dict[int, tuple[str, ...]] = {
    1: (
        "seq",
        "created_at",
        "actor_id",
        "actor_label",
        "organisation_label",
        "action",
        "target_type",
        "target_id",
        "request_id",
        "ip",
        "extra",
        "prev_hash",
    ),
    2: _V2,
    3: (*_V2, "stream", "stream_seq"),  # v2 and the event's place: its stream, its number in it
}
HASH_VERSION = 3
# Columns outside every hash: the surrogate key (nothing refers to an event by it; `seq` orders the
# chain) and the hash itself (checked against the recomputed one).
UNHASHED_COLUMNS = frozenset({"id", "hash"})


# Key of `extra` for values derived from an organisation's data (row counts, violation counts, upload
# sizes): recorded and hashed like the rest, shown only to the event's own organisation — never to
# operators or other members (see audit.selectors.audit_event_extra and docs/data-exposure.md).
OWNER_ONLY = "owner_only"


class UnknownHashVersion(ValueError):
    pass


# The stream of the events with no organisation (operators' and the consortium's own), and of the
# events written before the log had streams (one chain, numbered by `seq`).
CONSORTIUM_STREAM = 0
LEGACY_STREAM = -1


CHECKPOINT_ACTION = "audit.checkpoint"


def heads_digest(heads: dict[str, list]) -> str:
    """The digest a checkpoint records over the heads it lists ({stream: [number, hash]})."""
    canonical = json.dumps(heads, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def stream_of(organisation: Any) -> int:
    """The stream of an event about `organisation` (a model instance, its id, or None)."""
    if organisation is None:
        return CONSORTIUM_STREAM
    return int(getattr(organisation, "pk", organisation))


class AuditChainHead(models.Model):
    """One row per stream: the number and hash of its newest event. Locked by the stream's writers."""

    stream = models.BigIntegerField(unique=True)
    seq = models.BigIntegerField(default=0)
    last_hash = models.CharField(max_length=64, default=GENESIS_HASH)

    def __str__(self) -> str:
        return f"audit stream {self.stream} head #{self.seq} {self.last_hash[:12]}"


class AuditEventQuerySet(models.QuerySet["AuditEvent"]):
    def checkpoints(self) -> AuditEventQuerySet:
        """The checkpoints (events of the consortium's stream), newest first."""
        return self.filter(stream=CONSORTIUM_STREAM, action=CHECKPOINT_ACTION).order_by("-stream_seq")


class AuditEvent(models.Model):
    seq = models.BigIntegerField(unique=True, editable=False)
    stream = models.BigIntegerField(editable=False)
    stream_seq = models.BigIntegerField(editable=False)
    created_at = models.DateTimeField(editable=False)
    # Both keys are hashed, so the rows they name cannot be deleted (PROTECT): deactivate a user instead.
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # The name at the time of the event, shown in the log whatever becomes of the account.
    actor_label = models.CharField(max_length=150, blank=True)
    organisation = models.ForeignKey(
        "organisations.Organisation", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    organisation_label = models.CharField(max_length=64, blank=True)
    action = models.CharField(max_length=64)
    target_type = models.CharField(max_length=64, blank=True)
    target_id = models.CharField(max_length=64, blank=True)
    request_id = models.CharField(max_length=64, blank=True)
    ip = models.GenericIPAddressField(null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True, encoder=DjangoJSONEncoder)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    # The formula of `hash` (HASHED_COLUMNS). Rows from before the column existed, and rows written by a
    # release from before it, get 1 from the database: that is the formula they were hashed with.
    hash_version = models.PositiveSmallIntegerField(default=HASH_VERSION, db_default=1, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [models.Index(fields=["organisation", "-seq"]), models.Index(fields=["action"])]
        constraints = [
            models.UniqueConstraint(fields=["stream", "stream_seq"], name="audit_event_stream_position")
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor_label or 'system'}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise RuntimeError("Audit events are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Audit events are append-only.")

    def chained_fields(self) -> dict[str, Any]:
        """The fields the hash covers (per the event's `hash_version`), in a form that survives a
        database round trip."""
        columns = HASHED_COLUMNS.get(self.hash_version)
        if columns is None:
            raise UnknownHashVersion(f"unknown hash format version {self.hash_version!r}")
        values = {column: getattr(self, column) for column in columns}
        values["created_at"] = self.created_at.isoformat(timespec="microseconds")
        return values

    def compute_hash(self) -> str:
        canonical = json.dumps(
            self.chained_fields(), sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder
        )
        return hashlib.sha256(canonical.encode()).hexdigest()
