"""Log records as JSON lines, each with the id of the request (or task) that produced it.

`RequestIdFilter` stamps `request_id` from `request_context`; Celery tasks receive the id of the
request that queued them (see `clearinghouse/celery.py`), so one id follows a request into its tasks.
`RedactPathFilter` replaces URL paths in Django's request warnings with the route pattern: paths can
carry secrets (an invitation link holds its token), route patterns cannot.
"""

from __future__ import annotations

import logging

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

from . import request_context


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        ctx = request_context.active()
        # Django logs a response's warning after the middleware has returned: the request still has its id.
        record.request_id = (
            ctx.request_id
            if ctx is not None
            else getattr(getattr(record, "request", None), "request_id", None)
        )
        return True


def route_of(request) -> str:
    """The matched URL pattern ("invitations/<str:token>/"), never the path itself."""
    match = getattr(request, "resolver_match", None)
    return match.route if match is not None and match.route else "(unmatched)"


class RedactPathFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        request = getattr(record, "request", None)
        path = getattr(request, "path", None)
        if path and request is not None and isinstance(record.args, tuple):
            route = route_of(request)
            record.args = tuple(
                route if arg in (path, request.get_full_path()) else arg for arg in record.args
            )
        return True


class JsonFormatter(_JsonFormatter):
    """One JSON object per line: time, level, logger, message, request_id and any `extra` fields.
    A record's `request` (Django puts the HttpRequest there) is left out: its repr holds the path."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("fmt", "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s")
        kwargs.setdefault("rename_fields", {"asctime": "time", "levelname": "level", "name": "logger"})
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, "request"])
        super().__init__(*args, **kwargs)
