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

from clearinghouse.core.errors import Conflict, NotFound, PermissionDenied
from clearinghouse.organisations.models import Organisation
from clearinghouse.organisations.roles import MANAGE_DATASETS
from clearinghouse.organisations.selectors import (
    membership_active,
    organisation_directory,
    require_capability,
)

from .models import AgreementAcceptance, Dataset, DatasetGrant, DatasetVersion, DataUseAgreement


def _active_grants(organisation_id: int, purpose: str | None = None) -> QuerySet[DatasetGrant]:
    grants = DatasetGrant.objects.filter(organisation_id=organisation_id, revoked_at__isnull=True)
    return grants.filter(purpose=purpose) if purpose else grants


def dataset_list(*, actor: Any) -> QuerySet[Dataset]:
    """The datasets the actor may see, each with `viewer_is_owner` (see `dataset_schema_visible`)."""
    membership = membership_active(user=actor)
    owner_id = membership.organisation_id if membership is not None else None
    datasets = Dataset.objects.select_related("organisation").annotate(
        viewer_is_owner=ExpressionWrapper(Q(organisation_id=owner_id), output_field=BooleanField())
        if owner_id
        else Value(False, output_field=BooleanField())
    )
    if actor.is_operator:
        return datasets.all()
    if membership is None:
        return datasets.none()
    granted = _active_grants(membership.organisation_id).filter(dataset=OuterRef("pk"))
    return datasets.filter(Q(organisation_id=membership.organisation_id) | Q(Exists(granted)))


def dataset_schema_visible(*, dataset: Dataset, owner: bool) -> dict | None:
    """The schema a viewer may read: a confirmed one (the steward's public facts) is everyone's who
    sees the dataset; an unconfirmed proposal (its bounds, categories, nullability and text lengths
    were read from the data) is the owner organisation's alone."""
    if dataset.schema_confirmed or owner:
        return dataset.schema
    return None


def dataset_get(*, actor: Any, organisation_slug: str, dataset_slug: str) -> Dataset:
    dataset = (
        dataset_list(actor=actor).filter(organisation__slug=organisation_slug, slug=dataset_slug).first()
    )
    if dataset is None:
        raise NotFound("Dataset not found.")
    return dataset


def dataset_is_owner(*, actor: Any, dataset: Dataset) -> bool:
    membership = membership_active(user=actor)
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
    awaiting ingestion (pending or validating), holding at most DATASET_STAGED_BYTES_MAX bytes of
    uploads, this one included. Refused uploads are never staged, or are deleted at once."""
    waiting = DatasetVersion.objects.filter(
        dataset__organisation_id=organisation_id, status__in=["pending", "validating"]
    )
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


def dataset_grant_active(*, dataset: Dataset, organisation_id: int, purpose: str) -> bool:
    return _active_grants(organisation_id, purpose).filter(dataset=dataset).exists()


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


def dataset_version_latest_ready(*, dataset: Dataset) -> DatasetVersion | None:
    return dataset.versions.filter(status="ready").order_by("-number").first()


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


def agreement_current(*, dataset: Dataset) -> DataUseAgreement | None:
    return dataset.agreements.order_by("-version").first()


def agreement_accepted(*, user: Any, dataset: Dataset) -> bool:
    """True when the user accepted the dataset's current agreement (or it has none)."""
    agreement = agreement_current(dataset=dataset)
    if agreement is None:
        return True
    return AgreementAcceptance.objects.filter(agreement=agreement, user=user).exists()
