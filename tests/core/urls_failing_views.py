"""The service's URLs plus views that fail in ways no real view should, to check the last-resort
error answers (tests/core/test_api_errors.py)."""

import psycopg.errors
from django.db import OperationalError
from django.http import HttpResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.views import APIView

from clearinghouse.urls import handler400, handler403, handler404, handler500  # noqa: F401
from clearinghouse.urls import urlpatterns as service_urlpatterns

SECRET_DETAIL = "SELECT secret_column FROM very_private_table"


class CrashingApi(APIView):
    permission_classes = (AllowAny,)

    def get(self, request):
        raise RuntimeError(SECRET_DETAIL)


class DeadlockedApi(APIView):
    permission_classes = (AllowAny,)

    def post(self, request):
        error = {
            "deadlock": psycopg.errors.DeadlockDetected,
            "serialization": psycopg.errors.SerializationFailure,
        }
        cause = error[request.query_params.get("kind", "deadlock")](SECRET_DETAIL)
        raise OperationalError(SECRET_DETAIL) from cause


def crashing_plain_view(request):
    raise RuntimeError(SECRET_DETAIL)


def ok_view(request):
    return HttpResponse("ok")


urlpatterns = [
    path("api/v1/test-crash", CrashingApi.as_view()),
    path("api/v1/test-deadlock", DeadlockedApi.as_view()),
    path("api/v1/test-crash-plain", crashing_plain_view),
    path("test-crash-page/", crashing_plain_view),
    *service_urlpatterns,
]
