from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable

from django.http import HttpRequest, HttpResponse

from . import request_context
from .logs import route_of
from .metrics import REQUEST_LATENCY

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
access_logger = logging.getLogger("clearinghouse.access")


class RequestContextMiddleware:
    """Gives every request an id (a well-formed incoming X-Request-ID is kept, so a proxy's id
    follows the request) and records the client address for the audit log. Logs one access line and
    observes the latency histogram per request, both by route pattern: a path can hold a secret
    (an invitation token) and would make one time series per object."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        request.request_id = request_id
        token = request_context.activate(
            request_context.RequestContext(request_id=request_id, ip=request.META.get("REMOTE_ADDR"))
        )
        try:
            response = self.get_response(request)
            elapsed = time.perf_counter() - started
            route = route_of(request)
            method = request.method if request.method in _METHODS else "other"
            REQUEST_LATENCY.labels(method=method, route=route, status=str(response.status_code)).observe(elapsed)
            access_logger.info("request", extra={"method": method, "route": route,
                                                 "status": response.status_code,
                                                 "duration_ms": round(elapsed * 1000, 1)})
        finally:
            request_context.deactivate(token)
        response["X-Request-ID"] = request_id
        return response
