"""Federated fine-tuning jobs, their participants, per-round metrics, the final model, and the
SuperNode keys members register.

A job's life: draft → scheduled (a Celery task submits it to the SuperLink) → running (the
SuperLink gave a run id) → succeeded | failed | cancelled, always with a reason when it did not
succeed. The reconciler compares every unfinished job with the SuperLink's view of its run, so a
run that died is never left "running".
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from clearinghouse.datasets.models import Dataset
from clearinghouse.organisations.models import Organisation


class JobState(models.TextChoices):
    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Strategy(models.TextChoices):
    FEDAVG = "fedavg", "FedAvg"
    FEDPROX = "fedprox", "FedProx"
    FEDADAM = "fedadam", "FedAdam"


class FederatedJob(models.Model):
    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    name = models.CharField(max_length=200)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    # The task: a text classifier trained on each member's local file.
    base_model = models.CharField(max_length=500, default="minilm-l6")
    text_column = models.CharField(max_length=200)
    label_column = models.CharField(max_length=200)
    labels = models.JSONField(help_text="The label set, in order.")
    # Training and federation settings, validated by federation.flower.settings.JobSettings.
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.FEDAVG)
    num_rounds = models.PositiveIntegerField(default=3)
    min_clients = models.PositiveIntegerField(default=2)
    settings = models.JSONField(
        default=dict,
        blank=True,
        help_text="Further run-config values (lora, lora-r, batch-size, learning-rate, ...).",
    )
    # A private job (dp_epsilon set): every participant trains with record-level DP-SGD at (ε, δ) on
    # its data, priced per participating dataset and debited from its privacy budget at schedule.
    dp_epsilon = models.FloatField(
        null=True, blank=True, help_text="Target ε per dataset; null: not private."
    )
    dp_delta = models.FloatField(null=True, blank=True, help_text="δ per dataset (a private job only).")
    dp_max_grad_norm = models.FloatField(default=1.0, help_text="DP-SGD's per-example clipping norm C.")
    state = models.CharField(max_length=16, choices=JobState.choices, default=JobState.DRAFT)
    reason = models.TextField(blank=True, help_text="Why the job failed or was cancelled.")
    flower_run_id = models.CharField(max_length=40, blank=True)
    callback_token_hash = models.CharField(max_length=64, blank=True)
    final_evaluation = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    scheduled_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(num_rounds__gte=1), name="job_rounds_positive"),
            models.CheckConstraint(condition=Q(min_clients__gte=1), name="job_min_clients_positive"),
            models.CheckConstraint(
                condition=~Q(state="running") | ~Q(flower_run_id=""), name="running_job_has_run"
            ),
            models.CheckConstraint(
                condition=(Q(dp_epsilon__isnull=True) & Q(dp_delta__isnull=True))
                | (Q(dp_epsilon__gt=0) & Q(dp_delta__gt=0) & Q(dp_delta__lt=1)),
                name="job_privacy_loss_valid",
            ),
            models.CheckConstraint(condition=Q(dp_max_grad_norm__gt=0), name="job_max_grad_norm_positive"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def is_private(self) -> bool:
        """Whether the job trains with DP-SGD (and is paid from its datasets' privacy budgets)."""
        return self.dp_epsilon is not None


class ParticipantStatus(models.TextChoices):
    INVITED = "invited", "Invited"
    ACCEPTED = "accepted", "Accepted"
    DECLINED = "declined", "Declined"


class JobParticipant(models.Model):
    job = models.ForeignKey(FederatedJob, on_delete=models.CASCADE, related_name="participants")
    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="federated_participations"
    )
    # What the member trains on: always a description of its local file; where that data is a
    # registered dataset, the dataset too (its owner, or an organisation with a training grant).
    dataset = models.ForeignKey(Dataset, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    data_description = models.TextField(blank=True)
    status = models.CharField(
        max_length=16, choices=ParticipantStatus.choices, default=ParticipantStatus.INVITED
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    # A private job's priced DP-SGD plan for this member (`DpSgdPlan.to_dict()`), stored when the job
    # is scheduled and its dataset's budget debited; null until then and in a non-private job.
    dp_plan = models.JSONField(null=True, blank=True)

    class Meta:
        ordering = ["organisation__slug"]
        constraints = [
            models.UniqueConstraint(fields=["job", "organisation"], name="one_participation_per_job")
        ]

    def __str__(self) -> str:
        return f"organisation {self.organisation_id} in job {self.job_id} ({self.status})"


class JobRound(models.Model):
    """One round as the ServerApp reported it (idempotent per (job, number): callbacks may retry)."""

    job = models.ForeignKey(FederatedJob, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    accuracy = models.FloatField(null=True)
    macro_f1 = models.FloatField(null=True)
    loss = models.FloatField(null=True)
    clients_trained = models.PositiveIntegerField(default=0)
    bytes_sent = models.PositiveBigIntegerField(default=0)
    bytes_received = models.PositiveBigIntegerField(default=0)
    seconds = models.FloatField(default=0.0)
    # Per-client metrics (organisation, train and evaluate metrics), dropouts, timings.
    record = models.JSONField(default=dict)
    received_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["job", "number"]
        constraints = [models.UniqueConstraint(fields=["job", "number"], name="one_record_per_round")]

    def __str__(self) -> str:
        return f"round {self.number} of job {self.job_id}"


class ModelArtifact(models.Model):
    """The final aggregated adapter (safetensors) and its evaluation report; downloadable by the
    job's accepted participants, and by every member organisation once published — which only a model
    trained with DP-SGD on every participant's data may be (`job_model_publish`)."""

    job = models.OneToOneField(FederatedJob, on_delete=models.CASCADE, related_name="artifact")
    file_name = models.CharField(max_length=500)
    size = models.PositiveBigIntegerField()
    sha256 = models.CharField(max_length=64)
    report = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    published_at = models.DateTimeField(null=True, blank=True)
    published_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(published_at__isnull=True) | Q(published_by__isnull=False),
                name="published_model_has_publisher",
            )
        ]

    def __str__(self) -> str:
        return f"model artifact {self.file_name}"


class NodeKeyStatus(models.TextChoices):
    PENDING = "pending", "Pending registration"
    REGISTERED = "registered", "Registered"
    FAILED = "failed", "Registration failed"
    REVOKED = "revoked", "Revoked"


class SuperNodeKey(models.Model):
    """A member's SuperNode public key (OpenSSH, EC P-384). Registered with the SuperLink, it is
    the node's identity: the ServerApp selects a job's nodes by the ids these registrations got."""

    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="supernode_keys")
    name = models.CharField(max_length=100)
    public_key = models.TextField()
    fingerprint = models.CharField(max_length=64, unique=True)
    status = models.CharField(max_length=16, choices=NodeKeyStatus.choices, default=NodeKeyStatus.PENDING)
    node_id = models.CharField(max_length=40, blank=True)
    error = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organisation__slug", "name"]
        constraints = [
            models.UniqueConstraint(
                fields=["organisation", "name"],
                condition=~Q(status="revoked"),
                name="one_live_key_name_per_organisation",
            ),
        ]

    def __str__(self) -> str:
        return f"SuperNode key {self.name} of organisation {self.organisation_id} ({self.status})"
