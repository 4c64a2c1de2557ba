"""API error bodies: `{"code": ..., "detail": ..., "fields"?: {...}}` for every failure."""

from __future__ import annotations

import logging
from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.db import OperationalError
from django.http import Http404, JsonResponse
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler

from .db import is_retryable
from .errors import ApplicationError

logger = logging.getLogger(__name__)


def _error_body(code: str, detail: str, fields: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "detail": detail}
    if fields:
        body["fields"] = fields
    return body


def _flatten_validation(detail: Any) -> dict[str, list[str]]:
    if isinstance(detail, dict):
        return {
            key: [str(item) for item in (value if isinstance(value, list) else [value])]
            for key, value in detail.items()
        }
    if isinstance(detail, list):
        return {"non_field_errors": [str(item) for item in detail]}
    return {"non_field_errors": [str(detail)]}


DATABASE_BUSY_RETRY_AFTER_SECONDS = 1


def database_busy(exc: BaseException) -> bool:
    """The database gave up on the transaction because of other transactions (a deadlock victim, a
    serialisation failure, SQLite's lock timeout) and rolled it back: the same request may succeed
    when sent again (every write path is safe to repeat)."""
    if not isinstance(exc, OperationalError):
        return False
    return is_retryable(exc) or "database is locked" in str(exc)


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's exception handler: our errors and DRF's as `{"code", "detail"}`. Anything else is left to
    Django (None), which logs it and answers with `handler500` (JSON under /api/)."""
    if isinstance(exc, ApplicationError):
        return Response(_error_body(exc.code, exc.message, exc.fields), status=exc.status_code)
    if database_busy(exc):
        logger.warning("database busy, answered 503: %s", type(exc.__cause__ or exc).__name__)
        return Response(
            _error_body("database_busy", "The database is busy: the transaction was rolled back. Try again."),
            status=503,
            headers={"Retry-After": str(DATABASE_BUSY_RETRY_AFTER_SECONDS)},
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, drf_exceptions.ValidationError):
        fields = _flatten_validation(exc.detail)
        first = next(iter(fields.items()))
        response.data = _error_body("invalid", f"{first[0]}: {first[1][0]}", fields)
    elif isinstance(exc, drf_exceptions.APIException):
        code = exc.get_codes()
        if not isinstance(code, str):
            code = exc.default_code
        response.data = _error_body(str(code), str(exc.detail))
    return response


def json_error(code: str, detail: str, status_code: int) -> JsonResponse:
    return JsonResponse(_error_body(code, detail), status=status_code)
