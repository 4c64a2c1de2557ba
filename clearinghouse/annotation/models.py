"""Annotation projects: an organisation labels the texts of one of its own dataset versions.

No text is stored here: an item names its row in the (encrypted, immutable) dataset version, and
only workers read the text (`annotation.item_texts`, `annotation.model_run`). What is stored is what
people and the model said of each item: labels, proposals and their confidences, flags — the owner
organisation's data, like its query answers (docs/data-exposure.md).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from clearinghouse.datasets.models import Dataset, DatasetVersion
from clearinghouse.organisations.models import Organisation
from federation.models import ModelArtifact

LABELS_MIN = 2
LABELS_MAX = 50
LABEL_MAX_LENGTH = 64
OVERLAP_MAX = 0.5
INSTRUCTIONS_MAX = 20_000


class ProjectStatus(models.TextChoices):
    PREPARING = "preparing", "Preparing"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"
    ARCHIVED = "archived", "Archived"


class AnnotationProject(models.Model):
    organisation = models.ForeignKey(
        Organisation, on_delete=models.PROTECT, related_name="annotation_projects"
    )
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="annotation_projects")
    version = models.ForeignKey(DatasetVersion, on_delete=models.PROTECT, related_name="annotation_projects")
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=50)
    text_column = models.CharField(max_length=63)
    labels = models.JSONField()
    instructions = models.TextField(blank=True, max_length=INSTRUCTIONS_MAX)
    overlap = models.FloatField(default=0.1)
    # Automatic labelling: the precision the steward wants certified, and at what confidence.
    target_precision = models.FloatField(null=True, blank=True)
    confidence_level = models.FloatField(default=0.95)
    annotators = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="annotation_projects"
    )
    status = models.CharField(max_length=16, choices=ProjectStatus.choices, default=ProjectStatus.PREPARING)
    error_code = models.CharField(max_length=64, blank=True)
    item_count = models.PositiveIntegerField(default=0)
    # {"exact_items", "near_items", "groups"}: counts only (the groups themselves are on the items).
    duplicate_summary = models.JSONField(null=True, blank=True)
    # The encrypted sentence embeddings of the items (computed by the first model run, reused after).
    embeddings_path = models.CharField(max_length=500, blank=True)
    embeddings_model = models.CharField(max_length=200, blank=True)
    embeddings_kek_id = models.CharField(max_length=100, blank=True)
    # Liveness of preparation (the sweeper re-queues a project left preparing by a lost worker).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    archived_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["organisation", "-created_at", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["organisation", "slug"], name="annotation_project_slug_unique"),
            models.CheckConstraint(
                condition=Q(status__in=ProjectStatus.values), name="annotation_project_status_valid"
            ),
            models.CheckConstraint(
                condition=Q(overlap__gte=0) & Q(overlap__lte=OVERLAP_MAX), name="annotation_overlap_range"
            ),
            models.CheckConstraint(
                condition=Q(target_precision__isnull=True)
                | (Q(target_precision__gt=0) & Q(target_precision__lt=1)),
                name="annotation_target_precision_range",
            ),
            models.CheckConstraint(
                condition=Q(confidence_level__gt=0) & Q(confidence_level__lt=1),
                name="annotation_confidence_level_range",
            ),
        ]

    def __str__(self) -> str:
        return f"annotation project {self.organisation_id}/{self.slug}"


class LabelSource(models.TextChoices):
    HUMAN = "human", "Person"
    MODEL = "model", "Model"
    REVIEWED = "reviewed", "Reviewed"


class DuplicateKind(models.TextChoices):
    NONE = "", "None"
    EXACT = "exact", "Exact"
    NEAR = "near", "Near"


class FlagReason(models.TextChoices):
    NONE = "", "None"
    DISAGREEMENT = "disagreement", "People disagree"
    LABEL_ERROR = "label_error", "Likely label error"


class RunKind(models.TextChoices):
    PROPOSE = "propose", "Propose labels"
    REVIEW = "review", "Find likely label errors"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


RUN_ACTIVE = (RunStatus.QUEUED, RunStatus.RUNNING)


class ModelRun(models.Model):
    """One worker run of the project's model: `propose` fits on the labels so far, proposes a label
    and a confidence for every item and calibrates the automatic threshold; `review` flags likely
    label errors (confident learning) among the labelled items."""

    project = models.ForeignKey(AnnotationProject, on_delete=models.CASCADE, related_name="model_runs")
    kind = models.CharField(max_length=16, choices=RunKind.choices, default=RunKind.PROPOSE)
    status = models.CharField(max_length=16, choices=RunStatus.choices, default=RunStatus.QUEUED)
    labels_used = models.PositiveIntegerField(default=0)
    # A propose run from the consortium's federated model for the same label set (a job's head over the
    # mean-pooled vector), instead of a proposer fitted on the project's labels.
    federated_model = models.ForeignKey(
        ModelArtifact, null=True, blank=True, on_delete=models.SET_NULL, related_name="annotation_runs"
    )
    metrics = models.JSONField(default=dict, blank=True)
    # Automatic labelling, calibrated on the human-labelled calibration sample (propose runs).
    target_precision = models.FloatField(null=True, blank=True)
    confidence_level = models.FloatField(null=True, blank=True)
    threshold = models.FloatField(null=True, blank=True)
    estimated_precision = models.FloatField(null=True, blank=True)
    precision_lower_bound = models.FloatField(null=True, blank=True)
    coverage = models.FloatField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Liveness: when it was last queued (by its start or the sweeper), and how often the sweeper
    # queued it again; a worker's attempt holds the run while `attempts` is what it read at its start.
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=RunKind.values), name="annotation_run_kind_valid"),
            models.CheckConstraint(
                condition=Q(status__in=RunStatus.values), name="annotation_run_status_valid"
            ),
            # One run at a time per project: runs write the items' proposals and flags.
            models.UniqueConstraint(
                fields=["project"],
                condition=Q(status__in=["queued", "running"]),
                name="annotation_one_active_run",
            ),
        ]

    def __str__(self) -> str:
        return f"model run {self.pk} ({self.kind}, {self.status})"


class AnnotationItem(models.Model):
    project = models.ForeignKey(AnnotationProject, on_delete=models.CASCADE, related_name="items")
    row = models.PositiveIntegerField(help_text="The row's index in the project's dataset version.")
    # Random, seeded at preparation: the order before any model exists, and the tie-break after.
    shuffle_key = models.PositiveIntegerField(default=0)
    # Part of the random calibration sample (served beside the uncertain items, so that the automatic
    # threshold is calibrated on items like those it will label, not only on the hardest ones).
    calibration = models.BooleanField(default=False)
    needs_two = models.BooleanField(default=False)
    duplicate_group = models.PositiveIntegerField(null=True, blank=True)
    duplicate_kind = models.CharField(max_length=8, choices=DuplicateKind.choices, blank=True, default="")
    proposed_label = models.CharField(max_length=LABEL_MAX_LENGTH, blank=True)
    confidence = models.FloatField(null=True, blank=True)
    uncertainty = models.FloatField(
        null=True, blank=True, help_text="Margin of the top two; lower is less sure."
    )
    proposal_run = models.ForeignKey(
        ModelRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # In the review queue: two people disagree, or a review run found the label unlikely.
    flagged = models.BooleanField(default=False)
    flag_reason = models.CharField(max_length=16, choices=FlagReason.choices, blank=True, default="")
    flag_score = models.FloatField(null=True, blank=True)
    suggested_label = models.CharField(max_length=LABEL_MAX_LENGTH, blank=True)
    final_label = models.CharField(max_length=LABEL_MAX_LENGTH, blank=True)
    final_source = models.CharField(max_length=16, choices=LabelSource.choices, blank=True)
    human_count = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["project", "row"]
        constraints = [
            models.UniqueConstraint(fields=["project", "row"], name="annotation_item_row_unique"),
        ]
        indexes = [
            models.Index(fields=["project", "human_count", "uncertainty"], name="annotation_item_queue"),
            models.Index(fields=["project", "flagged"], name="annotation_item_flagged"),
        ]

    def __str__(self) -> str:
        return f"item {self.pk} (row {self.row} of project {self.project_id})"


class Label(models.Model):
    item = models.ForeignKey(AnnotationItem, on_delete=models.CASCADE, related_name="label_set")
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    value = models.CharField(max_length=LABEL_MAX_LENGTH)
    source = models.CharField(max_length=16, choices=LabelSource.choices, default=LabelSource.HUMAN)
    model_run = models.ForeignKey(
        ModelRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    confidence = models.FloatField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["item", "created_at", "pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(source__in=LabelSource.values), name="annotation_label_source_valid"
            ),
            models.UniqueConstraint(
                fields=["item", "annotator"], condition=Q(source="human"), name="annotation_one_human_label"
            ),
            models.UniqueConstraint(
                fields=["item"], condition=Q(source="model"), name="annotation_one_model_label"
            ),
            # A person's label names the person; the model's names its run.
            models.CheckConstraint(
                condition=~Q(source="model") | Q(model_run__isnull=False), name="annotation_model_label_run"
            ),
        ]
        indexes = [models.Index(fields=["annotator", "-created_at"], name="annotation_label_recent")]

    def __str__(self) -> str:
        return f"label {self.pk} on item {self.item_id} ({self.source})"


class ItemSkip(models.Model):
    item = models.ForeignKey(AnnotationItem, on_delete=models.CASCADE, related_name="skips")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["item", "annotator"], name="annotation_skip_once")]

    def __str__(self) -> str:
        return f"skip of item {self.item_id}"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"


class AnnotationExport(models.Model):
    """The project's labels written out as a new dataset: the version's rows with the label and its
    provenance columns, through the normal ingestion (validated, encrypted, digested)."""

    project = models.ForeignKey(AnnotationProject, on_delete=models.CASCADE, related_name="exports")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="+")
    version = models.ForeignKey(
        DatasetVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    status = models.CharField(max_length=16, choices=ExportStatus.choices, default=ExportStatus.QUEUED)
    drop_duplicates = models.BooleanField(default=False)
    drop_conflicts = models.BooleanField(default=True)
    include_model_labels = models.BooleanField(default=True)
    rows = models.PositiveIntegerField(null=True, blank=True)
    error_code = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    # Liveness: when it was last queued (by its start or the sweeper), and how often the sweeper
    # queued it again; a worker's attempt holds the run while `attempts` is what it read at its start.
    enqueued_at = models.DateTimeField(default=timezone.now)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-pk"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=ExportStatus.values), name="annotation_export_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"export {self.pk} of project {self.project_id} ({self.status})"
