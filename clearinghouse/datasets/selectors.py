"""Who sees which dataset, and how much of it.

Owner organisation members see everything about their datasets except rows. Organisations with an
active grant, and operators (who run the consortium but own no data), see only what the steward
stated as public: a confirmed schema, and for each ready version its number, status and upload time
(never a schema proposal inferred from the data, row counts, quality reports, sizes, file names or
ingestion times). Everyone else gets 404. docs/data-exposure.md lists every field and who reads it.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import (
    BooleanField,
    Count,
    Exists,
    ExpressionWrapper,
    Max,
    OuterRef,
    Q,
    QuerySet,
    Sum,
    Value,
)

from clearinghouse.core.compiled import CompiledRead
from clearinghouse.core.errors import Conflict, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.organisations.models import Membership, Organisation, OrganisationStatus
from clearinghouse.organisations.roles import MANAGE_DATASETS
from clearinghouse.organisations.selectors import (
    UNREAD,
    MembershipArg,
    membership_active,
    membership_given,
    organisation_directory,
    require_capability,
    require_operator,
)

from .models import (
    AccessRequest,
    AccessRequestStatus,
    AgreementAcceptance,
    Dataset,
    DatasetGrant,
    DatasetVersion,
    DataUseAgreement,
    GrantPurpose,
)


def _active_grants(organisation_id: int, purpose: str | None = None) -> QuerySet[DatasetGrant]:
    grants = DatasetGrant.objects.filter(organisation_id=organisation_id, revoked_at__isnull=True)
    return grants.filter(purpose=purpose) if purpose else grants


def _datasets_viewed_by(owner_id: int | None) -> QuerySet[Dataset]:
    """Datasets with their organisation, each with `viewer_is_owner`: held by organisation `owner_id`."""
    return Dataset.objects.select_related("organisation").annotate(
        viewer_is_owner=ExpressionWrapper(Q(organisation_id=owner_id), output_field=BooleanField())
        if owner_id
        else Value(False, output_field=BooleanField())
    )


def _datasets_of_member(organisation_id: int) -> QuerySet[Dataset]:
    """What a member of the organisation sees: its own datasets, and those granted to it (any purpose)."""
    granted = _active_grants(organisation_id).filter(dataset=OuterRef("pk"))
    return _datasets_viewed_by(organisation_id).filter(
        Q(organisation_id=organisation_id) | Q(Exists(granted))
    )


def dataset_list(*, actor: Any, membership: MembershipArg = UNREAD) -> QuerySet[Dataset]:
    """The datasets the actor may see, each with `viewer_is_owner` (see `dataset_schema_visible`).
    `membership`: the actor's, when the caller read it (`membership_given`)."""
    membership = membership_given(user=actor, membership=membership)
    if actor.is_operator:
        return _datasets_viewed_by(membership.organisation_id if membership is not None else None)
    if membership is None:
        return _datasets_viewed_by(None).none()
    return _datasets_of_member(membership.organisation_id)


def dataset_schema_visible(*, dataset: Dataset, owner: bool) -> dict | None:
    """The schema a viewer may read: a confirmed one (the steward's public facts) is everyone's who
    sees the dataset; an unconfirmed proposal (its bounds, categories, nullability and text lengths
    were read from the data) is the owner organisation's alone."""
    if dataset.schema_confirmed or owner:
        return dataset.schema
    return None


# `dataset_get` for a member (every query request asks it): compiled once (`CompiledRead`).
_MEMBER_DATASET_BY_SLUGS = CompiledRead(
    "a member's dataset by its slugs",
    lambda p: _datasets_of_member(p.number("organisation_id")).filter(
        organisation__slug=p.text("organisation_slug"), slug=p.text("dataset_slug")
    )[:1],
)


def dataset_get(
    *, actor: Any, organisation_slug: str, dataset_slug: str, membership: MembershipArg = UNREAD
) -> Dataset:
    """A dataset the actor may see (`dataset_list`), by its organisation's slug and its own."""
    membership = membership_given(user=actor, membership=membership)
    if membership is not None and not actor.is_operator:
        dataset = _MEMBER_DATASET_BY_SLUGS.first(
            organisation_id=membership.organisation_id,
            organisation_slug=organisation_slug,
            dataset_slug=dataset_slug,
        )
    else:
        dataset = (
            dataset_list(actor=actor, membership=membership)
            .filter(organisation__slug=organisation_slug, slug=dataset_slug)
            .first()
        )
    if dataset is None:
        raise NotFound("Dataset not found.")
    return dataset


def dataset_is_owner(*, actor: Any, dataset: Dataset) -> bool:
    return dataset_owned_by(membership=membership_active(user=actor), dataset=dataset)


def dataset_owned_by(*, membership: Membership | None, dataset: Dataset) -> bool:
    """`dataset_is_owner` for a caller that already holds the actor's `membership_active`."""
    return membership is not None and membership.organisation_id == dataset.organisation_id


def dataset_is_owner_or_operator(*, actor: Any, dataset: Dataset) -> bool:
    """Who oversees a dataset: its owner organisation's members and the consortium's operators. They
    read its grants, its whole budget with its spending, and every query asked of it; operators never
    what is derived from its rows (query answers, row counts: `dataset_is_owner` and
    `query_answer_visible` decide those; docs/data-exposure.md). The one place this rule is written:
    grants, budgets and queries, the API and the portal, all ask it."""
    return bool(getattr(actor, "is_operator", False)) or dataset_is_owner(actor=actor, dataset=dataset)


def dataset_register_organisation(*, actor: Any) -> Organisation:
    """The organisation a dataset registered by `actor` belongs to: their approved organisation.
    Without one (operators, who own no data, included) it is NotFound `no_organisation`; whether the
    actor's role may register is `dataset_register`'s to say."""
    membership = membership_active(user=actor)
    if membership is None:
        raise NotFound("You are not a member of an approved organisation.", code="no_organisation")
    return membership.organisation


def dataset_require_owner(*, actor: Any, dataset: Dataset) -> None:
    """Only the owner organisation's members with the dataset capability may change a dataset;
    operators (who can see it) are told no, everyone else is told it does not exist."""
    if not dataset_is_owner(actor=actor, dataset=dataset):
        if actor.is_operator:
            raise PermissionDenied("Only the owner organisation manages its datasets.", code="not_owner")
        raise NotFound("Dataset not found.")
    require_capability(actor=actor, organisation=dataset.organisation, capability=MANAGE_DATASETS)


def dataset_upload_quota_check(*, organisation_id: int, adding_bytes: int = 0) -> None:
    """The staging quota: an organisation may have at most DATASET_STAGED_UPLOADS_MAX versions
    awaiting ingestion (pending or validating, or waiting for the schema's confirmation, which queues
    them all at once), holding at most DATASET_STAGED_BYTES_MAX bytes of uploads, this one included.
    Refused uploads are never staged, or are deleted at once."""
    waiting = DatasetVersion.objects.filter(
        dataset__organisation_id=organisation_id, status__in=["pending", "validating", "awaiting_schema"]
    ).exclude(staging_path="")
    totals = waiting.aggregate(count=Count("pk"), size=Sum("source_bytes"))
    if totals["count"] >= settings.DATASET_STAGED_UPLOADS_MAX:
        raise Conflict(
            f"Your organisation already has {totals['count']} uploads waiting for validation (the limit "
            f"is {settings.DATASET_STAGED_UPLOADS_MAX}); upload again once some have finished.",
            code="staging_quota_exceeded",
        )
    if (totals["size"] or 0) + adding_bytes > settings.DATASET_STAGED_BYTES_MAX:
        raise Conflict(
            f"Uploads waiting for validation would exceed your organisation's limit of "
            f"{settings.DATASET_STAGED_BYTES_MAX} bytes; upload again once some have finished.",
            code="staging_quota_exceeded",
        )


def dataset_upload_target(*, actor: Any, organisation_slug: str, dataset_slug: str) -> Dataset:
    """The dataset an upload request may stage a file for: checked before the request body is read
    (the owner organisation's members with the dataset capability, under the staging quota)."""
    dataset = dataset_get(actor=actor, organisation_slug=organisation_slug, dataset_slug=dataset_slug)
    dataset_require_owner(actor=actor, dataset=dataset)
    dataset_upload_quota_check(organisation_id=dataset.organisation_id)
    return dataset


_ACTIVE_GRANT = CompiledRead(
    "an organisation's active grant of a dataset for a purpose",
    lambda p: (
        _active_grants(p.number("organisation_id"), p.text("purpose"))
        .filter(dataset_id=p.number("dataset_id"))
        .only("pk")
        .order_by()[:1]
    ),
)


def dataset_grant_active(*, dataset: Dataset, organisation_id: int, purpose: str) -> bool:
    if not purpose:  # the compiled read always filters by purpose (`_active_grants` would not)
        raise ValueError("dataset_grant_active: a grant is active for a purpose")
    return (
        _ACTIVE_GRANT.first(organisation_id=organisation_id, purpose=purpose, dataset_id=dataset.pk)
        is not None
    )


def dataset_version_list(*, actor: Any, dataset: Dataset) -> QuerySet[DatasetVersion]:
    versions = dataset.versions.order_by("-number")
    if dataset_is_owner(actor=actor, dataset=dataset):
        return versions
    # Non-owners (grantees and operators) learn which versions are ready to query, nothing more: a
    # failed one would say the data broke its schema.
    return versions.filter(status="ready")


def dataset_version_get(*, actor: Any, dataset: Dataset, number: int) -> DatasetVersion:
    version = dataset_version_list(actor=actor, dataset=dataset).filter(number=number).first()
    if version is None:
        raise NotFound("Dataset version not found.")
    return version


# Compiled once (`CompiledRead`): every query request reads it.
_LATEST_READY_VERSION = CompiledRead(
    "a dataset's latest ready version",
    lambda p: DatasetVersion.objects.filter(dataset_id=p.number("dataset_id"), status="ready").order_by(
        "-number"
    )[:1],
)


def dataset_version_latest_ready(*, dataset: Dataset) -> DatasetVersion | None:
    version = _LATEST_READY_VERSION.first(dataset_id=dataset.pk)
    if version is not None:
        version.dataset = dataset  # as `dataset.versions` would give it: no read of it again
    return version


def dataset_ready_rows_max(*, dataset: Dataset) -> int | None:
    """The most rows any ready version holds. For checks on the owner's side only (never shown to
    anyone else: an exact count is not differentially private)."""
    return dataset.versions.filter(status="ready").aggregate(rows=Max("row_count"))["rows"]


def dataset_grant_list(*, actor: Any, dataset: Dataset) -> QuerySet[DatasetGrant]:
    """A dataset's grants, for those who oversee it (`dataset_is_owner_or_operator`); everyone else,
    grantees included, is told the dataset does not exist."""
    if not dataset_is_owner_or_operator(actor=actor, dataset=dataset):
        raise NotFound("Dataset not found.")
    return dataset.grants.select_related("organisation").order_by("-granted_at")


def dataset_grant_get(*, actor: Any, grant_id: int) -> DatasetGrant:
    """A grant by id (to revoke it), for those who oversee its dataset (`dataset_is_owner_or_operator`).
    Anyone else gets the same 404 as for an id that does not exist, so another organisation's grant id
    confirms nothing. Whether the actor may revoke it is `dataset_grant_revoke`'s to say."""
    grant = (
        DatasetGrant.objects.select_related("dataset__organisation", "organisation")
        .filter(pk=grant_id)
        .first()
    )
    if grant is None or not dataset_is_owner_or_operator(actor=actor, dataset=grant.dataset):
        raise NotFound("Grant not found.")
    return grant


def dataset_grant_candidates(*, dataset: Dataset) -> QuerySet[Organisation]:
    """The organisations a dataset can be granted to: the approved members' directory, less its owner."""
    return organisation_directory().exclude(pk=dataset.organisation_id)


# Compiled once (`CompiledRead`): every query request of a grantee asks `agreement_accepted`.
_CURRENT_AGREEMENT = CompiledRead(
    "a dataset's current data-use agreement",
    lambda p: DataUseAgreement.objects.filter(dataset_id=p.number("dataset_id")).order_by("-version")[:1],
)
_ACCEPTANCE = CompiledRead(
    "a user's acceptance of an agreement",
    lambda p: AgreementAcceptance.objects.filter(
        agreement_id=p.number("agreement_id"), user_id=p.number("user_id")
    ).only("pk")[:1],
)


def agreement_current(*, dataset: Dataset) -> DataUseAgreement | None:
    agreement = _CURRENT_AGREEMENT.first(dataset_id=dataset.pk)
    if agreement is not None:
        agreement.dataset = dataset  # as `dataset.agreements` would give it: no read of it again
    return agreement


def agreement_accepted(*, user: Any, dataset: Dataset) -> bool:
    """True when the user accepted the dataset's current agreement (or it has none)."""
    agreement = agreement_current(dataset=dataset)
    if agreement is None:
        return True
    return _ACCEPTANCE.first(agreement_id=agreement.pk, user_id=user.pk) is not None


def datasets_overview(*, actor: Any, q: str = "") -> QuerySet[Dataset]:
    """The operators' consortium overview (`portal:operator_overview`, `GET /api/v1/operator/overview`):
    every dataset, with what operators already read of it (docs/data-exposure.md): its owner, name,
    whether its schema is confirmed, and of its versions only the ready ones, as
    `dataset_version_list` shows non-owners: `versions_ready` (how many), `latest_version` and
    `latest_version_at` (the newest one's number and upload time; None while none is ready). Never a
    row count, a size, a file name or a pending or failed version. `q` keeps the datasets whose name or
    slug, or whose owner's name or slug, holds it. Operators only (PermissionDenied otherwise)."""
    require_operator(actor=actor)
    ready = Q(versions__status="ready")
    datasets = Dataset.objects.select_related("organisation").annotate(
        versions_ready=Count("versions", filter=ready),
        latest_version=Max("versions__number", filter=ready),
        latest_version_at=Max("versions__created_at", filter=ready),
    )
    if q:
        datasets = datasets.filter(
            Q(name__icontains=q)
            | Q(slug__icontains=q)
            | Q(organisation__name__icontains=q)
            | Q(organisation__slug__icontains=q)
        )
    return datasets.order_by("organisation__slug", "slug", "pk")


# --- Catalogue and access requests -----------------------------------------------------------------
# The catalogue: the datasets their owners offer to the consortium (`Dataset.listed`, only ever with a
# confirmed schema), shown to every approved organisation's members and to operators with the
# steward's public facts only: name, description, owner, the confirmed schema and the budget policy's
# public terms. Other organisations ask for access there (`AccessRequest`); the owner decides.


def catalogue_list(*, actor: Any) -> QuerySet[Dataset]:
    """The listed datasets of approved organisations, each annotated with the viewer's view of it:
    `viewer_is_owner`, and for the viewer's organisation `granted_query`/`granted_training` (an active
    grant) and `pending_query`/`pending_training` (a pending access request). Nothing for users of no
    approved organisation (operators excepted: they see every dataset anyway)."""
    membership = membership_active(user=actor)
    if membership is None and not getattr(actor, "is_operator", False):
        return Dataset.objects.none()
    datasets = Dataset.objects.select_related("organisation", "privacy_budget").filter(
        listed=True, schema_confirmed=True, organisation__status=OrganisationStatus.APPROVED
    )
    false = Value(False, output_field=BooleanField())
    if membership is None:
        return datasets.annotate(
            viewer_is_owner=false,
            granted_query=false,
            granted_training=false,
            pending_query=false,
            pending_training=false,
        )
    org_id = membership.organisation_id
    grants = _active_grants(org_id).filter(dataset=OuterRef("pk"))
    pending = AccessRequest.objects.filter(
        dataset=OuterRef("pk"), organisation_id=org_id, status=AccessRequestStatus.PENDING
    )
    return datasets.annotate(
        viewer_is_owner=ExpressionWrapper(Q(organisation_id=org_id), output_field=BooleanField()),
        granted_query=Exists(grants.filter(purpose=GrantPurpose.QUERY)),
        granted_training=Exists(grants.filter(purpose=GrantPurpose.TRAINING)),
        pending_query=Exists(pending.filter(purpose=GrantPurpose.QUERY)),
        pending_training=Exists(pending.filter(purpose=GrantPurpose.TRAINING)),
    )


def catalogue_budget_terms(*, dataset: Dataset) -> dict | None:
    """The budget policy's public terms (its measure, total and per-query maximum), or None while the
    owner has set none. Never what was spent, allocations or anything about queries."""
    budget = getattr(dataset, "privacy_budget", None)  # the reverse one-to-one of queries.PrivacyBudget
    if budget is None:
        return None
    return {"measure": budget.measure, "total": budget.total, "per_query_max": budget.per_query_max}


def catalogue_dataset_get(*, actor: Any, organisation_slug: str, dataset_slug: str) -> Dataset:
    """A dataset whose access requests the actor may address: one in the catalogue, or one they see
    already (`dataset_list`: their own, granted ones, and operators' every one). Else NotFound."""
    dataset = (
        catalogue_list(actor=actor).filter(organisation__slug=organisation_slug, slug=dataset_slug).first()
    )
    if dataset is None:
        return dataset_get(actor=actor, organisation_slug=organisation_slug, dataset_slug=dataset_slug)
    return dataset


def _access_requests() -> QuerySet[AccessRequest]:
    return AccessRequest.objects.select_related(
        "dataset__organisation", "organisation", "requested_by", "decided_by"
    )


def access_request_list_for_dataset(*, actor: Any, dataset: Dataset) -> QuerySet[AccessRequest]:
    """A dataset's access requests: all of them for those who oversee it (its owner organisation's
    members, operators: `dataset_is_owner_or_operator`, as for its grants); for anyone else, their own
    organisation's requests for it."""
    requests = _access_requests().filter(dataset=dataset)
    if dataset_is_owner_or_operator(actor=actor, dataset=dataset):
        return requests
    membership = membership_active(user=actor)
    if membership is None:
        return requests.none()
    return requests.filter(organisation_id=membership.organisation_id)


def access_request_incoming(*, actor: Any) -> QuerySet[AccessRequest]:
    """Requests to the actor's organisation's datasets (the owner's side)."""
    membership = membership_active(user=actor)
    if membership is None:
        return AccessRequest.objects.none()
    return _access_requests().filter(dataset__organisation_id=membership.organisation_id)


def access_request_outgoing(*, actor: Any) -> QuerySet[AccessRequest]:
    """Requests the actor's organisation made (the requester's side)."""
    membership = membership_active(user=actor)
    if membership is None:
        return AccessRequest.objects.none()
    return _access_requests().filter(organisation_id=membership.organisation_id)


def access_request_mine(
    *, actor: Any, direction: str | None = None, status: str | None = None
) -> QuerySet[AccessRequest]:
    """The actor's organisation's requests, incoming and outgoing (or one `direction`), optionally of
    one `status`. Operators, members of no organisation: none (they neither own nor request)."""
    membership = membership_active(user=actor)
    if membership is None:
        return AccessRequest.objects.none()
    org_id = membership.organisation_id
    mine = {
        "incoming": Q(dataset__organisation_id=org_id),
        "outgoing": Q(organisation_id=org_id),
    }
    if direction is not None and direction not in mine:
        raise ValidationFailed(
            "direction must be incoming or outgoing.",
            code="invalid_direction",
            fields={"direction": ["Use incoming or outgoing."]},
        )
    if status is not None and status not in AccessRequestStatus.values:
        raise ValidationFailed(
            f"status must be one of {', '.join(AccessRequestStatus.values)}.",
            code="invalid_status",
            fields={"status": [f"Use one of {', '.join(AccessRequestStatus.values)}."]},
        )
    condition = mine[direction] if direction else mine["incoming"] | mine["outgoing"]
    requests = _access_requests().filter(condition)
    return requests.filter(status=status) if status else requests


def access_request_get(*, actor: Any, request_id: int) -> AccessRequest:
    """An access request by id, for the two organisations it concerns (the dataset's owner, the
    requester) and operators; anyone else gets the same 404 as for an id that does not exist."""
    access_request = _access_requests().filter(pk=request_id).first()
    if access_request is None:
        raise NotFound("Access request not found.")
    if getattr(actor, "is_operator", False):
        return access_request
    membership = membership_active(user=actor)
    if membership is None or membership.organisation_id not in {
        access_request.organisation_id,
        access_request.dataset.organisation_id,
    }:
        raise NotFound("Access request not found.")
    return access_request
