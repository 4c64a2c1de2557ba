"""Round trips, streaming behaviour and tamper detection of the envelope format."""

from __future__ import annotations

import base64
import io
import os
import uuid

import pytest

from clearinghouse.crypto import (
    DEFAULT_SEGMENT_SIZE,
    CryptoError,
    FormatError,
    IntegrityError,
    KeyEncryptionKey,
    Keyring,
    UnknownKeyError,
    canonical_context,
    decrypt_into,
    decrypt_stream,
    decrypt_to_bytes,
    encrypt_bytes,
    encrypt_stream,
    parse_header,
    plaintext_size,
    read_header,
)
from tests.shared_data import DATASETS

from .conftest import CONTEXT, SEGMENT

pytestmark = pytest.mark.usefixtures("segment_backend")

TAG = 16
ADULT = DATASETS / "adult.csv"


def split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """Header and sealed segments (ciphertext || tag) of an encrypted file written with SEGMENT."""
    header = read_header(io.BytesIO(blob))
    body = blob[len(header) :]
    step = SEGMENT + TAG
    return header, [body[i : i + step] for i in range(0, len(body), step)]


def flip(data: bytes, index: int, bit: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ (1 << bit)]) + data[index + 1 :]


def encrypt(data: bytes, keyring: Keyring, context=CONTEXT) -> bytes:
    return encrypt_bytes(data, keyring=keyring, context=context, segment_size=SEGMENT)


def decrypt(blob: bytes, keyring: Keyring, context=CONTEXT) -> bytes:
    return decrypt_to_bytes(blob, keyring=keyring, context=context)


# -- round trips --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT, 7 * SEGMENT + 13])
def test_round_trip_sizes(keyring, size):
    data = os.urandom(size)
    blob = encrypt(data, keyring)
    header, segments = split(blob)
    expected_segments = max(1, -(-size // SEGMENT))
    assert len(segments) == expected_segments
    assert len(blob) == len(header) + size + expected_segments * TAG
    assert decrypt(blob, keyring) == data


def test_encryption_info_matches_output(keyring, plaintext):
    out = io.BytesIO()
    info = encrypt_stream(io.BytesIO(plaintext), out, keyring=keyring, context=CONTEXT, segment_size=SEGMENT)
    blob = out.getvalue()
    assert info.ciphertext_size == len(blob)
    assert info.plaintext_size == len(plaintext)
    assert info.segment_count == 6
    assert info.kek_id == keyring.current_id
    assert info.header_size == len(read_header(io.BytesIO(blob)))
    back = io.BytesIO()
    assert decrypt_stream(io.BytesIO(blob), back, keyring=keyring, context=CONTEXT) == info
    assert back.getvalue() == plaintext


def test_each_encryption_uses_fresh_key_material(keyring):
    data = b"same plaintext, same context" * 10
    a, b = encrypt(data, keyring), encrypt(data, keyring)
    assert a != b
    header_a, header_b = parse_header(split(a)[0]), parse_header(split(b)[0])
    assert header_a == header_b  # same KEK and segment size...
    assert split(a)[0][10:42] != split(b)[0][10:42]  # ...but a fresh salt
    assert data[:SEGMENT] not in a


def test_real_file_round_trip(tmp_path, keyring):
    encrypted, decrypted = tmp_path / "adult.csv.enc", tmp_path / "adult.csv"
    with ADULT.open("rb") as src, encrypted.open("wb") as dst:
        info = encrypt_stream(src, dst, keyring=keyring, context=CONTEXT)
    assert info.segment_size == DEFAULT_SEGMENT_SIZE
    assert info.segment_count == -(-ADULT.stat().st_size // DEFAULT_SEGMENT_SIZE)
    assert encrypted.stat().st_size == info.ciphertext_size
    assert b"Never-married" not in encrypted.read_bytes()
    with encrypted.open("rb") as src, decrypted.open("wb") as dst:
        decrypt_stream(src, dst, keyring=keyring, context=CONTEXT)
    assert decrypted.read_bytes() == ADULT.read_bytes()


class Trickle(io.RawIOBase):
    """A non-seekable source that returns at most `step` bytes per read and records the largest
    request, to check short reads are handled and memory stays bounded by one segment."""

    def __init__(self, data: bytes, step: int, *, readinto: bool) -> None:
        self._data, self._pos, self._step, self.largest = data, 0, step, 0
        if not readinto:
            self.readinto = None  # force the read() fallback

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        self.largest = max(self.largest, size)
        chunk = self._data[self._pos : self._pos + min(size, self._step)]
        self._pos += len(chunk)
        return chunk

    def readinto(self, buffer) -> int:  # type: ignore[override]
        self.largest = max(self.largest, len(buffer))
        chunk = self.read(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


@pytest.mark.parametrize("use_readinto", [True, False])
def test_streams_with_short_reads_and_bounded_requests(keyring, plaintext, use_readinto):
    src = Trickle(plaintext, 7, readinto=use_readinto)
    out = io.BytesIO()
    encrypt_stream(src, out, keyring=keyring, context=CONTEXT, segment_size=SEGMENT)
    assert src.largest <= SEGMENT + 1
    blob = out.getvalue()
    src = Trickle(blob, 5, readinto=use_readinto)
    back = io.BytesIO()
    decrypt_stream(src, back, keyring=keyring, context=CONTEXT)
    assert back.getvalue() == plaintext
    assert src.largest <= SEGMENT + TAG + 1


def test_bad_segment_sizes_are_refused(keyring):
    for size in (0, 15, 64 * 1024 * 1024 + 1):
        with pytest.raises(ValueError):
            encrypt_bytes(b"x", keyring=keyring, context=CONTEXT, segment_size=size)


# -- context binding ------------------------------------------------------------------------------------


def test_context_mapping_is_canonical():
    ds = uuid.UUID(CONTEXT["dataset"])
    assert canonical_context({"b": 1, "a": "x"}) == canonical_context({"a": "x", "b": 1})
    assert canonical_context({"d": ds}) == canonical_context({"d": str(ds)})
    assert canonical_context({"v": 3}) != canonical_context({"v": "3"})
    assert canonical_context(b'{"v":3}') != canonical_context({"v": 3})
    for bad in ({}, b"", {"v": 1.5}, {"v": True}, {"v": None}, {1: "x"}, "text"):
        with pytest.raises((TypeError, ValueError)):
            canonical_context(bad)


def test_mapping_order_does_not_matter_for_decryption(keyring, plaintext):
    blob = encrypt(plaintext, keyring, context={"organisation": 7, "dataset": "d", "version": 3})
    assert decrypt(blob, keyring, context={"version": 3, "dataset": "d", "organisation": 7}) == plaintext


@pytest.mark.parametrize(
    "other",
    [
        {**CONTEXT, "dataset": "9b2f1c3e-0000-4000-8000-000000000002"},
        {**CONTEXT, "version": 4},
        {**CONTEXT, "organisation": 8},
        {**CONTEXT, "version": "3"},
        b"organisation=7",
    ],
)
def test_other_context_is_refused(keyring, plaintext, other):
    blob = encrypt(plaintext, keyring)
    with pytest.raises(IntegrityError, match="segment 0 failed authentication"):
        decrypt(blob, keyring, context=other)


def test_empty_file_is_bound_to_its_context_too(keyring):
    blob = encrypt(b"", keyring)
    assert decrypt(blob, keyring) == b""
    with pytest.raises(IntegrityError):
        decrypt(blob, keyring, context={**CONTEXT, "version": 4})


# -- tampering ------------------------------------------------------------------------------------------


def test_every_header_bit_flip_is_refused(keyring):
    blob = encrypt(b"payload " * 20, keyring)
    header, _ = split(blob)
    assert header[5] == 2 and header[49] == 1  # format version 2, wrapped under a KEK
    id_start, id_end = 51, 51 + header[50]
    for index in range(len(header)):
        for bit in range(8):
            tampered = flip(blob, index, bit)
            expected = IntegrityError
            if id_start <= index < id_end:
                # A flipped KEK id that is still a well-formed id names a key we do not have.
                new_id = tampered[id_start:id_end].decode("latin-1")
                if (
                    new_id.isascii()
                    and all(c.isalnum() or c in "._:-" for c in new_id)
                    and new_id[0].isalnum()
                ):
                    expected = UnknownKeyError
            with pytest.raises(CryptoError) as excinfo:
                decrypt(tampered, keyring)
            assert isinstance(excinfo.value, expected), (index, bit, excinfo.value)


def test_header_flips_fail_before_any_plaintext_is_written(keyring, plaintext):
    blob = encrypt(plaintext, keyring)
    header, _ = split(blob)
    for index in (12, 45, len(header) - 40, len(header) - 1):  # salt, nonce prefix, wrapped key, MAC
        out = io.BytesIO()
        with pytest.raises(IntegrityError):
            decrypt_stream(io.BytesIO(flip(blob, index)), out, keyring=keyring, context=CONTEXT)
        assert out.getvalue() == b""


def test_bit_flip_in_middle_segment_is_refused(keyring, plaintext):
    blob = encrypt(plaintext, keyring)
    header, _ = split(blob)
    position = len(header) + 2 * (SEGMENT + TAG) + 10
    with pytest.raises(IntegrityError, match="segment 2 failed"):
        decrypt(flip(blob, position, 3), keyring)


def test_bit_flip_in_last_tag_is_refused(keyring, plaintext):
    blob = encrypt(plaintext, keyring)
    with pytest.raises(IntegrityError, match="segment 5 failed"):
        decrypt(flip(blob, len(blob) - 1, 7), keyring)


def test_dropping_the_last_segment_is_refused(keyring, plaintext):
    header, segments = split(encrypt(plaintext, keyring))
    with pytest.raises(IntegrityError):
        decrypt(header + b"".join(segments[:-1]), keyring)


def test_dropping_a_full_last_segment_is_refused(keyring):
    header, segments = split(encrypt(os.urandom(3 * SEGMENT), keyring))
    assert len(segments) == 3 and all(len(s) == SEGMENT + TAG for s in segments)
    with pytest.raises(IntegrityError):
        decrypt(header + b"".join(segments[:-1]), keyring)


@pytest.mark.parametrize("cut", [1, TAG - 1, TAG, TAG + 1, SEGMENT, SEGMENT + TAG - 1])
def test_truncation_mid_segment_is_refused(keyring, plaintext, cut):
    header, segments = split(encrypt(plaintext, keyring))
    truncated = header + b"".join(segments[:3]) + segments[3][:cut]
    with pytest.raises(IntegrityError):
        decrypt(truncated, keyring)


def test_header_only_or_partial_header_is_refused(keyring, plaintext):
    blob = encrypt(plaintext, keyring)
    header, _ = split(blob)
    with pytest.raises(IntegrityError, match="truncated"):
        decrypt(header, keyring)
    for cut in (0, 3, 49, len(header) - 1):
        with pytest.raises(FormatError):
            decrypt(blob[:cut], keyring)


def test_swapping_two_segments_is_refused(keyring, plaintext):
    header, s = split(encrypt(plaintext, keyring))
    with pytest.raises(IntegrityError, match="segment 1 failed"):
        decrypt(header + s[0] + s[2] + s[1] + b"".join(s[3:]), keyring)


def test_appending_a_segment_is_refused(keyring, plaintext):
    blob = encrypt(plaintext, keyring)
    _, segments = split(blob)
    _, other_segments = split(encrypt(plaintext, keyring))
    for extra in (segments[1], segments[-1], other_segments[-1], b"\x00"):
        with pytest.raises(IntegrityError):
            decrypt(blob + extra, keyring)


def test_segments_from_another_file_are_refused(keyring, plaintext):
    header, _ = split(encrypt(plaintext, keyring))
    _, other_segments = split(encrypt(plaintext, keyring))
    with pytest.raises(IntegrityError):
        decrypt(header + b"".join(other_segments), keyring)


def test_wrong_kek_under_the_same_id_is_refused(keyring, kek1, plaintext):
    blob = encrypt(plaintext, keyring)
    impostor_key = os.urandom(32)
    impostor = Keyring([KeyEncryptionKey(id=kek1.id, key=impostor_key)], current_id=kek1.id)
    with pytest.raises(IntegrityError, match="cannot unwrap") as excinfo:
        decrypt(blob, impostor)
    message = str(excinfo.value)
    for secret in (kek1.key, impostor_key):
        assert base64.b64encode(secret).decode() not in message
        assert secret.hex() not in message


def test_unknown_kek_is_reported_by_id(keyring, kek2, plaintext):
    blob = encrypt(plaintext, keyring)
    with pytest.raises(UnknownKeyError) as excinfo:
        decrypt(blob, Keyring([kek2], current_id=kek2.id))
    assert excinfo.value.kek_id == keyring.current_id
    assert keyring.current_id in str(excinfo.value)


def test_not_an_encrypted_file(keyring):
    for junk in (b"", b"hello", b"PAR1" + os.urandom(200), ADULT.read_bytes()[:4096]):
        with pytest.raises(FormatError):
            decrypt(junk, keyring)


def test_integrity_errors_do_not_leak_plaintext(keyring):
    secret_text = b"patient 4711 has condition X; " * 8
    blob = encrypt(secret_text, keyring)
    for tampered in (flip(blob, len(blob) - 20), blob[:-5]):
        with pytest.raises(IntegrityError) as excinfo:
            decrypt(tampered, keyring)
        assert "patient" not in str(excinfo.value)


def test_backends_write_the_same_format(keyring, plaintext, monkeypatch):
    from clearinghouse.crypto import _aead

    if "openssl" not in _aead.BACKENDS:
        pytest.skip("cryptography (OpenSSL AES-GCM) is not installed")
    blobs = {}
    for name in ("openssl", "pycryptodome"):
        monkeypatch.setattr(_aead, "backend", name)
        blobs[name] = encrypt(plaintext, keyring)
    for writer, blob in blobs.items():
        for reader in ("openssl", "pycryptodome"):
            monkeypatch.setattr(_aead, "backend", reader)
            assert decrypt(blob, keyring) == plaintext, (writer, reader)
            with pytest.raises(IntegrityError):
                decrypt(flip(blob, len(blob) - 30), keyring)
    # Same keys and nonces give identical bytes: pin the randomness and compare.
    fixed = iter(range(1000))
    monkeypatch.setattr(
        "clearinghouse.crypto.envelope.secrets.token_bytes", lambda n: bytes([next(fixed) % 256]) * n
    )
    outputs = []
    for name in ("openssl", "pycryptodome"):
        monkeypatch.setattr(_aead, "backend", name)
        fixed = iter(range(1000))
        outputs.append(encrypt(plaintext, keyring))
    assert outputs[0] == outputs[1]


# -- decrypting into a caller's buffer ----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 5 * SEGMENT + 3])
def test_plaintext_size_and_decrypt_into(keyring, size):
    data = os.urandom(size)
    blob = encrypt(data, keyring)
    header, _ = split(blob)
    assert plaintext_size(header=header, encrypted_size=len(blob)) == size
    exact = bytearray(size)
    info = decrypt_into(io.BytesIO(blob), exact, keyring=keyring, context=CONTEXT)
    assert info.plaintext_size == size and bytes(exact) == data
    roomy = bytearray(b"\xee" * (size + 10))
    decrypt_into(blob, memoryview(roomy), keyring=keyring, context=CONTEXT)
    assert roomy[:size] == data and roomy[size:] == b"\xee" * 10


def test_decrypt_into_refuses_small_buffers_and_tampering(keyring, plaintext):
    blob = encrypt(plaintext, keyring)
    with pytest.raises(IntegrityError, match="does not fit"):
        decrypt_into(blob, bytearray(len(plaintext) - 1), keyring=keyring, context=CONTEXT)
    with pytest.raises(IntegrityError):
        decrypt_into(blob[:-1], bytearray(len(plaintext)), keyring=keyring, context=CONTEXT)
    with pytest.raises(IntegrityError):
        decrypt_into(blob, bytearray(len(plaintext)), keyring=keyring, context={**CONTEXT, "version": 9})
    with pytest.raises(TypeError):
        decrypt_into(blob, bytes(len(plaintext)), keyring=keyring, context=CONTEXT)
