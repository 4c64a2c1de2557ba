"""Files encrypted to a staging public key: only the keyring's staging private key opens them."""

from __future__ import annotations

import base64
import io
import json
import os

import pytest

from clearinghouse.crypto import (
    CryptoError,
    IntegrityError,
    KeyEncryptionKey,
    Keyring,
    KeyringError,
    StagingKey,
    StagingPublicKey,
    UnknownKeyError,
    decrypt_to_bytes,
    encrypt_bytes,
    parse_header,
    read_header,
    rewrap_header,
)

from .conftest import CONTEXT, SEGMENT

pytestmark = pytest.mark.usefixtures("segment_backend")


@pytest.fixture(scope="module")
def ring() -> Keyring:
    return Keyring.generate()


def to_public(data: bytes, public: StagingPublicKey, context=CONTEXT) -> bytes:
    return encrypt_bytes(data, recipient=public, context=context, segment_size=SEGMENT)


def header_of(blob: bytes) -> bytes:
    return read_header(io.BytesIO(blob))


def test_public_key_encrypts_and_only_the_keyring_decrypts(ring, plaintext):
    public = ring.staging_current.public
    blob = to_public(plaintext, public)
    info = parse_header(header_of(blob))
    assert (info.format_version, info.wrap_kind, info.kek_id) == (2, 2, public.id)
    assert decrypt_to_bytes(blob, keyring=ring, context=CONTEXT) == plaintext
    # A keyring of KEKs only, or with another staging key, does not have the key.
    with pytest.raises(UnknownKeyError):
        decrypt_to_bytes(blob, keyring=Keyring.generate(), context=CONTEXT)
    kek_only = Keyring([ring.current], current_id=ring.current_id)
    with pytest.raises(UnknownKeyError):
        decrypt_to_bytes(blob, keyring=kek_only, context=CONTEXT)


def test_wrong_private_key_under_the_same_id_is_refused(ring, plaintext):
    blob = to_public(plaintext, ring.staging_current.public)
    impostor = StagingKey(id=ring.staging_current.id, private=os.urandom(32))
    wrong = Keyring(
        [ring.current], current_id=ring.current_id, staging=[impostor], staging_current_id=impostor.id
    )
    with pytest.raises(IntegrityError, match="cannot unwrap") as excinfo:
        decrypt_to_bytes(blob, keyring=wrong, context=CONTEXT)
    for secret in (impostor.private, ring.staging_current.private):
        assert base64.b64encode(secret).decode() not in str(excinfo.value)
        assert secret.hex() not in str(excinfo.value)


def test_each_file_has_its_own_ephemeral_key(ring):
    public = ring.staging_current.public
    first, second = header_of(to_public(b"same", public)), header_of(to_public(b"same", public))
    # Ephemeral public key: the 32 bytes after the key id and wrapped-key length.
    id_end = 51 + first[50]
    assert first[id_end + 2 : id_end + 34] != second[id_end + 2 : id_end + 34]


def test_every_header_bit_flip_of_a_staging_file_is_refused(ring):
    blob = to_public(b"payload " * 20, ring.staging_current.public)
    header = header_of(blob)
    id_start, id_end = 51, 51 + header[50]
    for index in range(len(header)):
        if id_start <= index < id_end:
            continue  # flipped ids name unknown keys (test_envelope covers that case)
        for bit in range(8):
            tampered = blob[:index] + bytes([blob[index] ^ (1 << bit)]) + blob[index + 1 :]
            with pytest.raises(IntegrityError):
                decrypt_to_bytes(tampered, keyring=ring, context=CONTEXT)


@pytest.mark.parametrize("tamper", ["segment", "truncate", "append", "context"])
def test_tampered_staging_file_is_refused(ring, plaintext, tamper):
    blob = bytearray(to_public(plaintext, ring.staging_current.public))
    context = CONTEXT
    if tamper == "segment":
        blob[len(blob) // 2] ^= 0x04
    elif tamper == "truncate":
        del blob[-5:]
    elif tamper == "append":
        blob += os.urandom(SEGMENT + 16)
    else:
        context = {**CONTEXT, "version": 4}
    with pytest.raises(IntegrityError):
        decrypt_to_bytes(bytes(blob), keyring=ring, context=context)


def test_rewrap_moves_a_staging_file_under_the_current_kek(ring, plaintext):
    blob = to_public(plaintext, ring.staging_current.public)
    old_header = header_of(blob)
    new_header = rewrap_header(old_header, keyring=ring)
    info = parse_header(new_header)
    assert (info.wrap_kind, info.kek_id) == (1, ring.current_id)
    assert new_header[:49] == old_header[:49]  # same bound prefix: the segments stay valid
    rewrapped = new_header + blob[len(old_header) :]
    # Without the staging key (retired after the re-wrap), the file still opens under the KEK.
    kek_only = Keyring([ring.current], current_id=ring.current_id)
    assert decrypt_to_bytes(rewrapped, keyring=kek_only, context=CONTEXT) == plaintext


# A file written by the format-version-1 code (before staging keys), under this KEK and context.
V1_KEK = KeyEncryptionKey(id="kek-2026-01-01-v1v1", key=bytes(range(32)))
V1_CONTEXT = {"organisation": 7, "version": 1}
V1_FILE = base64.b64decode(
    "Q0hFTkMBAAAAQHZig7jttNz8FLAShf+O2nDcy+CSdJwsfHZ9i3a2V64B7nz2hKy+UhNrZWstMjAyNi0wMS0wMS12MXYxACi8xYzShMux4kul"
    "+cV9DXpzsdPUi6MJtbxXJaqgQ1lfg6+e2oU5GZ7zmorcl4AajnJ03v8+s1c1olswivwwPau6e29xjq5gUSkpKulxTqd0v82N15JD56qxf3pF"
    "UGQ5N6/8XHA2uLldMTuUSd0uLUs0DRJOMPgCDIWW+qqjzIe+6xp44gjYPRYNA/cwxjzM+V4Hb8dZb3657cbdkHPkQTZhmaaUu4IB1z8V+FY6"
    "W2IaGLOzGeid2qgoKyy7R0Trr/x/PfcWHZitIcBjkCVmrJPd7HX+z4cxh6A5/vY="
)


def test_format_version_1_files_still_decrypt_and_rewrap_as_version_1():
    ring = Keyring([V1_KEK], current_id=V1_KEK.id)
    assert decrypt_to_bytes(V1_FILE, keyring=ring, context=V1_CONTEXT) == b"format version 1 file, " * 5
    rotated = ring.rotated()
    header = header_of(V1_FILE)
    new_header = rewrap_header(header, keyring=rotated)
    assert (
        parse_header(new_header).format_version == 1 and parse_header(new_header).kek_id == rotated.current_id
    )
    rewrapped = new_header + V1_FILE[len(header) :]
    assert decrypt_to_bytes(rewrapped, keyring=rotated.without(V1_KEK.id), context=V1_CONTEXT) == (
        b"format version 1 file, " * 5
    )


# -- staging keys in the keyring -------------------------------------------------------------------------


def test_keyring_with_staging_keys_round_trips_and_rotation_keeps_old_pairs(tmp_path):
    ring = Keyring.generate()
    rotated = ring.rotated()
    assert rotated.current_id != ring.current_id and rotated.staging_current.id != ring.staging_current.id
    assert set(rotated.staging_ids) == {ring.staging_current.id, rotated.staging_current.id}
    assert rotated.staging_current.id.startswith("stg-")
    path = tmp_path / "keyring.json"
    rotated.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = Keyring.from_file(path)
    assert (
        loaded.staging_ids == rotated.staging_ids and loaded.staging_current.id == rotated.staging_current.id
    )
    assert loaded.staging_get(ring.staging_current.id).private == ring.staging_current.private
    # An old staging pair can be retired; the current one cannot.
    assert ring.staging_current.id not in rotated.without(ring.staging_current.id).staging_ids
    with pytest.raises(KeyringError, match="current staging key"):
        rotated.without(rotated.staging_current.id)


def test_version_1_keyrings_load_without_staging_keys(kek1):
    doc = {
        "format": "clearinghouse-keyring",
        "version": 1,
        "current": kek1.id,
        "keys": [{"id": kek1.id, "key": base64.b64encode(kek1.key).decode()}],
    }
    ring = Keyring.from_json(json.dumps(doc))
    assert ring.staging_ids == ()
    with pytest.raises(KeyringError, match="no staging key"):
        _ = ring.staging_current
    assert ring.with_new_staging_key().staging_current.id.startswith("stg-")


def test_public_key_file_holds_only_the_public_half(tmp_path):
    ring = Keyring.generate()
    pair = ring.staging_current
    path = tmp_path / "staging-public.json"
    pair.public.save(path)
    text = path.read_text()
    assert base64.b64encode(pair.private).decode() not in text and "private" not in text
    assert StagingPublicKey.from_file(path) == pair.public
    for secret in (repr(ring), repr(pair), str(pair)):
        assert base64.b64encode(pair.private).decode() not in secret and pair.private.hex() not in secret


@pytest.mark.parametrize(
    "doc",
    [
        {"format": "clearinghouse-staging-public-key", "version": 1, "id": "stg-x", "key": "AAAA"},
        {
            "format": "clearinghouse-keyring",
            "version": 1,
            "id": "stg-x",
            "key": base64.b64encode(b"k" * 32).decode(),
        },
        {"format": "clearinghouse-staging-public-key", "version": 1, "id": "bad id", "key": ""},
    ],
)
def test_bad_public_key_files_are_refused(doc):
    with pytest.raises(KeyringError):
        StagingPublicKey.from_json(json.dumps(doc))


def test_staging_key_errors_never_contain_key_material(kek1):
    secret = os.urandom(32)
    doc = {
        "format": "clearinghouse-keyring",
        "version": 2,
        "current": kek1.id,
        "keys": [{"id": kek1.id, "key": base64.b64encode(kek1.key).decode()}],
        "staging_current": "stg-1",
        "staging_keys": [{"id": "stg-1", "private": base64.b64encode(secret + b"x").decode()}],
    }
    with pytest.raises(CryptoError) as excinfo:
        Keyring.from_json(json.dumps(doc))
    assert base64.b64encode(secret).decode()[:16] not in str(excinfo.value)
    assert base64.b64encode(kek1.key).decode()[:16] not in str(excinfo.value)
