from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from clearinghouse.organisations.models import Organisation


class Dataset(models.Model):
    """A member's table. Its schema is declared (or inferred, then confirmed) before any version is
    ingested; rows live only in encrypted version files."""

    organisation = models.ForeignKey(Organisation, on_delete=models.PROTECT, related_name="datasets")
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=50)
    description = models.TextField(blank=True, max_length=5000)
    schema = models.JSONField(null=True, blank=True)
    # An inferred schema is only a proposal until the steward confirms it (bounds from data leak).
    schema_confirmed = models.BooleanField(default=False)
    # Offered to the consortium: shown in the catalogue, where other organisations may ask for access
    # (`AccessRequest`). Only a confirmed schema's public facts are shown there, so only a dataset with
    # one can be listed.
    listed = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organisation", "name"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "slug"], name="dataset_slug_unique_per_org"),
            models.CheckConstraint(
                condition=Q(listed=False) | Q(schema_confirmed=True), name="listed_dataset_schema_confirmed"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organisation.slug}/{self.slug}"


class VersionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    VALIDATING = "validating", "Validating"
    # A first upload of a dataset without a confirmed schema: a schema was proposed from it, and it is
    # validated again as soon as the steward confirms one (`dataset_schema_set`). Not a failure.
    AWAITING_SCHEMA = "awaiting_schema", "Awaiting schema confirmation"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    CORRUPT = "corrupt", "Corrupt"


class DatasetVersion(models.Model):
    """One immutable upload. The upload is encrypted as it streams in (staging file); the worker
    decrypts it in memory, checks it, and writes the normalised Parquet encrypted (data file)."""

    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="versions")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=VersionStatus.choices, default=VersionStatus.PENDING)
    source_format = models.CharField(max_length=16)
    source_name = models.CharField(max_length=255, blank=True)
    source_bytes = models.BigIntegerField(default=0)
    delimiter = models.CharField(max_length=1, blank=True)
    quote_char = models.CharField(max_length=1, blank=True, default='"', help_text="Empty: no quoting.")
    has_header = models.BooleanField(default=True)
    repair = models.CharField(max_length=8, default="none")
    schema = models.JSONField(help_text="The schema this version was checked against (a copy).")
    staging_path = models.CharField(max_length=500, blank=True)
    data_path = models.CharField(max_length=500, blank=True)
    data_bytes = models.BigIntegerField(default=0)
    kek_id = models.CharField(max_length=100, blank=True)
    row_count = models.BigIntegerField(null=True, blank=True)
    quality_report = models.JSONField(null=True, blank=True)
    # The stored rows' content digests (`datasets.ingest.content_digests`, `training.digest`): what a
    # private federated job's member checks its local file against. Data-derived: the owner's only,
    # and the job's member's (docs/data-exposure.md). Null for a version ingested before digests were
    # computed (`manage.py dataset_digests_backfill`) and for one not ready.
    content_digests = models.JSONField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    error_message = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Liveness of ingestion (see services.dataset_version_ingest and dataset_versions_recover): when the
    # ingestion task was last queued, when the current run claimed the version, how many runs have
    # started since the upload (or the last retry), and the claim of the run that may finish it.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    validation_started_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    ingest_claim = models.CharField(max_length=32, blank=True)

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="dataset_version_number_unique"),
            models.CheckConstraint(
                condition=models.Q(status__in=VersionStatus.values), name="dataset_version_status_valid"
            ),
            # A ready version always has its encrypted data file.
            models.CheckConstraint(
                condition=~models.Q(status="ready") | ~models.Q(data_path=""), name="ready_version_has_data"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.dataset} v{self.number}"


class GrantPurpose(models.TextChoices):
    QUERY = "query", "Differentially private queries"
    TRAINING = "training", "Federated training"


class DatasetGrant(models.Model):
    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="grants")
    organisation = models.ForeignKey(Organisation, on_delete=models.CASCADE, related_name="dataset_grants")
    purpose = models.CharField(max_length=16, choices=GrantPurpose.choices)
    granted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    granted_at = models.DateTimeField(default=timezone.now)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-granted_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "organisation", "purpose"],
                condition=models.Q(revoked_at__isnull=True),
                name="one_active_grant_per_purpose",
            ),
        ]

    def __str__(self) -> str:
        return f"grant of dataset {self.dataset_id} to organisation {self.organisation_id} ({self.purpose})"


class DataUseAgreement(models.Model):
    """Versioned terms an analyst accepts before querying; a new version needs a new acceptance."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="agreements")
    version = models.PositiveIntegerField()
    text = models.TextField(max_length=50_000)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["dataset", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "version"], name="agreement_version_unique")
        ]

    def __str__(self) -> str:
        return f"agreement v{self.version} of dataset {self.dataset_id}"


class AgreementAcceptance(models.Model):
    agreement = models.ForeignKey(DataUseAgreement, on_delete=models.CASCADE, related_name="acceptances")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="agreement_acceptances"
    )
    accepted_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["agreement", "user"], name="agreement_accepted_once")]

    def __str__(self) -> str:
        return f"acceptance of agreement {self.agreement_id} by user {self.user_id}"


class AccessRequestStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    APPROVED = "approved", "Approved"
    DECLINED = "declined", "Declined"
    WITHDRAWN = "withdrawn", "Withdrawn"


ACCESS_REQUEST_REASON_MAX = 2000
ACCESS_REQUEST_NOTE_MAX = 2000


class AccessRequest(models.Model):
    """An organisation asking a listed dataset's owner for a grant (query or training). The owner's
    admins and stewards approve it (the grant is made then, in the same transaction) or decline it;
    the requesting organisation may withdraw it while it is pending."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="access_requests")
    organisation = models.ForeignKey(
        Organisation, on_delete=models.CASCADE, related_name="dataset_access_requests"
    )
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    purpose = models.CharField(max_length=16, choices=GrantPurpose.choices)
    reason = models.TextField(max_length=ACCESS_REQUEST_REASON_MAX)
    status = models.CharField(
        max_length=16, choices=AccessRequestStatus.choices, default=AccessRequestStatus.PENDING
    )
    decided_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    decided_at = models.DateTimeField(null=True, blank=True)
    decision_note = models.TextField(blank=True, max_length=ACCESS_REQUEST_NOTE_MAX)
    grant = models.ForeignKey(
        DatasetGrant, null=True, blank=True, on_delete=models.SET_NULL, related_name="access_requests"
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["dataset", "organisation", "purpose"],
                condition=Q(status="pending"),
                name="one_pending_access_request",
            ),
            models.CheckConstraint(
                condition=Q(status__in=AccessRequestStatus.values), name="access_request_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(purpose__in=GrantPurpose.values), name="access_request_purpose_valid"
            ),
            models.CheckConstraint(condition=~Q(reason=""), name="access_request_reason_required"),
            # A decision records when it was made.
            models.CheckConstraint(
                condition=~Q(status__in=["approved", "declined"]) | Q(decided_at__isnull=False),
                name="access_request_decided_at",
            ),
        ]
        indexes = [models.Index(fields=["organisation", "status"], name="access_request_org_status")]

    def __str__(self) -> str:
        return (
            f"access request of organisation {self.organisation_id} to dataset {self.dataset_id} "
            f"({self.purpose}, {self.status})"
        )
