"""Envelope encryption of datasets at rest. Pure Python + pycryptodome; no Django here.

Typical use::

    keyring = Keyring.from_env()                       # or Keyring.from_file(path)
    ctx = {"organisation": org.id, "dataset": str(ds.id), "version": v.number}
    info = encrypt_stream(src, dst, keyring=keyring, context=ctx)
    decrypt_stream(enc, out, keyring=keyring, context=ctx)   # IntegrityError on any tampering

    keyring = keyring.rotated(); keyring.save(path, overwrite=True)
    rewrap_stream(old_file, new_file, keyring=keyring)         # segments copied unchanged

    # A writer holding only a staging public key (e.g. the web process) can encrypt, not decrypt:
    public = keyring.staging_current.public                    # or StagingPublicKey.from_file(path)
    encrypt_stream(src, dst, recipient=public, context=ctx)   # decrypt_stream(..., keyring=keyring)

Design and file format: `envelope` and `header` module docstrings.
"""

from .context import Context, canonical_context
from .envelope import (
    DEFAULT_SEGMENT_SIZE,
    EncryptionInfo,
    StreamEncryptor,
    decrypt_into,
    decrypt_stream,
    decrypt_to_bytes,
    encrypt_bytes,
    encrypt_stream,
    plaintext_size,
    rewrap_header,
    rewrap_stream,
)
from .errors import CryptoError, FormatError, IntegrityError, KeyringError, UnknownKeyError
from .header import FORMAT_VERSION, MAX_SEGMENT_SIZE, MIN_SEGMENT_SIZE, HeaderInfo, parse_header, read_header
from .keyring import (
    DEFAULT_KEYRING_ENV_VAR,
    KeyEncryptionKey,
    Keyring,
    StagingKey,
    StagingPublicKey,
    create_dev_keyring_file,
    generate_kek_id,
)

__all__ = [
    "DEFAULT_KEYRING_ENV_VAR",
    "DEFAULT_SEGMENT_SIZE",
    "FORMAT_VERSION",
    "MAX_SEGMENT_SIZE",
    "MIN_SEGMENT_SIZE",
    "Context",
    "CryptoError",
    "EncryptionInfo",
    "FormatError",
    "HeaderInfo",
    "IntegrityError",
    "KeyEncryptionKey",
    "Keyring",
    "KeyringError",
    "StagingKey",
    "StagingPublicKey",
    "StreamEncryptor",
    "UnknownKeyError",
    "canonical_context",
    "create_dev_keyring_file",
    "decrypt_into",
    "decrypt_stream",
    "decrypt_to_bytes",
    "encrypt_bytes",
    "encrypt_stream",
    "generate_kek_id",
    "parse_header",
    "plaintext_size",
    "read_header",
    "rewrap_header",
    "rewrap_stream",
]
