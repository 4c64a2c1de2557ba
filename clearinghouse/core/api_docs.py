"""Swagger UI and ReDoc for the OpenAPI document, served entirely by the service (the sidecar's
static files): they work offline, and a Content-Security-Policy keeps the pages from fetching
anything from elsewhere (ReDoc's bundle would otherwise load its logo from a CDN)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView

# The pages' own inline bootstrap scripts and styles need 'unsafe-inline'; nothing else is allowed
# off this origin (data: URIs are the UIs' inline icons; blob: is ReDoc's web worker).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; worker-src 'self' blob:; connect-src 'self'"
)


class _SelfContained:
    @extend_schema(exclude=True)  # the pages, like drf-spectacular's own, are not API operations
    def get(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().get(request, *args, **kwargs)  # type: ignore[misc]
        response["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        return response


class SwaggerView(_SelfContained, SpectacularSwaggerView):
    pass


class RedocView(_SelfContained, SpectacularRedocView):
    template_name = "api_docs/redoc.html"
