"""Small pieces every API module uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer (see `exception_handler`)."""

    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `not_found`, `invalid`.")
    detail = serializers.CharField(help_text="A human-readable message.")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Per input field, its problems (validation errors only).",
    )


class _StrictText:
    """Takes only JSON strings: DRF's text fields would turn 12 or 1.5 into "12" or "1.5", so a
    number sent for a text would pass as that text."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(_StrictText, serializers.CharField):
    pass


class StrictSlugField(_StrictText, serializers.SlugField):
    pass


def paginator_class() -> type:
    """The one pagination of every list of the API (limit/offset, `{count, next, previous, results}`);
    the OpenAPI document describes lists with the same class (`clearinghouse.core.schema`)."""
    return api_settings.DEFAULT_PAGINATION_CLASS


def paginated(
    *,
    queryset: Any,
    request: Request,
    view: APIView,
    serializer_class: type[serializers.Serializer] | None = None,
    body: Callable[[Any], dict] | None = None,
) -> Response:
    """One page of `queryset`, each item rendered by `serializer_class` or by `body(item)`."""
    paginator = paginator_class()()
    page = paginator.paginate_queryset(queryset, request, view=view)
    items = [body(item) for item in page] if body is not None else serializer_class(page, many=True).data
    return paginator.get_paginated_response(items)


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
