from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from django.core.exceptions import BadRequest
from django.http import HttpRequest, HttpResponse, QueryDict

from . import request_context
from .client_ip import client_ip
from .logs import route_of
from .metrics import REQUEST_LATENCY

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
access_logger = logging.getLogger("clearinghouse.access")


class RequestContextMiddleware:
    """Gives every request an id (a well-formed incoming X-Request-ID is kept, so a proxy's id
    follows the request) and records the client address for the audit log (`client_ip`: behind a
    trusted proxy, the client's, not the proxy's). Logs one access line and
    observes the latency histogram per request, both by route pattern: a path can hold a secret
    (an invitation token) and would make one time series per object."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        # Our own attribute (HttpRequest declares none such): `logs.RequestIdFilter` reads it back.
        request.request_id = request_id  # type: ignore[attr-defined]
        token = request_context.activate(
            request_context.RequestContext(request_id=request_id, ip=client_ip(request))
        )
        try:
            response = self.get_response(request)
            elapsed = time.perf_counter() - started
            route = route_of(request)
            method = request.method if request.method in _METHODS else "other"
            REQUEST_LATENCY.labels(method=method, route=route, status=str(response.status_code)).observe(
                elapsed
            )
            access_logger.info(
                "request",
                extra={
                    "method": method,
                    "route": route,
                    "status": response.status_code,
                    "duration_ms": round(elapsed * 1000, 1),
                },
            )
        finally:
            request_context.deactivate(token)
        response["X-Request-ID"] = request_id
        return response


class RefuseNulCharactersMiddleware:
    """A NUL character in the query string or a submitted form is refused with a 400 (JSON
    under /api/): PostgreSQL cannot hold one in text, so it would otherwise reach a query and fail
    there with a 500.

    The form is read only where CsrfViewMiddleware reads it anyway (a POST to a view that is not
    csrf_exempt), so this never parses a body nobody else would: DRF views parse theirs (JSON, checked
    by clearinghouse.core.parsers) and the upload views stream theirs. (A path with a NUL matches no
    route: its segments are slugs and numbers, or a token that is only hashed.)"""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if _has_nul(request.GET):
            raise BadRequest("NUL characters are not allowed in requests.")
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view_func: Callable, view_args: Any, view_kwargs: Any
    ) -> None:
        if request.method != "POST" or getattr(view_func, "csrf_exempt", False):
            return
        try:
            form = request.POST
        except OSError:
            return  # the client went away mid-body: as CsrfViewMiddleware, leave it to the view
        if _has_nul(form):
            raise BadRequest("NUL characters are not allowed in requests.")


def _has_nul(form: QueryDict) -> bool:
    return any("\x00" in key or any("\x00" in value for value in values) for key, values in form.lists())
