"""Tasks of the `dp` queue. Decryption and releases happen here, in the worker, never in the web process
(which prices previews only: they read no data)."""

from __future__ import annotations

import logging
import os
import threading

from cachetools import LRUCache
from celery import shared_task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutdown
from django.conf import settings

from clearinghouse.datasets import storage
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.dp import PreparedData, TableSchema, parse_spec, warm_up
from clearinghouse.dp.planner import plan_query
from clearinghouse.dp.prepared import remove_orphaned_spills

from .models import PrivacyBudget
from .services import pricing_refusal, query_execute_many, query_recover_stuck, query_schema

logger = logging.getLogger(__name__)


class _TableCache(LRUCache[tuple[int, str], PreparedData]):
    """Decrypted, staged tables by (version, schema fingerprint), kept in this worker's memory only:
    a query then costs its OpenDP run, not a decryption. Bounded by the bytes the tables hold
    (`DP_TABLE_CACHE_BYTES`: their staged files count against the worker's memory), least recently
    used evicted first and closed (freeing its copy on tmpfs). Each table counts at least
    1/`MAX_TABLES` of the budget: a cached table holds a file descriptor (its owner lock), so
    thousands of small ones would exhaust them. A table larger than the whole budget is still kept,
    alone: staging it again for every query would cost far more (a budget of 0 keeps only the last
    table). Evicting closes a table: safe because a worker process runs one task at a time, and a
    task uses a table only while it is the one loaded (`query_execute_many`)."""

    MAX_TABLES = 64

    def __init__(self, budget: int):
        budget = max(budget, 1)
        floor = max(budget // self.MAX_TABLES, 1)
        super().__init__(maxsize=budget, getsizeof=lambda table: min(max(table.nbytes, floor), budget))

    def popitem(self) -> tuple[tuple[int, str], PreparedData]:
        key, evicted = super().popitem()
        evicted.close()
        return key, evicted


_cache = _TableCache(settings.DP_TABLE_CACHE_BYTES)
_cache_lock = threading.Lock()


def staged_data(version: DatasetVersion, schema: TableSchema) -> PreparedData:
    key = (version.pk, schema.fingerprint)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    dataset = version.dataset
    context = storage.data_context(
        organisation_id=dataset.organisation_id, dataset_id=dataset.pk, number=version.number
    )
    # What `prepare` stages: the schema's columns and the privacy unit's identifier, nothing more.
    columns = [*schema.names, *([schema.identifier] if schema.identifier else [])]
    # Staged one row group at a time (issue 15): the worker never holds the whole decoded table.
    # Categorical columns are read dictionary-encoded (few values); public categories are staged as
    # their Enum's codes (one byte a value; read back as the Enum, which OpenDP's plans read).
    categorical = [c.name for c in schema.columns if c.type == "categorical"]
    prepared = PreparedData.from_chunks(
        schema, lambda: storage.iter_row_groups(version.data_path, context, columns, dictionary=categorical)
    )
    with _cache_lock:
        _cache[key] = prepared  # evicts, and closes, the least recently used beyond the budget
    return prepared


@shared_task(name="queries.execute", acks_late=True)
def query_execute_task(query_ids: list[int]) -> list[str]:
    """Releases the queries of one request in order (each priced and debited on its own)."""
    return [query.status for query in query_execute_many(query_ids=query_ids, data_loader=staged_data)]


@shared_task(name="queries.plan")
def query_plan_task(
    version_id: int, spec: dict, target_half_width: float | None, levels: list[float] | None, curve: bool
) -> dict:
    """{"plan": ...} (`dp.planner.plan_query`: the least ε/ρ for a target, the accuracy curve), or
    {"error": {"code", "message"}}. Reads no data, spends nothing."""
    version = DatasetVersion.objects.select_related("dataset").get(pk=version_id)
    schema = query_schema(version=version, budget=PrivacyBudget.objects.get(dataset_id=version.dataset_id))
    try:
        return {
            "plan": plan_query(
                schema,
                parse_spec(spec, schema),
                target_half_width=target_half_width,
                levels=levels,
                curve=curve,
            )
        }
    except Exception as exc:  # noqa: BLE001 - `pricing_refusal` says which code
        code, message = pricing_refusal(exc, what="A plan")
        return {"error": {"code": code, "message": message}}


@shared_task(name="queries.recover_stuck")
def query_recover_stuck_task() -> dict[str, int]:
    return query_recover_stuck(
        idle_seconds=settings.QUERY_STUCK_SECONDS, max_attempts=settings.QUERY_MAX_RECOVERIES
    )


# Polars' streaming engine, for OpenDP's own (embedded) Polars too: OpenDP exposes no engine choice
# (`OnceFrame.collect` runs in its Rust library), but its Polars reads this variable at each collect.
# A release then scans the memory-mapped staged file in morsels instead of materialising each column
# it reads (issue 15, PUMS resampled: at 10M rows the 3-aggregate release 1.8x faster under load, at
# 50M its private memory ~0 instead of 3.4 GB; the same answers, tests/dp pass under it). Set in every
# worker's main process before any task (never changed while threads run), so an ingestion worker's
# Polars streams too (tests/datasets and tests/annotation pass under it); set it to 0 to opt out.
STREAMING_ENV = "POLARS_FORCE_NEW_STREAMING"


@worker_init.connect
def _worker_starts(**_):
    """In the worker's main process, before any pool process starts (every pool: prefork children
    inherit the environment; a solo worker is this process)."""
    os.environ.setdefault(STREAMING_ENV, "1")
    _remove_orphaned_spills()


def _remove_orphaned_spills() -> None:
    removed = remove_orphaned_spills()
    if removed:
        logger.warning("Removed %s staged table(s) that killed dp worker processes left behind", removed)


@worker_process_shutdown.connect
@worker_shutdown.connect
def _close_staged_tables(**_):
    """A worker that stops as told removes its staged tables (a killed one's: the next to start)."""
    with _cache_lock:
        while _cache:
            _cache.popitem()  # closes it


@worker_process_init.connect
def _warm_up(**_):
    """OpenDP's first measurement in a process takes ~150 ms; pay it at start, not on a query. A new
    pool process also removes what a killed sibling (say, by the OOM killer) left staged."""
    _remove_orphaned_spills()
    warm_up()
