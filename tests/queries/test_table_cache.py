"""The dp worker's cache of staged tables: at most `_CACHE_SIZE`, and the least recently used one is
closed when it is evicted (its staged copy freed), never one still in use."""

from __future__ import annotations

import polars as pl

from clearinghouse.dp import PreparedData, TableSchema
from clearinghouse.queries import tasks

SCHEMA = TableSchema.from_dict({"columns": [{"name": "x", "type": "integer", "lower": 0, "upper": 9}]})


def _table(value: int) -> PreparedData:
    return PreparedData(SCHEMA, pl.DataFrame({"x": [value]}), spill_dir=False)


def _is_open(prepared: PreparedData) -> bool:
    try:
        prepared.frame(("x",))
    except RuntimeError:
        return False
    return True


def test_the_cache_closes_the_least_recently_used_table_it_evicts():
    cache = tasks._TableCache(maxsize=tasks._CACHE_SIZE)
    tables = {(i, "f"): _table(i) for i in range(tasks._CACHE_SIZE)}
    for key, table in tables.items():
        cache[key] = table
    assert cache.get((0, "f")) is tables[(0, "f")]  # used again: (1, "f") is now the oldest
    newest = _table(9)
    cache[(99, "f")] = newest
    assert len(cache) == tasks._CACHE_SIZE
    assert (1, "f") not in cache and not _is_open(tables[(1, "f")])
    assert all(_is_open(t) for k, t in tables.items() if k != (1, "f")) and _is_open(newest)


def test_replacing_a_key_evicts_nothing():
    cache = tasks._TableCache(maxsize=2)
    first, second, again = _table(1), _table(2), _table(3)
    cache[(1, "f")], cache[(2, "f")] = first, second
    cache[(1, "f")] = again
    assert len(cache) == 2 and _is_open(first) and _is_open(second)


def test_the_worker_cache_holds_four_tables():
    assert tasks._cache.maxsize == tasks._CACHE_SIZE == 4
