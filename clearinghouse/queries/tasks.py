"""Tasks of the `dp` queue. Decryption and OpenDP happen here, in the worker, never in the web process."""

from __future__ import annotations

import threading
from collections import OrderedDict

from celery import shared_task
from celery.signals import worker_process_init

from clearinghouse.datasets import storage
from clearinghouse.datasets.models import DatasetVersion

# Decrypted, staged tables by (version, schema fingerprint), kept in this worker's memory only: a
# query then costs its OpenDP run, not a decryption. Few entries: each holds a whole table.
_CACHE_SIZE = 4
_cache: OrderedDict[tuple[int, str], object] = OrderedDict()
_cache_lock = threading.Lock()


def staged_data(version: DatasetVersion, schema):
    from clearinghouse.dp import prepare

    key = (version.pk, schema.fingerprint)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    dataset = version.dataset
    table = storage.read_table(version.data_path, storage.data_context(
        organisation_id=dataset.organisation_id, dataset_id=dataset.pk, number=version.number))
    prepared = prepare(schema, table)
    with _cache_lock:
        _cache[key] = prepared
        while len(_cache) > _CACHE_SIZE:
            _, evicted = _cache.popitem(last=False)
            evicted.close()
    return prepared


@shared_task(name="queries.execute", acks_late=True)
def query_execute_task(query_ids: list[int]) -> list[str]:
    """Releases the queries of one request in order (each priced and debited on its own)."""
    from .services import query_execute_many

    return [query.status for query in query_execute_many(query_ids=query_ids, data_loader=staged_data)]


@shared_task(name="queries.preview")
def query_preview_task(version_id: int, spec: dict) -> dict:
    from clearinghouse.dp import parse_spec, preview

    from .models import PrivacyBudget
    from .services import query_schema

    version = DatasetVersion.objects.select_related("dataset").get(pk=version_id)
    schema = query_schema(version=version, budget=PrivacyBudget.objects.get(dataset_id=version.dataset_id))
    return preview(schema, parse_spec(spec, schema)).to_dict()


@worker_process_init.connect
def _warm_up(**_):
    """OpenDP's first measurement in a process takes ~150 ms; pay it at start, not on a query."""
    try:
        from clearinghouse.dp import TableSchema, parse_spec, preview

        schema = TableSchema.from_dict({"columns": [{"name": "x", "type": "integer", "lower": 0, "upper": 1}]})
        preview(schema, parse_spec({"aggregates": [{"type": "count"}], "privacy": {"epsilon": 1.0}}, schema))
    except Exception:  # noqa: BLE001 - warming up is best effort
        pass
