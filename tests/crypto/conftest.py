"""Fixtures for the crypto core's tests (no Django)."""

from __future__ import annotations

import os

import pytest

from clearinghouse.crypto import KeyEncryptionKey, Keyring, _aead

SEGMENT = 64  # small segments keep multi-segment cases fast
CONTEXT = {"organisation": 7, "dataset": "9b2f1c3e-0000-4000-8000-000000000001", "version": 3}


@pytest.fixture(scope="session")
def kek1() -> KeyEncryptionKey:
    return KeyEncryptionKey(id="kek-2026-11-25-aa01", key=os.urandom(32))


@pytest.fixture(scope="session")
def kek2() -> KeyEncryptionKey:
    return KeyEncryptionKey(id="kek-2026-12-01-bb02", key=os.urandom(32))


@pytest.fixture(scope="session")
def keyring(kek1: KeyEncryptionKey) -> Keyring:
    return Keyring([kek1], current_id=kek1.id)


@pytest.fixture
def plaintext() -> bytes:
    """Five and a half segments of random bytes."""
    return os.urandom(SEGMENT * 5 + SEGMENT // 2)


@pytest.fixture(params=sorted(_aead.BACKENDS))
def segment_backend(request, monkeypatch) -> str:
    """Run a test under each available AES-GCM backend (OpenSSL via `cryptography`, pycryptodome)."""
    monkeypatch.setattr(_aead, "backend", request.param)
    return request.param
