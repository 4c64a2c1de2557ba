"""The portal's public helpers, the one module the apps' portal pages (`datasets.views`,
`queries.views`, `federation.views`) import from the portal: how a service's error reaches the user,
the viewer's own membership, and one page of a long list.

The portal's other modules (`views`, `urls`, `forms`) are private to it; an import-linter contract in
`pyproject.toml` keeps it so.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

from django.contrib import messages
from django.core.paginator import Page, Paginator
from django.db.models import QuerySet
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render

from clearinghouse.accounts.models import User
from clearinghouse.core.errors import ApplicationError, NotFound, PermissionDenied
from clearinghouse.organisations.models import Membership
from clearinghouse.organisations.selectors import membership_of

# Every list of the portal shows this many items a page (as the API's `PAGE_SIZE`).
PAGE_SIZE = 50


def service_errors(view: Callable[..., HttpResponseBase]) -> Callable[..., HttpResponseBase]:
    """Not-found errors become the 404 page; permission errors a 403 page; other service errors a
    message on the page the user came from."""

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
        try:
            return view(request, *args, **kwargs)
        except NotFound as exc:
            raise Http404(exc.message) from None
        except PermissionDenied as exc:
            return render(request, "portal/forbidden.html", {"message": exc.message}, status=403)
        except ApplicationError as exc:
            messages.error(request, exc.message)
            return redirect(request.META.get("HTTP_REFERER") or "portal:dashboard")

    return wrapper


def form_error(form: Any, exc: ApplicationError) -> None:
    """Puts a service error on the matching field when there is one."""
    for field, problems in exc.fields.items():
        if field in form.fields:
            for problem in problems:
                form.add_error(field, problem)
            return
    form.add_error(None, exc.message)


def signed_in_user(request: HttpRequest) -> User:
    """The user of a `login_required` view (`request.user` is typed as possibly anonymous)."""
    user = request.user
    assert isinstance(user, User), "signed_in_user() is for login_required views"
    return user


def my_membership(request: HttpRequest) -> Membership:
    """The viewer's membership; a user without an organisation gets the 404 page (`service_errors`)."""
    membership = membership_of(user=request.user)
    if membership is None:
        raise NotFound("You do not belong to an organisation.")
    return membership


def paginate(request: HttpRequest, items: QuerySet[Any] | Sequence[Any], *, param: str = "page") -> Page:
    """One page of `items` (a queryset or a list), chosen by the query parameter `param`; a missing or
    unreadable number gives the first page, one past the end the last. Render its controls with
    `{% include "portal/_pager.html" with page=... %}`: they keep the page's other query parameters
    (a filter, another list's page)."""
    page = Paginator(items, PAGE_SIZE).get_page(request.GET.get(param))
    page.param = param  # type: ignore[attr-defined]

    def link(number: int) -> str:
        query = request.GET.copy()
        query[param] = str(number)
        return "?" + query.urlencode()

    page.previous_link = link(page.previous_page_number()) if page.has_previous() else ""  # type: ignore[attr-defined]
    page.next_link = link(page.next_page_number()) if page.has_next() else ""  # type: ignore[attr-defined]
    return page
