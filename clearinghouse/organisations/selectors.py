"""Reads: who belongs where, and which organisations and requests an actor may see.

Visibility rule everywhere: operators see all; a member sees their own organisation; anything of
another organisation is reported as not found, so its existence is not confirmed.
"""

from __future__ import annotations

import enum
from typing import Any, Final

from django.db.models import Count, Q, QuerySet

from clearinghouse.core.compiled import CompiledRead
from clearinghouse.core.errors import NotFound, PermissionDenied

from .models import Invitation, JoinRequest, Membership, Organisation, OrganisationStatus, RequestStatus
from .roles import ROLE_CAPABILITIES

# An operator's decision on an organisation, by its name in the API's and the portal's URLs, and the
# status it sets (`organisation_set_status` decides who may, and which moves are allowed).
ORGANISATION_DECISIONS: dict[str, str] = {
    "approve": OrganisationStatus.APPROVED,
    "reject": OrganisationStatus.REJECTED,
    "suspend": OrganisationStatus.SUSPENDED,
    "reinstate": OrganisationStatus.APPROVED,
}


# Compiled once (`CompiledRead`): session requests and the selectors not given a membership read it.
_MEMBERSHIP_OF_USER = CompiledRead(
    "a user's membership, with its organisation",
    lambda p: (
        Membership.objects.select_related("organisation").filter(user_id=p.number("user_id")).order_by()[:1]
    ),
)
_SUSPENDED_MEMBERSHIP = CompiledRead(
    "a user's membership of a suspended organisation",
    lambda p: (
        Membership.objects.filter(
            user_id=p.number("user_id"), organisation__status=OrganisationStatus.SUSPENDED
        )
        .only("pk")
        .order_by()[:1]
    ),
)


def membership_of(*, user: Any) -> Membership | None:
    """Read fresh from the database each time: authorization must not trust a status cached on a
    user object earlier in the request (the one exception, `membership_joined`, is the reading the
    request began with, given on explicitly)."""
    if not getattr(user, "is_authenticated", False):
        return None
    return _MEMBERSHIP_OF_USER.first(user_id=user.pk)


def membership_active(*, user: Any) -> Membership | None:
    """The user's membership if their organisation is approved, else None."""
    return membership_if_active(membership_of(user=user))


def membership_if_active(membership: Membership | None) -> Membership | None:
    """`membership` (with its organisation) if its organisation is approved, else None: the rule of
    `membership_active`, for a membership read otherwise in this request (`membership_joined`)."""
    if membership is None or membership.organisation.status != OrganisationStatus.APPROVED:
        return None
    return membership


def membership_is_suspended(membership: Membership | None) -> bool:
    """Whether `membership` (with its organisation) is in a suspended organisation: its user and
    their tokens are refused (`user_is_suspended`)."""
    return membership is not None and membership.organisation.status == OrganisationStatus.SUSPENDED


# What a read of users joins (`select_related`) to read each one's membership and its organisation
# in the same statement; `membership_joined` then gives it.
USER_MEMBERSHIP_JOIN: Final = "membership__organisation"


def membership_joined(*, user: Any) -> Membership | None:
    """The user's membership as read together with the user (`USER_MEMBERSHIP_JOIN`), not read again.
    Only for a user object read at the start of this request (token authentication does): a later
    change to the membership is not seen in it, nor in `user.membership`, which the join also fills;
    code that changes a membership reads it again (`membership_of`)."""
    descriptor = type(user).membership
    assert descriptor.is_cached(user), "membership_joined: the user was read without USER_MEMBERSHIP_JOIN"
    try:
        return user.membership
    except Membership.DoesNotExist:
        return None


class _Unread(enum.Enum):
    UNREAD = "unread"


# What a selector that takes the actor's `membership` is given when its caller has not read it: the
# selector then reads it itself. A request that asks several of them reads it once, at its start
# (`membership_active`), and gives it to each, so that one request judges with one reading.
UNREAD: Final = _Unread.UNREAD
MembershipArg = Membership | None | _Unread


def membership_given(*, user: Any, membership: MembershipArg) -> Membership | None:
    """`membership` as given (the caller's `membership_active` of `user`, read in this request), or
    read now when the caller gave `UNREAD`."""
    if membership is UNREAD:
        return membership_active(user=user)
    assert membership is None or membership.user_id == user.pk, "membership_given: another user's"
    return membership


def user_is_suspended(*, user: Any) -> bool:
    """`membership_is_suspended` of the user's membership, asked of the database without reading it."""
    return _SUSPENDED_MEMBERSHIP.first(user_id=user.pk) is not None


def user_capabilities(*, user: Any) -> frozenset[str]:
    membership = membership_active(user=user)
    return ROLE_CAPABILITIES[membership.role] if membership else frozenset()


def require_capability(*, actor: Any, organisation: Organisation, capability: str) -> Membership:
    """The actor's membership in `organisation` if it grants `capability`. Someone outside the
    organisation gets NotFound (nothing confirmed); a member without the right gets PermissionDenied."""
    if getattr(actor, "is_operator", False):
        # Operators can see every organisation, so there is nothing to hide: say what is wrong.
        raise PermissionDenied(
            "Operators do not act inside member organisations.", code="operator_not_member"
        )
    membership = membership_of(user=actor)
    if membership is None or membership.organisation_id != organisation.pk:
        raise NotFound("Organisation not found.")
    if membership.organisation.status != OrganisationStatus.APPROVED:
        raise PermissionDenied("Your organisation is not approved.", code="organisation_not_approved")
    if capability not in ROLE_CAPABILITIES[membership.role]:
        raise PermissionDenied("Your role does not allow this.", code="role_forbidden")
    return membership


def organisation_visible(*, actor: Any, organisation_id: int) -> bool:
    """The visibility rule above, for one organisation's objects (its members, invitations, SuperNode
    keys): operators see every organisation's; a member sees their own organisation's."""
    if getattr(actor, "is_operator", False):
        return True
    membership = membership_of(user=actor)
    return membership is not None and membership.organisation_id == organisation_id


def require_operator(*, actor: Any) -> None:
    if not getattr(actor, "is_operator", False):
        raise PermissionDenied("Only consortium operators can do this.", code="operator_required")


def organisation_list(*, actor: Any, status: str | None = None) -> QuerySet[Organisation]:
    if actor.is_operator:
        organisations = Organisation.objects.all()
    else:
        membership = membership_of(user=actor)
        organisations = (
            Organisation.objects.filter(pk=membership.organisation_id)
            if membership
            else Organisation.objects.none()
        )
    if status:
        organisations = organisations.filter(status=status)
    return organisations.order_by("name")


def organisation_get(*, actor: Any, slug: str) -> Organisation:
    organisation = organisation_list(actor=actor).filter(slug=slug).first()
    if organisation is None:
        raise NotFound("Organisation not found.")
    return organisation


def organisation_pending_list(*, actor: Any) -> QuerySet[Organisation]:
    """Applications waiting for a decision: the operators' work queue; nobody else has one."""
    if not getattr(actor, "is_operator", False):
        return Organisation.objects.none()
    return organisation_list(actor=actor, status=OrganisationStatus.PENDING)


def organisation_directory() -> QuerySet[Organisation]:
    """Approved members by name and slug: public within the consortium, for people asking to join."""
    return Organisation.objects.filter(status=OrganisationStatus.APPROVED).only("name", "slug", "country")


def organisation_directory_get(*, slug: str) -> Organisation:
    organisation = organisation_directory().filter(slug=slug).first()
    if organisation is None:
        raise NotFound("Organisation not found.")
    return organisation


def membership_list(*, actor: Any, organisation: Organisation) -> QuerySet[Membership]:
    if not organisation_visible(actor=actor, organisation_id=organisation.pk):
        raise NotFound("Organisation not found.")
    return organisation.memberships.select_related("user").order_by("user__username")


def membership_get(*, actor: Any, membership_id: int) -> Membership:
    membership = Membership.objects.select_related("user", "organisation").filter(pk=membership_id).first()
    if membership is None or not organisation_visible(
        actor=actor, organisation_id=membership.organisation_id
    ):
        raise NotFound("Membership not found.")
    return membership


def join_request_list(
    *, actor: Any, organisation: Organisation | None = None, status: str | None = None, own: bool = False
) -> QuerySet[JoinRequest]:
    """Operators: all. Org admins: those addressed to their organisation. Everyone: their own. Narrowed
    to one organisation's, to one status, or (`own`) to the actor's own requests."""
    requests = JoinRequest.objects.select_related("user", "organisation")
    if actor.is_operator:
        result = requests.all()
    else:
        membership = membership_active(user=actor)
        if membership is not None and "manage_members" in ROLE_CAPABILITIES[membership.role]:
            result = requests.filter(organisation=membership.organisation) | requests.filter(user=actor)
        else:
            result = requests.filter(user=actor)
    if organisation is not None:
        result = result.filter(organisation=organisation)
    if status:
        result = result.filter(status=status)
    if own:
        result = result.filter(user=actor)
    return result.order_by("-created_at")


def join_request_get(*, actor: Any, join_request_id: int) -> JoinRequest:
    join_request = join_request_list(actor=actor).filter(pk=join_request_id).first()
    if join_request is None:
        raise NotFound("Join request not found.")
    return join_request


def join_request_pending_for(*, user: Any) -> JoinRequest | None:
    return (
        JoinRequest.objects.filter(user=user, status=RequestStatus.PENDING)
        .select_related("organisation")
        .first()
    )


def invitation_list(*, actor: Any, organisation: Organisation) -> QuerySet[Invitation]:
    if not actor.is_operator:
        require_capability(actor=actor, organisation=organisation, capability="manage_members")
    return organisation.invitations.order_by("-created_at")


def invitation_get(*, actor: Any, invitation_id: int) -> Invitation:
    invitation = Invitation.objects.select_related("organisation").filter(pk=invitation_id).first()
    if invitation is None or not organisation_visible(
        actor=actor, organisation_id=invitation.organisation_id
    ):
        raise NotFound("Invitation not found.")
    return invitation


def organisations_overview(*, actor: Any, q: str = "") -> QuerySet[Organisation]:
    """The operators' consortium overview (`portal:operator_overview`, `GET /api/v1/operator/overview`):
    every organisation, whatever its status, with `members` (how many people belong to it: operators
    read its members anyway, `membership_list`). `q` keeps those whose name or slug holds it. Operators
    only (PermissionDenied `operator_required` for everyone else)."""
    require_operator(actor=actor)
    organisations = Organisation.objects.annotate(members=Count("memberships"))
    if q:
        organisations = organisations.filter(Q(name__icontains=q) | Q(slug__icontains=q))
    return organisations.order_by("name", "pk")
