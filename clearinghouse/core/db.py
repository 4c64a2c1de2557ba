"""Transactions that survive a lost lock race.

The lock order that keeps our write paths free of deadlocks is documented in
`clearinghouse.audit.services.audit_lock`: a transaction that locks several rows takes the audit chain
head first, so every such transaction is serialised on one lock and none can wait in a cycle; row
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
from collections.abc import Callable
from typing import TypeVar

from django.db import OperationalError, transaction

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
