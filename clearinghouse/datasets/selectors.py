"""Who sees which dataset, and how much of it.

Owner organisation members see everything about their datasets except rows. Organisations with an
active grant see the schema and public facts only (never rows, quality-report details or file
locations). Everyone else gets 404.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Exists, OuterRef, Q, QuerySet

from clearinghouse.core.errors import NotFound, PermissionDenied
from clearinghouse.organisations.roles import MANAGE_DATASETS
from clearinghouse.organisations.selectors import membership_active, require_capability

from .models import AgreementAcceptance, Dataset, DatasetGrant, DatasetVersion, DataUseAgreement


def _active_grants(organisation_id: int, purpose: str | None = None) -> QuerySet[DatasetGrant]:
    grants = DatasetGrant.objects.filter(organisation_id=organisation_id, revoked_at__isnull=True)
    return grants.filter(purpose=purpose) if purpose else grants


def dataset_list(*, actor: Any) -> QuerySet[Dataset]:
    datasets = Dataset.objects.select_related("organisation")
    if actor.is_operator:
        return datasets.all()
    membership = membership_active(user=actor)
    if membership is None:
        return datasets.none()
    granted = _active_grants(membership.organisation_id).filter(dataset=OuterRef("pk"))
    return datasets.filter(Q(organisation_id=membership.organisation_id) | Q(Exists(granted)))


def dataset_get(*, actor: Any, organisation_slug: str, dataset_slug: str) -> Dataset:
    dataset = dataset_list(actor=actor).filter(organisation__slug=organisation_slug, slug=dataset_slug).first()
    if dataset is None:
        raise NotFound("Dataset not found.")
    return dataset


def dataset_is_owner(*, actor: Any, dataset: Dataset) -> bool:
    membership = membership_active(user=actor)
    return membership is not None and membership.organisation_id == dataset.organisation_id


def dataset_require_owner(*, actor: Any, dataset: Dataset) -> None:
    """Only the owner organisation's members with the dataset capability may change a dataset;
    operators (who can see it) are told no, everyone else is told it does not exist."""
    if not dataset_is_owner(actor=actor, dataset=dataset):
        if actor.is_operator:
            raise PermissionDenied("Only the owner organisation manages its datasets.", code="not_owner")
        raise NotFound("Dataset not found.")
    require_capability(actor=actor, organisation=dataset.organisation, capability=MANAGE_DATASETS)


def dataset_grant_active(*, dataset: Dataset, organisation_id: int, purpose: str) -> bool:
    return _active_grants(organisation_id, purpose).filter(dataset=dataset).exists()


def dataset_version_list(*, actor: Any, dataset: Dataset) -> QuerySet[DatasetVersion]:
    versions = dataset.versions.order_by("-number")
    if dataset_is_owner(actor=actor, dataset=dataset) or actor.is_operator:
        return versions
    # Granted organisations learn which versions are ready to query, nothing more.
    return versions.filter(status="ready")


def dataset_version_get(*, actor: Any, dataset: Dataset, number: int) -> DatasetVersion:
    version = dataset_version_list(actor=actor, dataset=dataset).filter(number=number).first()
    if version is None:
        raise NotFound("Dataset version not found.")
    return version


def dataset_version_latest_ready(*, dataset: Dataset) -> DatasetVersion | None:
    return dataset.versions.filter(status="ready").order_by("-number").first()


def dataset_grant_list(*, dataset: Dataset) -> QuerySet[DatasetGrant]:
    return dataset.grants.select_related("organisation").order_by("-granted_at")


def agreement_current(*, dataset: Dataset) -> DataUseAgreement | None:
    return dataset.agreements.order_by("-version").first()


def agreement_accepted(*, user: Any, dataset: Dataset) -> bool:
    """True when the user accepted the dataset's current agreement (or it has none)."""
    agreement = agreement_current(dataset=dataset)
    if agreement is None:
        return True
    return AgreementAcceptance.objects.filter(agreement=agreement, user=user).exists()
