from __future__ import annotations

from collections.abc import Callable

from django.contrib.auth import logout
from django.http import HttpRequest, HttpResponse

from clearinghouse.organisations.selectors import user_is_suspended


class SuspendedOrganisationMiddleware:
    """Ends the session of a member of a suspended organisation on their next request, so that
    suspension takes effect at once and not when the session expires."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated and user_is_suspended(user=user):
            logout(request)
        return self.get_response(request)
