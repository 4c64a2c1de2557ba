from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from clearinghouse.core.errors import NotFound

from .models import APIToken, User


def api_token_list(*, actor: User) -> QuerySet[APIToken]:
    return APIToken.objects.filter(user=actor).order_by("-created_at")


def api_token_active_count(*, actor: User) -> int:
    """How many of the actor's tokens still work: neither revoked nor expired."""
    return api_token_list(actor=actor).filter(revoked_at__isnull=True, expires_at__gt=timezone.now()).count()


def api_token_get(*, actor: User, token_id: int) -> APIToken:
    token = api_token_list(actor=actor).filter(pk=token_id).first()
    if token is None:
        raise NotFound("Token not found.")
    return token
