"""Differentially private queries: submit (web), execute (dp worker), replay.

The web process validates the query and records it; a worker on the `dp` queue builds the OpenDP
measurement, reads its exact cost from the privacy map, debits the ledger, decrypts the data in
memory and runs the measurement. The web process never loads the keyring and never runs OpenDP.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from clearinghouse.audit.services import audit_record
from clearinghouse.core.errors import ApplicationError, Conflict, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.core.metrics import QUERIES_REFUSED, QUERIES_RELEASED, count_on_commit
from clearinghouse.datasets.models import Dataset, DatasetVersion
from clearinghouse.datasets.selectors import (
    agreement_accepted,
    dataset_grant_active,
    dataset_is_owner,
    dataset_version_latest_ready,
)
from clearinghouse.dp import QueryError, QuerySpec, TableSchema, parse_spec, sql_to_spec
from clearinghouse.organisations.roles import RUN_QUERIES
from clearinghouse.organisations.selectors import membership_active

from .ledger import BudgetExceeded, budget_debit
from .models import PrivacyBudget, PrivacyMeasure, Query, QueryStatus

logger = logging.getLogger(__name__)


def query_schema(*, version: DatasetVersion, budget: PrivacyBudget) -> TableSchema:
    """The DP engine's view of a version: its declared schema plus the dataset's policy."""
    policy = {"measure": budget.measure, "max_delta": budget.delta_total if budget.measure != PrivacyMeasure.PURE
              else 0.0, "max_rows": budget.max_rows}
    return TableSchema.from_dict(version.schema, policy=policy, name=version.dataset.slug)


def query_access(*, actor: Any, dataset: Dataset) -> None:
    """Who may query: members (with the query capability) of the owner organisation, or of an
    organisation with an active query grant who accepted the current data-use agreement."""
    membership = membership_active(user=actor)
    owner = dataset_is_owner(actor=actor, dataset=dataset)
    if membership is None or not (owner or dataset_grant_active(dataset=dataset, organisation_id=membership.organisation_id,
                                                               purpose="query")):
        raise NotFound("Dataset not found.")
    from clearinghouse.organisations.roles import ROLE_CAPABILITIES

    if RUN_QUERIES not in ROLE_CAPABILITIES[membership.role]:
        raise PermissionDenied("Your role does not allow queries.", code="role_forbidden")
    if not owner and not agreement_accepted(user=actor, dataset=dataset):
        raise PermissionDenied("Accept the dataset's current data-use agreement before querying.",
                               code="agreement_required")


def query_parse(*, schema: TableSchema, spec: Any = None, sql: str | None = None,
                privacy: dict | None = None) -> QuerySpec:
    try:
        if sql is not None:
            if spec is not None:
                raise QueryError("invalid_query", "Give either `sql` or `spec`, not both.")
            if not isinstance(privacy, dict):
                raise QueryError("invalid_privacy_loss", "With `sql`, give the privacy loss as `privacy`, "
                                 'e.g. {"epsilon": 1.0}.')
            return sql_to_spec(sql, schema, privacy)
        if spec is None:
            raise QueryError("invalid_query", "Give a query as `spec` (JSON) or `sql`.")
        return parse_spec(spec, schema)
    except QueryError as exc:
        raise ValidationFailed(exc.message, code=exc.code) from None


def _context(*, actor: Any, dataset: Dataset) -> tuple[DatasetVersion, PrivacyBudget]:
    query_access(actor=actor, dataset=dataset)
    version = dataset_version_latest_ready(dataset=dataset)
    if version is None:
        raise Conflict("The dataset has no ready version yet.", code="no_ready_version")
    budget = PrivacyBudget.objects.filter(dataset=dataset).first()
    if budget is None:
        raise Conflict("The dataset's owner has not set a privacy budget yet.", code="no_budget")
    return version, budget


def query_prepare(*, actor: Any, dataset: Dataset, spec: Any = None, sql: str | None = None,
                  privacy: dict | None = None) -> tuple[DatasetVersion, PrivacyBudget, QuerySpec]:
    """Checks access and parses the query; what preview and submit share."""
    version, budget = _context(actor=actor, dataset=dataset)
    return version, budget, query_parse(schema=query_schema(version=version, budget=budget), spec=spec, sql=sql,
                                        privacy=privacy)


def query_submit(*, actor: Any, dataset: Dataset, spec: Any = None, sql: str | None = None,
                 privacy: dict | None = None) -> tuple[Query, bool]:
    """One query: see `query_submit_many`."""
    return query_submit_many(actor=actor, dataset=dataset, items=[{"spec": spec, "sql": sql, "privacy": privacy}])[0]


MAX_QUERIES_PER_REQUEST = 20


def query_submit_many(*, actor: Any, dataset: Dataset, items: list[dict]) -> list[tuple[Query, bool]]:
    """Records release requests and queues them together (one worker task); returns (query,
    replayed) per item. All are validated before any is recorded. Each query is priced, debited and
    released on its own; an identical earlier query of the same organisation on the same version
    answers again without new spending, so that asking repeatedly can never average the noise away."""
    if not items or len(items) > MAX_QUERIES_PER_REQUEST:
        raise ValidationFailed(f"Send 1 to {MAX_QUERIES_PER_REQUEST} queries at once.", code="invalid_query")
    # Access, version and budget once per request: every query of it is asked by the same analyst.
    version, budget = _context(actor=actor, dataset=dataset)
    schema = query_schema(version=version, budget=budget)
    prepared = []
    for index, item in enumerate(items):
        try:
            prepared.append((version, budget, query_parse(schema=schema, spec=item.get("spec"), sql=item.get("sql"),
                                                          privacy=item.get("privacy"))))
        except ValidationFailed as exc:
            if len(items) > 1:
                exc.message = f"queries[{index}]: {exc.message}"
            raise
    membership = membership_active(user=actor)
    task_id = uuid.uuid4().hex
    outcomes: list[tuple[Query, bool]] = []
    created: list[int] = []
    with transaction.atomic():
        for item, (version, _, parsed) in zip(items, prepared):
            existing = Query.objects.filter(organisation=membership.organisation, version=version,
                                            query_hash=parsed.hash).exclude(status=QueryStatus.FAILED).first()
            if existing is not None:
                audit_record(actor=actor, action="query.replayed", organisation=membership.organisation,
                             target=existing, extra={"query_hash": parsed.hash})
                outcomes.append((existing, True))
                continue
            try:
                with transaction.atomic():
                    query = Query.objects.create(
                        dataset=dataset, version=version, organisation=membership.organisation, analyst=actor,
                        spec=parsed.to_dict(), sql=item.get("sql") or "", query_hash=parsed.hash, cost=0.0,
                        privacy=item.get("privacy") or {}, task_id=task_id)
            except IntegrityError:  # the same query arrived concurrently (or twice in this request)
                query = Query.objects.get(organisation=membership.organisation, version=version,
                                          query_hash=parsed.hash, status__in=[QueryStatus.PENDING,
                                                                              QueryStatus.RUNNING,
                                                                              QueryStatus.RELEASED])
                outcomes.append((query, True))
                continue
            audit_record(actor=actor, action="query.submitted", organisation=membership.organisation, target=query,
                         extra={"dataset": dataset.pk, "version": version.number, "query_hash": parsed.hash})
            outcomes.append((query, False))
            created.append(query.pk)
        if created:
            from .tasks import query_execute_task

            transaction.on_commit(lambda: query_execute_task.apply_async((created,), task_id=task_id))
    return outcomes


def _finish(query: Query, *, status: str, result: dict | None = None, code: str = "", message: str = "") -> Query:
    query.status = status
    query.result = result
    query.error_code, query.error_message = code, message
    query.finished_at = timezone.now()
    query.save(update_fields=["status", "result", "error_code", "error_message", "finished_at"])
    return query


def query_execute_many(*, query_ids: list[int], data_loader) -> list[Query]:
    """Worker side: the queries of one request, each priced, debited and released on its own.
    `data_loader(version, schema)` returns the decrypted, staged table (the worker caches it).

    Three transactions for the whole request rather than three per query (each commit waits for
    the disk): (1) lock the queries and debit each that fits, refusing those that do not; (2) run
    the paid ones (outside any transaction: the spend is committed before noise is drawn); (3) store
    the releases. A query that fails after its debit keeps the spend (the conservative choice)."""
    from clearinghouse.dp import preview

    paid: list[tuple[Query, TableSchema, QuerySpec]] = []
    with transaction.atomic():
        # Queries first (in id order), then budget and allocation rows inside budget_debit: one lock order.
        queries = list(Query.objects.select_for_update().select_related("version__dataset", "analyst", "organisation")
                       .filter(pk__in=query_ids).order_by("pk"))
        by_id = {query.pk: query for query in queries}
        for query_id in query_ids:
            query = by_id.get(query_id)
            if query is None or query.status != QueryStatus.PENDING:
                continue  # a redelivered task: never pay twice
            budget = PrivacyBudget.objects.get(dataset_id=query.dataset_id)
            schema = query_schema(version=query.version, budget=budget)
            spec = parse_spec(query.spec, schema)
            cost = preview(schema, spec).cost  # exact, from the measurement's privacy map
            amount = cost.rho if budget.measure == PrivacyMeasure.ZCDP else cost.epsilon
            try:
                with transaction.atomic():
                    budget_debit(query=query, amount=float(amount), delta=float(cost.delta or 0.0))
            except BudgetExceeded as exc:
                _finish(query, status=QueryStatus.FAILED, code=exc.code, message=exc.message)
                audit_record(actor=query.analyst, action="query.refused", organisation=query.organisation,
                             target=query, extra={"code": exc.code, "amount": amount})
                count_on_commit(QUERIES_REFUSED.labels(code=exc.code))
                continue
            query.cost, query.cost_delta, query.status = float(amount), float(cost.delta or 0.0), QueryStatus.RUNNING
            query.save(update_fields=["cost", "cost_delta", "status"])
            paid.append((query, schema, spec))
    released = [(query, _release(query, schema, spec, data_loader)) for query, schema, spec in paid]
    with transaction.atomic():
        for query, body in released:
            if body is None:
                continue
            _finish(query, status=QueryStatus.RELEASED, result=body)
            audit_record(actor=query.analyst, action="query.released", organisation=query.organisation, target=query,
                         extra={"query_hash": query.query_hash, "cost": query.cost, "delta": query.cost_delta})
            count_on_commit(QUERIES_RELEASED)
    return [by_id[query_id] for query_id in query_ids if query_id in by_id]


def _release(query: Query, schema: TableSchema, spec: QuerySpec, data_loader) -> dict | None:
    """Runs one paid query; on failure records it (the spend stays) and returns None."""
    from clearinghouse.dp import release

    try:
        result = release(schema, spec, data_loader(query.version, schema))
    except Exception as exc:  # the spend stays: the conservative choice (noise may have been drawn)
        code = "integrity_error" if exc.__class__.__name__ in {"IntegrityError", "FormatError"} else "release_failed"
        logger.error("Query %s failed after its debit: %s", query.pk, exc.__class__.__name__)
        with transaction.atomic():
            _finish(query, status=QueryStatus.FAILED, code=code,
                    message="The release failed after the budget was debited; the spend stands.")
            audit_record(actor=query.analyst, action="query.failed", organisation=query.organisation, target=query,
                         extra={"code": code})
        if code == "integrity_error":
            from clearinghouse.datasets.services import dataset_version_mark_corrupt

            dataset_version_mark_corrupt(version=query.version)
        return None
    body = result.to_dict()
    body["timings_ms"] = result.timings_ms
    return body


def query_error_for(query: Query) -> ApplicationError | None:
    """The API error a failed query answers with."""
    if query.status != QueryStatus.FAILED:
        return None
    error = BudgetExceeded(query.error_message, code=query.error_code) if query.error_code.startswith(
        ("budget", "above_", "delta_")) else ApplicationError(query.error_message, code=query.error_code)
    if not isinstance(error, BudgetExceeded):
        error.status_code = 500 if query.error_code == "release_failed" else 409
    return error


def query_preview_run(*, version: DatasetVersion, spec: QuerySpec, timeout: float) -> dict:
    """Asks a dp worker for the preview (OpenDP runs only there) and waits for it."""
    from celery.exceptions import TimeoutError as CeleryTimeout

    from .tasks import query_preview_task

    try:
        return query_preview_task.apply_async((version.pk, spec.to_dict())).get(timeout=timeout, interval=0.02)
    except CeleryTimeout:
        busy = ApplicationError("The DP workers did not answer in time; try again.", code="workers_busy")
        busy.status_code = 503
        raise busy from None


def query_wait(*, query: Query, timeout: float) -> Query:
    """Waits (up to `timeout`) for a submitted query's worker to finish; returns it fresh."""
    from celery.exceptions import TimeoutError as CeleryTimeout
    from celery.result import AsyncResult

    query = _fresh(query)
    # Only wait when still unfinished: waiting again on a task whose result was already consumed
    # (several queries of one request share a task) would idle until the backend's poll times out.
    if query.status in {QueryStatus.PENDING, QueryStatus.RUNNING} and query.task_id and timeout > 0:
        try:  # (Celery reads a timeout of 0 as "forever", hence the guard)
            AsyncResult(query.task_id).get(timeout=timeout, propagate=False, interval=0.02)
        except CeleryTimeout:
            pass
        query = _fresh(query)
    return query


def _fresh(query: Query) -> Query:
    """The query as stored now, with what its API body shows (one database round trip)."""
    return Query.objects.select_related("dataset__organisation", "version").get(pk=query.pk)
