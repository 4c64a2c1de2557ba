from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from importlib import import_module

from django.conf import settings
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import transaction
from django.utils import timezone

from clearinghouse.audit.services import audit_lock, audit_record
from clearinghouse.core.errors import Conflict, NotFound, ValidationFailed
from clearinghouse.core.text import clean_email, clean_name
from clearinghouse.organisations.selectors import membership_of

from .models import APIToken, User, UserSession
from .tokens import token_generate

USERNAME_MAX = 150


def _clean_username(value: object) -> str:
    username = clean_name(value, field="username", max_length=USERNAME_MAX, min_length=3)
    if not all(ch.isalnum() or ch in "._-" for ch in username) or not username.isascii():
        message = "Use ASCII letters, digits, '.', '_' and '-'."
        raise ValidationFailed(
            f"username: {message}", code="invalid_username", fields={"username": [message]}
        )
    return username


@transaction.atomic
def user_signup(*, username: str, email: str, password: str, full_name: str = "") -> User:
    username = _clean_username(username)
    email = clean_email(email, field="email")
    full_name = clean_name(full_name, field="full_name", max_length=150, min_length=0) if full_name else ""
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict("This username is taken.", code="duplicate_username", fields={"username": ["Taken."]})
    if User.objects.filter(email__iexact=email).exists():
        raise Conflict(
            "An account with this email exists.", code="duplicate_email", fields={"email": ["Taken."]}
        )
    user = User(username=username, email=email, first_name=full_name)
    try:
        validate_password(password, user)
    except DjangoValidationError as exc:
        raise ValidationFailed(
            "password: " + " ".join(exc.messages),
            code="weak_password",
            fields={"password": list(exc.messages)},
        ) from None
    user.set_password(password)
    user.save()
    audit_record(actor=user, action="user.signed_up", target=user)
    return user


@transaction.atomic
def operator_create(*, username: str, email: str, password: str | None = None) -> tuple[User, str]:
    """Creates a consortium operator; returns the user and the password (generated when not given)."""
    username = _clean_username(username)
    email = clean_email(email, field="email")
    if User.objects.filter(username__iexact=username).exists():
        raise Conflict("This username is taken.", code="duplicate_username")
    password = password or secrets.token_urlsafe(18)
    user = User(username=username, email=email, is_operator=True)
    user.set_password(password)
    user.save()
    audit_record(actor=None, action="operator.created", target=user, extra={"username": username})
    return user, password


@transaction.atomic
def api_token_create(*, actor: User, name: str, expires_at: datetime | None = None) -> tuple[APIToken, str]:
    """Returns the token and its text; the text is never stored nor shown again."""
    name = clean_name(name, field="name", max_length=100)
    now = timezone.now()
    max_expiry = now + timedelta(days=settings.API_TOKEN_MAX_DAYS)
    expires_at = expires_at or now + timedelta(days=90)
    if expires_at <= now:
        raise ValidationFailed(
            "expires_at must be in the future.",
            code="invalid_expiry",
            fields={"expires_at": ["Must be in the future."]},
        )
    if expires_at > max_expiry:
        raise ValidationFailed(
            f"expires_at: at most {settings.API_TOKEN_MAX_DAYS} days ahead.",
            code="invalid_expiry",
            fields={"expires_at": ["Too far ahead."]},
        )
    if APIToken.objects.filter(user=actor, name=name, revoked_at__isnull=True).exists():
        raise Conflict("You already have an active token with this name.", code="duplicate_token_name")
    text, prefix, secret_hash = token_generate()
    token = APIToken.objects.create(
        user=actor, name=name, prefix=prefix, secret_hash=secret_hash, created_at=now, expires_at=expires_at
    )
    membership = membership_of(user=actor)
    audit_record(
        actor=actor,
        action="api_token.created",
        organisation=membership.organisation if membership else None,
        target=token,
        extra={"name": name, "expires_at": expires_at.isoformat()},
    )
    return token, text


@transaction.atomic
def api_token_revoke(*, actor: User, token: APIToken) -> APIToken:
    if token.user_id != actor.pk:
        raise NotFound("Token not found.")
    membership = membership_of(user=actor)
    audit_lock(membership.organisation if membership else None)  # first: the lock order of every write
    token = APIToken.objects.select_for_update(no_key=True).get(pk=token.pk)
    if token.revoked_at is not None:
        raise Conflict("This token is already revoked.", code="token_already_revoked")
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked_at"])
    audit_record(
        actor=actor,
        action="api_token.revoked",
        organisation=membership.organisation if membership else None,
        target=token,
        extra={"name": token.name},
    )
    return token


def user_sessions_end(*, user_ids: Iterable[int]) -> int:
    """Ends every recorded session of these users (they must log in again) and returns how many.

    Called by the services that take access away (suspension, removal from an organisation, and on
    deactivation), inside their transaction: with database sessions the deletion commits or rolls
    back with the change. API tokens are not touched here: APITokenAuthentication refuses them on
    every request while the user is inactive or their organisation suspended."""
    store = import_module(settings.SESSION_ENGINE).SessionStore
    rows = UserSession.objects.filter(user_id__in=list(user_ids))
    keys = list(rows.values_list("session_key", flat=True))
    for key in keys:
        store().delete(key)
    rows.delete()
    return len(keys)
