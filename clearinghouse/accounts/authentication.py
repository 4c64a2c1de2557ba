from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.utils import timezone
from rest_framework import authentication, exceptions

from clearinghouse.core.compiled import CompiledRead
from clearinghouse.organisations.models import Membership
from clearinghouse.organisations.selectors import (
    USER_MEMBERSHIP_JOIN,
    membership_active,
    membership_if_active,
    membership_is_suspended,
    membership_joined,
)

from .models import APIToken
from .tokens import token_matches, token_split

# The user, their membership and its organisation in the token's read (`TokenAuth`); compiled once
# (`CompiledRead`): every API request reads it.
_TOKEN_BY_PREFIX = CompiledRead(
    "an API token by its prefix, with its user's membership",
    lambda p: (
        APIToken.objects.select_related(f"user__{USER_MEMBERSHIP_JOIN}")
        .filter(prefix=p.text("prefix"))
        .order_by()[:1]
    ),
)


@dataclass(frozen=True)
class TokenAuth:
    """`request.auth` of a token-authenticated request: the token, and the user's membership (with
    its organisation) as read with the token, in the same statement, at the start of the request."""

    token: APIToken
    membership: Membership | None


def request_membership(request: Any) -> Membership | None:
    """The requester's active membership (`membership_active`), read once per request: a token's
    request reuses what its authentication read with the token; any other request reads it now.
    For an API that gives it to every selector it asks (`membership_given`)."""
    auth = getattr(request, "auth", None)
    if isinstance(auth, TokenAuth):
        return membership_if_active(auth.membership)
    return membership_active(user=request.user)


class APITokenAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer chp_...` tokens. Refuses revoked and expired tokens, inactive users and
    members of suspended organisations, each with its own stable code."""

    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header.", code="token_invalid")
        try:
            text = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Invalid token.", code="token_invalid") from None
        parts = token_split(text)
        if parts is None:
            raise exceptions.AuthenticationFailed("Invalid token.", code="token_invalid")
        prefix, secret = parts
        token = _TOKEN_BY_PREFIX.first(prefix=prefix)
        if token is None or not token_matches(secret, token.secret_hash):
            raise exceptions.AuthenticationFailed("Invalid token.", code="token_invalid")
        if token.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This token has been revoked.", code="token_revoked")
        now = timezone.now()
        if token.expires_at <= now:
            raise exceptions.AuthenticationFailed("This token has expired.", code="token_expired")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("This account is disabled.", code="user_inactive")
        membership = membership_joined(user=token.user)
        if membership_is_suspended(membership):
            raise exceptions.AuthenticationFailed(
                "Your organisation is suspended; its users and tokens do not work.",
                code="organisation_suspended",
            )
        # Coarse last-used stamp (once a minute) so that busy tokens do not write on every request.
        if token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60:
            APIToken.objects.filter(pk=token.pk).update(last_used_at=now)
        return token.user, TokenAuth(token=token, membership=membership)

    def authenticate_header(self, request):
        return self.keyword
