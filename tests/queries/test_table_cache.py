"""A dp worker's staged tables are bounded by the bytes they hold, not by their number (issue 15: one
50M-row table is ~1.6 GB, a 1M-row one ~33 MB): the least recently used is evicted and its file
removed; a table larger than the whole budget is still kept, alone."""

from __future__ import annotations

import os

import polars as pl

from clearinghouse.dp import PreparedData, TableSchema
from clearinghouse.queries.tasks import _TableCache

SCHEMA = TableSchema.from_dict(
    {
        "name": "t",
        "columns": [
            {"name": "n", "type": "integer", "lower": 0, "upper": 10**9},
            {"name": "c", "type": "categorical", "categories": ["a", "b"]},
        ],
        "policy": {"measure": "pure", "max_rows": 10**7},
    }
)


def _table(rows: int, spill: str) -> PreparedData:
    frame = pl.DataFrame({"n": range(rows), "c": ["a", "b"] * (rows // 2)})
    return PreparedData(SCHEMA, frame, spill_dir=spill)


def test_tables_are_evicted_by_bytes_least_recently_used_first(tmp_path):
    small = [_table(10_000, str(tmp_path)) for _ in range(3)]
    size = small[0].nbytes
    assert size == os.path.getsize(small[0]._path) and size > 90_000  # 9 bytes a row, and the file's header
    cache = _TableCache(budget=2 * size + size // 2)  # room for two
    cache[1] = small[0]
    cache[2] = small[1]
    assert cache.get(1) is small[0]  # 1 is now the more recently used
    cache[3] = small[2]
    assert set(cache) == {1, 3}
    assert small[1]._path is None and small[0]._path is not None  # closed: its staged file is gone
    assert len(os.listdir(tmp_path)) == 2

    large = _table(100_000, str(tmp_path))  # larger than the whole budget
    assert large.nbytes > cache.maxsize
    cache[4] = large
    assert set(cache) == {4} and cache.get(4) is large  # kept, alone
    assert len(os.listdir(tmp_path)) == 1
    cache[5] = _table(10_000, str(tmp_path))
    assert set(cache) == {5} and large._path is None


def test_a_table_in_memory_counts_its_frame(tmp_path):
    table = _table(10_000, "")  # no spill directory: the frame stays in memory
    assert table._path is None and table.nbytes == table._frame.estimated_size() > 0


def test_replacing_a_key_evicts_and_closes_nothing(tmp_path):
    """A table replaced under its key may still be in use by the task that staged it."""
    first, second, again = (_table(10_000, str(tmp_path)) for _ in range(3))
    cache = _TableCache(budget=2 * first.nbytes + 1)
    cache[1], cache[2] = first, second
    cache[1] = again
    assert set(cache) == {1, 2} and cache[1] is again
    assert first._path is not None and second._path is not None


def test_the_worker_cache_is_bounded_by_the_setting(settings):
    from clearinghouse.queries import tasks

    assert tasks._cache.maxsize == settings.DP_TABLE_CACHE_BYTES == 1024 * 2**20


def test_at_most_max_tables_however_small_and_a_budget_of_zero_keeps_the_last(tmp_path):
    """A cached table holds a file descriptor: thousands of tiny ones would exhaust them."""
    cache = _TableCache(budget=2**30)
    tables = [_table(2, str(tmp_path)) for _ in range(_TableCache.MAX_TABLES + 3)]
    for key, table in enumerate(tables):
        cache[key] = table
    assert len(cache) == _TableCache.MAX_TABLES
    assert all(t._path is None for t in tables[:3]) and all(t._path for t in tables[3:])
    assert len(os.listdir(tmp_path)) == _TableCache.MAX_TABLES

    none = _TableCache(budget=0)
    none[1], none[2] = tables[-2], tables[-1]
    assert set(none) == {2}
