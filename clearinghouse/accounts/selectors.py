from __future__ import annotations

from django.db.models import QuerySet

from clearinghouse.core.errors import NotFound

from .models import APIToken, User


def api_token_list(*, actor: User) -> QuerySet[APIToken]:
    return APIToken.objects.filter(user=actor).order_by("-created_at")


def api_token_get(*, actor: User, token_id: int) -> APIToken:
    token = api_token_list(actor=actor).filter(pk=token_id).first()
    if token is None:
        raise NotFound("Token not found.")
    return token
