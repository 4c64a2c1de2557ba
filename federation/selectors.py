"""Reads of the federation app. Operators see every job; a member organisation sees the jobs it is
invited to; everyone else is told a job does not exist."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.db.models import Count, QuerySet

from clearinghouse.core.errors import NotFound, PermissionDenied
from clearinghouse.organisations.models import Organisation
from clearinghouse.organisations.roles import MANAGE_FEDERATION
from clearinghouse.organisations.selectors import membership_active, require_capability

from .models import FederatedJob, JobParticipant, JobRound, ModelArtifact, ParticipantStatus, SuperNodeKey


def job_list(*, actor: Any) -> QuerySet[FederatedJob]:
    """With `rounds_done` counted in the same query (distinct: a member's filter joins participants)."""
    jobs = FederatedJob.objects.annotate(rounds_done=Count("rounds", distinct=True))
    if actor.is_operator:
        return jobs
    membership = membership_active(user=actor)
    if membership is None:
        return jobs.none()
    return jobs.filter(participants__organisation_id=membership.organisation_id)


def job_get(*, actor: Any, job_id: int) -> FederatedJob:
    job = job_list(actor=actor).filter(pk=job_id).first()
    if job is None:
        raise NotFound("Job not found.")
    return job


def job_participants(*, job: FederatedJob) -> QuerySet[JobParticipant]:
    return job.participants.select_related("organisation", "dataset__organisation")


def job_my_participation(*, actor: Any, job: FederatedJob) -> JobParticipant | None:
    membership = membership_active(user=actor)
    if membership is None:
        return None
    return job.participants.filter(organisation_id=membership.organisation_id).first()


def job_rounds(*, job: FederatedJob) -> QuerySet[JobRound]:
    return job.rounds.order_by("number")


def job_artifact_for_download(*, actor: Any, job: FederatedJob) -> ModelArtifact:
    """Only the job's accepted participants download the model (operators run the job, they do
    not receive it)."""
    participation = job_my_participation(actor=actor, job=job)
    if participation is None or participation.status != ParticipantStatus.ACCEPTED:
        raise PermissionDenied("Only the job's participating organisations can download its model.",
                               code="not_a_participant")
    artifact = ModelArtifact.objects.filter(job=job).first()
    if artifact is None:
        raise NotFound("The job has no model yet.", code="no_artifact")
    return artifact


def job_artifact_file(*, actor: Any, job: FederatedJob) -> tuple[Any, str]:
    """The model file opened for reading and the name to download it as (participants only)."""
    artifact = job_artifact_for_download(actor=actor, job=job)
    return default_storage.open(artifact.file_name, "rb"), f"{job.uid}-adapter.safetensors"


def supernode_key_list(*, actor: Any, organisation: Organisation) -> QuerySet[SuperNodeKey]:
    if not actor.is_operator:
        require_capability(actor=actor, organisation=organisation, capability=MANAGE_FEDERATION)
    return SuperNodeKey.objects.filter(organisation=organisation)


def supernode_key_get(*, actor: Any, key_id: int) -> SuperNodeKey:
    key = SuperNodeKey.objects.select_related("organisation").filter(pk=key_id).first()
    membership = membership_active(user=actor)
    if key is None or membership is None or membership.organisation_id != key.organisation_id:
        raise NotFound("Key not found.")
    return key
