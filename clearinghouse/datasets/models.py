from __future__ import annotations

from django.conf import settings
from django.db import models
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
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["organisation", "name"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "slug"], name="dataset_slug_unique_per_org")
        ]

    def __str__(self) -> str:
        return f"{self.organisation.slug}/{self.slug}"


class VersionStatus(models.TextChoices):
    PENDING = "pending", "Pending"
    VALIDATING = "validating", "Validating"
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
