"""Tasks of the `dp` queue. Decryption and OpenDP happen here, in the worker, never in the web process."""

from __future__ import annotations

import logging
import threading

from cachetools import LRUCache
from celery import shared_task
from celery.signals import worker_process_init
from django.conf import settings

from clearinghouse.datasets import storage
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.dp import PreparedData, QueryError, TableSchema, parse_spec, prepare, preview
from clearinghouse.dp.planner import plan_query, preview_with_warnings

from .models import PrivacyBudget
from .services import UNPRICEABLE_MESSAGE, query_execute_many, query_recover_stuck, query_schema

logger = logging.getLogger(__name__)

# Decrypted, staged tables by (version, schema fingerprint), kept in this worker's memory only: a
# query then costs its OpenDP run, not a decryption. Few entries: each holds a whole table.
_CACHE_SIZE = 4


class _TableCache(LRUCache[tuple[int, str], PreparedData]):
    """An LRU of staged tables that closes the one it evicts (freeing its copy on tmpfs)."""

    def popitem(self) -> tuple[tuple[int, str], PreparedData]:
        key, evicted = super().popitem()
        evicted.close()
        return key, evicted


_cache = _TableCache(maxsize=_CACHE_SIZE)
_cache_lock = threading.Lock()


def staged_data(version: DatasetVersion, schema: TableSchema) -> PreparedData:
    key = (version.pk, schema.fingerprint)
    with _cache_lock:
        hit = _cache.get(key)
    if hit is not None:
        return hit
    dataset = version.dataset
    table = storage.read_table(
        version.data_path,
        storage.data_context(
            organisation_id=dataset.organisation_id, dataset_id=dataset.pk, number=version.number
        ),
        # What `prepare` stages: the schema's columns and the privacy unit's identifier, nothing more.
        columns=[*schema.names, *([schema.identifier] if schema.identifier else [])],
    )
    prepared = prepare(schema, table)
    with _cache_lock:
        _cache[key] = prepared  # evicts, and closes, the least recently used beyond _CACHE_SIZE
    return prepared


@shared_task(name="queries.execute", acks_late=True)
def query_execute_task(query_ids: list[int]) -> list[str]:
    """Releases the queries of one request in order (each priced and debited on its own)."""
    return [query.status for query in query_execute_many(query_ids=query_ids, data_loader=staged_data)]


@shared_task(name="queries.preview")
def query_preview_task(version_id: int, spec: dict) -> dict:
    """{"preview": ...}, or {"error": {"code", "message"}} for a query that cannot be priced."""
    version = DatasetVersion.objects.select_related("dataset").get(pk=version_id)
    schema = query_schema(version=version, budget=PrivacyBudget.objects.get(dataset_id=version.dataset_id))
    try:
        return {"preview": preview_with_warnings(schema, parse_spec(spec, schema))}
    except QueryError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    except Exception as exc:  # noqa: BLE001 - as the release path: an unpriceable query is the client's to change
        logger.error("A preview could not be priced: %s", exc.__class__.__name__)
        return {"error": {"code": "invalid_privacy_loss", "message": UNPRICEABLE_MESSAGE}}


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
    except QueryError as exc:
        return {"error": {"code": exc.code, "message": exc.message}}
    except Exception as exc:  # noqa: BLE001 - as the preview: an unpriceable query is the client's to change
        logger.error("A plan could not be priced: %s", exc.__class__.__name__)
        return {"error": {"code": "invalid_privacy_loss", "message": UNPRICEABLE_MESSAGE}}


@shared_task(name="queries.recover_stuck")
def query_recover_stuck_task() -> dict[str, int]:
    return query_recover_stuck(
        idle_seconds=settings.QUERY_STUCK_SECONDS, max_attempts=settings.QUERY_MAX_RECOVERIES
    )


@worker_process_init.connect
def _warm_up(**_):
    """OpenDP's first measurement in a process takes ~150 ms; pay it at start, not on a query."""
    try:
        schema = TableSchema.from_dict(
            {"columns": [{"name": "x", "type": "integer", "lower": 0, "upper": 1}]}
        )
        preview(schema, parse_spec({"aggregates": [{"type": "count"}], "privacy": {"epsilon": 1.0}}, schema))
    except Exception:  # noqa: BLE001 - warming up is best effort
        pass
