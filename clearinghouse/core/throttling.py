"""The API's rate limits (DRF), keyed on the client address from `client_ip` (never on an
X-Forwarded-For that a client wrote itself, and not on the proxy's address behind a proxy)."""

from __future__ import annotations

from rest_framework import throttling

from .client_ip import client_ip


class AnonRateThrottle(throttling.AnonRateThrottle):
    def get_ident(self, request) -> str:
        return client_ip(request) or "unknown"


class UserRateThrottle(throttling.UserRateThrottle):
    def get_ident(self, request) -> str:  # used for anonymous requests only
        return client_ip(request) or "unknown"
