"""One exception hierarchy for the crypto core.

Callers catch `CryptoError` for "this ciphertext cannot be used", or a subclass when they must react
differently (`UnknownKeyError`: a KEK was retired too early; `KeyringError`: bad configuration).
Messages name key *ids*, segment numbers and sizes, never key bytes or plaintext, so they are safe to log
and to show in the audit trail.
"""

from __future__ import annotations

__all__ = ["CryptoError", "FormatError", "IntegrityError", "KeyringError", "UnknownKeyError"]


class CryptoError(Exception):
    """Base class of every error raised by `clearinghouse.crypto`."""


class IntegrityError(CryptoError):
    """The ciphertext is not authentic under this keyring and context.

    Covers tampering, truncation, reordering, appended data, a wrong key under a known id and a wrong
    context (e.g. a file copied under another dataset). Any plaintext already written to a stream
    destination before this was raised must be discarded.
    """


class FormatError(IntegrityError):
    """The bytes are not an encrypted file of a format version this build reads (bad magic, unknown
    version, malformed header). A subclass of `IntegrityError` because a flipped bit looks the same."""


class UnknownKeyError(CryptoError):
    """The file's header names a key (a KEK or a staging key pair) that is not in the keyring (retired
    or never loaded)."""

    def __init__(self, kek_id: str) -> None:
        self.kek_id = kek_id
        super().__init__(
            f"key {kek_id!r} is not in the keyring; keep retired keys until every file "
            "wrapped under them has been re-wrapped"
        )


class KeyringError(CryptoError):
    """The keyring file, environment variable or requested keyring change is invalid."""
