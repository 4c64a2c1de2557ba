"""Builders of users, organisations and memberships. Every object is made through the real services,
so the tests exercise the same paths (validation, audit) as the service itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rest_framework.test import APIClient

from clearinghouse.accounts.models import User
from clearinghouse.accounts.services import api_token_create, operator_create, user_signup
from clearinghouse.organisations.models import Invitation, JoinRequest, Membership, Organisation
from clearinghouse.organisations.roles import Role
from clearinghouse.organisations.services import (
    invitation_accept,
    invitation_create,
    join_request_create,
    join_request_decide,
    organisation_apply,
    organisation_set_status,
)

PASSWORD = "correct-horse-battery-staple"


def make_user(username: str) -> User:
    return user_signup(username=username, email=f"{username}@example.org", password=PASSWORD)


def make_operator(username: str = "operator") -> User:
    user, _ = operator_create(username=username, email=f"{username}@example.org", password=PASSWORD)
    return user


def make_organisation(*, operator: User, admin: User, slug: str, approve: bool = True) -> Organisation:
    organisation = organisation_apply(actor=admin, name=f"Org {slug.upper()}", slug=slug, country="NL",
                                      contact_email=f"contact@{slug}.example.org")
    if approve:
        organisation = organisation_set_status(actor=operator, organisation=organisation, status="approved")
    return organisation


def add_member_by_join_request(*, organisation: Organisation, admin: User, user: User, role: str) -> Membership:
    request = join_request_create(actor=user, organisation=organisation, message="hello")
    join_request_decide(actor=admin, join_request=request, approve=True, role=role)
    return Membership.objects.get(user=user)


def add_member_by_invitation(*, organisation: Organisation, admin: User, user: User, role: str) -> Membership:
    _, token = invitation_create(actor=admin, organisation=organisation, email=user.email, role=role)
    return invitation_accept(actor=user, token=token)


def api_client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        _, text = api_token_create(actor=user, name=f"test-{user.username}")
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {text}")
    return client


@dataclass
class OrgSide:
    organisation: Organisation
    admin: User
    analyst: User
    steward: User
    joiner: User
    join_request: JoinRequest
    invitation: Invitation
    invitation_token: str
    admin_token_id: int


@dataclass
class World:
    operator: User
    a: OrgSide
    b: OrgSide

    def actor(self, name: str) -> User | None:
        return {
            "anonymous": None,
            "analyst": self.a.analyst,
            "org_admin": self.a.admin,
            "other_admin": self.b.admin,
            "operator": self.operator,
        }[name]

    def side(self, which: str) -> OrgSide:
        return self.a if which == "own" else self.b


def _side(operator: User, slug: str) -> OrgSide:
    admin = make_user(f"admin_{slug}")
    organisation = make_organisation(operator=operator, admin=admin, slug=slug)
    analyst = make_user(f"analyst_{slug}")
    add_member_by_join_request(organisation=organisation, admin=admin, user=analyst, role=Role.ANALYST)
    steward = make_user(f"steward_{slug}")
    add_member_by_invitation(organisation=organisation, admin=admin, user=steward, role=Role.DATA_STEWARD)
    joiner = make_user(f"joiner_{slug}")
    join_request = join_request_create(actor=joiner, organisation=organisation, message="please")
    invitation, invitation_token = invitation_create(actor=admin, organisation=organisation, email=f"invitee@{slug}.example.org",
                                      role=Role.ANALYST)
    token, _ = api_token_create(actor=admin, name="matrix")
    return OrgSide(organisation, admin, analyst, steward, joiner, join_request, invitation, invitation_token, token.pk)


def build_world() -> World:
    operator = make_operator()
    return World(operator=operator, a=_side(operator, "org-a"), b=_side(operator, "org-b"))
