"""How a file's data key is wrapped: under a KEK (symmetric) or to a staging public key (asymmetric).

* **KEK** (`WRAP_KEK`): AES key wrap (RFC 3394, `AES.MODE_KW`) of the 32-byte data key under the KEK:
  40 bytes. Needs the secret KEK both to wrap and to unwrap.
* **X25519** (`WRAP_X25519`): ECIES in the shape of age's X25519 recipient stanza, composed from
  pycryptodome parts only. The writer draws an ephemeral X25519 key pair, agrees a shared secret with
  the staging public key (`Crypto.Protocol.DH.key_agreement`), derives a wrapping key with
  HKDF-SHA256 (salt = ephemeral public || staging public, so the key is bound to both) and AES-KW
  wraps the data key with it. Stored: ephemeral public key (32) || KW output (40) = 72 bytes. Wrapping
  needs only the public key, so a process that writes uploads never holds anything that decrypts
  them; unwrapping needs the staging private key from the keyring. KW's integrity check rejects a
  wrong private key or a modified ephemeral key, as with a wrong KEK.

Errors name key ids only.
"""

from __future__ import annotations

from collections.abc import Callable

from Crypto.Cipher import AES
from Crypto.Hash import SHA256
from Crypto.Protocol.DH import import_x25519_private_key, import_x25519_public_key, key_agreement
from Crypto.Protocol.KDF import HKDF
from Crypto.PublicKey import ECC

from .errors import IntegrityError
from .keyring import X25519_KEY_SIZE, KeyEncryptionKey, StagingKey, StagingPublicKey

__all__ = [
    "WRAPPED_SIZES",
    "WRAP_KEK",
    "WRAP_X25519",
    "unwrap_kek",
    "unwrap_x25519",
    "wrap_kek",
    "wrap_x25519",
]

WRAP_KEK = 1
WRAP_X25519 = 2
_KW_SIZE = 40  # AES-KW of a 32-byte key: 32 + 8-byte integrity check value
WRAPPED_SIZES = {WRAP_KEK: _KW_SIZE, WRAP_X25519: X25519_KEY_SIZE + _KW_SIZE}
_X25519_INFO = b"clearinghouse.crypto/v2 x25519 data-key wrap"


def hkdf_sha256(secret: bytes, salt: bytes, context: bytes) -> bytes:
    """One 32-byte key from HKDF-SHA256 (the per-file keys, the X25519 wrapping key)."""
    key = HKDF(secret, 32, salt, SHA256, context=context)
    if not isinstance(key, bytes):  # pragma: no cover - one key (num_keys=1) comes back as bytes
        raise TypeError("HKDF returned several keys")
    return key


def wrap_kek(kek: KeyEncryptionKey, data_key: bytes) -> bytes:
    return AES.new(kek.key, AES.MODE_KW).seal(data_key)


def _kw_unseal(wrapping_key: bytes, wrapped: bytes, key_id: str) -> bytes:
    try:
        return AES.new(wrapping_key, AES.MODE_KW).unseal(wrapped)
    except ValueError:
        raise IntegrityError(
            f"cannot unwrap the data key with key {key_id!r}: the wrapped key was modified or the keyring "
            "holds a different key under that id"
        ) from None


def unwrap_kek(kek: KeyEncryptionKey, wrapped: bytes) -> bytes:
    return _kw_unseal(kek.key, wrapped, kek.id)


def _x25519_wrapping_key(
    ephemeral_public: bytes, staging_public: bytes
) -> Callable[[bytes | bytearray | memoryview], bytes]:
    def kdf(shared_secret: bytes | bytearray | memoryview) -> bytes:
        # pycryptodome hands over bytes (typed as any buffer); bytes() of bytes is the same object
        return hkdf_sha256(bytes(shared_secret), ephemeral_public + staging_public, _X25519_INFO)

    return kdf


def wrap_x25519(recipient: StagingPublicKey, data_key: bytes) -> bytes:
    ephemeral = ECC.generate(curve="Curve25519")
    ephemeral_public = ephemeral.public_key().export_key(format="raw")
    wrapping_key = key_agreement(
        static_pub=import_x25519_public_key(recipient.key),
        eph_priv=ephemeral,
        kdf=_x25519_wrapping_key(ephemeral_public, recipient.key),
    )
    return ephemeral_public + AES.new(wrapping_key, AES.MODE_KW).seal(data_key)


def unwrap_x25519(pair: StagingKey, wrapped: bytes) -> bytes:
    ephemeral_public, sealed = wrapped[:X25519_KEY_SIZE], wrapped[X25519_KEY_SIZE:]
    try:
        ephemeral = import_x25519_public_key(ephemeral_public)
        private = import_x25519_private_key(pair.private)
        wrapping_key = key_agreement(
            static_priv=private,
            eph_pub=ephemeral,
            kdf=_x25519_wrapping_key(ephemeral_public, pair.public.key),
        )
    except ValueError:  # a low-order or malformed ephemeral key: someone modified the header
        raise IntegrityError(
            f"cannot unwrap the data key with staging key {pair.id!r}: invalid ephemeral key"
        ) from None
    return _kw_unseal(wrapping_key, sealed, pair.id)
