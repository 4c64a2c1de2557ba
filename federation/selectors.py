"""Reads of the federation app. Operators see every job; a member organisation sees the jobs it is
invited to; everyone else is told a job does not exist.

What a job's metrics say about a member's rows (its example counts, confusion matrices, per-member
scores and timings) is that member's alone: every viewer of a job sees its pooled rates (accuracy,
F1, loss), each member only its own per-member entries, operators none (docs/data-exposure.md)."""

from __future__ import annotations

from typing import Any

from django.core.files.storage import default_storage
from django.db.models import Count, Q, QuerySet

from clearinghouse.core.errors import NotFound, PermissionDenied
from clearinghouse.organisations.models import Organisation
from clearinghouse.organisations.roles import MANAGE_FEDERATION
from clearinghouse.organisations.selectors import (
    membership_active,
    organisation_visible,
    require_capability,
    require_operator,
    user_capabilities,
)
from federation.flower.reporting import ClientRecord, RoundRecord

from .models import (
    FederatedJob,
    JobParticipant,
    JobRound,
    JobState,
    ModelArtifact,
    ParticipantStatus,
    SuperNodeKey,
)


def job_list(*, actor: Any) -> QuerySet[FederatedJob]:
    """With `rounds_done` counted in the same query (distinct: a member's filter joins participants).
    Ordered explicitly, newest first: an aggregate's GROUP BY drops the model's default ordering, and
    the API's and the portal's pages need a stable order."""
    jobs = FederatedJob.objects.annotate(rounds_done=Count("rounds", distinct=True)).order_by(
        "-created_at", "-pk"
    )
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


# The pooled evaluation's rates, which every viewer of the job sees. Left out: the pooled confusion
# matrix and example count `n` (exact counts of the members' held-out rows: a member could subtract
# its own to learn another's) and anything the ServerApp adds later until it is classified here.
EVALUATION_SHARED = frozenset(
    {
        "accuracy",
        "macro_f1",
        "loss",
        "mean_client_accuracy",
        "mean_client_macro_f1",
        "per_class_f1",
        "clients",
    }
)


def job_rounds_completed(*, job: FederatedJob) -> int:
    """Rounds recorded so far: counted by `job_list`'s query when the job came from it, else here
    (a job just returned by a service)."""
    counted = getattr(job, "rounds_done", None)
    return counted if counted is not None else job.rounds.count()


def job_artifact(*, job: FederatedJob) -> ModelArtifact | None:
    """The job's stored model, or None until the run has finished and its model is stored (what is
    shown about it is decided by the callers' `job_report_shared`; the file by
    `job_artifact_for_download`)."""
    return ModelArtifact.objects.filter(job=job).first()


def job_evaluation_shared(evaluation: Any) -> dict[str, Any] | None:
    if not isinstance(evaluation, dict):
        return None
    return {key: value for key, value in evaluation.items() if key in EVALUATION_SHARED}


def job_round_record(*, job_round: JobRound) -> RoundRecord:
    """A stored round as the typed record the ServerApp made (rows keep the event as it was sent;
    `RoundRecord.parse` reads any of them, older ones included)."""
    return RoundRecord.parse(job_round.record)


def job_round_members_visible(*, actor: Any, record: RoundRecord) -> list[ClientRecord]:
    """A round's per-member entries the actor may read: its own organisation's only (as the member's
    node labelled them). Operators, who own no data, get none."""
    membership = membership_active(user=actor)
    if membership is None:
        return []
    slug = membership.organisation.slug
    return [entry for entry in record.clients if entry.organisation == slug]


def job_report_shared(report: Any) -> dict[str, Any]:
    """The stored model's report as viewers of the job see it: status, rounds and the shared final
    evaluation. Its per-round history holds every member's entries: read rounds through the API."""
    report = report if isinstance(report, dict) else {}
    shared: dict[str, Any] = {key: report[key] for key in ("status", "rounds_completed") if key in report}
    if "final_evaluation" in report:
        shared["final_evaluation"] = job_evaluation_shared(report["final_evaluation"])
    guarantee = job_privacy_guarantee(report)
    if guarantee:
        shared["privacy"] = guarantee
    return shared


# What the model's report says of each member's DP-SGD (the ServerApp's `privacy` section): the plan
# as priced, without its row count, and the steps the member reported taking.
GUARANTEE_SHARED = (
    "target_epsilon",
    "epsilon",
    "delta",
    "noise_multiplier",
    "max_grad_norm",
    "sample_rate",
    "steps",
    "accountant",
)


def job_privacy_guarantee(report: Any) -> dict[str, dict[str, Any]]:
    """Per organisation, the guarantee its data has in a private job's model (ε, δ, accountant, σ, C,
    q, steps, and the steps its member took), from the stored report's `privacy` section; empty for a
    model trained without DP."""
    section = report.get("privacy") if isinstance(report, dict) else None
    if not isinstance(section, dict):
        return {}
    guarantee = {}
    for organisation, entry in sorted(section.items()):
        plan = entry.get("plan") if isinstance(entry, dict) else None
        if not isinstance(plan, dict):
            continue
        guarantee[str(organisation)] = {
            **{key: plan.get(key) for key in GUARANTEE_SHARED},
            "steps_taken": entry.get("steps_taken"),
        }
    return guarantee


def job_flower_run_id_visible(*, actor: Any, job: FederatedJob) -> str | None:
    """The SuperLink's run id: the operators' handle on a run (to follow it on the SuperLink); None
    for everyone else."""
    return job.flower_run_id if getattr(actor, "is_operator", False) else None


def job_participation_open_to(*, actor: Any, job: FederatedJob) -> bool:
    """Whether the actor may answer the job's invitation now, as `job_participation_decide` allows:
    a member with the federation capability of an invited organisation, while the job is a draft.
    (The portal offers the form only then; the service decides.)"""
    return (
        job.state == JobState.DRAFT
        and MANAGE_FEDERATION in user_capabilities(user=actor)
        and job_my_participation(actor=actor, job=job) is not None
    )


def job_receives_model(*, actor: Any, job: FederatedJob) -> bool:
    """Whether the actor's organisation receives the job's model: it accepted the job. Operators
    run jobs but do not receive models."""
    participation = job_my_participation(actor=actor, job=job)
    return participation is not None and participation.status == ParticipantStatus.ACCEPTED


def job_artifact_for_download(*, actor: Any, job: FederatedJob) -> ModelArtifact:
    """Only the job's accepted participants download the model (`job_receives_model`)."""
    if not job_receives_model(actor=actor, job=job):
        raise PermissionDenied(
            "Only the job's participating organisations can download its model.", code="not_a_participant"
        )
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
    """A key by id (to revoke it), visible as its organisation is (`organisation_visible`: operators,
    who list every organisation's keys, and its members); 404 for everyone else. Who may revoke it is
    `supernode_key_revoke`'s to say: its organisation's admins (operators do not act inside member
    organisations, so they are told 403, not 404, as when they add one)."""
    key = SuperNodeKey.objects.select_related("organisation").filter(pk=key_id).first()
    if key is None or not organisation_visible(actor=actor, organisation_id=key.organisation_id):
        raise NotFound("Key not found.")
    return key


def jobs_overview(*, actor: Any, q: str = "") -> QuerySet[FederatedJob]:
    """The operators' consortium overview (`portal:operator_overview`, `GET /api/v1/operator/overview`):
    every federated job as `job_list` gives it to operators (with `rounds_done`), with
    `participants_count` (organisations invited) and `participants_accepted`. `q` keeps the jobs whose
    name, or one of whose participants' name or slug, holds it. Operators only (PermissionDenied
    otherwise)."""
    require_operator(actor=actor)
    jobs = job_list(actor=actor).annotate(
        participants_count=Count("participants", distinct=True),
        participants_accepted=Count(
            "participants", filter=Q(participants__status=ParticipantStatus.ACCEPTED), distinct=True
        ),
    )
    if q:
        named = JobParticipant.objects.filter(
            Q(organisation__name__icontains=q) | Q(organisation__slug__icontains=q)
        ).values("job_id")
        jobs = jobs.filter(Q(name__icontains=q) | Q(pk__in=named))
    return jobs


# What the whole consortium reads of a published model's guarantee, per participating organisation:
# the privacy loss its data has in the model. Not the plan's sample rate, noise or steps: with the
# job's batch size they state the member's training row count (docs/data-exposure.md).
GUARANTEE_PUBLIC = ("target_epsilon", "epsilon", "delta", "accountant")


def job_model_unpublishable(*, job: FederatedJob, artifact: ModelArtifact | None) -> str | None:
    """Why the job's model may not be published to the consortium (a stable code), or None when it
    may: a model of a succeeded private job, whose report carries a DP-SGD guarantee for every
    participant that accepted (a private job's ServerApp aggregates only updates trained with their
    plans), not published yet."""
    if artifact is None or job.state != "succeeded":
        return "no_artifact"
    if artifact.published_at is not None:
        return "model_published"
    guarantee = job_privacy_guarantee(artifact.report)
    accepted = set(
        job.participants.filter(status=ParticipantStatus.ACCEPTED).values_list(
            "organisation__slug", flat=True
        )
    )
    if not job.is_private or not accepted or not accepted <= set(guarantee):
        return "model_not_private"
    return None


def published_models(*, actor: Any) -> QuerySet[ModelArtifact]:
    """The models published to the consortium, newest first: every member of an approved organisation
    and the operators read them (and their public guarantee); nobody else."""
    if not actor.is_operator and membership_active(user=actor) is None:
        return ModelArtifact.objects.none()
    return (
        ModelArtifact.objects.filter(published_at__isnull=False)
        .select_related("job", "published_by")
        .order_by("-published_at", "-pk")
    )


def published_model_get(*, actor: Any, model_id: int) -> ModelArtifact:
    model = published_models(actor=actor).filter(pk=model_id).first()
    if model is None:
        raise NotFound("Model not found.")
    return model


def published_model_guarantee(model: ModelArtifact) -> dict[str, dict[str, Any]]:
    """Per organisation, the public part of the model's guarantee (`GUARANTEE_PUBLIC`)."""
    return {
        organisation: {key: entry.get(key) for key in GUARANTEE_PUBLIC}
        for organisation, entry in job_privacy_guarantee(model.report).items()
    }


def published_model_file(*, actor: Any, model_id: int) -> tuple[Any, str]:
    """A published model's file opened for reading and the name to download it as."""
    model = published_model_get(actor=actor, model_id=model_id)
    return default_storage.open(model.file_name, "rb"), f"{model.job.uid}-adapter.safetensors"
