from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView

from clearinghouse.core.api_docs import RedocView, SwaggerView
from clearinghouse.core.views import (
    api_bad_request,
    api_not_found,
    api_permission_denied,
    api_server_error,
    healthz,
    metrics_view,
    readyz,
)

urlpatterns = [
    path("api/v1/", include("clearinghouse.api_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api_schema"),
    path("api/docs/", SwaggerView.as_view(url_name="api_schema"), name="api_docs"),
    path("api/redoc/", RedocView.as_view(url_name="api_schema"), name="api_redoc"),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    path("", include("clearinghouse.portal.urls")),
]

handler400 = api_bad_request
handler403 = api_permission_denied
handler404 = api_not_found
handler500 = api_server_error
