"""One error vocabulary for services, the API and the portal.

Services raise `ApplicationError` subclasses with a stable machine `code` and a human message; the
API turns them (and DRF's own exceptions) into `{"code": ..., "detail": ...}` JSON (see
`exception_handler`), the portal into form errors or messages. Messages never carry rows, keys or tokens.
"""

from __future__ import annotations


class ApplicationError(Exception):
    status_code = 400
    default_code = "invalid"

    def __init__(self, message: str, *, code: str | None = None, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.fields = fields or {}


class ValidationFailed(ApplicationError):
    default_code = "invalid"


class NotFound(ApplicationError):
    status_code = 404
    default_code = "not_found"


class PermissionDenied(ApplicationError):
    status_code = 403
    default_code = "permission_denied"


class Conflict(ApplicationError):
    status_code = 409
    default_code = "conflict"
