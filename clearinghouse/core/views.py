from django.http import HttpRequest, HttpResponse
from django.views.defaults import page_not_found

from .exception_handler import json_error


def api_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """JSON 404 under /api/, the usual page elsewhere."""
    if request.path.startswith("/api/"):
        return json_error("not_found", "Not found.", 404)
    return page_not_found(request, exception)
