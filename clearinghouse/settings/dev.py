"""Embedded defaults: one person on one machine. Never used by a server."""

import os
import secrets

from .base import *  # noqa: F403
from .base import LOGGING, VAR_DIR, env_bool

DEBUG = env_bool("DEBUG", True)

VAR_DIR.mkdir(parents=True, exist_ok=True)
_secret_file = VAR_DIR / "secret_key"
if not _secret_file.exists():
    _secret_file.write_text(secrets.token_urlsafe(50))
    _secret_file.chmod(0o600)
SECRET_KEY = _secret_file.read_text().strip()

# A terminal reads plain lines better than JSON (LOG_FORMAT=json to see what a server writes).
LOGGING["handlers"]["console"]["formatter"] = os.environ.get("LOG_FORMAT", "plain")
