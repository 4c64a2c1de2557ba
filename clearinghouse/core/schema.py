"""How the OpenAPI document (/api/schema/) describes every operation beyond what each view declares.

- Lists: every list of the API is one page of `paginated()` (`clearinghouse.core.apis`), so a
  `many=True` response is documented as that paginated object (`count`, `next`, `previous`,
  `results`) with its `limit`/`offset` parameters, for plain `APIView`s too.
- Errors: the statuses an operation can answer besides its own, each with the error body
  (`ErrorSerializer`, see `exception_handler`), derived from what the operation is: authenticated,
  with path parameters (objects that may not exist or be visible), with a request body; and 400
  for any operation (a NUL character in the query string is refused before the view runs).
  A view that declares one of these statuses itself keeps its own.
- Path parameters: a converter with an `openapi` attribute (see `clearinghouse.api_urls`) is
  documented by that schema (an enum of words), not by its regular expression.
"""

from __future__ import annotations

import re
from typing import Any

from django.urls.converters import get_converters
from drf_spectacular import openapi

from .apis import ErrorSerializer, paginator_class

_UNSAFE = {"POST", "PUT", "PATCH", "DELETE"}
_PATH_PARAMETER = re.compile(r"<(?:(?P<converter>[^>:]+):)?(?P<parameter>\w+)>")

ERROR_DESCRIPTIONS = {
    400: "Invalid request: `code` names the rule, `fields` the offending input fields.",
    401: "Not authenticated: no, an invalid or an expired token.",
    403: "Authenticated, but not allowed (role, organisation state, agreement, CSRF for a session).",
    404: "No such object, or not visible to you (another organisation's objects answer 404 too).",
    409: "Conflicts with the current state of the object (e.g. already decided, already spent).",
    415: "The request body's media type is not accepted.",
    429: "Too many requests: throttled, retry later.",
}


def error_statuses(operation: dict[str, Any], method: str) -> list[int]:
    """The error statuses an operation can answer, from its shape (see the module docstring)."""
    # Any request may be refused with a 400 before its view runs: a NUL character in the query string
    # (core.middleware.RefuseNulCharactersMiddleware), which PostgreSQL could not hold.
    statuses = {400, 429}
    has_path_parameters = any(p.get("in") == "path" for p in operation.get("parameters", []))
    authenticated = any(requirement for requirement in operation.get("security", []))
    if authenticated:
        statuses |= {401, 403}
    if method in _UNSAFE:
        statuses |= {400, 403, 404, 409}
    if has_path_parameters:
        statuses |= {403, 404}
    if "requestBody" in operation:
        statuses |= {400, 415}
    return sorted(statuses)


class AutoSchema(openapi.AutoSchema):
    def _get_paginator(self):
        return super()._get_paginator() or paginator_class()()

    def _resolve_path_parameters(self, variables):
        parameters = super()._resolve_path_parameters(variables)
        converters = get_converters()
        documented = {
            match["parameter"]: getattr(converters.get(match["converter"] or ""), "openapi", None)
            for match in _PATH_PARAMETER.finditer(self.path_regex)
        }
        for parameter in parameters:
            schema = documented.get(parameter["name"])
            if schema is not None:
                parameter["schema"] = dict(schema)
        return parameters

    def get_operation(self, path, path_regex, path_prefix, method, registry):
        operation = super().get_operation(path, path_regex, path_prefix, method, registry)
        if operation is None:
            return None
        error = self.resolve_serializer(ErrorSerializer(), "response").ref
        responses = operation["responses"]
        for status in error_statuses(operation, self.method):
            responses.setdefault(
                str(status),
                {
                    "content": {"application/json": {"schema": error}},
                    "description": ERROR_DESCRIPTIONS[status],
                },
            )
        operation["responses"] = dict(sorted(responses.items()))
        return operation
