"""A message sealed to a one-off X25519 recipient key: how a worker hands plaintext to one web request.

The web process holds no key that decrypts stored data. When a page must show a few item texts, the
request draws a fresh X25519 key pair (`OneOffRecipient`), sends only its public half with the task,
and the worker seals its answer to it (`seal`: ephemeral-static ECDH, HKDF-SHA256 bound to both
public keys and to `context`, AES-256-GCM). The answer crosses the broker and the result store
sealed; only the request that still holds the private half (in memory, for its own lifetime) opens
it (`OneOffRecipient.open`). Pure: pycryptodome only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from Crypto.Cipher import AES
from Crypto.Protocol.DH import import_x25519_public_key, key_agreement
from Crypto.PublicKey import ECC
from Crypto.Random import get_random_bytes

from .errors import IntegrityError
from .keyring import X25519_KEY_SIZE
from .wrapping import hkdf_sha256

__all__ = ["OneOffRecipient", "seal"]

_INFO = b"clearinghouse.crypto/v1 sealed message"
_NONCE = 12
_TAG = 16


def _key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes, context: bytes) -> bytes:
    return hkdf_sha256(shared, ephemeral_public + recipient_public, _INFO + b"\x00" + context)


def seal(recipient_public: bytes, plaintext: bytes, *, context: bytes) -> bytes:
    """`ephemeral public (32) || nonce (12) || ciphertext || tag (16)` for `recipient_public`."""
    if len(recipient_public) != X25519_KEY_SIZE:
        raise ValueError("the recipient key must be a 32-byte X25519 public key")
    ephemeral = ECC.generate(curve="Curve25519")
    ephemeral_public = ephemeral.public_key().export_key(format="raw")
    try:
        recipient = import_x25519_public_key(recipient_public)
    except ValueError:
        raise ValueError("the recipient key is not a valid X25519 public key") from None
    key = key_agreement(
        static_pub=recipient,
        eph_priv=ephemeral,
        kdf=lambda shared: _key(bytes(shared), ephemeral_public, recipient_public, context),
    )
    nonce = get_random_bytes(_NONCE)
    ciphertext, tag = AES.new(key, AES.MODE_GCM, nonce=nonce).encrypt_and_digest(plaintext)
    return ephemeral_public + nonce + ciphertext + tag


@dataclass(frozen=True, eq=False)
class OneOffRecipient:
    """A key pair that lives as long as this object: drawn per request, never stored."""

    _private: ECC.EccKey = field(default_factory=lambda: ECC.generate(curve="Curve25519"), repr=False)

    @property
    def public(self) -> bytes:
        return self._private.public_key().export_key(format="raw")

    def open(self, sealed: bytes, *, context: bytes) -> bytes:
        if len(sealed) < X25519_KEY_SIZE + _NONCE + _TAG:
            raise IntegrityError("the sealed message is truncated")
        ephemeral_public = sealed[:X25519_KEY_SIZE]
        nonce = sealed[X25519_KEY_SIZE : X25519_KEY_SIZE + _NONCE]
        body, tag = sealed[X25519_KEY_SIZE + _NONCE : -_TAG], sealed[-_TAG:]
        recipient_public = self.public
        try:
            key = key_agreement(
                static_priv=self._private,
                eph_pub=import_x25519_public_key(ephemeral_public),
                kdf=lambda shared: _key(bytes(shared), ephemeral_public, recipient_public, context),
            )
            return AES.new(key, AES.MODE_GCM, nonce=nonce).decrypt_and_verify(body, tag)
        except ValueError:
            raise IntegrityError("the sealed message was modified, or sealed to another key") from None
