"""Small pieces every API module uses."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypedDict, Unpack

from rest_framework import serializers
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView


class ErrorSerializer(serializers.Serializer):
    """The body of every error answer (see `exception_handler`)."""

    code = serializers.CharField(help_text="Stable machine-readable code, e.g. `not_found`, `invalid`.")
    detail = serializers.CharField(help_text="A human-readable message.")
    # DRF's serializer metaclass takes declared fields off the class, so this `fields` (a key of the
    # error body) does not replace `Serializer.fields`, which the stubs cannot express.
    fields = serializers.DictField(  # type: ignore[assignment]
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="Per input field, its problems (validation errors only).",
    )


class _StrictText(serializers.CharField):
    """Takes only JSON strings: DRF's text fields would turn 12 or 1.5 into "12" or "1.5", so a
    number sent for a text would pass as that text. A mixin placed before a `CharField` subclass
    (`StrictSlugField`'s MRO stays `_StrictText, SlugField, CharField`)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictCharField(_StrictText, serializers.CharField):
    pass


class StrictSlugField(_StrictText, serializers.SlugField):
    pass


# Input text fields accept generous lengths so that the services, not the serializers, produce the
# one stable error for each rule.
TEXT_MAX_LENGTH = 10_000


class TextFieldOptions(TypedDict, total=False):
    """What a `text_field` may set besides its length and blank rule."""

    required: bool
    default: str
    help_text: str
    trim_whitespace: bool


def text_field(**options: Unpack[TextFieldOptions]) -> StrictCharField:
    """A strict text input of up to `TEXT_MAX_LENGTH` characters, blank allowed."""
    return StrictCharField(max_length=TEXT_MAX_LENGTH, allow_blank=True, **options)


def paginator_class() -> type[BasePagination]:
    """The one pagination of every list of the API (limit/offset, `{count, next, previous, results}`);
    the OpenAPI document describes lists with the same class (`clearinghouse.core.schema`)."""
    # The stubs type the setting as written (a dotted path); `api_settings` gives the imported class.
    return api_settings.DEFAULT_PAGINATION_CLASS  # type: ignore[return-value]


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
    page: list[Any] | None = paginator.paginate_queryset(queryset, request, view=view)
    assert page is not None  # None only without a page size, and the API has one (`PAGE_SIZE`)
    items: list[Any]
    if body is not None:
        items = [body(item) for item in page]
    else:
        assert serializer_class is not None, "paginated() needs serializer_class or body"
        # many=True makes a ListSerializer, whose data is a list: the stubs cannot tell.
        items = serializer_class(page, many=True).data  # type: ignore[assignment]
    return paginator.get_paginated_response(items)


def validated(serializer_class: type[serializers.Serializer], data: Any) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)
