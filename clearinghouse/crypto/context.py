"""Canonical encryption context: what a ciphertext is *for*.

Every segment's associated data binds the context, so a file copied under another organisation,
dataset or version fails authentication instead of decrypting. Callers pass either raw bytes or a flat
mapping such as ``{"organisation": 7, "dataset": "d41d…", "version": 3}``; the mapping is encoded
deterministically (sorted keys, compact ASCII JSON) so that the same logical context always gives the
same bytes whatever the dict order. Types matter: ``{"version": 3}`` and ``{"version": "3"}`` differ,
so the service must pass the same types when encrypting and decrypting. A `uuid.UUID` value is encoded
as its canonical string, so passing a UUID or its `str()` is the same.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping

__all__ = ["Context", "ContextValue", "canonical_context"]

ContextValue = str | int | uuid.UUID
Context = bytes | bytearray | memoryview | Mapping[str, ContextValue]

# Type tags keep the two encodings apart: raw bytes can never equal an encoded mapping.
_BYTES_TAG = b"B"
_MAPPING_TAG = b"M"


def canonical_context(context: Context) -> bytes:
    """The deterministic byte encoding of `context` (raises `TypeError`/`ValueError` on misuse).

    An empty context is refused: binding nothing is almost always a caller bug.
    """
    if isinstance(context, (bytes, bytearray, memoryview)):
        raw = bytes(context)
        if not raw:
            raise ValueError("encryption context must not be empty")
        return _BYTES_TAG + raw
    if not isinstance(context, Mapping):
        raise TypeError("encryption context must be bytes or a mapping of str to str/int/UUID")
    if not context:
        raise ValueError("encryption context must not be empty")
    items: dict[str, str | int] = {}
    for key, value in context.items():
        if not isinstance(key, str) or not key:
            raise TypeError("encryption context keys must be non-empty strings")
        if isinstance(value, bool) or not isinstance(value, (str, int, uuid.UUID)):
            raise TypeError(f"encryption context value for {key!r} must be str, int or UUID")
        items[key] = str(value) if isinstance(value, uuid.UUID) else value
    text = json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return _MAPPING_TAG + text.encode("ascii")
