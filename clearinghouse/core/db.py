"""Transactions that survive a lost lock race.

The lock order that keeps our write paths free of deadlocks is documented in
`clearinghouse.audit.services.audit_lock`: a transaction that locks rows first takes the heads of the
audit streams it writes (one per organisation it records events for, in stream order), so the
transactions of one organisation are serialised on its head and cannot wait in a cycle. Transactions
of different organisations run side by side: rows they can both lock (a dataset's budget, its
allocations, queries) are locked in one global order (by primary key, budget before allocation). Row
locks are `FOR NO KEY UPDATE` (we never change a primary key), which does not conflict with the key
share lock PostgreSQL takes when a row is inserted that refers to the locked one.

PostgreSQL may still abort a transaction as a deadlock victim (40P01) or a serialisation failure
(40001) where another code path breaks that order; both mean "nothing was written, run it again".
`atomic_with_retry` does so a few times, and only when it owns the outermost transaction (retrying
inside an outer one would re-run half of it).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar, cast

from django.db import OperationalError, connections, models, router, transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock detected, serialization failure


def is_retryable(exc: BaseException) -> bool:
    """A database error that rolled the whole transaction back and may succeed when run again."""
    cause = exc.__cause__ or exc.__context__
    return isinstance(exc, OperationalError) and getattr(cause, "sqlstate", None) in RETRYABLE_SQLSTATES


def atomic_with_retry(fn: Callable[[], T], *, attempts: int = 5, using: str | None = None) -> T:
    """Runs `fn` in a transaction; runs it again (after a short random pause) when the database
    aborted it as a deadlock victim or serialisation failure. `fn` must have no side effects outside
    the database that a retry would repeat (enqueue tasks with `transaction.on_commit`)."""
    if transaction.get_connection(using).in_atomic_block:
        with transaction.atomic(using=using):
            return fn()
    for attempt in range(1, attempts + 1):
        try:
            with transaction.atomic(using=using):
                return fn()
        except OperationalError as exc:
            if attempt == attempts or not is_retryable(exc):
                raise
            logger.warning(
                "Transaction aborted by the database (%s); retrying (%d/%d)",
                getattr(exc.__cause__, "sqlstate", "?"),
                attempt,
                attempts,
            )
            time.sleep(random.uniform(0.01, 0.05) * attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def bulk_set(
    model: type[models.Model], rows: Sequence[models.Model], fields: Sequence[str], *, batch: int = 5000
) -> None:
    """Writes `fields` of many rows of `model` by primary key: one `UPDATE ... FROM (VALUES ...)` per
    batch on PostgreSQL (Django's `bulk_update` builds a CASE per field and row: 20x slower at a few
    thousand rows); `bulk_update` elsewhere."""
    if not rows:
        return
    connection = connections[router.db_for_write(model)]
    if connection.vendor != "postgresql":
        model._default_manager.bulk_update(rows, list(fields), batch_size=1000)
        return
    table = connection.ops.quote_name(model._meta.db_table)
    columns = [cast(models.Field, model._meta.get_field(name)) for name in fields]  # concrete fields only
    pk = model._meta.pk
    assert pk is not None and pk.column is not None
    names = [connection.ops.quote_name(str(column.column)) for column in columns]
    casts = [column.db_type(connection) for column in [pk, *columns]]
    assignments = ", ".join(f"{name} = v.c{i}" for i, name in enumerate(names, start=1))
    batch = max(1, min(batch, 60_000 // (1 + len(columns))))  # PostgreSQL binds at most 65,535 parameters
    with connection.cursor() as cursor:
        for start in range(0, len(rows), batch):
            chunk = rows[start : start + batch]
            placeholders = ", ".join(
                "(" + ", ".join(f"%s::{db_type}" for db_type in casts) + ")" for _ in chunk
            )
            parameters: list[Any] = []
            for row in chunk:
                parameters.append(row.pk)
                parameters.extend(
                    column.get_db_prep_save(getattr(row, column.attname), connection) for column in columns
                )
            value_names = ", ".join(["id", *[f"c{i}" for i in range(1, len(columns) + 1)]])
            cursor.execute(
                f"UPDATE {table} AS t SET {assignments} FROM (VALUES {placeholders}) AS v({value_names}) "
                f"WHERE t.{connection.ops.quote_name(str(pk.column))} = v.id",
                parameters,
            )
