"""Token text format, kept apart so that services and authentication agree on it."""

from __future__ import annotations

import hashlib
import hmac
import secrets

TOKEN_PREFIX = "chp"


def token_generate() -> tuple[str, str, str]:
    """Returns (full token text, lookup prefix, secret hash)."""
    prefix = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return f"{TOKEN_PREFIX}_{prefix}_{secret}", prefix, token_hash(secret)


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_split(text: str) -> tuple[str, str] | None:
    parts = text.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def token_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(token_hash(secret), stored_hash)
