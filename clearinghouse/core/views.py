import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.csrf import csrf_failure
from django.views.decorators.http import require_GET
from django.views.defaults import bad_request, page_not_found, permission_denied, server_error

from . import health, metrics
from .exception_handler import json_error


def is_api(request: HttpRequest) -> bool:
    return request.path.startswith("/api/")


# Django's error views (handler400/403/404/500 and CSRF_FAILURE_VIEW): JSON `{"code", "detail"}` under
# /api/, the usual pages elsewhere. They answer what happens outside a DRF view (no URL matched, a bad
# Host header, a CSRF refusal by the middleware) and, last of all, any exception nothing handled.
def api_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """JSON 404 under /api/, the usual page elsewhere."""
    if is_api(request):
        return json_error("not_found", "Not found.", 404)
    return page_not_found(request, exception)


def api_bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return json_error("bad_request", "The request is malformed.", 400)
    return bad_request(request, exception)


def api_permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if is_api(request):
        return json_error("permission_denied", "You do not have permission to perform this action.", 403)
    return permission_denied(request, exception)


def api_csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if is_api(request):
        return json_error(
            "csrf_failed", f"CSRF Failed: {reason} Send the token in the X-CSRFToken header.", 403
        )
    return csrf_failure(request, reason)


def api_server_error(request: HttpRequest) -> HttpResponse:
    """The last resort: an exception nothing handled (Django has logged it with its traceback).
    Never the exception's text, which can hold SQL, paths or data."""
    if is_api(request):
        return json_error(
            "server_error",
            "An unexpected error occurred; it has been logged "
            f"(request id {getattr(request, 'request_id', 'unknown')}).",
            500,
        )
    return server_error(request)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. Nothing else is touched, so a slow database never restarts it."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 when the database, the broker and (if configured) the SuperLink answer, else 503."""
    checks = health.readiness()
    ready = health.is_ready(checks)
    return JsonResponse(
        {"status": "ready" if ready else "unready", "checks": checks}, status=200 if ready else 503
    )


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition for a scraper holding METRICS_TOKEN (`Authorization: Bearer ...`).
    Neither a session nor an API token opens it; without METRICS_TOKEN it is off (404)."""
    expected = settings.METRICS_TOKEN
    if not expected:
        return json_error("not_found", "Not found.", 404)
    supplied = request.headers.get("Authorization", "")
    if not hmac.compare_digest(supplied.encode(), f"Bearer {expected}".encode()):
        response = json_error("not_authenticated", "A valid metrics token is required.", 401)
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body, content_type = metrics.exposition()
    return HttpResponse(body, content_type=content_type)
