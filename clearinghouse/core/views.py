import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from django.views.defaults import page_not_found

from . import health, metrics
from .exception_handler import json_error


def api_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """JSON 404 under /api/, the usual page elsewhere."""
    if request.path.startswith("/api/"):
        return json_error("not_found", "Not found.", 404)
    return page_not_found(request, exception)


@require_GET
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness: the process answers. Nothing else is touched, so a slow database never restarts it."""
    return JsonResponse({"status": "ok"})


@require_GET
def readyz(request: HttpRequest) -> HttpResponse:
    """Readiness: 200 when the database, the broker and (if configured) the SuperLink answer, else 503."""
    checks = health.readiness()
    ready = health.is_ready(checks)
    return JsonResponse({"status": "ready" if ready else "unready", "checks": checks}, status=200 if ready else 503)


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
