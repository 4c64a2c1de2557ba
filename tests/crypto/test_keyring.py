"""Keyring files, environment loading and secrecy of key material in messages."""

from __future__ import annotations

import base64
import json
import os
import re
import stat

import pytest

from clearinghouse.crypto import (
    KeyEncryptionKey,
    Keyring,
    KeyringError,
    UnknownKeyError,
    create_dev_keyring_file,
    generate_kek_id,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def keyring_doc(keys: list[tuple[str, str]], current: str) -> str:
    return json.dumps(
        {
            "format": "clearinghouse-keyring",
            "version": 1,
            "current": current,
            "keys": [{"id": kek_id, "key": key} for kek_id, key in keys],
        }
    )


def test_dev_keyring_file_is_private_even_with_a_permissive_umask(tmp_path):
    path = tmp_path / "var" / "dev-keyring.json"
    old_umask = os.umask(0)
    try:
        keyring = create_dev_keyring_file(path)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Keyring.from_file(path)
    assert loaded.current_id == keyring.current_id
    assert loaded.current.key == keyring.current.key and len(loaded.current.key) == 32
    with pytest.raises(KeyringError, match="already exists"):
        create_dev_keyring_file(path)
    assert Keyring.from_file(path).current.key == keyring.current.key  # untouched


def test_overwrite_keeps_mode_0600(tmp_path):
    path = tmp_path / "keyring.json"
    path.write_text("old")
    path.chmod(0o644)
    keyring = create_dev_keyring_file(path, overwrite=True)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Keyring.from_file(path).current_id == keyring.current_id
    assert [p.name for p in tmp_path.iterdir()] == ["keyring.json"]  # no temporary file left behind


def test_kek_ids_look_like_dated_ids():
    assert re.fullmatch(r"kek-\d{4}-\d{2}-\d{2}-[0-9a-f]{4}", generate_kek_id())
    assert len({generate_kek_id() for _ in range(8)}) > 1  # random suffix


@pytest.mark.parametrize("encoding", ["json", "base64"])
def test_load_from_environment(keyring, kek1, encoding):
    value = keyring.to_json() if encoding == "json" else keyring.to_env_value()
    loaded = Keyring.from_env("TEST_KEYRING", environ={"TEST_KEYRING": value})
    assert loaded.current_id == kek1.id
    assert loaded.get(kek1.id).key == kek1.key


def test_load_from_process_environment(monkeypatch, keyring, kek1):
    monkeypatch.setenv("CLEARINGHOUSE_KEYRING", keyring.to_env_value())
    assert Keyring.from_env().get(kek1.id).key == kek1.key
    monkeypatch.delenv("CLEARINGHOUSE_KEYRING")
    with pytest.raises(KeyringError, match="not set"):
        Keyring.from_env()


def test_multi_key_document(kek1, kek2):
    text = keyring_doc([(kek1.id, b64(kek1.key)), (kek2.id, b64(kek2.key))], current=kek2.id)
    keyring = Keyring.from_json(text)
    assert keyring.current_id == kek2.id
    assert keyring.ids == (kek1.id, kek2.id)
    assert keyring.get(kek1.id).key == kek1.key


def test_repr_hides_keys(keyring, kek1):
    for text in (repr(keyring), repr(kek1), str(kek1)):
        assert b64(kek1.key) not in text and kek1.key.hex() not in text
        assert kek1.id in text


def _bad_documents(secret: bytes) -> list[tuple[str, str]]:
    """(description, keyring text) pairs that each embed `secret` and must be refused."""
    good_id = "kek-2026-11-25-ab12"
    short = b64(secret[:16])
    return [
        ("16-byte key", keyring_doc([(good_id, short)], good_id)),
        ("48-byte key", keyring_doc([(good_id, b64(secret + secret[:16]))], good_id)),
        ("not base64", keyring_doc([(good_id, b64(secret)[:-2] + "!!")], good_id)),
        (
            "urlsafe base64",
            keyring_doc([(good_id, base64.urlsafe_b64encode(secret).decode() + "?")], good_id),
        ),
        ("current missing", keyring_doc([(good_id, b64(secret))], "kek-other")),
        ("duplicate id", keyring_doc([(good_id, b64(secret)), (good_id, b64(secret))], good_id)),
        ("bad id", keyring_doc([("bad id/" + b64(secret)[:8], b64(secret))], good_id)),
        ("broken JSON", keyring_doc([(good_id, b64(secret))], good_id)[:-3]),
        ("wrong format", json.dumps({"current": good_id, "keys": {good_id: b64(secret)}})),
    ]


def test_keyring_errors_never_contain_key_material(tmp_path):
    secret = os.urandom(32)
    embedded = (secret, secret[:16], secret + secret[:16])
    forms = {b64(secret)[:24], secret[:16].hex()} | {
        f(key) for key in embedded for f in (b64, bytes.hex, repr)
    }
    for description, text in _bad_documents(secret):
        messages = []
        with pytest.raises(KeyringError) as excinfo:
            Keyring.from_json(text)
        messages.append(str(excinfo.value))
        with pytest.raises(KeyringError) as excinfo:
            Keyring.from_env("K", environ={"K": b64(text.encode())})
        messages.append(str(excinfo.value))
        path = tmp_path / "bad.json"
        path.write_text(text)
        with pytest.raises(KeyringError) as excinfo:
            Keyring.from_file(path)
        messages.append(str(excinfo.value))
        for message in messages:
            for form in forms:
                assert form not in message, description
        # The cause chain is suppressed too, so tracebacks cannot show the document.
        error = excinfo.value
        assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__), (
            description
        )


def test_direct_construction_errors_hide_keys():
    secret = os.urandom(16)
    with pytest.raises(KeyringError) as excinfo:
        KeyEncryptionKey(id="kek-a", key=secret)
    for form in (b64(secret), secret.hex(), repr(secret)[2:-1]):
        assert form not in str(excinfo.value)
    with pytest.raises(KeyringError):
        KeyEncryptionKey(id="", key=os.urandom(32))
    with pytest.raises(KeyringError):
        Keyring([KeyEncryptionKey.generate("kek-a")], current_id="kek-b")


def test_unknown_key_error_names_only_the_id(keyring, kek1):
    with pytest.raises(UnknownKeyError) as excinfo:
        keyring.get("kek-2020-01-01-dead")
    assert "kek-2020-01-01-dead" in str(excinfo.value)
    assert b64(kek1.key) not in str(excinfo.value)


def test_unreadable_file_is_a_keyring_error(tmp_path):
    with pytest.raises(KeyringError, match="cannot read"):
        Keyring.from_file(tmp_path / "missing.json")
