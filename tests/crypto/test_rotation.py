"""KEK rotation: re-wrapping headers without touching the data segments."""

from __future__ import annotations

import io

import pytest

from clearinghouse.crypto import (
    FormatError,
    IntegrityError,
    KeyEncryptionKey,
    Keyring,
    KeyringError,
    UnknownKeyError,
    decrypt_to_bytes,
    encrypt_bytes,
    parse_header,
    read_header,
    rewrap_header,
    rewrap_stream,
)

from .conftest import CONTEXT, SEGMENT

pytestmark = pytest.mark.usefixtures("segment_backend")


def encrypt(data: bytes, keyring: Keyring) -> bytes:
    return encrypt_bytes(data, keyring=keyring, context=CONTEXT, segment_size=SEGMENT)


def decrypt(blob: bytes, keyring: Keyring) -> bytes:
    return decrypt_to_bytes(blob, keyring=keyring, context=CONTEXT)


def split_header(blob: bytes) -> tuple[bytes, bytes]:
    header = read_header(io.BytesIO(blob))
    return header, blob[len(header) :]


def test_rotation_rewrap_and_retirement(keyring, kek1, kek2, plaintext):
    rewrapped_file = encrypt(plaintext, keyring)
    untouched_file = encrypt(plaintext, keyring)
    assert parse_header(split_header(rewrapped_file)[0]).kek_id == kek1.id

    rotated = keyring.rotated(kek2)
    assert rotated.current_id == kek2.id and kek1.id in rotated

    old_header, segments = split_header(rewrapped_file)
    new_header = rewrap_header(old_header, keyring=rotated)
    assert parse_header(new_header).kek_id == kek2.id
    assert new_header != old_header
    rewrapped_file = new_header + segments  # the old data segments, byte for byte
    assert decrypt(rewrapped_file, rotated) == plaintext

    # A file left under kek1 stays readable while kek1 is in the keyring.
    assert decrypt(untouched_file, rotated) == plaintext

    retired = rotated.without(kek1.id)
    assert decrypt(rewrapped_file, retired) == plaintext
    with pytest.raises(UnknownKeyError) as excinfo:
        decrypt(untouched_file, retired)
    assert excinfo.value.kek_id == kek1.id
    # Re-wrapping also needs the old KEK.
    with pytest.raises(UnknownKeyError):
        rewrap_header(split_header(untouched_file)[0], keyring=retired)


def test_rewrapped_segments_are_identical_and_header_is_bound(keyring, kek2, plaintext):
    blob = encrypt(plaintext, keyring)
    old_header, old_segments = split_header(blob)
    rotated = keyring.rotated(kek2)
    new_header = rewrap_header(old_header, keyring=rotated)
    # Same salt, nonce prefix and segment size (the bound prefix), new KEK id / wrapped key / MAC.
    assert new_header[:49] == old_header[:49]
    assert new_header[-32:] != old_header[-32:]
    # The new header only opens the original segments; the old one no longer fits a KEK-2-only keyring.
    only_kek2 = Keyring([kek2], current_id=kek2.id)
    assert decrypt(new_header + old_segments, only_kek2) == plaintext
    _, other_segments = split_header(encrypt(plaintext, keyring))
    with pytest.raises(IntegrityError):
        decrypt(new_header + other_segments, rotated)


def test_rewrap_stream_copies_segments(keyring, kek2, plaintext):
    blob = encrypt(plaintext, keyring)
    rotated = keyring.rotated(kek2)
    out = io.BytesIO()
    info = rewrap_stream(io.BytesIO(blob), out, keyring=rotated)
    assert info.kek_id == kek2.id and info.segment_size == SEGMENT
    new_blob = out.getvalue()
    assert split_header(new_blob)[1] == split_header(blob)[1]
    assert decrypt(new_blob, rotated.without(keyring.current_id)) == plaintext


def test_rewrap_refuses_a_damaged_header(keyring, kek2, plaintext):
    header, _ = split_header(encrypt(plaintext, keyring))
    rotated = keyring.rotated(kek2)
    for index in (5, 20, 45, len(header) - 50, len(header) - 1):
        damaged = header[:index] + bytes([header[index] ^ 0x10]) + header[index + 1 :]
        with pytest.raises(IntegrityError):
            rewrap_header(damaged, keyring=rotated)
    with pytest.raises(FormatError):
        rewrap_header(header + b"\x00", keyring=rotated)  # not exactly a header


def test_rewrap_under_the_same_kek_is_harmless(keyring, plaintext):
    blob = encrypt(plaintext, keyring)
    header, segments = split_header(blob)
    assert decrypt(rewrap_header(header, keyring=keyring) + segments, keyring) == plaintext


def test_current_kek_cannot_be_removed(keyring, kek1):
    with pytest.raises(KeyringError):
        keyring.without(kek1.id)
    with pytest.raises(UnknownKeyError):
        keyring.without("kek-never-existed")


def test_rotated_keyring_persists(tmp_path, keyring, kek1, plaintext):
    path = tmp_path / "keyring.json"
    keyring.save(path)
    blob = encrypt(plaintext, keyring)
    rotated = Keyring.from_file(path).rotated()
    with pytest.raises(KeyringError):
        rotated.save(path)  # refuses to clobber without overwrite=True
    rotated.save(path, overwrite=True)
    reloaded = Keyring.from_file(path)
    assert reloaded.current_id == rotated.current_id != kek1.id
    assert set(reloaded.ids) == {kek1.id, rotated.current_id}
    assert reloaded.get(kek1.id).key == kek1.key
    assert decrypt(blob, reloaded) == plaintext
    new_kek = KeyEncryptionKey.generate()
    assert new_kek.id.startswith("kek-") and new_kek.id not in reloaded
