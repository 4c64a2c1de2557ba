"""Writes of the federation app: jobs, participation, scheduling on the SuperLink, the ServerApp's
per-round reports, the final model, and SuperNode keys.

Network calls to the SuperLink happen only in Celery tasks of the `federation` queue (submit, stop,
reconcile, key registration); the web process only changes the database and enqueues them.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import logging
import math
import secrets
import shutil
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from clearinghouse.audit.services import audit_lock, audit_record
from clearinghouse.core.enqueue import enqueue_on_commit
from clearinghouse.core.errors import ApplicationError, Conflict, NotFound, PermissionDenied, ValidationFailed
from clearinghouse.core.metrics import FEDERATED_ROUNDS, count_on_commit
from clearinghouse.core.text import clean_name
from clearinghouse.datasets.models import Dataset
from clearinghouse.datasets.schema import DatasetSchema
from clearinghouse.datasets.selectors import dataset_grant_active, dataset_version_latest_ready
from clearinghouse.organisations.models import Organisation, OrganisationStatus
from clearinghouse.organisations.roles import MANAGE_FEDERATION
from clearinghouse.organisations.selectors import require_capability, require_operator
from clearinghouse.queries.ledger import MAX_PRIVACY_AMOUNT, budget_debit_training
from clearinghouse.queries.models import PrivacyBudget, PrivacyMeasure, TrainingPolicy
from federation.flower.control import RUN_COMPLETED, RUN_FAILED, FlowerControlError, SuperLinkControl
from federation.flower.reporting import RoundRecord
from federation.flower.settings import KNOWN_RUN_KEYS, FederationConfigError, JobSettings
from federation.selectors import GUARANTEE_SHARED, job_model_unpublishable, published_model_guarantee
from training.digest import DIGEST_SCHEME, DataExpectation, digests_by_pair
from training.privacy import DpSgdError, DpSgdPlan, priced_plan, train_rows

from .models import (
    FederatedJob,
    JobParticipant,
    JobRound,
    JobState,
    ModelArtifact,
    NodeKeyStatus,
    ParticipantStatus,
    SuperNodeKey,
)

log = logging.getLogger(__name__)

# Run-config keys the service sets itself (the job's fields and its wiring); every other key the
# Flower app understands is the operator's to tune through `settings`.
SERVICE_KEYS = frozenset(
    {
        "job-id",
        "labels",
        "base-model",
        "strategy",
        "num-rounds",
        "min-clients",
        "participants",
        "output-dir",
        "metrics-jsonl",
        "callback-url",
        "callback-token",
        "callback-token-file",
        "dp-plans",  # a private job's priced plans: the service's, set when the job is scheduled
        "dp-data-file",  # the rows each plan was priced on, for the ServerApp alone (`_run_config`)
    }
)
TUNABLE_KEYS = KNOWN_RUN_KEYS - SERVICE_KEYS

#: A private job's training recipe where its creator's settings say nothing else: DP linear probing,
#: the classifier head alone over the mean-pooled sentence vector, by plain SGD at a large step. At a
#: consortium's sizes (about 1,500 rows a member) DP-SGD's noise on LoRA's 74K parameters drowns the
#: gradient (a majority-class model at ε = 8); on the head's 770 it does not (docs/private-training.md).
#: None of these keys changes the price (rows, batch size, steps).
PRIVATE_JOB_DEFAULTS: dict[str, Any] = {
    "pooling": "mean",
    "head-only": True,
    "optimizer": "sgd",
    "learning-rate": 10.0,
}


# ----------------------------------------------------------------------------- helpers
def _control() -> SuperLinkControl:
    return SuperLinkControl(
        address=settings.FLOWER_SUPERLINK,
        root_certificates=settings.FLOWER_ROOT_CERTIFICATES,
        home=Path(settings.FLOWER_SHARED_DIR) / "flwr-home",
    )


def job_workdir(job: FederatedJob) -> Path:
    """The job's directory in the shared area: its callback token and the ServerApp's outputs."""
    return Path(settings.FLOWER_SHARED_DIR) / "jobs" / str(job.uid)


def _run_config(job: FederatedJob, *, participants: str = "", callback: bool = False) -> dict[str, Any]:
    config: dict[str, Any] = dict(job.settings)
    config.update(
        {
            "job-id": str(job.uid),
            "labels": ",".join(job.labels),
            "base-model": job.base_model,
            "strategy": job.strategy,
            "num-rounds": job.num_rounds,
            "min-clients": job.min_clients,
            "participants": participants,
        }
    )
    plans = _dp_plans(job)
    if plans:
        # Flower gives every SuperNode the run config: the plans go without the rows they were priced
        # on (each member's row count and digest), which the ServerApp reads from `dp-data-file` and
        # sends each member, its own only, in its train messages.
        priced = {org: priced_plan(plan) for org, plan in plans.items()}
        config["dp-plans"] = json.dumps(priced, sort_keys=True)
    if callback:
        workdir = job_workdir(job)
        config.update(
            {
                "output-dir": str(workdir / "out"),
                "callback-url": (
                    f"{settings.FLOWER_CALLBACK_URL_BASE.rstrip('/')}/api/v1/federated-jobs/{job.pk}/events"
                ),
                "callback-token-file": str(workdir / "callback.token"),
            }
        )
        if plans:
            config["dp-data-file"] = str(workdir / DP_DATA_FILE)
    return config


# The job's shared-directory file holding each plan's `data` (organisation slug -> DataExpectation).
DP_DATA_FILE = "dp-data.json"


def _write_dp_data(job: FederatedJob, workdir: Path) -> None:
    """A private job's rows per plan, for its ServerApp (read through `dp-data-file`), readable by
    the SuperLink host's user only, as the callback token is."""
    plans = _dp_plans(job)
    if not plans:
        return
    path = workdir / DP_DATA_FILE
    path.write_text(
        json.dumps({org: plan.get("data") for org, plan in plans.items()}, sort_keys=True), encoding="utf-8"
    )
    path.chmod(0o600)


def _dp_plans(job: FederatedJob) -> dict[str, dict[str, Any]]:
    """A private job's priced DP-SGD plans, organisation slug -> plan (stored on its accepted
    participants when it was scheduled); empty for a non-private job or one not yet priced."""
    if not job.is_private or job.pk is None:
        return {}
    return {
        p.organisation.slug: dict(p.dp_plan or {})
        for p in job.participants.filter(status=ParticipantStatus.ACCEPTED, dp_plan__isnull=False)
        .select_related("organisation")
        .order_by("organisation__slug")
    }


def _validate_settings(job: FederatedJob, *, participants: str = "") -> None:
    """Every problem of the job's settings at once, in the ServerApp's own words."""
    try:
        JobSettings.from_run_config(_run_config(job, participants=participants))
    except FederationConfigError as exc:
        raise ValidationFailed(str(exc), code="invalid_job_settings") from exc


def _training_refused(organisation: Organisation) -> PermissionDenied:
    """The one answer for a dataset the organisation may not train on and for one that does not
    exist (it names neither the dataset nor the reason), so naming datasets cannot probe which exist."""
    return PermissionDenied(
        f"{organisation.slug} has no training grant on that dataset: an organisation trains only on its own "
        "registered datasets or on ones whose owner granted it training use.",
        code="training_grant_required",
    )


def _check_dataset_use(organisation: Organisation, dataset: Dataset | None) -> None:
    """A participant may train on a registered dataset it owns, or one whose owner granted it
    training use."""
    if dataset is None or dataset.organisation_id == organisation.pk:
        return
    if not dataset_grant_active(dataset=dataset, organisation_id=organisation.pk, purpose="training"):
        raise _training_refused(organisation)


def _dataset_for_training(organisation: Organisation, ref: str | None) -> Dataset | None:
    """The dataset `ref` ('owner/slug') names, when `organisation` may train on it; otherwise the same
    refusal whether it exists or not."""
    if not ref:
        return None
    owner, _, slug = str(ref).partition("/")
    dataset = (
        Dataset.objects.select_related("organisation").filter(organisation__slug=owner, slug=slug).first()
    )
    if dataset is None:
        raise _training_refused(organisation)
    _check_dataset_use(organisation, dataset)
    return dataset


def _set_state(job: FederatedJob, state: str, *, actor: Any = None, reason: str = "", **fields: Any) -> None:
    previous = job.state
    job.state = state
    if reason:
        job.reason = reason[:5000]
    if state in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED):
        job.finished_at = timezone.now()
    for name, value in fields.items():
        setattr(job, name, value)
    job.save()
    audit_record(
        actor=actor,
        action=f"federated_job.{state}",
        target=job,
        extra={"job": str(job.uid), "from": previous, "reason": job.reason if reason else ""},
    )


def _locked(job_id: int, *organisations: Any) -> FederatedJob | None:
    """The job, locked, after the heads of the consortium's audit stream (a job's own events) and of
    `organisations` (those the caller also records events for: the lock order of every write)."""
    audit_lock(None, *organisations)
    return FederatedJob.objects.select_for_update(no_key=True).filter(pk=job_id).first()


def _locked_existing(job_id: int, *organisations: Any) -> FederatedJob:
    """The job, locked, for a service that was handed it: gone meanwhile (deleted) is a 404."""
    job = _locked(job_id, *organisations)
    if job is None:
        raise NotFound("Job not found.")
    return job


# ----------------------------------------------------------------------------- jobs
@transaction.atomic
def job_create(
    *,
    actor: Any,
    name: str,
    text_column: str,
    label_column: str,
    labels: list[str],
    participants: list[dict[str, Any]],
    base_model: str = "minilm-l6",
    strategy: str = "fedavg",
    num_rounds: int = 3,
    min_clients: int = 2,
    settings: dict[str, Any] | None = None,
    privacy: dict[str, Any] | None = None,
) -> FederatedJob:
    """Operators create a job in draft with the organisations they invite. `privacy` ({epsilon,
    delta, max_grad_norm}) makes it a private job: every participant trains with DP-SGD at (ε, δ) on
    its registered dataset, priced and paid from that dataset's budget when the job is scheduled;
    `PRIVATE_JOB_DEFAULTS` fill the training settings it leaves out."""
    require_operator(actor=actor)
    dp_epsilon, dp_delta, dp_max_grad_norm = _privacy_loss(privacy)
    if dp_epsilon is not None and strategy == "fedprox":
        raise ValidationFailed(
            "A private job cannot use fedprox: its proximal term is not part of the priced DP-SGD step.",
            code="invalid_job_settings",
            fields={"strategy": ["Not with DP-SGD."]},
        )
    extra = dict(settings or {})
    unknown = sorted(set(extra) - TUNABLE_KEYS)
    if unknown:
        raise ValidationFailed(
            f"Unknown settings {unknown}; allowed: {sorted(TUNABLE_KEYS)}.", code="invalid_job_settings"
        )
    if dp_epsilon is not None:
        extra = {**PRIVATE_JOB_DEFAULTS, **extra}
    if not participants:
        raise ValidationFailed("A job needs participants.", code="no_participants")
    job = FederatedJob(
        name=clean_name(name, field="name", max_length=200),
        created_by=actor,
        base_model=base_model.strip(),
        text_column=clean_name(text_column, field="text_column", max_length=200),
        label_column=clean_name(label_column, field="label_column", max_length=200),
        labels=[str(label) for label in labels],
        strategy=strategy,
        num_rounds=num_rounds,
        min_clients=min_clients,
        settings=extra,
        dp_epsilon=dp_epsilon,
        dp_delta=dp_delta,
        dp_max_grad_norm=dp_max_grad_norm,
    )
    _validate_settings(job)
    if min_clients > len(participants):
        raise ValidationFailed(
            f"min_clients ({min_clients}) exceeds the {len(participants)} invited participants.",
            code="invalid_job_settings",
        )
    job.save()
    seen: set[str] = set()
    for entry in participants:
        slug = str(entry.get("organisation", ""))
        organisation = Organisation.objects.filter(slug=slug, status=OrganisationStatus.APPROVED).first()
        if organisation is None:
            raise NotFound(f"Organisation {slug!r} not found.")
        if slug in seen:
            raise ValidationFailed(f"{slug} is invited twice.", code="duplicate_participant")
        seen.add(slug)
        dataset = _dataset_for_training(organisation, entry.get("dataset"))
        JobParticipant.objects.create(
            job=job,
            organisation=organisation,
            dataset=dataset,
            data_description=str(entry.get("data_description", ""))[:5000],
        )
    audit_record(
        actor=actor,
        action="federated_job.created",
        target=job,
        extra={
            "job": str(job.uid),
            "participants": sorted(seen),
            "strategy": strategy,
            "num_rounds": num_rounds,
            "privacy": None
            if dp_epsilon is None
            else {"epsilon": dp_epsilon, "delta": dp_delta, "max_grad_norm": dp_max_grad_norm},
        },
    )
    return job


@transaction.atomic
def job_participation_decide(
    *,
    actor: Any,
    job: FederatedJob,
    decision: str,
    dataset: str | None = None,
    data_description: str | None = None,
) -> JobParticipant:
    """A participant's org admin accepts (optionally naming the data) or declines, while in draft."""
    if getattr(actor, "is_operator", False):
        raise PermissionDenied("Operators do not act for member organisations.", code="operator_not_member")
    # First the heads of the streams this records to (the actor's organisation's, and the consortium's
    # for the job, locked below): see audit_lock.
    organisations = JobParticipant.objects.filter(job=job, organisation__memberships__user=actor)
    audit_lock(None, *organisations.values_list("organisation_id", flat=True))
    participant = (
        JobParticipant.objects.select_for_update(no_key=True, of=("self",))
        .select_related("organisation")
        .filter(job=job, organisation__memberships__user=actor)
        .first()
    )
    if participant is None:
        raise NotFound("Job not found.")
    require_capability(actor=actor, organisation=participant.organisation, capability=MANAGE_FEDERATION)
    if decision not in ("accept", "decline"):
        raise ValidationFailed("decision must be 'accept' or 'decline'.", code="invalid_decision")
    job = _locked_existing(job.pk)
    if job.state != JobState.DRAFT:
        raise Conflict(
            f"The job is {job.state}; participation is decided while it is a draft.", code="job_not_draft"
        )
    if dataset is not None:  # refused even when declining: naming a dataset must not probe it
        participant.dataset = _dataset_for_training(participant.organisation, dataset)
    if data_description is not None:
        participant.data_description = data_description[:5000]
    if decision == "accept":
        _check_dataset_use(participant.organisation, participant.dataset)
    participant.status = ParticipantStatus.ACCEPTED if decision == "accept" else ParticipantStatus.DECLINED
    participant.decided_by, participant.decided_at = actor, timezone.now()
    participant.save()
    audit_record(
        actor=actor,
        action=f"federated_job.participation_{participant.status}",
        organisation=participant.organisation,
        target=job,
        extra={"job": str(job.uid), "dataset": participant.dataset_id},
    )
    return participant


def _participant_nodes(job: FederatedJob) -> tuple[list[JobParticipant], list[str]]:
    accepted = list(
        job.participants.filter(status=ParticipantStatus.ACCEPTED).select_related("organisation", "dataset")
    )
    nodes: list[str] = []
    for participant in accepted:
        _check_dataset_use(participant.organisation, participant.dataset)
        keys = SuperNodeKey.objects.filter(
            organisation=participant.organisation, status=NodeKeyStatus.REGISTERED
        )
        ids = [k.node_id for k in keys if k.node_id]
        if not ids:
            raise Conflict(
                f"{participant.organisation.slug} has no registered SuperNode key.", code="no_supernode"
            )
        nodes += [f"node:{node_id}" for node_id in ids]
    return accepted, nodes


# ----------------------------------------------------------------------------- private jobs
PRIVACY_KEYS = frozenset({"epsilon", "delta", "max_grad_norm"})


def _privacy_loss(privacy: dict[str, Any] | None) -> tuple[float | None, float | None, float]:
    """(ε, δ, C) of a private job, or (None, None, 1.0) for a non-private one: ε > 0 and C > 0
    finite, 0 < δ < 1 (`invalid_privacy_loss` otherwise)."""
    if privacy is None:
        return None, None, 1.0

    def refuse(field: str, rule: str) -> ValidationFailed:
        return ValidationFailed(
            f"privacy.{field} must be {rule}.",
            code="invalid_privacy_loss",
            fields={field: [f"Must be {rule}."]},
        )

    if not isinstance(privacy, dict):
        raise ValidationFailed(
            "privacy must be an object {epsilon, delta, max_grad_norm}.", code="invalid_privacy_loss"
        )
    unknown = sorted(set(privacy) - PRIVACY_KEYS)
    if unknown:
        raise ValidationFailed(f"Unknown privacy keys {unknown}.", code="invalid_privacy_loss")
    values = {}
    for field, rule in (
        ("epsilon", "a finite number above 0"),
        ("delta", "a number strictly between 0 and 1"),
        ("max_grad_norm", "a finite number above 0"),
    ):
        value = privacy.get(field, 1.0 if field == "max_grad_norm" else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise refuse(field, rule)
        if value <= 0 or value > MAX_PRIVACY_AMOUNT or (field == "delta" and value >= 1):
            raise refuse(field, rule)
        values[field] = float(value)
    return values["epsilon"], values["delta"], values["max_grad_norm"]


@dataclass(frozen=True)
class ParticipantPrice:
    """One participant of a job as priced: its DP-SGD plan, or why it cannot take part (`refusal`,
    an ApplicationError with a stable code, its message naming the organisation)."""

    participant: JobParticipant
    plan: DpSgdPlan | None = None
    refusal: ApplicationError | None = None

    @property
    def debited(self) -> bool:
        """Whether its dataset's budget paid for it (the plan is stored when the job is scheduled)."""
        return self.participant.dp_plan is not None


# DpSgdError codes whose own message states a member's row count: the refusal says what to change
# without it (the clearinghouse never shows a dataset's exact size to anyone but its owner).
_ROW_FREE_MESSAGES = {
    "delta_too_large": "δ = {delta:g} is not below 1/n for the n rows it trains on; choose a smaller δ.",
    "invalid_sample_rate": "its training rows are fewer than one batch; choose a smaller batch-size.",
    "too_few_rows": "its dataset has too few rows to split into train and test.",
}


def _training_policy_of(participant: JobParticipant) -> PrivacyBudget | None:
    return (
        PrivacyBudget.objects.filter(dataset=participant.dataset).first() if participant.dataset_id else None
    )


@functools.lru_cache(maxsize=512)
def _plan(
    rows: int,
    batch_size: int,
    rounds: int,
    epsilon: float,
    delta: float,
    max_grad_norm: float,
    local_steps: int,
) -> DpSgdPlan:
    """`DpSgdPlan.from_job`, remembered per process: the noise search takes about a second, and a
    job's page and preview price the same plans again until it is scheduled (a plan is immutable)."""
    return DpSgdPlan.from_job(
        rows=rows,
        batch_size=batch_size,
        rounds=rounds,
        target_epsilon=epsilon,
        delta=delta,
        max_grad_norm=max_grad_norm,
        local_steps=local_steps,
    )


def _price_participant(job: FederatedJob, participant: JobParticipant, train: dict[str, Any]) -> DpSgdPlan:
    """The participant's DP-SGD plan for `job`, or the refusal (an ApplicationError naming it)."""
    slug = participant.organisation.slug
    dataset = participant.dataset
    if dataset is None:
        raise Conflict(
            f"{slug}: a private job trains only on registered datasets (their budgets pay for it); name "
            "the dataset when accepting.",
            code="dp_needs_registered_dataset",
        )
    budget = _training_policy_of(participant)
    if budget is None:
        raise Conflict(
            f"{slug}: its dataset has no privacy budget, so nothing can pay for private training on it.",
            code="no_budget",
        )
    if budget.training == TrainingPolicy.FORBIDDEN:
        raise Conflict(
            f"{slug}: the dataset's owner allows no federated training on it.", code="training_forbidden"
        )
    if budget.measure != PrivacyMeasure.APPROX:
        why = (
            "DP-SGD cannot give pure ε-DP (its Gaussian noise always needs a δ > 0)"
            if budget.measure == PrivacyMeasure.PURE
            else "DP-SGD is priced in (ε, δ), and the budget is stated in ρ (zero-concentrated DP)"
        )
        raise Conflict(
            f"{slug}: {why}; the dataset's budget must be stated as approximate DP (ε, δ) to pay for it.",
            code="training_needs_approx_dp",
        )
    version = dataset_version_latest_ready(dataset=dataset)
    if version is None or not version.row_count:
        raise Conflict(f"{slug}: its dataset has no ready version to price on.", code="no_ready_version")
    per_person = DatasetSchema.from_dict(version.schema).privacy_unit.contributions
    if per_person != 1:
        # DP-SGD's guarantee is per row (per example clipped and sampled); for a person holding k rows
        # it would need group privacy over k correlated examples, which the plan does not price.
        raise Conflict(
            f"{slug}: a person may hold up to {per_person} rows of its dataset, and DP-SGD protects one "
            "row; private training needs one row per person (privacy unit: row, or at most 1 row per "
            "person).",
            code="training_needs_row_privacy",
        )
    data = _data_expectation(job, slug, version.content_digests)
    try:
        rows = train_rows(version.row_count, train["test_fraction"])
        batch_size = train["batch_size"]
        local_steps = train["max_steps"] or train["local_epochs"] * math.ceil(rows / batch_size)
        return _plan(
            rows, batch_size, job.num_rounds, job.dp_epsilon, job.dp_delta, job.dp_max_grad_norm, local_steps
        ).with_data(data)
    except DpSgdError as exc:
        message = _ROW_FREE_MESSAGES.get(exc.code, "{message}").format(
            delta=job.dp_delta, message=exc.message
        )
        raise ValidationFailed(f"{slug}: {message}", code=exc.code) from exc


def _data_expectation(job: FederatedJob, slug: str, digests: dict[str, Any] | None) -> DataExpectation:
    """The rows a participant's plan is priced on, as its member will check its local file: the
    version's row count and the content digest of the job's text and label columns
    (`training.digest`). Refuses a version without digests (ingested before they were computed) and
    a dataset without that pair of columns."""
    if not digests or digests.get("scheme") != DIGEST_SCHEME:
        raise Conflict(
            f"{slug}: its dataset's latest version has no content digest yet (it was ingested before "
            "digests were computed), so its member could not check its file against it; an operator "
            "runs `manage.py dataset_digests_backfill`.",
            code="version_needs_digest",
        )
    digest = digests_by_pair(digests.get("pairs", [])).get((job.text_column, job.label_column))
    if digest is None:
        raise Conflict(
            f"{slug}: the job's columns (text {job.text_column!r}, label {job.label_column!r}) are not a "
            "text column and a label column (categorical or integer) of its registered dataset; a "
            "private job trains on the registered rows of the columns it names.",
            code="dataset_columns_mismatch",
        )
    parse = digests.get("parse") or {}
    delimited = parse.get("format") == "csv" and parse.get("delimiter")
    return DataExpectation(
        rows=int(digests["rows"]),
        digest=digest,
        text_column=job.text_column,
        label_column=job.label_column,
        # how the registered upload was parsed, so that its member reads its file the same way
        delimiter=parse["delimiter"] if delimited else None,
        quote_char=parse.get("quote_char") if delimited else None,
    )


def _train_shape(job: FederatedJob) -> dict[str, Any]:
    """What pricing needs of the job's training settings, as the ServerApp will read them."""
    config = {key: value for key, value in _run_config(job).items() if key != "dp-plans"}
    try:
        settings_ = JobSettings.from_run_config(config)
    except FederationConfigError as exc:
        raise ValidationFailed(str(exc), code="invalid_job_settings") from exc
    return {
        "batch_size": settings_.train["batch_size"],
        "local_epochs": settings_.train["local_epochs"],
        "max_steps": settings_.train.get("max_steps"),
        "test_fraction": settings_.test_fraction,
    }


def job_privacy_price(
    *, job: FederatedJob, participants: list[JobParticipant] | None = None
) -> list[ParticipantPrice]:
    """Prices a private job: for each participant (default: the accepted ones), its member's DP-SGD
    plan on its registered dataset, from the latest ready version's row count (the train side of an
    unstratified split, `train_rows`), the job's batch size, local epochs or steps and rounds, and
    the job's target (ε, δ) and clipping norm C; or why it cannot be priced. A non-private job has no
    plans, but a participant whose dataset's budget requires DP (`training_requires_dp`) or forbids
    training (`training_forbidden`) is refused. Writes nothing."""
    if participants is None:
        participants = list(
            job.participants.filter(status=ParticipantStatus.ACCEPTED).select_related(
                "organisation", "dataset"
            )
        )
    prices: list[ParticipantPrice] = []
    if not job.is_private:
        for participant in participants:
            try:
                _check_training_without_dp(participant)
            except ApplicationError as exc:
                prices.append(ParticipantPrice(participant=participant, refusal=exc))
            else:
                prices.append(ParticipantPrice(participant=participant))
        return prices
    train: dict[str, Any] = {}
    datasets: dict[int, str] = {}
    for participant in participants:
        try:
            if participant.dataset_id is not None and participant.dataset_id in datasets:
                raise Conflict(
                    f"{participant.organisation.slug}: {datasets[participant.dataset_id]} trains on the same "
                    "dataset in this job; a private job pays once per dataset, so one participant trains on it.",
                    code="dataset_used_twice",
                )
            if participant.dataset_id is not None:
                datasets[participant.dataset_id] = participant.organisation.slug
            if participant.dp_plan is not None:  # as debited, once scheduled
                plan = DpSgdPlan(**participant.dp_plan)
            else:
                train = train or _train_shape(job)
                plan = _price_participant(job, participant, train)
            prices.append(ParticipantPrice(participant=participant, plan=plan))
        except ApplicationError as exc:
            prices.append(ParticipantPrice(participant=participant, refusal=exc))
    return prices


def _check_training_without_dp(participant: JobParticipant) -> None:
    """A non-private job trains on a registered dataset only where its budget's policy allows training
    without DP (`any`); a dataset with no budget keeps its training grant's say."""
    budget = _training_policy_of(participant)
    if budget is None or budget.training == TrainingPolicy.ANY:
        return
    slug = participant.organisation.slug
    if budget.training == TrainingPolicy.FORBIDDEN:
        raise Conflict(
            f"{slug}: the dataset's owner allows no federated training on it.", code="training_forbidden"
        )
    raise Conflict(
        f"{slug}: the dataset's owner allows training on it only with DP-SGD; make the job private "
        "(privacy: epsilon, delta).",
        code="training_requires_dp",
    )


def job_privacy_preview(*, job: FederatedJob) -> dict[str, Any]:
    """What a private job would cost each participating dataset, as `job_privacy_price` prices it
    (the accepted and the still invited participants; declined ones take no part), and whether it was
    debited. For the job's viewers (the caller authorises with `job_get`). The plans' q (batch / rows)
    and steps tell the job's operator and participants each member's training row count to within a
    batch (docs/data-exposure.md)."""
    participants = list(
        job.participants.exclude(status=ParticipantStatus.DECLINED).select_related(
            "organisation", "dataset__organisation"
        )
    )
    prices = job_privacy_price(job=job, participants=participants)
    return {
        "private": job.is_private,
        "epsilon": job.dp_epsilon,
        "delta": job.dp_delta,
        "max_grad_norm": job.dp_max_grad_norm if job.is_private else None,
        "participants": [_price_body(price) for price in prices],
    }


# The preview shows what the model's report will say of each member (`GUARANTEE_SHARED`) and the
# batch size the plan was priced for.
PLAN_SHOWN = (*GUARANTEE_SHARED, "batch_size")


def _price_body(price: ParticipantPrice) -> dict[str, Any]:
    participant = price.participant
    plan = price.plan.to_dict() if price.plan is not None else None
    return {
        "organisation": participant.organisation.slug,
        "status": participant.status,
        "dataset": f"{participant.dataset.organisation.slug}/{participant.dataset.slug}"
        if participant.dataset
        else None,
        # The plan without its row count (q and the batch size state it; no need to print it).
        "plan": {key: plan[key] for key in PLAN_SHOWN} if plan else None,
        "debited": price.debited,
        "refusal": None
        if price.refusal is None
        else {"code": price.refusal.code, "detail": price.refusal.message},
    }


def _debit_private_job(job: FederatedJob, accepted: list[JobParticipant]) -> None:
    """Prices every accepted participant, then debits each dataset's budget (in dataset order, so
    concurrent schedules lock budgets in one order) and stores each plan on its participant. Any
    refusal raises, naming the participant: the caller's transaction then rolls every debit back."""
    prices = job_privacy_price(job=job, participants=accepted)
    for price in prices:
        if price.refusal is not None:
            raise price.refusal
    for price in sorted(prices, key=lambda p: p.participant.dataset_id or 0):
        participant, plan = price.participant, price.plan
        assert plan is not None and participant.dataset is not None  # priced: a plan on a dataset
        try:
            budget_debit_training(
                dataset=participant.dataset,
                organisation=participant.organisation,
                payer=participant.decided_by,
                job_uid=job.uid,
                plan=plan.priced_dict(),  # the ledger keeps the price, not the rows' digest
                epsilon=plan.epsilon,
                delta=plan.delta,
            )
        except ApplicationError as exc:
            raise type(exc)(
                f"{participant.organisation.slug}: {exc.message}", code=exc.code, fields=exc.fields
            ) from exc
        participant.dp_plan = plan.to_dict()
        participant.save(update_fields=["dp_plan"])


@transaction.atomic
def job_schedule(*, actor: Any, job: FederatedJob) -> FederatedJob:
    """Operators schedule a draft whose accepted participants can all take part; a private job's
    participating datasets are priced and debited here, all or none."""
    require_operator(actor=actor)
    if job.is_private:
        # The noise search takes about a second per plan: run it before taking the locks (every
        # audited write waits on the audit head), so that pricing again under them hits `_plan`'s cache.
        job_privacy_price(job=job)
    # The participants' audit streams too: their training debits are recorded there.
    job = _locked_existing(job.pk, *job.participants.values_list("organisation_id", flat=True))
    if job.state != JobState.DRAFT:
        raise Conflict(f"The job is {job.state}; only a draft can be scheduled.", code="job_not_draft")
    if not settings.FLOWER_SUPERLINK:
        raise Conflict("No SuperLink is configured (FLOWER_SUPERLINK).", code="federation_disabled")
    accepted, _ = _participant_nodes(job)
    if len(accepted) < job.min_clients:
        raise Conflict(
            f"{len(accepted)} participant(s) accepted; the job needs at least {job.min_clients}.",
            code="too_few_participants",
        )
    _validate_settings(job)
    if job.is_private:
        # Priced and paid now, atomically: a refusal anywhere rolls back every debit (this
        # transaction). What was debited stays spent if the job is later cancelled or fails.
        _debit_private_job(job, accepted)
    else:
        for price in job_privacy_price(job=job, participants=accepted):
            if price.refusal is not None:
                raise price.refusal
    # With the plans, every accepted organisation named: a private job's plans must cover them all.
    _validate_settings(job, participants=",".join(f"org:{p.organisation.slug}" for p in accepted))
    _set_state(job, JobState.SCHEDULED, actor=actor, scheduled_at=timezone.now())
    enqueue_on_commit("federation.job_submit", job.pk)
    return job


def job_submit(*, job_id: int) -> FederatedJob | None:
    """Worker: submit a scheduled job's run to the SuperLink (Flower's Control API). No row lock is
    held across the network call; a job cancelled meanwhile has its new run stopped."""
    with transaction.atomic():
        job = _locked(job_id)
        if job is None or job.state != JobState.SCHEDULED:
            return job
        try:
            _, nodes = _participant_nodes(job)
        except (PermissionDenied, Conflict) as exc:
            _set_state(job, JobState.FAILED, reason=f"Not submitted: {exc.message}")
            return job
        workdir = job_workdir(job)
        (workdir / "out").mkdir(parents=True, exist_ok=True)
        token = secrets.token_urlsafe(32)
        token_file = workdir / "callback.token"
        token_file.write_text(token, encoding="utf-8")
        token_file.chmod(0o600)
        _write_dp_data(job, workdir)
        job.callback_token_hash = hashlib.sha256(token.encode()).hexdigest()
        job.save(update_fields=["callback_token_hash"])
    try:
        run_id = _control().submit(
            settings.FLOWER_APP_DIR, _run_config(job, participants=",".join(nodes), callback=True)
        )
    except FlowerControlError as exc:
        run_id, refusal = "", str(exc)
    with transaction.atomic():
        locked = _locked(job_id)
        if locked is None:  # deleted while being submitted: stop the run it no longer owns
            if run_id:
                transaction.on_commit(partial(_stop_orphan_run, run_id), robust=True)
            return None
        job = locked
        if job.state != JobState.SCHEDULED:  # cancelled while being submitted
            if run_id:
                job.flower_run_id = run_id
                job.save(update_fields=["flower_run_id"])
                enqueue_on_commit("federation.job_stop", job.pk)
            return job
        if not run_id:
            _set_state(job, JobState.FAILED, reason=f"The SuperLink refused the run: {refusal}")
        else:
            _set_state(job, JobState.RUNNING, flower_run_id=run_id, started_at=timezone.now())
        return job


@transaction.atomic
def job_model_publish(*, actor: Any, job: FederatedJob) -> ModelArtifact:
    """Operators publish a private job's model to the whole consortium (every member organisation may
    then download it): only a model trained with DP-SGD on every participant's data, whose guarantee
    its report carries (`job_model_unpublishable`). A model trained without DP stays its
    participants' alone."""
    require_operator(actor=actor)
    audit_lock(None)  # first: the job, then its model, are locked below
    locked = FederatedJob.objects.select_for_update(no_key=True).filter(pk=job.pk).first()
    if locked is None:
        raise NotFound("Job not found.")
    job = locked
    artifact = ModelArtifact.objects.select_for_update(no_key=True).filter(job=job).first()
    refusal = job_model_unpublishable(job=job, artifact=artifact)
    if refusal == "no_artifact":
        raise Conflict("The job has no model to publish: it has not succeeded.", code="no_artifact")
    if refusal == "model_published":
        raise Conflict("The job's model is already published.", code="model_published")
    if refusal is not None or artifact is None:
        raise Conflict(
            "Only a model trained with DP-SGD on every participant's data can be published to the "
            "consortium; this one stays with the job's participants.",
            code="model_not_private",
        )
    artifact.published_at, artifact.published_by = timezone.now(), actor
    artifact.save(update_fields=["published_at", "published_by"])
    audit_record(
        actor=actor,
        action="federated_job.model_published",
        target=job,
        extra={
            "job": str(job.uid),
            "sha256": artifact.sha256,
            "guarantee": published_model_guarantee(artifact),
        },
    )
    return artifact


@transaction.atomic
def job_cancel(*, actor: Any, job: FederatedJob, reason: str = "") -> FederatedJob:
    require_operator(actor=actor)
    job = _locked_existing(job.pk)
    if job.is_final:
        raise Conflict(f"The job is already {job.state}.", code="job_finished")
    run_id = job.flower_run_id
    _set_state(
        job,
        JobState.CANCELLED,
        actor=actor,
        reason=f"Cancelled by {actor.get_username()}" + (f": {reason[:500]}" if reason else "."),
    )
    if run_id:
        enqueue_on_commit("federation.job_stop", job.pk)
    return job


def _stop_orphan_run(run_id: str) -> None:
    try:
        _control().stop(run_id)
    except FlowerControlError as exc:
        log.info("stop of run %s (its job is gone): %s", run_id, exc)


def job_stop(*, job_id: int) -> None:
    """Worker: stop the run of a cancelled job on the SuperLink (already finished is fine)."""
    job = FederatedJob.objects.filter(pk=job_id).first()
    if job is None or not job.flower_run_id:
        return
    try:
        _control().stop(job.flower_run_id)
    except FlowerControlError as exc:
        log.info("stop of run %s for job %s: %s", job.flower_run_id, job.pk, exc)


# ----------------------------------------------------------------------------- the ServerApp's reports
def _require_job_token(job: FederatedJob | None, token: str) -> FederatedJob:
    expected = job.callback_token_hash if job else ""
    given = hashlib.sha256(token.encode()).hexdigest() if token else ""
    if job is None or not expected or not hmac.compare_digest(expected, given):
        raise PermissionDenied("Invalid job token.", code="invalid_job_token")
    return job


def job_callback_authenticate(*, job_id: int, token: str) -> None:
    """Refuses (403, the same for a job that does not exist) a callback without the job's token, so
    that the API checks the caller before it looks at what the caller sent."""
    _require_job_token(FederatedJob.objects.filter(pk=job_id).first(), token)


@transaction.atomic
def job_event_record(*, job_id: int, token: str, event: dict[str, Any]) -> FederatedJob:
    """The ServerApp's HTTP callback: started / round / finished / failed, authenticated by the
    job's own token (not a user's). Idempotent: a retried round overwrites itself. `event` is
    validated by the API (JobEventApi.InputSerializer)."""
    job = _require_job_token(_locked(job_id), token)
    kind = event.get("event")
    if job.is_final and kind in ("round", "finished"):
        return job  # e.g. rounds still arriving after a cancel: keep what the job ended with
    if kind == "round":
        record = RoundRecord.parse(event)
        number = record.round
        if number is None or number < 1:
            raise ValidationFailed("A round event needs a positive integer 'round'.", code="invalid_event")
        values = {
            "accuracy": record.evaluate.accuracy,
            "macro_f1": record.evaluate.macro_f1,
            "loss": record.evaluate.loss,
            "clients_trained": record.clients_trained,
            "bytes_sent": record.bytes_sent,
            "bytes_received": record.bytes_received,
            "seconds": record.round_seconds or 0.0,
            "record": event,  # stored as sent: RoundRecord.parse reads it back
            "received_at": timezone.now(),
        }
        _, created = JobRound.objects.update_or_create(job=job, number=number, defaults=values)
        if created:
            audit_record(
                actor=None,
                action="federated_job.round_recorded",
                target=job,
                extra={"job": str(job.uid), "round": number, "accuracy": values["accuracy"]},
            )
            count_on_commit(FEDERATED_ROUNDS.labels(strategy=job.strategy))
    elif kind == "finished":
        job.final_evaluation = event.get("final_evaluation")
        job.save(update_fields=["final_evaluation"])
        enqueue_on_commit("federation.job_finalize", job.pk)
    elif kind == "failed":
        _set_state(
            job, JobState.FAILED, reason=str(event.get("reason") or "The ServerApp reported a failure.")
        )
    elif kind != "started":
        raise ValidationFailed("event must be one of started, round, finished, failed.", code="invalid_event")
    return job


def job_finalize(*, job_id: int) -> FederatedJob | None:
    """Worker: the run completed; store its adapter and report as the job's model artifact."""
    with transaction.atomic():
        job = _locked(job_id)
        if job is None or job.state != JobState.RUNNING:
            return job
        out = job_workdir(job) / "out"
        adapter, report_path = out / "adapter.safetensors", out / "report.json"
        if not adapter.exists():
            _set_state(job, JobState.FAILED, reason="The run finished without leaving a model.")
            return job
        report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
        data = adapter.read_bytes()
        name = default_storage.save(f"federation/{job.uid}/adapter.safetensors", ContentFile(data))
        ModelArtifact.objects.update_or_create(
            job=job,
            defaults={
                "file_name": name,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "report": report,
            },
        )
        # The ServerApp's report names the last round's pooled evaluation `final_evaluation` (a run
        # whose round events did not all arrive still gets it from the report).
        if job.final_evaluation is None and isinstance(report.get("final_evaluation"), dict):
            job.final_evaluation = report["final_evaluation"]
        _set_state(job, JobState.SUCCEEDED)
    shutil.rmtree(job_workdir(job), ignore_errors=True)  # outputs are stored; the token is spent
    return job


def jobs_reconcile() -> dict[str, int]:
    """Worker, periodic: align every unfinished job with the SuperLink, so a run that died is never
    left running and a cancelled one is stopped."""
    counts = {"checked": 0, "changed": 0}
    stale = timezone.now() - timedelta(seconds=settings.FLOWER_SUBMIT_TIMEOUT_SECONDS)
    for job in FederatedJob.objects.filter(state=JobState.SCHEDULED, scheduled_at__lt=stale):
        with transaction.atomic():
            locked = _locked(job.pk)
            if locked is not None and locked.state == JobState.SCHEDULED:
                _set_state(
                    locked,
                    JobState.FAILED,
                    reason="The job was never submitted to the SuperLink "
                    f"(no federation worker took it within {settings.FLOWER_SUBMIT_TIMEOUT_SECONDS:g} s).",
                )
                counts["changed"] += 1
    running = list(FederatedJob.objects.filter(state=JobState.RUNNING))
    if not running or not settings.FLOWER_SUPERLINK:
        return counts
    try:
        runs = _control().runs()
    except FlowerControlError as exc:
        log.warning("reconcile: SuperLink unreachable: %s", exc)
        return counts
    for job in running:
        counts["checked"] += 1
        run = runs.get(job.flower_run_id)
        if run is not None and run.active:
            continue
        if run is not None and run.status == RUN_COMPLETED:
            job_finalize(job_id=job.pk)
        else:
            with transaction.atomic():
                locked = _locked(job.pk)
                if locked is None or locked.state != JobState.RUNNING:
                    continue
                if run is None:
                    reason = f"The SuperLink has no record of run {job.flower_run_id}."
                elif run.status == RUN_FAILED:
                    reason = f"The run failed: {run.details or 'no details'}"
                else:
                    reason = f"The run ended as {run.status}: {run.details or 'no details'}"
                _set_state(locked, JobState.FAILED, reason=reason)
        counts["changed"] += 1
    return counts


# ----------------------------------------------------------------------------- SuperNode keys
def _parse_public_key(text: str) -> tuple[str, str]:
    text = (text or "").strip()
    try:
        key = serialization.load_ssh_public_key(text.encode("ascii"))
    except (ValueError, UnicodeEncodeError, UnsupportedAlgorithm) as exc:
        raise ValidationFailed("Not an OpenSSH public key.", code="invalid_public_key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise ValidationFailed(
            "A SuperNode key must be an EC P-384 key (ecdsa-sha2-nistp384).", code="invalid_public_key"
        )
    blob = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return blob.decode("ascii"), hashlib.sha256(blob).hexdigest()


@transaction.atomic
def supernode_key_add(*, actor: Any, organisation: Organisation, name: str, public_key: str) -> SuperNodeKey:
    """An org admin registers its SuperNode's public key; a worker registers it with the SuperLink."""
    require_capability(actor=actor, organisation=organisation, capability=MANAGE_FEDERATION)
    name = clean_name(name, field="name", max_length=100)
    key_text, fingerprint = _parse_public_key(public_key)
    if SuperNodeKey.objects.filter(fingerprint=fingerprint).exists():
        raise Conflict("This key is already registered.", code="duplicate_key")
    if (
        SuperNodeKey.objects.filter(organisation=organisation, name=name)
        .exclude(status=NodeKeyStatus.REVOKED)
        .exists()
    ):
        raise Conflict(f"A key named {name!r} exists.", code="duplicate_key_name")
    key = SuperNodeKey.objects.create(
        organisation=organisation, name=name, public_key=key_text, fingerprint=fingerprint, created_by=actor
    )
    audit_record(
        actor=actor,
        action="supernode_key.added",
        organisation=organisation,
        target=key,
        extra={"name": name, "fingerprint": fingerprint},
    )
    enqueue_on_commit("federation.supernode_key_register", key.pk)
    return key


def supernode_key_register(*, key_id: int) -> SuperNodeKey | None:
    """Worker: ``flwr supernode register`` on the SuperLink (no row lock held across the call)."""
    key = SuperNodeKey.objects.filter(pk=key_id).first()
    if key is None or key.status not in (NodeKeyStatus.PENDING, NodeKeyStatus.FAILED):
        return key
    try:
        node_id, error = _control().register_node(key.public_key), ""
    except FlowerControlError as exc:
        node_id, error = "", str(exc)[:2000]
    with transaction.atomic():
        audit_lock(key.organisation_id)  # first: the lock order of every write (see audit_lock)
        key = (
            SuperNodeKey.objects.select_for_update(no_key=True, of=("self",))
            .select_related("organisation")
            .get(pk=key_id)
        )
        if key.status not in (NodeKeyStatus.PENDING, NodeKeyStatus.FAILED):
            return key  # revoked meanwhile: its revocation unregisters what we just registered
        key.node_id, key.error = node_id, error
        key.status = NodeKeyStatus.REGISTERED if node_id else NodeKeyStatus.FAILED
        key.save()
        audit_record(
            actor=None,
            action=f"supernode_key.{key.status}",
            organisation=key.organisation,
            target=key,
            extra={"node_id": key.node_id, "error": key.error},
        )
        return key


@transaction.atomic
def supernode_key_revoke(*, actor: Any, key: SuperNodeKey) -> SuperNodeKey:
    require_capability(actor=actor, organisation=key.organisation, capability=MANAGE_FEDERATION)
    audit_lock(key.organisation_id)  # first: the lock order of every write (see audit_lock)
    key = SuperNodeKey.objects.select_for_update(no_key=True).get(pk=key.pk)
    if key.status == NodeKeyStatus.REVOKED:
        raise Conflict("This key is already revoked.", code="key_revoked")
    key.status = NodeKeyStatus.REVOKED
    key.save(update_fields=["status"])
    audit_record(
        actor=actor,
        action="supernode_key.revoked",
        organisation=key.organisation,
        target=key,
        extra={"node_id": key.node_id},
    )
    if key.node_id:
        enqueue_on_commit("federation.supernode_key_unregister", key.pk)
    return key


def supernode_key_unregister(*, key_id: int) -> None:
    key = SuperNodeKey.objects.filter(pk=key_id).first()
    if key is None or not key.node_id:
        return
    try:
        _control().unregister_node(key.node_id)
    except FlowerControlError as exc:
        log.warning("unregister of node %s failed: %s", key.node_id, exc)
