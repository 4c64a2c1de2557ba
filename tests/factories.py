"""Builders of users, organisations and memberships. Every object is made through the real services,
so the tests exercise the same paths (validation, audit) as the service itself."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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
    organisation = organisation_apply(
        actor=admin,
        name=f"Org {slug.upper()}",
        slug=slug,
        country="NL",
        contact_email=f"contact@{slug}.example.org",
    )
    if approve:
        organisation = organisation_set_status(actor=operator, organisation=organisation, status="approved")
    return organisation


def add_member_by_join_request(
    *, organisation: Organisation, admin: User, user: User, role: str
) -> Membership:
    request = join_request_create(actor=user, organisation=organisation, message="hello")
    join_request_decide(actor=admin, join_request=request, approve=True, role=role)
    return Membership.objects.get(user=user)


def add_member_by_invitation(*, organisation: Organisation, admin: User, user: User, role: str) -> Membership:
    _, token = invitation_create(actor=admin, organisation=organisation, email=user.email, role=role)
    return invitation_accept(actor=user, token=token)


def api_client(user: User | None) -> APIClient:
    client = APIClient()
    if user is not None:
        _, text = api_token_create(actor=user, name=f"test-{uuid.uuid4().hex[:12]}")
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
    dataset: object
    grant_id: int
    job_id: int = 0  # a federated job with this organisation as its one (accepted) participant, with a model
    node_key_id: int = 0  # a SuperNode key of this organisation (pending: no SuperLink in most tests)


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


SMALL_SCHEMA = {
    "columns": [
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "group", "type": "categorical", "categories": ["a", "b"]},
    ]
}


def make_dataset(
    *,
    steward: User,
    slug: str = "survey",
    csv: bytes = b"age,group\n30,a\n41,b\n",
    schema: dict = SMALL_SCHEMA,
):
    """A registered dataset with one ready version, uploaded through the real encrypting upload path
    and ingested by the worker-side service."""
    import io

    from clearinghouse.datasets.models import Dataset, DatasetVersion
    from clearinghouse.datasets.services import dataset_version_ingest

    client = api_client(steward)
    organisation = steward.membership.organisation
    response = client.post(
        "/api/v1/datasets", {"name": slug.title(), "slug": slug, "schema": schema}, format="json"
    )
    assert response.status_code == 201, response.content
    response = client.post(
        f"/api/v1/datasets/{organisation.slug}/{slug}/versions", {"file": io.BytesIO(csv)}, format="multipart"
    )
    assert response.status_code == 202, response.content
    version = DatasetVersion.objects.get(dataset__organisation=organisation, dataset__slug=slug, number=1)
    assert dataset_version_ingest(version_id=version.pk).status == "ready"
    return Dataset.objects.get(pk=version.dataset_id)


def _side(operator: User, slug: str, grantee: Organisation) -> OrgSide:
    admin = make_user(f"admin_{slug}")
    organisation = make_organisation(operator=operator, admin=admin, slug=slug)
    analyst = make_user(f"analyst_{slug}")
    add_member_by_join_request(organisation=organisation, admin=admin, user=analyst, role=Role.ANALYST)
    steward = make_user(f"steward_{slug}")
    add_member_by_invitation(organisation=organisation, admin=admin, user=steward, role=Role.DATA_STEWARD)
    joiner = make_user(f"joiner_{slug}")
    join_request = join_request_create(actor=joiner, organisation=organisation, message="please")
    invitation, invitation_token = invitation_create(
        actor=admin, organisation=organisation, email=f"invitee@{slug}.example.org", role=Role.ANALYST
    )
    token, _ = api_token_create(actor=admin, name="matrix")
    from clearinghouse.datasets.services import agreement_publish, dataset_grant_create

    dataset = make_dataset(steward=steward)
    agreement_publish(actor=steward, dataset=dataset, text="Aggregate research use only.")
    grant = dataset_grant_create(actor=steward, dataset=dataset, organisation=grantee, purpose="query")
    from clearinghouse.queries.ledger import allocation_set, budget_set

    budget_set(actor=steward, dataset=dataset, measure="pure", total=10.0)
    allocation_set(actor=steward, dataset=dataset, organisation=grantee, amount=1.0)
    return OrgSide(
        organisation,
        admin,
        analyst,
        steward,
        joiner,
        join_request,
        invitation,
        invitation_token,
        token.pk,
        dataset,
        grant.pk,
    )


def build_world() -> World:
    """Operator; organisations A and B (admin, analyst, steward, a pending join request, an open
    invitation, an admin token, a dataset with one ready version, an agreement and a grant to C);
    organisation C exists only to receive those grants."""
    operator = make_operator()
    grantee = make_organisation(operator=operator, admin=make_user("admin_org-c"), slug="org-c")
    world = World(operator=operator, a=_side(operator, "org-a", grantee), b=_side(operator, "org-b", grantee))
    for side in (world.a, world.b):
        side.job_id = make_finished_job(operator=operator, admin=side.admin).pk
        side.node_key_id = make_node_key(admin=side.admin).pk
    return world


def make_node_key(*, admin: User, name: str = "gpu-1"):
    import tempfile
    from pathlib import Path

    from federation.flower.security import make_supernode_keypair
    from federation.services import supernode_key_add

    with tempfile.TemporaryDirectory() as tmp:
        _, public = make_supernode_keypair(Path(tmp), name)
        return supernode_key_add(
            actor=admin, organisation=admin.membership.organisation, name=name, public_key=public.read_text()
        )


def make_finished_job(*, operator: User, admin: User):
    """A one-participant job accepted by `admin`'s organisation, with a stored (tiny) model
    artifact, as if it had run."""
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage

    from federation.models import FederatedJob, JobState, ModelArtifact
    from federation.services import job_create, job_participation_decide

    organisation = admin.membership.organisation
    job = job_create(
        actor=operator,
        name=f"Spam filter {organisation.slug}",
        text_column="SMS",
        label_column="Label",
        labels=["ham", "spam"],
        participants=[{"organisation": organisation.slug}],
        min_clients=1,
    )
    job_participation_decide(actor=admin, job=job, decision="accept")
    name = default_storage.save(f"federation/{job.uid}/adapter.safetensors", ContentFile(b"model-bytes"))
    ModelArtifact.objects.create(
        job=job, file_name=name, size=11, sha256="0" * 64, report={"status": "succeeded"}
    )
    FederatedJob.objects.filter(pk=job.pk).update(state=JobState.SUCCEEDED)
    job.refresh_from_db()
    return job
