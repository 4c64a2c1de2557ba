"""Differentially private queries: submit (web), execute (dp worker), replay.

The web process validates the query and records it; a worker on the `dp` queue builds the OpenDP
measurement, reads its exact cost from the privacy map, debits the ledger, decrypts the data in
memory and runs the measurement. The web process never loads the keyring and never runs OpenDP.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, cast

from celery.exceptions import TimeoutError as CeleryTimeout
from celery.result import AsyncResult
from django.db import IntegrityError, transaction
from django.db.models import Case, F, Field, QuerySet, Value, When
from django.utils import timezone

from clearinghouse.audit.services import OWNER_ONLY, audit_lock, audit_record, audit_record_many
from clearinghouse.core.db import atomic_with_retry, is_retryable
from clearinghouse.core.enqueue import enqueue
from clearinghouse.core.errors import ApplicationError, Conflict, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.core.metrics import QUERIES_REFUSED, QUERIES_RELEASED, count_on_commit
from clearinghouse.datasets.models import Dataset, DatasetVersion
from clearinghouse.datasets.selectors import (
    agreement_accepted,
    dataset_grant_active,
    dataset_owned_by,
    dataset_version_latest_ready,
)
from clearinghouse.datasets.services import dataset_version_mark_corrupt
from clearinghouse.dp import QueryError, QuerySpec, TableSchema, parse_spec, preview, sql_to_spec
from clearinghouse.dp.planner import check_levels, check_target, preview_with_warnings
from clearinghouse.organisations.models import Membership
from clearinghouse.organisations.roles import ROLE_CAPABILITIES, RUN_QUERIES
from clearinghouse.organisations.selectors import UNREAD, MembershipArg, membership_given

from .ledger import BudgetExceeded, budget_debit, budget_debit_many
from .models import (
    QUERY_FINISHED,
    QUERY_LIVE,
    QUERY_UNFINISHED,
    PrivacyBudget,
    PrivacyMeasure,
    Query,
    QueryStatus,
)
from .selectors import budget_of

logger = logging.getLogger(__name__)


def query_schema(*, version: DatasetVersion, budget: PrivacyBudget) -> TableSchema:
    """The DP engine's view of a version: its declared schema plus the dataset's policy."""
    policy = {
        "measure": budget.measure,
        "max_delta": budget.delta_total if budget.measure != PrivacyMeasure.PURE else 0.0,
        "max_rows": budget.max_rows,
    }
    return TableSchema.from_dict(version.schema, policy=policy, name=version.dataset.slug)


def query_access(*, actor: Any, dataset: Dataset, membership: MembershipArg = UNREAD) -> Membership:
    """Who may query: members (with the query capability) of the owner organisation, or of an
    organisation with an active query grant who accepted the current data-use agreement. Returns
    the actor's membership (`membership` when the caller read it: `membership_given`)."""
    membership = membership_given(user=actor, membership=membership)
    owner = dataset_owned_by(membership=membership, dataset=dataset)
    if membership is None or not (
        owner
        or dataset_grant_active(dataset=dataset, organisation_id=membership.organisation_id, purpose="query")
    ):
        raise NotFound("Dataset not found.")
    if RUN_QUERIES not in ROLE_CAPABILITIES[membership.role]:
        raise PermissionDenied("Your role does not allow queries.", code="role_forbidden")
    if not owner and not agreement_accepted(user=actor, dataset=dataset):
        raise PermissionDenied(
            "Accept the dataset's current data-use agreement before querying.", code="agreement_required"
        )
    return membership


def query_parse(
    *, schema: TableSchema, spec: Any = None, sql: str | None = None, privacy: dict | None = None
) -> QuerySpec:
    try:
        if sql is not None:
            if spec is not None:
                raise QueryError("invalid_query", "Give either `sql` or `spec`, not both.")
            if not isinstance(privacy, dict):
                raise QueryError(
                    "invalid_privacy_loss",
                    'With `sql`, give the privacy loss as `privacy`, e.g. {"epsilon": 1.0}.',
                )
            return sql_to_spec(sql, schema, privacy)
        if spec is None:
            raise QueryError("invalid_query", "Give a query as `spec` (JSON) or `sql`.")
        return parse_spec(spec, schema)
    except QueryError as exc:
        raise ValidationFailed(exc.message, code=exc.code) from None


def _context(
    *, actor: Any, dataset: Dataset, membership: MembershipArg = UNREAD
) -> tuple[DatasetVersion, PrivacyBudget, Membership]:
    membership = query_access(actor=actor, dataset=dataset, membership=membership)
    version = dataset_version_latest_ready(dataset=dataset)
    if version is None:
        raise Conflict("The dataset has no ready version yet.", code="no_ready_version")
    budget = budget_of(dataset=dataset)
    if budget is None:
        raise Conflict("The dataset's owner has not set a privacy budget yet.", code="no_budget")
    return version, budget, membership


def query_prepare(
    *,
    actor: Any,
    dataset: Dataset,
    spec: Any = None,
    sql: str | None = None,
    privacy: dict | None = None,
    membership: MembershipArg = UNREAD,
) -> tuple[DatasetVersion, PrivacyBudget, QuerySpec]:
    """Checks access and parses the query; what preview and submit share."""
    version, budget, _ = _context(actor=actor, dataset=dataset, membership=membership)
    return (
        version,
        budget,
        query_parse(schema=query_schema(version=version, budget=budget), spec=spec, sql=sql, privacy=privacy),
    )


def query_submit(
    *,
    actor: Any,
    dataset: Dataset,
    spec: Any = None,
    sql: str | None = None,
    privacy: dict | None = None,
    membership: MembershipArg = UNREAD,
) -> tuple[Query, bool]:
    """One query: see `query_submit_many`."""
    return query_submit_many(
        actor=actor,
        dataset=dataset,
        items=[{"spec": spec, "sql": sql, "privacy": privacy}],
        membership=membership,
    )[0]


MAX_QUERIES_PER_REQUEST = 20


def query_submit_many(
    *, actor: Any, dataset: Dataset, items: list[dict], membership: MembershipArg = UNREAD
) -> list[tuple[Query, bool]]:
    """Records release requests and queues them together (one worker task); returns (query,
    replayed) per item. All are validated before any is recorded. Each query is priced, debited and
    released on its own; an identical earlier query of the same organisation on the same version
    answers again without new spending, so that asking repeatedly can never average the noise away.
    `membership`: the actor's, when the caller read it (`membership_given`)."""
    if not items or len(items) > MAX_QUERIES_PER_REQUEST:
        raise ValidationFailed(f"Send 1 to {MAX_QUERIES_PER_REQUEST} queries at once.", code="invalid_query")
    # Access, version and budget once per request: every query of it is asked by the same analyst.
    version, budget, membership = _context(actor=actor, dataset=dataset, membership=membership)
    schema = query_schema(version=version, budget=budget)
    parsed: list[QuerySpec] = []
    for index, item in enumerate(items):
        try:
            parsed.append(
                query_parse(
                    schema=schema, spec=item.get("spec"), sql=item.get("sql"), privacy=item.get("privacy")
                )
            )
        except ValidationFailed as exc:
            if len(items) > 1:
                exc.message = f"queries[{index}]: {exc.message}"
            raise

    def record(*, one_by_one: bool = False) -> list[tuple[Query, bool]]:
        audit_lock(membership.organisation_id)  # first: see audit_lock for the deadlock-free lock order
        task_id = uuid.uuid4().hex
        submission = _Submission(actor, dataset, version, membership, items, parsed, task_id)
        outcomes, created = (_record_one_by_one if one_by_one else _record_batch)(submission)
        if created:
            transaction.on_commit(lambda: _enqueue(created, task_id))
        return outcomes

    try:
        return atomic_with_retry(record)
    except IntegrityError:
        # An identical query was recorded concurrently: the transaction was rolled back whole (the
        # batch has no savepoint of its own: two round trips fewer on every request) and is run
        # again one query at a time, answering with that one.
        return atomic_with_retry(partial(record, one_by_one=True))


@dataclass(frozen=True)
class _Submission:
    """One request's queries, checked and parsed (`query_submit_many`), to record."""

    actor: Any
    dataset: Dataset
    version: DatasetVersion
    membership: Membership
    items: list[dict]
    parsed: list[QuerySpec]
    task_id: str

    def new_query(self, item: dict, spec: QuerySpec) -> Query:
        return Query(
            dataset=self.dataset,
            version=self.version,
            organisation=self.membership.organisation,
            analyst=self.actor,
            spec=spec.to_dict(),
            sql=item.get("sql") or "",
            query_hash=spec.hash,
            cost=0.0,
            privacy=item.get("privacy") or {},
            task_id=self.task_id,
        )

    def live(self, hashes: set[str]) -> QuerySet[Query]:
        """The organisation's live queries on this version with these hashes (replayed or waited for)."""
        return Query.objects.filter(
            organisation=self.membership.organisation,
            version=self.version,
            query_hash__in=hashes,
            status__in=QUERY_LIVE,
        )

    def submitted_event(self, query: Query) -> dict:
        return {
            "actor": self.actor,
            "action": "query.submitted",
            "organisation": self.membership.organisation,
            "target": query,
            "extra": {
                "dataset": self.dataset.pk,
                "version": self.version.number,
                "query_hash": query.query_hash,
            },
        }

    def replayed_event(self, query: Query) -> dict:
        return {
            "actor": self.actor,
            "action": "query.replayed",
            "organisation": self.membership.organisation,
            "target": query,
            "extra": {"query_hash": query.query_hash},
        }


def _record_batch(submission: _Submission) -> tuple[list[tuple[Query, bool]], list[int]]:
    """The queries of one request recorded together: one read of the organisation's live identical
    queries, one INSERT of the new ones, one of their audit events (in the request's order, as
    `_record_one_by_one` writes them). A query asked twice in the request is recorded once. Raises
    IntegrityError when an identical query was recorded concurrently (the caller then runs its
    transaction again with `_record_one_by_one`)."""
    live = {query.query_hash: query for query in submission.live({spec.hash for spec in submission.parsed})}
    new: list[Query] = []
    for item, spec in zip(submission.items, submission.parsed, strict=True):
        if spec.hash not in live:
            live[spec.hash] = submission.new_query(item, spec)
            new.append(live[spec.hash])
    Query.objects.bulk_create(new)
    unannounced = {query.pk for query in new}  # a new query asked twice is announced once
    outcomes: list[tuple[Query, bool]] = []
    events: list[dict] = []
    for spec in submission.parsed:
        query = live[spec.hash]
        if query.pk in unannounced:
            unannounced.remove(query.pk)
            events.append(submission.submitted_event(query))
            outcomes.append((query, False))
        elif query.status == QueryStatus.RELEASED:
            events.append(submission.replayed_event(query))
            outcomes.append((query, True))
        else:  # still on its way (another request of the organisation asked it): wait for the same one
            outcomes.append((query, False))
    audit_record_many(events)
    return outcomes, [query.pk for query in new]


def _record_one_by_one(submission: _Submission) -> tuple[list[tuple[Query, bool]], list[int]]:
    """`_record_batch`'s fallback, with the same outcome: each query looked up and recorded alone, a
    concurrent identical one (its insert refused) answered with."""
    outcomes: list[tuple[Query, bool]] = []
    created: list[int] = []
    for item, spec in zip(submission.items, submission.parsed, strict=True):
        existing = submission.live({spec.hash}).first()
        if existing is None:
            query = submission.new_query(item, spec)
            try:
                with transaction.atomic():
                    query.save(force_insert=True)
            except IntegrityError:  # the same query arrived concurrently: answer with that one
                existing = submission.live({spec.hash}).get()
            else:
                audit_record(**submission.submitted_event(query))
                outcomes.append((query, False))
                created.append(query.pk)
                continue
        if existing.status == QueryStatus.RELEASED:
            audit_record(**submission.replayed_event(existing))
            outcomes.append((existing, True))
        else:  # still on its way (another request of the organisation asked it): wait for the same one
            outcomes.append((existing, False))
    return outcomes, created


def _enqueue(query_ids: list[int], task_id: str) -> None:
    """Hands the queries to a dp worker (after the commit that recorded them). When the broker cannot
    take the task, the queries stay pending and the sweeper hands them over later: the request that
    recorded them has still succeeded."""
    try:
        enqueue("queries.execute", query_ids, task_id=task_id)
    except Exception as exc:  # noqa: BLE001 - recovered by query_recover_stuck
        logger.error(
            "Could not enqueue queries %s (%s); the sweeper will retry", query_ids, exc.__class__.__name__
        )


UNPRICEABLE_MESSAGE = (
    "This query cannot be priced with the privacy loss asked for; choose other privacy parameters."
)


def pricing_refusal(exc: Exception, *, what: str) -> tuple[str, str]:
    """(code, message) for a query the DP engine could not price or plan: the engine's own
    `QueryError`, else (an OpenDP failure, e.g. δ too small to release any key) `invalid_privacy_loss`:
    the client's to change, never a 500. The one place this is decided: the preview (web), the release
    (dp worker) and the accuracy planner (dp worker) all ask it. Logged by class only: an engine's
    message could quote a value."""
    if isinstance(exc, QueryError):
        return exc.code, exc.message
    logger.error("%s could not be priced: %s", what, exc.__class__.__name__)
    return "invalid_privacy_loss", UNPRICEABLE_MESSAGE


@dataclass
class _Priced:
    query: Query
    seen: str = ""  # the query's status when it was read (before any change of ours)
    measure: str = ""  # the budget's measure the cost is in (a change before the debit refuses it)
    schema: TableSchema | None = None
    spec: QuerySpec | None = None
    amount: float = 0.0
    delta: float = 0.0
    refusal: tuple[str, str] | None = None  # (code, message): refused before any spending
    data: Any = None  # the staged table
    failure: tuple[str, str] | None = None  # (code, message): the service could not answer
    failure_reason: str = ""  # what went wrong, for the audit log (the owner's and operators')


def _price(query: Query, budgets: dict[int, PrivacyBudget] | None = None) -> _Priced:
    """The exact cost of a query from OpenDP's privacy map, or why it cannot be priced. Runs outside
    any transaction: calibration can take a while, and no lock is held meanwhile. `budgets`: the
    budgets read so far for the queries of the same task, by dataset (read once each)."""
    item = _Priced(query, seen=query.status)
    try:
        budget = budgets.get(query.dataset_id) if budgets is not None else None
        if budget is None:
            budget = budget_of(dataset=query.dataset)
            if budget is None:
                raise PrivacyBudget.DoesNotExist
            if budgets is not None:
                budgets[query.dataset_id] = budget
        item.measure = budget.measure
        item.schema = query_schema(version=query.version, budget=budget)
        item.spec = parse_spec(query.spec, item.schema)
        if query.status == QueryStatus.RUNNING:  # paid already (a recovery): only the release is left
            item.amount, item.delta = query.cost, query.cost_delta
            return item
        cost = preview(item.schema, item.spec).cost
        spent = cost.rho if budget.measure == PrivacyMeasure.ZCDP else cost.epsilon
        assert spent is not None  # a cost is given in its policy's measure
        item.amount = float(spent)
        item.delta = float(cost.delta or 0.0)
    except PrivacyBudget.DoesNotExist:
        item.refusal = ("no_budget", "The dataset's owner has not set a privacy budget.")
    except Exception as exc:  # noqa: BLE001 - one query that cannot be priced never holds up the others
        item.refusal = pricing_refusal(exc, what=f"Query {query.pk}")
    return item


def _set_state(
    query: Query,
    *,
    status: str,
    expect: tuple[str, ...],
    result: dict | None = None,
    code: str = "",
    message: str = "",
    **fields: Any,
) -> bool:
    """Compare-and-set: moves the query to `status` only if it is still in one of `expect` (a second
    worker on the same query — a redelivered task, a recovery — then changes nothing)."""
    now = timezone.now()
    values: dict[str, Any] = {"status": status, "updated_at": now, **fields}
    if status in QUERY_FINISHED:
        values.update(result=result, error_code=code, error_message=message, finished_at=now)
    changed = Query.objects.filter(pk=query.pk, status__in=expect).update(**values)
    if changed:
        for name, value in values.items():
            setattr(query, name, value)
    return bool(changed)


def query_execute_many(*, query_ids: list[int], data_loader) -> list[Query]:
    """Worker side: the queries of one request, each priced, debited and released on its own.
    `data_loader(version, schema)` returns the decrypted, staged table (the worker caches it).

    (0) outside any transaction, price each query — one that cannot be priced is refused and holds
    up nothing else; then, one table (version and policy) at a time: (1) load its data, so that a
    dataset that cannot be read fails its queries before anything is spent; (2) one transaction
    debits each query that fits (refusing those that do not) and marks it running; (3) run the paid
    ones, outside any transaction (the spend is committed before noise is drawn); (4) one transaction
    stores the releases. (A batch that fails rolls its transaction back, which runs again one query
    at a time.) A table is used while it is loaded (the worker's cache may evict it after). Queries
    found `running` (paid by a worker that died) are released without a new debit. A query that fails
    after its debit keeps the spend (the conservative choice: noise may have been drawn)."""
    queries = list(
        Query.objects.select_related("version__dataset", "dataset__organisation", "analyst", "organisation")
        .filter(pk__in=query_ids, status__in=QUERY_UNFINISHED)
        .order_by("pk")
    )
    groups: dict[tuple[int, str], list[_Priced]] = {}
    budgets: dict[int, PrivacyBudget] = {}  # one read per dataset (the debit reads it again, locked)
    for item in (_price(query, budgets) for query in queries):
        key = (item.query.version_id, item.schema.fingerprint if item.schema is not None else "")
        groups.setdefault(key, []).append(item)
    for items in groups.values():
        for item in items:
            _load(item, data_loader)
        paid = _debit(items)
        released = _release_all(paid)
        _store(released)
        for item in items:
            item.data = None  # the cache may close it later; nothing here uses it again
    # The queries this task finished are as it wrote them (each write updates its object); only the
    # others (finished before it started, or by another worker meanwhile) are read again.
    by_id = {query.pk: query for query in queries if query.status in QUERY_FINISHED}
    others = [query_id for query_id in query_ids if query_id not in by_id]
    if others:
        by_id.update((query.pk, query) for query in Query.objects.filter(pk__in=others))
    return [by_id[query_id] for query_id in query_ids if query_id in by_id]


_INTEGRITY_MESSAGE = "The stored data failed its integrity check."
_UNAVAILABLE_MESSAGE = "The dataset cannot be queried at the moment; its owner can see why in the audit log."
_RELEASE_FAILED_MESSAGE = "The release failed."


def _load(item: _Priced, data_loader) -> _Priced:
    """Decrypts and stages the query's data (from the worker's cache when it can). A failure is
    recorded on the item: a pending query then fails without spending, a paid one keeps its spend."""
    if item.refusal is not None:
        return item
    try:
        item.data = data_loader(item.query.version, item.schema)
    except (
        QueryError
    ) as exc:  # e.g. more rows than the stated max_rows: the owner's to fix; not said to others
        logger.error(
            "Query %s: the dataset cannot be queried (the reason is in its owner's audit log)", item.query.pk
        )
        item.failure, item.failure_reason = ("dataset_unavailable", _UNAVAILABLE_MESSAGE), exc.code
    except Exception as exc:  # noqa: BLE001 - a tampered file, a store that is down: fail this query, not the worker
        integrity = exc.__class__.__name__ in {"IntegrityError", "FormatError"}
        logger.error("Query %s: loading the dataset failed: %s", item.query.pk, exc.__class__.__name__)
        item.failure = (
            ("integrity_error", _INTEGRITY_MESSAGE)
            if integrity
            else ("release_failed", _RELEASE_FAILED_MESSAGE)
        )
        item.failure_reason = item.failure[0]
    return item


def _audit_streams(items: list[_Priced]) -> set[int]:
    """The organisations a transaction over these queries records events for: the analysts' (their
    queries' events) and the datasets' owners (why a query failed, a version found corrupt)."""
    return {item.query.organisation_id for item in items} | {
        item.query.dataset.organisation_id for item in items
    }


class _BatchFailed(Exception):
    """The database refused a batch (or, storing, some of its queries had changed meanwhile): the
    transaction is rolled back whole and run again with each query on its own (`_debit`, `_store`).
    A batch runs without a savepoint of its own: two round trips fewer on every request."""


# What the state changes of the worker's transactions write on a query (and on its object).
_STATE_FIELDS = (
    "status",
    "updated_at",
    "result",
    "error_code",
    "error_message",
    "finished_at",
    "cost",
    "cost_delta",
)


def _state_restorer(queries: list[Query]) -> Callable[[], None]:
    """A function that puts the objects of `queries` back as they are now: each attempt of a
    transaction that changes them starts with it, so that what an attempt rolled back (the batch, or
    one the database aborted as a deadlock victim) left on them never outlives it."""
    states = [(query, {name: getattr(query, name) for name in _STATE_FIELDS}) for query in queries]

    def restore() -> None:
        for query, state in states:
            for name, value in state.items():
                setattr(query, name, value)

    return restore


def _debit(items: list[_Priced]) -> list[_Priced]:
    """(2) of `query_execute_many`: one transaction debits the queries of one table together; if the
    batch fails, the transaction is run again debiting each query alone (then an error fails that
    query only). Returns the paid ones."""
    restore = _state_restorer([item.query for item in items])
    try:
        return atomic_with_retry(partial(_debit_all, items, restore=restore))
    except _BatchFailed as exc:
        logger.error(
            "A batch of queries could not be debited (%s); one by one", exc.__cause__.__class__.__name__
        )
        return atomic_with_retry(partial(_debit_all, items, restore=restore, one_by_one=True))


def _debit_all(
    priced: list[_Priced], *, restore: Callable[[], None] | None = None, one_by_one: bool = False
) -> list[_Priced]:
    if restore is not None:
        restore()
    # First the audit heads, then the queries (by id), then budget and allocation inside the debit.
    audit_lock(*_audit_streams(priced))
    locked = {
        query.pk: query
        for query in Query.objects.select_for_update(no_key=True)
        .filter(pk__in=[item.query.pk for item in priced], status__in=QUERY_UNFINISHED)
        .only("id", "status")
        .order_by("pk")
    }
    paid: list[_Priced] = []
    # The pending queries of this table met so far, in order: debited together (`_debit_pending`)
    # before anything else writes an audit event (a failure), so the events keep the queries' order.
    pending: list[_Priced] = []
    for item in priced:
        query = item.query
        current = locked.get(query.pk)
        if current is None:
            continue  # finished meanwhile (another worker): never pay or answer twice
        if current.status == QueryStatus.RUNNING:
            if item.seen == QueryStatus.RUNNING:
                paid.append(item)  # paid by a worker that died: release it now
            continue  # paid just now by another worker, which releases it
        if item.failure is not None and item.refusal is None:
            paid += _debit_pending(pending, one_by_one=one_by_one)
            pending = []
            _fail(query, item, expect=QueryStatus.PENDING, spent=False)
            continue
        pending.append(item)
    paid += _debit_pending(pending, one_by_one=one_by_one)
    ids = {item.query.pk for item in paid}
    return [item for item in priced if item.query.pk in ids]


def _debit_pending(items: list[_Priced], *, one_by_one: bool = False) -> list[_Priced]:
    """Debits `items` (pending, locked, of one dataset) as if one after the other (`budget_debit_many`:
    one lock and one write of the budget and allocation), refuses those that cannot be priced or do
    not fit, and records it all in as few statements as it can: one UPDATE per new state, one INSERT
    of the audit events in the queries' order. Returns the paid ones. If the batch fails, raises
    `_BatchFailed` (the transaction is lost: `_debit` runs it again `one_by_one`)."""
    if not items:
        return []
    if one_by_one:
        return _debit_one_by_one(items)
    debits = {}
    to_debit = [item for item in items if item.refusal is None]
    if to_debit:
        try:
            outcomes = budget_debit_many(
                dataset_id=to_debit[0].query.dataset_id,
                queries=[(item.query, item.amount, item.delta, item.measure) for item in to_debit],
                heads_held=True,  # `_debit_all` took them first
            )
        except Exception as exc:
            if is_retryable(exc):
                raise  # the whole transaction was lost: atomic_with_retry runs it again
            raise _BatchFailed from exc
        debits = {item.query.pk: outcome for item, outcome in zip(to_debit, outcomes, strict=True)}
    events: list[dict[str, Any]] = []
    refused: list[tuple[_Priced, str, str]] = []
    paid: list[_Priced] = []
    for item in items:
        outcome = debits.get(item.query.pk)
        if outcome is not None and outcome.refusal is None:
            assert outcome.audit is not None
            events.append(outcome.audit)
            paid.append(item)
            continue
        code, message = (
            item.refusal if item.refusal is not None else (outcome.refusal.code, outcome.refusal.message)  # type: ignore[union-attr]
        )
        refused.append((item, code, message))
        events.append(_refused_event(item.query, code))
    _set_states(
        [item.query for item, _, _ in refused],
        status=QueryStatus.REFUSED,
        expect=QueryStatus.PENDING,
        error_code=[code for _, code, _ in refused],
        error_message=[message for _, _, message in refused],
    )
    _set_states(
        [item.query for item in paid],
        status=QueryStatus.RUNNING,
        expect=QueryStatus.PENDING,
        cost=[item.amount for item in paid],
        cost_delta=[item.delta for item in paid],
    )
    audit_record_many(events)
    for _, code, _ in refused:
        count_on_commit(QUERIES_REFUSED.labels(code=code))
    return paid


def _debit_one_by_one(items: list[_Priced]) -> list[_Priced]:
    """The fallback of `_debit_pending`: each query debited alone (the same rule, `budget_debit`), in a
    savepoint of its own, so that an error of the database fails that query only."""
    paid = []
    for item in items:
        query = item.query
        if item.refusal is not None:
            _refuse(query, *item.refusal)
            continue
        try:
            with transaction.atomic():  # a savepoint: a refusal or an error undoes this query's debit only
                budget_debit(query=query, amount=item.amount, delta=item.delta, measure=item.measure)
        except ApplicationError as exc:
            _refuse(query, exc.code, exc.message)
            continue
        except Exception as exc:
            if is_retryable(exc):
                raise
            logger.error("Query %s could not be debited: %s", query.pk, exc.__class__.__name__)
            _refuse(query, "debit_failed", "The ledger could not record this query; nothing was spent.")
            continue
        _set_state(
            query,
            status=QueryStatus.RUNNING,
            expect=(QueryStatus.PENDING,),
            cost=item.amount,
            cost_delta=item.delta,
        )
        paid.append(item)
    return paid


def _set_states(
    queries: list[Query], *, status: str, expect: str, locked: bool = True, **per_query: list[Any]
) -> int:
    """`_set_state` for several queries in one UPDATE, whatever their number: moves those still in
    `expect` to `status` and returns how many it moved (the objects are updated as if all were).
    `locked`: the caller holds them locked, so each is still in `expect`. `per_query`: a field's
    value for each query, in order."""
    if not queries:
        return 0
    now = timezone.now()
    values: dict[str, Any] = {"status": status, "updated_at": now}
    if status in QUERY_FINISHED:
        values.update(result=None, error_code="", error_message="", finished_at=now)
    sql_values = dict(values)
    for name, column in per_query.items():
        field = cast(Field, Query._meta.get_field(name))  # concrete columns only
        if len(set(map(repr, column))) == 1:
            sql_values[name] = column[0]
        else:
            sql_values[name] = Case(
                *(
                    When(pk=query.pk, then=Value(value, output_field=field))
                    for query, value in zip(queries, column, strict=True)
                ),
                output_field=field,
            )
    changed = Query.objects.filter(pk__in=[query.pk for query in queries], status=expect).update(**sql_values)
    if locked and changed != len(queries):  # pragma: no cover - the caller holds them locked
        raise RuntimeError("queries changed under their lock")
    for index, query in enumerate(queries):
        for name, value in values.items():
            setattr(query, name, value)
        for name, column in per_query.items():
            setattr(query, name, column[index])
    return changed


def _refused_event(query: Query, code: str) -> dict[str, Any]:
    return {
        "actor": query.analyst,
        "action": "query.refused",
        "organisation": query.organisation,
        "target": query,
        "extra": {"code": code},
    }


def _fail(query: Query, item: _Priced, *, expect: str, spent: bool) -> None:
    code, message = item.failure or ("release_failed", _RELEASE_FAILED_MESSAGE)
    message += " The spend stands." if spent else " Nothing was spent."
    if _set_state(query, status=QueryStatus.FAILED, expect=(expect,), code=code, message=message):
        audit_record(
            actor=query.analyst,
            action="query.failed",
            organisation=query.organisation,
            target=query,
            extra={"code": code, "paid": spent},
        )
        if item.failure_reason and item.failure_reason != code:  # why, for the dataset's owner alone
            audit_record(
                actor=None,
                action="dataset_version.query_failed",
                organisation=query.dataset.organisation,
                target=query.version,
                extra={"query": query.pk, OWNER_ONLY: {"reason": item.failure_reason}},
            )
        if code == "integrity_error":
            dataset_version_mark_corrupt(version=query.version)


def _refuse(query: Query, code: str, message: str) -> None:
    if _set_state(
        query, status=QueryStatus.REFUSED, expect=(QueryStatus.PENDING,), code=code, message=message
    ):
        audit_record(**_refused_event(query, code))
        count_on_commit(QUERIES_REFUSED.labels(code=code))


def _store(released: list[tuple[_Priced, dict | tuple[str, str]]]) -> None:
    """(4) of `query_execute_many`: one transaction stores the answers together (`_store_all`); if the
    batch fails, or some of its queries were stored by another worker meanwhile, the transaction is
    run again storing each answer alone (compare-and-set each; an answer the database refuses then
    fails that query only)."""
    restore = _state_restorer([item.query for item, _ in released])
    try:
        atomic_with_retry(partial(_store_all, released, restore=restore))
    except _BatchFailed as exc:
        if not isinstance(exc.__cause__, _Changed):
            logger.error(
                "The answers could not be stored together (%s); one by one", exc.__cause__.__class__.__name__
            )
        atomic_with_retry(partial(_store_all, released, restore=restore, one_by_one=True))


def _store_all(
    released: list[tuple[_Priced, dict | tuple[str, str]]],
    *,
    restore: Callable[[], None] | None = None,
    one_by_one: bool = False,
) -> None:
    """Stores the answers (one UPDATE, one INSERT of their audit events; each alone if `one_by_one`)
    and fails the queries whose release failed. Raises `_BatchFailed` if a batch cannot be stored."""
    if not released:
        return  # nothing was paid
    if restore is not None:
        restore()
    audit_lock(*_audit_streams([item for item, _ in released]))
    answers: list[tuple[_Priced, dict]] = []  # the answers met since the last failure, in order
    for item, outcome in released:
        if isinstance(outcome, dict):
            answers.append((item, outcome))
            continue
        _store_batch(answers, one_by_one=one_by_one)  # first: the audit events keep the queries' order
        answers = []
        item.failure = outcome
        _fail(item.query, item, expect=QueryStatus.RUNNING, spent=True)
    _store_batch(answers, one_by_one=one_by_one)


def _store_batch(answers: list[tuple[_Priced, dict]], *, one_by_one: bool) -> None:
    if not answers:
        return
    if one_by_one:
        _store_one_by_one(answers)
        return
    try:
        _store_answers(answers)
    except Exception as exc:
        if is_retryable(exc):
            raise
        raise _BatchFailed from exc


class _Changed(Exception):
    """Some of a batch's queries were no longer running (another worker stored them): the batch is
    undone, and each answer stored alone (compare-and-set each)."""


def _store_answers(answers: list[tuple[_Priced, dict]]) -> None:
    queries = [item.query for item, _ in answers]
    stored = _set_states(
        queries,
        status=QueryStatus.RELEASED,
        expect=QueryStatus.RUNNING,
        result=[outcome for _, outcome in answers],
        locked=False,
    )
    if stored != len(queries):
        raise _Changed
    audit_record_many([_released_event(query) for query in queries])
    for _ in queries:
        count_on_commit(QUERIES_RELEASED)


def _store_one_by_one(answers: list[tuple[_Priced, dict]]) -> None:
    for item, outcome in answers:
        query = item.query
        try:
            with transaction.atomic():  # a savepoint: one answer the database refuses fails alone
                stored = _set_state(
                    query, status=QueryStatus.RELEASED, expect=(QueryStatus.RUNNING,), result=outcome
                )
        except Exception as exc:
            if is_retryable(exc):
                raise
            logger.error("Query %s: its answer could not be stored: %s", query.pk, exc.__class__.__name__)
            item.failure_reason = exc.__class__.__name__
            item.failure = ("release_failed", _RELEASE_FAILED_MESSAGE)
            _fail(query, item, expect=QueryStatus.RUNNING, spent=True)
            continue
        if stored:
            audit_record(**_released_event(query))
            count_on_commit(QUERIES_RELEASED)


def _released_event(query: Query) -> dict[str, Any]:
    return {
        "actor": query.analyst,
        "action": "query.released",
        "organisation": query.organisation,
        "target": query,
        "extra": {"query_hash": query.query_hash, "cost": query.cost, "delta": query.cost_delta},
    }


# While a long batch is being released, its queries are marked alive this often, so that the sweeper
# (QUERY_STUCK_SECONDS) does not take them for the work of a lost worker.
_HEARTBEAT_SECONDS = 30.0


def _release_all(paid: list[_Priced]) -> list[tuple[_Priced, dict | tuple[str, str]]]:
    released = []
    beat = time.monotonic()
    for item in paid:
        released.append((item, item.failure or _release(item)))
        if time.monotonic() - beat > _HEARTBEAT_SECONDS:
            Query.objects.filter(pk__in=[i.query.pk for i in paid], status=QueryStatus.RUNNING).update(
                updated_at=timezone.now()
            )
            beat = time.monotonic()
    return released


def _release(item: _Priced) -> dict | tuple[str, str]:
    """Runs one paid query: the body to store, or (code, message) of its failure (the spend stays)."""
    # Looked up at each call, on purpose: tests/queries/test_liveness.py kills the "worker" here by
    # standing in for clearinghouse.dp.release.
    from clearinghouse.dp import release

    try:
        assert item.schema is not None and item.spec is not None  # `_price` set both before the debit
        result = release(item.schema, item.spec, item.data)
    except Exception as exc:  # noqa: BLE001 - the spend stays: the conservative choice (noise may have been drawn)
        logger.error("Query %s failed after its debit: %s", item.query.pk, exc.__class__.__name__)
        item.failure_reason = exc.code if isinstance(exc, QueryError) else exc.__class__.__name__
        return ("release_failed", _RELEASE_FAILED_MESSAGE)
    body = result.to_dict()
    body["timings_ms"] = result.timings_ms
    return body


def query_recover_stuck(*, idle_seconds: float, max_attempts: int) -> dict[str, int]:
    """The sweeper (Celery beat): a query left pending or running for `idle_seconds` by a worker that
    died or a task that was lost is handed to a worker again; after `max_attempts` recoveries it is
    failed with its reason (nothing spent if it was pending; the spend stands if it was running)."""
    cutoff = timezone.now() - timedelta(seconds=idle_seconds)

    def recover() -> dict[str, int]:
        candidates = Query.objects.filter(status__in=QUERY_UNFINISHED, updated_at__lt=cutoff).order_by("pk")
        organisations = set(candidates[:500].values_list("organisation_id", flat=True))
        if not organisations:
            return {"requeued": 0, "failed": 0}
        audit_lock(*organisations)  # first: the lock order of every write (see audit_lock)
        counts = {"requeued": 0, "failed": 0}
        task_id = uuid.uuid4().hex
        requeue: list[int] = []
        stuck = (
            Query.objects.select_for_update(no_key=True, skip_locked=True, of=("self",))
            .select_related("analyst", "organisation")
            .filter(status__in=QUERY_UNFINISHED, updated_at__lt=cutoff, organisation_id__in=organisations)
            .order_by("pk")[:500]
        )
        for query in stuck:
            if query.attempts >= max_attempts:
                paid = query.status == QueryStatus.RUNNING
                message = (
                    "The worker was lost repeatedly after the budget was debited; the spend stands."
                    if paid
                    else "The worker was lost repeatedly before the query was priced; nothing was spent."
                )
                _set_state(
                    query,
                    status=QueryStatus.FAILED,
                    expect=(query.status,),
                    code="worker_lost",
                    message=message,
                )
                audit_record(
                    actor=query.analyst,
                    action="query.failed",
                    organisation=query.organisation,
                    target=query,
                    extra={"code": "worker_lost", "paid": paid},
                )
                counts["failed"] += 1
            else:
                Query.objects.filter(pk=query.pk).update(
                    attempts=F("attempts") + 1, updated_at=timezone.now(), task_id=task_id
                )
                audit_record(
                    actor=None,
                    action="query.recovered",
                    organisation=query.organisation,
                    target=query,
                    extra={"status": query.status, "attempt": query.attempts + 1},
                )
                requeue.append(query.pk)
                counts["requeued"] += 1
        if requeue:
            transaction.on_commit(lambda: _enqueue(requeue, task_id))
        return counts

    counts = atomic_with_retry(recover)
    if counts["requeued"] or counts["failed"]:
        logger.warning("Recovered stuck queries: %s", counts)
    return counts


def query_error_for(query: Query) -> ApplicationError | None:
    """The API error a refused or failed query answers with: refusals are the client's to fix (409
    for the budget, 400 for the query or its privacy loss); a failure is the service's, and 409 too —
    never a 5xx, since the query itself has ended (its body says whether it was paid)."""
    if query.status == QueryStatus.REFUSED:
        if query.error_code.startswith(("budget", "above_", "delta_")) or query.error_code == "no_budget":
            return BudgetExceeded(query.error_message, code=query.error_code)
        if query.error_code in {"policy_changed", "debit_failed"}:  # nothing wrong with the query: ask again
            return Conflict(query.error_message, code=query.error_code)
        return ValidationFailed(query.error_message, code=query.error_code)
    if query.status == QueryStatus.FAILED:
        return Conflict(query.error_message, code=query.error_code or "release_failed")
    return None


def _ask_dp_worker(send: Callable[[], AsyncResult], task: str, *, timeout: float) -> dict:
    """Runs a data-independent task on a dp worker (the accuracy planner: many calibrations, kept off
    the web's threads; `send` enqueues it) and waits for it: a timeout (or a broker down) answers
    503 `workers_busy`; a query that parsed but cannot be priced (e.g. δ too small to release keys)
    answers 400 with the engine's code."""
    try:
        # Celery reads a timeout of 0 as "forever": the web process always waits a little, never for ever.
        answer = send().get(timeout=max(timeout, 1.0), interval=0.02)
    except Exception as exc:  # noqa: BLE001 - a timeout, or a broker or result store that is down
        if not isinstance(exc, CeleryTimeout):
            logger.error("%s not answered: %s", task, exc.__class__.__name__)
        busy = ApplicationError("The DP workers did not answer in time; try again.", code="workers_busy")
        busy.status_code = 503
        raise busy from None
    if "error" in answer:
        raise ValidationFailed(answer["error"]["message"], code=answer["error"]["code"])
    return answer


def query_preview_run(*, version: DatasetVersion, budget: PrivacyBudget, spec: QuerySpec) -> dict:
    """The preview of a query `query_prepare` checked (with its warnings): mechanisms, noise scales,
    95% half-widths and the exact cost. Data-independent, so priced here, in the web process: no
    round trip through a dp worker, never queued behind releases (issue 15). A query that parsed
    but cannot be priced (e.g. δ too small to release keys) is refused with the engine's code."""
    try:
        return preview_with_warnings(query_schema(version=version, budget=budget), spec)
    except Exception as exc:  # noqa: BLE001 - `pricing_refusal` says which code
        code, message = pricing_refusal(exc, what="A preview")
        raise ValidationFailed(message, code=code) from None


# The level a spec is parsed at when planning without one (the planner replaces it).
PLAN_REFERENCE_LEVEL = 1.0


@dataclass(frozen=True)
class PlanRequest:
    """A checked request to the accuracy planner (`query_plan_prepare`), for `query_plan_run`."""

    version: DatasetVersion
    budget: PrivacyBudget
    spec: QuerySpec
    target_half_width: float | None
    levels: list[float] | None
    curve: bool


def query_plan_prepare(
    *,
    actor: Any,
    dataset: Dataset,
    spec: Any = None,
    sql: str | None = None,
    privacy: Any = None,
    target_half_width: Any = None,
    levels: Any = None,
    curve: bool = False,
) -> PlanRequest:
    """As `query_prepare`, for the accuracy planner. The privacy level (ε, or ρ under zCDP) may be left
    out — δ alone, or nothing — and must be when a target half-width is given (the planner finds the
    least one); a spec's own `privacy` is read as the top-level `privacy` is. Asks for a target or
    the curve (`curve`, or explicit `levels`); checks the target and the levels."""
    version, budget, _ = _context(actor=actor, dataset=dataset)
    schema = query_schema(version=version, budget=budget)
    level = "rho" if schema.policy.measure == PrivacyMeasure.ZCDP else "epsilon"
    if target_half_width is None and not curve and levels is None:
        raise ValidationFailed(
            "Give target_half_width, or ask for the accuracy curve (curve or levels).", code="invalid_query"
        )

    def completed(loss: Any) -> Any:
        if loss is None:
            loss = {}
        if not isinstance(loss, dict):
            return loss  # the parser says what is wrong with it
        if "epsilon" in loss or "rho" in loss:
            if target_half_width is not None:
                raise ValidationFailed(
                    "With target_half_width, give no ε or ρ: the planner finds the least one "
                    "(δ may be given).",
                    code="invalid_privacy_loss",
                )
            return loss
        return {**loss, level: PLAN_REFERENCE_LEVEL}

    if sql is not None:
        privacy = completed(privacy)
    elif isinstance(spec, dict):
        spec = {**spec, "privacy": completed(spec.get("privacy", privacy))}
    parsed = query_parse(schema=schema, spec=spec, sql=sql, privacy=privacy)
    try:
        target = None if target_half_width is None else check_target(target_half_width)
        checked = None if levels is None else list(check_levels(schema, levels))
    except QueryError as exc:
        raise ValidationFailed(exc.message, code=exc.code) from None
    return PlanRequest(
        version=version,
        budget=budget,
        spec=parsed,
        target_half_width=target,
        levels=checked,
        curve=bool(curve),
    )


def query_plan_run(*, request: PlanRequest, timeout: float) -> dict:
    """Asks a dp worker to plan the query (`dp.planner.plan_query`): the least ε/ρ meeting the target
    with the preview (and its warnings) at it, and/or the accuracy curve. Reads no data, spends nothing."""
    return _ask_dp_worker(
        lambda: enqueue(
            "queries.plan",
            request.version.pk,
            request.spec.to_dict(),
            request.target_half_width,
            request.levels,
            request.curve,
        ),
        "queries.plan",
        timeout=timeout,
    )["plan"]


def query_wait(*, query: Query, timeout: float) -> Query:
    """Waits (up to `timeout`) for a submitted query's worker to finish; returns it fresh."""
    return query_wait_many(queries=[_fresh(query)], timeout=timeout)[0]


def query_wait_many(*, queries: list[Query], timeout: float) -> list[Query]:
    """Waits (up to `timeout` in all) for the workers of the unfinished ones of `queries` — as
    `query_submit_many` returned them, or as just read — and returns them all fresh, in one read."""
    # One wait per task, and only for unfinished queries: waiting again on a task whose result was
    # already consumed (several queries of one request share a task) would idle until the backend's
    # poll times out.
    tasks = list(dict.fromkeys(q.task_id for q in queries if q.status in QUERY_UNFINISHED and q.task_id))
    if not tasks:
        return queries
    deadline = time.monotonic() + timeout
    for task_id in tasks:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:  # (Celery reads a timeout of 0 as "forever", hence the guard)
            AsyncResult(task_id).get(timeout=left, propagate=False, interval=0.02)
        except CeleryTimeout:
            break
        except Exception as exc:  # noqa: BLE001 - the result store is unreachable: answer with the state as stored
            logger.warning("Could not wait for task %s: %s", task_id, exc.__class__.__name__)
            break
    by_id = {
        query.pk: query
        for query in Query.objects.select_related("dataset__organisation", "version").filter(
            pk__in=[query.pk for query in queries]
        )
    }
    return [by_id.get(query.pk, query) for query in queries]


def _fresh(query: Query) -> Query:
    """The query as stored now, with what its API body shows (one database round trip)."""
    return Query.objects.select_related("dataset__organisation", "version").get(pk=query.pk)
