"""`ranged.open_for_read`: objects on S3 read by byte range (issue 15), against a real S3 server over
HTTP (moto's, in a process of its own: tests/s3.py). django-storages' own file downloads the whole
object on first access; the ranged file fetches only the bytes a reader asks for."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from clearinghouse.core.keys import keyring
from clearinghouse.crypto.envelope import StreamEncryptor
from clearinghouse.crypto.header import MAGIC
from clearinghouse.crypto.seekable import SegmentReader
from clearinghouse.datasets import ranged, storage
from clearinghouse.datasets.uploads import open_for_write

CONTEXT = storage.data_context(organisation_id=1, dataset_id=2, number=3)
NAME = "datasets/1/2/v3/data.parquet.enc"
BLOB = os.urandom(3 * 1024 * 1024 + 4097)  # over a few read buffers, not a multiple of any


@contextmanager
def fetched() -> Iterator[list[int]]:
    """The body sizes of the GetObject calls made by the store's client while inside (one entry each)."""
    sizes: list[int] = []
    events = default_storage.connection.meta.client.meta.events

    def count(parsed: dict[str, Any], **_: Any) -> None:
        sizes.append(int(parsed.get("ContentLength", 0)))

    events.register("after-call.s3.GetObject", count, unique_id="test-s3-ranged")
    try:
        yield sizes
    finally:
        events.unregister("after-call.s3.GetObject", unique_id="test-s3-ranged")


def is_ranged(handle: Any) -> bool:
    return isinstance(handle, io.BufferedReader) and isinstance(handle.raw, ranged.S3RangeFile)


# ---------------------------------------------------------------------------------------- random access

WHENCE = st.sampled_from([io.SEEK_SET, io.SEEK_CUR, io.SEEK_END])
OPS = st.lists(
    st.tuples(
        st.sampled_from(["seek", "read", "readinto", "read1"]),
        WHENCE,
        st.integers(-len(BLOB) - 10, len(BLOB) + 10),  # seek offset
        st.one_of(st.integers(-1, 2 * 1024 * 1024), st.sampled_from([0, 1, 15, 16, 17])),  # read size
    ),
    max_size=12,
)


def apply(handle: Any, model: io.BytesIO, ops: list[tuple[str, int, int, int]]) -> None:
    """Runs `ops` on `handle` and on `model` (the object's bytes in memory); they must agree."""
    for op, whence, offset, size in ops:
        if op == "seek":
            if whence == io.SEEK_SET:
                offset = abs(offset)
            target = {io.SEEK_SET: 0, io.SEEK_CUR: model.tell(), io.SEEK_END: len(BLOB)}[whence] + offset
            if target < 0:
                with pytest.raises((ValueError, OSError)):
                    handle.seek(offset, whence)
                continue
            assert handle.seek(offset, whence) == model.seek(offset, whence)
        elif op == "readinto" or (op == "read1" and not hasattr(handle, "read1")):
            buffer = bytearray(max(size, 0))
            want = bytearray(len(buffer))
            got = handle.readinto(memoryview(buffer))
            assert got == model.readinto(want)
            assert buffer[:got] == want[:got]
        elif op == "read1":
            expected_end = model.tell()
            data = handle.read1(size)
            assert data == BLOB[expected_end : expected_end + len(data)]
            assert data or size == 0 or expected_end >= len(BLOB)  # read1 returns something unless at EOF
            model.seek(expected_end + len(data))
        else:
            assert handle.read(size) == model.read(size)
        assert handle.tell() == model.tell()


@pytest.fixture
def blob(s3_store) -> str:
    default_storage.save("blobs/one.bin", ContentFile(BLOB))
    return "blobs/one.bin"


@hypothesis_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=OPS, buffer_size=st.sampled_from([0, 7, 4096, ranged.DEFAULT_BUFFER_SIZE]))
def test_random_seeks_and_reads_give_the_object_bytes(blob, ops, buffer_size):
    """buffer_size 0: the raw `S3RangeFile` alone (every readinto one ranged GET), else buffered."""
    if buffer_size:
        handle = ranged.open_for_read(blob, buffer_size=buffer_size)
        assert is_ranged(handle)
    else:
        handle = ranged.S3RangeFile.open(default_storage, blob)
    with handle:
        apply(handle, io.BytesIO(BLOB), ops)
        assert handle.seekable() and handle.readable() and not handle.writable()


def test_reads_past_the_end_and_empty_reads_fetch_nothing(blob):
    raw = ranged.S3RangeFile.open(default_storage, blob)
    with fetched() as sizes:
        assert raw.size == len(BLOB)
        assert raw.seek(10, io.SEEK_END) == len(BLOB) + 10
        assert raw.read(5) == b"" and raw.readinto(bytearray(5)) == 0
        assert raw.seek(3) == 3 and raw.read(0) == b"" and raw.readinto(bytearray()) == 0
        assert sizes == []
        assert raw.seek(-3, io.SEEK_END) == len(BLOB) - 3
        buffer = bytearray(100)
        assert raw.readinto(buffer) == 3 and buffer[:3] == BLOB[-3:]  # clamped to the object's end
        assert sizes == [3]
        assert raw.tell() == len(BLOB)
    raw.close()
    with pytest.raises(ValueError):
        raw.read(1)


def test_every_read_is_one_ranged_get_of_its_bytes(blob):
    raw = ranged.S3RangeFile.open(default_storage, blob)
    with fetched() as sizes:
        raw.seek(1_000_000)
        buffer = bytearray(123_457)
        assert raw.readinto(buffer) == len(buffer) and bytes(buffer) == BLOB[1_000_000:1_123_457]
        assert raw.read(10) == BLOB[1_123_457:1_123_467]
    assert sizes == [123_457, 10]


def test_empty_object(s3_store):
    default_storage.save("blobs/empty.bin", ContentFile(b""))
    with fetched() as sizes, ranged.open_for_read("blobs/empty.bin") as handle:
        assert is_ranged(handle)
        assert handle.read() == b"" and handle.read(10) == b"" and handle.readinto(bytearray(4)) == 0
        assert handle.seek(0, io.SEEK_END) == 0
    assert sizes == []


def test_missing_object(s3_store):
    with pytest.raises(FileNotFoundError):
        ranged.open_for_read("blobs/none.bin")


def test_the_storage_location_prefix_is_applied(s3_store, settings):
    options = {**s3_store.options, "location": "tenant/store"}
    settings.STORAGES = {**settings.STORAGES, "default": {**s3_store.storages, "OPTIONS": options}}
    default_storage.save("blobs/one.bin", ContentFile(BLOB[:5000]))
    assert set(s3_store.objects()) == {"tenant/store/blobs/one.bin"}
    with ranged.open_for_read("blobs/one.bin") as handle:
        assert is_ranged(handle)
        handle.seek(4000)
        assert handle.read() == BLOB[4000:5000]


def test_other_stores_get_their_own_file(media_root):
    default_storage.save("blobs/one.bin", ContentFile(BLOB[:5000]))
    with ranged.open_for_read("blobs/one.bin") as handle:
        assert not is_ranged(handle)
        handle.seek(100)
        assert handle.read(10) == BLOB[100:110]


# ------------------------------------------------------------------------------ encrypted dataset files


def test_segment_reader_decrypts_a_stored_dataset_file(s3_store):
    frame = pl.DataFrame(
        {
            "age": pl.int_range(300_000, eager=True) % 90,
            "note": pl.Series([os.urandom(6).hex() for _ in range(300_000)]),
        }
    )
    storage.write_table(NAME, CONTEXT, frame)
    stored = s3_store.objects()[NAME]
    assert stored.startswith(MAGIC) and len(stored) > 3 * 1024 * 1024  # several segments
    plaintext = storage.read_data(NAME, CONTEXT)  # decrypt_stream over django-storages' whole download
    with (
        ranged.open_for_read(NAME) as src,
        SegmentReader(src, keyring=keyring(), context=CONTEXT) as reader,
    ):
        assert is_ranged(src)
        assert reader.size == len(plaintext)
        assert pl.read_parquet(reader).equals(frame)
        for start, size in [(0, 10), (len(plaintext) - 7, 100), (1024 * 1024 - 5, 1024 * 1024 + 10)]:
            reader.seek(start)
            assert reader.read(size) == plaintext[start : start + size]


def six_column_file(name: str) -> tuple[pl.DataFrame, int]:
    """A Parquet file of 3 row groups, one narrow column (`flag`) beside 5 wide incompressible ones,
    encrypted into the store as `storage.write_table` does; (the table, the object's size)."""
    rows = 750_000
    generator = np.random.default_rng(15)
    frame = pl.DataFrame(
        {
            "flag": pl.Series(generator.integers(0, 4, rows), dtype=pl.Int8),
            **{f"wide{i}": generator.random(rows) for i in range(5)},
        }
    )
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression="lz4", statistics=False, row_group_size=250_000)
    with open_for_write(name) as target:
        encryptor = StreamEncryptor(target, keyring=keyring(), context=CONTEXT)
        encryptor.write(buffer.getbuffer())
        encryptor.finish()
    return frame, default_storage.size(name)


def read_flag(src: Any) -> pl.Series:
    with SegmentReader(src, keyring=keyring(), context=CONTEXT) as reader:
        parquet = pq.ParquetFile(reader)
        assert parquet.metadata.num_row_groups == 3 and parquet.metadata.num_columns == 6
        return pl.from_arrow(parquet.read(columns=["flag"]))["flag"]


def test_one_narrow_column_fetches_a_fraction_of_the_object(s3_store):
    frame, size = six_column_file(NAME)
    assert size > 30_000_000
    with fetched() as ranged_sizes, ranged.open_for_read(NAME) as src:
        assert is_ranged(src)
        assert read_flag(src).equals(frame["flag"])
    # django-storages' file: the whole object, whatever is read of it (the threshold below can't pass)
    with fetched() as whole_sizes, default_storage.open(NAME, "rb") as src:
        assert read_flag(src).equals(frame["flag"])
    assert sum(whole_sizes) >= size
    assert sum(ranged_sizes) < size * 0.4, (sum(ranged_sizes), size, len(ranged_sizes))


def test_an_object_cut_short_while_open_gives_a_short_read(blob):
    """The read stops where the object now ends (`SegmentReader` takes a short read as a file that
    changed while open: `IntegrityError`)."""
    raw = ranged.S3RangeFile.open(default_storage, blob)
    default_storage.save(blob, ContentFile(BLOB[:100]))  # written over (file_overwrite)
    buffer = bytearray(1000)
    assert raw.readinto(buffer) == 100 and buffer[:100] == BLOB[:100]
    assert raw.tell() == 100


def test_a_store_that_ignores_the_range_is_refused(blob):
    """Fault injected in botocore (below our code): the Range header never reaches the server, which
    answers with the whole object."""
    events = default_storage.connection.meta.client.meta.events

    def drop_range(params: dict[str, Any], **_: Any) -> None:
        params["headers"].pop("Range", None)

    events.register("before-call.s3.GetObject", drop_range, unique_id="test-drop-range")
    try:
        raw = ranged.S3RangeFile.open(default_storage, blob)
        raw.seek(10)
        with pytest.raises(OSError, match="ignored the byte range"):
            raw.read(5)
    finally:
        events.unregister("before-call.s3.GetObject", unique_id="test-drop-range")
