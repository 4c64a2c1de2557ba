"""The request id and client address of the request (or task) being served.

Audit events and logs read them from here, so services need not pass them along every call.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    ip: str | None


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "request_context", default=None
)


def current() -> RequestContext:
    ctx = _current.get()
    if ctx is None:
        # Outside a request (management commands, tasks without a parent): a fresh id per use.
        return RequestContext(request_id=uuid.uuid4().hex, ip=None)
    return ctx


def active() -> RequestContext | None:
    """The context of the request or task being served, or None outside one (logs then show no id)."""
    return _current.get()


def activate(ctx: RequestContext) -> contextvars.Token:
    return _current.set(ctx)


def deactivate(token: contextvars.Token) -> None:
    _current.reset(token)
