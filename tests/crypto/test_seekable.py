"""`SegmentReader`: random access to an encrypted file, as strict as `decrypt_stream`."""

from __future__ import annotations

import io
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clearinghouse.crypto import IntegrityError, KeyEncryptionKey, Keyring, encrypt_bytes, read_header
from clearinghouse.crypto.seekable import SegmentReader

from .conftest import CONTEXT, SEGMENT

TAG = 16


def encrypted(plaintext: bytes, keyring: Keyring, segment_size: int = SEGMENT) -> bytes:
    return encrypt_bytes(plaintext, keyring=keyring, context=CONTEXT, segment_size=segment_size)


def open_reader(blob: bytes, keyring: Keyring, context=CONTEXT, **kwargs) -> SegmentReader:
    return SegmentReader(io.BytesIO(blob), keyring=keyring, context=context, **kwargs)


def split(blob: bytes, segment_size: int = SEGMENT) -> tuple[bytes, list[bytes]]:
    header = read_header(io.BytesIO(blob))
    body = blob[len(header) :]
    step = segment_size + TAG
    return header, [body[i : i + step] for i in range(0, len(body), step)]


@pytest.mark.usefixtures("segment_backend")
@pytest.mark.parametrize(
    "size",
    [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT, 2 * SEGMENT + 1, 7 * SEGMENT + 13, 40 * SEGMENT],
)
def test_round_trip_at_odd_sizes(keyring, size):
    plaintext = os.urandom(size)
    with open_reader(encrypted(plaintext, keyring), keyring) as reader:
        assert reader.size == size
        assert reader.seekable() and reader.readable() and not reader.writable()
        assert reader.read() == plaintext
        assert reader.read() == b""
        assert reader.tell() == size
        reader.seek(0)
        buffer = bytearray(size + 10)
        assert reader.readinto(buffer) == size
        assert bytes(buffer[:size]) == plaintext


def test_default_segment_size_round_trip(keyring):
    plaintext = os.urandom(3 * 1024 * 1024 + 5)
    with open_reader(encrypt_bytes(plaintext, keyring=keyring, context=CONTEXT), keyring) as reader:
        assert reader.segment_count == 4
        reader.seek(1024 * 1024 - 3)
        assert reader.read(10) == plaintext[1024 * 1024 - 3 : 1024 * 1024 + 7]
        reader.seek(0)
        assert reader.read() == plaintext


PLAIN = os.urandom(37 * SEGMENT + 11)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=len(PLAIN) + 2 * SEGMENT),
            st.integers(min_value=0, max_value=5 * SEGMENT),
            st.sampled_from(["read", "readinto", "seek_cur"]),
        ),
        min_size=1,
        max_size=20,
    ),
    cache=st.integers(min_value=1, max_value=5),
)
def test_random_seeks_and_reads_match_the_plaintext(keyring, ops, cache):
    blob = encrypted(PLAIN, keyring)
    with open_reader(blob, keyring, cache_segments=cache) as reader:
        model = io.BytesIO(PLAIN)
        for offset, length, how in ops:
            if how == "seek_cur":
                delta = offset - reader.tell()
                assert reader.seek(delta, io.SEEK_CUR) == model.seek(delta, io.SEEK_CUR)
            else:
                assert reader.seek(offset) == model.seek(offset)
            if how == "readinto":
                ours, theirs = bytearray(length), bytearray(length)
                assert reader.readinto(ours) == model.readinto(theirs)
                assert ours == theirs
            else:
                assert reader.read(length) == model.read(length)
            assert reader.tell() == model.tell()


def test_parquet_reads_only_what_it_needs(keyring):
    table = pa.table({f"c{i}": pa.array(range(i, i + 50_000)) for i in range(8)})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=10_000, compression="none")
    plaintext = sink.getvalue()
    with open_reader(encrypted(plaintext, keyring, segment_size=4096), keyring) as reader:
        read = pq.ParquetFile(reader).read(columns=["c3"])
        assert read.equals(table.select(["c3"]))


def test_seek_errors_and_closed(keyring):
    reader = open_reader(encrypted(b"abc", keyring), keyring)
    with pytest.raises(ValueError):
        reader.seek(-1)
    with pytest.raises(ValueError):
        reader.seek(0, 7)
    reader.close()
    with pytest.raises(ValueError):
        reader.read(1)


# -- tampering ---------------------------------------------------------------------------------------


@pytest.fixture
def plaintext10() -> bytes:
    return os.urandom(10 * SEGMENT + SEGMENT // 2)  # 11 segments


@pytest.mark.usefixtures("segment_backend")
def test_flipped_byte_in_a_middle_segment_fails_when_read(keyring, plaintext10):
    blob = bytearray(encrypted(plaintext10, keyring))
    header, _ = split(bytes(blob))
    blob[len(header) + 5 * (SEGMENT + TAG) + 3] ^= 1
    with open_reader(bytes(blob), keyring) as reader:  # the final segment is intact: opens
        assert reader.read(5 * SEGMENT) == plaintext10[: 5 * SEGMENT]  # untouched segments still read
        with pytest.raises(IntegrityError, match="segment 5"):
            reader.read(1)
        reader.seek(6 * SEGMENT)
        assert reader.read() == plaintext10[6 * SEGMENT :]


def test_flipped_tag_fails(keyring, plaintext10):
    blob = bytearray(encrypted(plaintext10, keyring))
    header, _ = split(bytes(blob))
    blob[len(header) + 2 * (SEGMENT + TAG) - 1] ^= 0x80  # last tag byte of segment 1
    with open_reader(bytes(blob), keyring) as reader, pytest.raises(IntegrityError):
        reader.seek(SEGMENT + 1)
        reader.read(1)


def test_swapped_segments_fail(keyring, plaintext10):
    header, segments = split(encrypted(plaintext10, keyring))
    segments[2], segments[3] = segments[3], segments[2]
    with open_reader(header + b"".join(segments), keyring) as reader:
        assert reader.read(2 * SEGMENT) == plaintext10[: 2 * SEGMENT]
        for offset in (2 * SEGMENT, 3 * SEGMENT + 7):
            reader.seek(offset)
            with pytest.raises(IntegrityError):
                reader.read(1)


@pytest.mark.parametrize("keep", [1, 5, 10])
def test_truncated_at_a_segment_boundary_fails_on_open(keyring, plaintext10, keep):
    header, segments = split(encrypted(plaintext10, keyring))
    with pytest.raises(IntegrityError):
        open_reader(header + b"".join(segments[:keep]), keyring)


def test_truncated_mid_segment_fails_on_open(keyring, plaintext10):
    blob = encrypted(plaintext10, keyring)
    for cut in (1, TAG - 1, TAG, TAG + 1, SEGMENT + TAG + 1):
        with pytest.raises(IntegrityError):
            open_reader(blob[:-cut], keyring)


def test_header_only_fails_on_open(keyring):
    header, _ = split(encrypted(b"", keyring))
    with pytest.raises(IntegrityError):
        open_reader(header, keyring)


def test_appended_segment_fails_on_open(keyring, plaintext10):
    header, segments = split(encrypted(plaintext10, keyring))
    # A copy of an earlier full segment, a genuine final segment from another file, and garbage.
    _, other_segments = split(encrypted(os.urandom(SEGMENT // 2), keyring))
    for extra in (segments[0], other_segments[-1], os.urandom(SEGMENT + TAG), b"\x00"):
        with pytest.raises(IntegrityError):
            open_reader(header + b"".join(segments) + extra, keyring)


def test_appended_segment_to_a_whole_last_segment_fails(keyring):
    plaintext = os.urandom(3 * SEGMENT)  # the final segment is full
    header, segments = split(encrypted(plaintext, keyring))
    with pytest.raises(IntegrityError):
        open_reader(header + b"".join(segments) + segments[1], keyring)


def test_wrong_context_fails(keyring, plaintext10):
    blob = encrypted(plaintext10, keyring)
    with pytest.raises(IntegrityError):
        open_reader(blob, keyring, context={**CONTEXT, "version": 4})


def test_modified_header_fails(keyring, plaintext10):
    blob = bytearray(encrypted(plaintext10, keyring))
    blob[20] ^= 1  # inside the salt: the header MAC fails
    with pytest.raises(IntegrityError):
        open_reader(bytes(blob), keyring)


def test_wrong_kek_under_the_right_id_fails(keyring, kek1, plaintext10):
    blob = encrypted(plaintext10, keyring)
    impostor = Keyring([KeyEncryptionKey(id=kek1.id, key=os.urandom(32))], current_id=kek1.id)
    with pytest.raises(IntegrityError):
        open_reader(blob, impostor)


def test_source_shrinking_while_open_fails(keyring, plaintext10):
    blob = encrypted(plaintext10, keyring)
    src = io.BytesIO(blob)
    reader = SegmentReader(src, keyring=keyring, context=CONTEXT)
    src.truncate(len(blob) - 3 * (SEGMENT + TAG))
    reader.seek(8 * SEGMENT)
    with pytest.raises(IntegrityError):
        reader.read(1)
