"""Which sessions belong to which user, so that services can end them (`user_sessions_end`).

Django's session stores cannot be searched by user, so every log-in records its session key
(`UserSession`) and every log-out forgets it. Connected in AccountsConfig.ready().
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.conf import settings
from django.utils import timezone

from .models import UserSession
from .services import user_sessions_end


def session_recorded(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """user_logged_in: remember the (new, just cycled) session key of this log-in."""
    session = getattr(request, "session", None)
    if user is None or session is None:
        return
    if session.session_key is None:
        session.save()
    # Rows of sessions that have expired anyway are pruned as the same user logs in again.
    expired = timezone.now() - timedelta(seconds=settings.SESSION_COOKIE_AGE)
    UserSession.objects.filter(user=user, created_at__lt=expired).delete()
    UserSession.objects.update_or_create(session_key=session.session_key, defaults={"user": user})


def session_forgotten(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """user_logged_out: the session is flushed by Django; drop its row."""
    session = getattr(request, "session", None)
    if session is not None and session.session_key:
        UserSession.objects.filter(session_key=session.session_key).delete()


def deactivated_user_sessions_ended(sender: Any, instance: Any, **kwargs: Any) -> None:
    """post_save of a user: an inactive account keeps no session (e.g. deactivated in the admin), so
    reactivating it does not bring old sessions back."""
    if not instance.is_active and instance.pk is not None:
        user_sessions_end(user_ids=[instance.pk])
