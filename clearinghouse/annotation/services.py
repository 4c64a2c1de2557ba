"""Writes of annotation projects: creating one, people's labels, model runs, automatic labels, export.

The web side only changes the database and queues work; whatever reads the texts (preparation, the
model, the export, the texts an annotator sees) runs in a worker (`worker.py`, `tasks.py`).
"""

from __future__ import annotations

import logging
import math
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from django.utils.text import slugify

from clearinghouse.audit.services import OWNER_ONLY, audit_lock, audit_record
from clearinghouse.core.db import bulk_set
from clearinghouse.core.enqueue import enqueue_on_commit
from clearinghouse.core.errors import Conflict, NotFound, ValidationFailed
from clearinghouse.core.text import clean_name, clean_slug
from clearinghouse.datasets.models import Dataset, DatasetVersion, VersionStatus
from clearinghouse.datasets.schema import COLUMN_NAME
from clearinghouse.datasets.selectors import dataset_require_owner
from clearinghouse.datasets.services import dataset_register
from clearinghouse.organisations.models import Membership

from .models import (
    INSTRUCTIONS_MAX,
    LABEL_MAX_LENGTH,
    LABELS_MAX,
    LABELS_MIN,
    OVERLAP_MAX,
    RUN_ACTIVE,
    AnnotationExport,
    AnnotationItem,
    AnnotationProject,
    ExportStatus,
    FlagReason,
    ItemSkip,
    Label,
    LabelSource,
    ModelRun,
    ProjectStatus,
    RunKind,
    RunStatus,
)
from .selectors import (
    export_items,
    federated_models_usable,
    project_list,
    project_require_manager,
    project_require_open,
)

logger = logging.getLogger(__name__)


# -- projects -----------------------------------------------------------------------------------------


def _clean_labels(labels: Any) -> list[str]:
    if not isinstance(labels, (list, tuple)) or not all(isinstance(label, str) for label in labels):
        raise ValidationFailed(
            "labels must be a list of texts.", code="label_invalid", fields={"labels": ["A list of texts."]}
        )
    cleaned = [label.strip() for label in labels]
    for label in cleaned:
        if not label or len(label) > LABEL_MAX_LENGTH or not label.isprintable():
            raise ValidationFailed(
                f"Each label is 1-{LABEL_MAX_LENGTH} printable characters.",
                code="label_invalid",
                fields={"labels": [f"1-{LABEL_MAX_LENGTH} printable characters each."]},
            )
    if len(cleaned) < LABELS_MIN:
        raise ValidationFailed(
            f"A project needs at least {LABELS_MIN} labels.",
            code="labels_too_few",
            fields={"labels": ["At least two."]},
        )
    if len(cleaned) > LABELS_MAX:
        raise ValidationFailed(
            f"A project has at most {LABELS_MAX} labels.",
            code="labels_too_many",
            fields={"labels": [f"At most {LABELS_MAX}."]},
        )
    if len(set(cleaned)) != len(cleaned):
        raise ValidationFailed(
            "Each label must be different.", code="labels_duplicate", fields={"labels": ["Duplicates."]}
        )
    return cleaned


def _clean_fraction(value: Any, *, field: str, code: str, low: float, high: float, closed: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        number = float(value)
        ok = (low <= number <= high) if closed else (low < number < high)
    if not ok:
        bounds = f"[{low}, {high}]" if closed else f"({low}, {high})"
        raise ValidationFailed(
            f"{field} must be a number in {bounds}.", code=code, fields={field: [f"In {bounds}."]}
        )
    return float(value)


def _annotator_users(organisation_id: int, usernames: Any) -> list[Any]:
    if usernames is None:
        return []
    if not isinstance(usernames, (list, tuple)) or not all(isinstance(name, str) for name in usernames):
        raise ValidationFailed("annotators must be a list of usernames.", code="annotator_not_member")
    names = sorted(set(usernames))
    members = Membership.objects.filter(
        organisation_id=organisation_id, user__username__in=names
    ).select_related("user")
    users = [membership.user for membership in members]
    missing = sorted(set(names) - {user.username for user in users})
    if missing:
        raise ValidationFailed(
            "Annotators must be members of your organisation.",
            code="annotator_not_member",
            fields={"annotators": [f"Not a member: {', '.join(missing[:5])}"]},
        )
    return users


def _text_column(version: DatasetVersion, name: Any) -> str:
    columns = {column["name"]: column for column in (version.schema or {}).get("columns", [])}
    if not isinstance(name, str) or name not in columns:
        raise ValidationFailed(
            "The dataset has no such column.",
            code="unknown_column",
            fields={"text_column": ["No such column."]},
        )
    if columns[name]["type"] != "text":
        raise ValidationFailed(
            "Annotation needs a text column.",
            code="column_not_text",
            fields={"text_column": ["Not a text column."]},
        )
    return name


@transaction.atomic
def project_create(
    *,
    actor: Any,
    dataset: Dataset,
    name: str,
    text_column: str,
    labels: list[str],
    instructions: str = "",
    overlap: float = 0.1,
    annotators: list[str] | tuple[str, ...] | None = (),
    version_number: int | None = None,
    slug: str = "",
) -> AnnotationProject:
    """A project on a ready version of the organisation's own dataset; its items are prepared by a
    worker (`annotation.prepare`)."""
    audit_lock(dataset.organisation_id)
    dataset_require_owner(actor=actor, dataset=dataset)
    name = clean_name(name, field="name", max_length=120)
    slug = clean_slug(slug or slugify(name)[:50].strip("-") or "project")
    label_set = _clean_labels(labels)
    overlap = _clean_fraction(
        overlap, field="overlap", code="overlap_out_of_range", low=0.0, high=OVERLAP_MAX, closed=True
    )
    if not isinstance(instructions, str) or len(instructions) > INSTRUCTIONS_MAX:
        raise ValidationFailed(
            f"instructions: at most {INSTRUCTIONS_MAX} characters.", code="invalid_instructions"
        )
    versions = dataset.versions.filter(status=VersionStatus.READY)
    version = (
        versions.filter(number=version_number).first()
        if version_number is not None
        else versions.order_by("-number").first()
    )
    if version is None:
        raise Conflict("The dataset has no ready version with that number.", code="no_ready_version")
    column = _text_column(version, text_column)
    users = _annotator_users(dataset.organisation_id, annotators)
    if AnnotationProject.objects.filter(organisation_id=dataset.organisation_id, slug=slug).exists():
        raise Conflict("Your organisation already has a project with this slug.", code="slug_taken")
    project = AnnotationProject.objects.create(
        organisation_id=dataset.organisation_id,
        dataset=dataset,
        version=version,
        name=name,
        slug=slug,
        text_column=column,
        labels=label_set,
        instructions=instructions,
        overlap=overlap,
        created_by=actor,
        enqueued_at=timezone.now(),
    )
    project.annotators.set(users)
    audit_record(
        actor=actor,
        action="annotation_project.created",
        organisation=dataset.organisation,
        target=project,
        extra={
            "dataset": dataset.slug,
            "version": version.number,
            "text_column": column,
            "labels": len(label_set),
            "annotators": sorted(user.username for user in users),
        },
    )
    enqueue_on_commit("annotation.prepare", project.pk, robust=True)
    return project


@transaction.atomic
def project_update(
    *,
    actor: Any,
    project: AnnotationProject,
    instructions: str | None = None,
    annotators: list[str] | None = None,
    target_precision: float | None = None,
    confidence_level: float | None = None,
) -> AnnotationProject:
    audit_lock(project.organisation_id)
    project_require_manager(actor=actor, project=project)
    project = AnnotationProject.objects.select_for_update(no_key=True).get(pk=project.pk)
    if project.status in (ProjectStatus.ARCHIVED, ProjectStatus.FAILED):
        raise Conflict(f"The project is {project.get_status_display().lower()}.", code="project_not_ready")
    changed: dict[str, Any] = {}
    if instructions is not None:
        if not isinstance(instructions, str) or len(instructions) > INSTRUCTIONS_MAX:
            raise ValidationFailed(
                f"instructions: at most {INSTRUCTIONS_MAX} characters.", code="invalid_instructions"
            )
        project.instructions = instructions
        changed["instructions"] = True
    if target_precision is not None:
        project.target_precision = _clean_fraction(
            target_precision,
            field="target_precision",
            code="threshold_out_of_range",
            low=0.0,
            high=1.0,
            closed=False,
        )
        changed["target_precision"] = project.target_precision
    if confidence_level is not None:
        project.confidence_level = _clean_fraction(
            confidence_level,
            field="confidence_level",
            code="threshold_out_of_range",
            low=0.0,
            high=1.0,
            closed=False,
        )
        changed["confidence_level"] = project.confidence_level
    if annotators is not None:
        users = _annotator_users(project.organisation_id, annotators)
        project.annotators.set(users)
        changed["annotators"] = sorted(user.username for user in users)
    project.save()
    audit_record(
        actor=actor,
        action="annotation_project.updated",
        organisation=project.organisation,
        target=project,
        extra=changed,
    )
    return project


@transaction.atomic
def project_archive(*, actor: Any, project: AnnotationProject) -> AnnotationProject:
    audit_lock(project.organisation_id)
    project_require_manager(actor=actor, project=project)
    project = AnnotationProject.objects.select_for_update(no_key=True).get(pk=project.pk)
    if project.status == ProjectStatus.ARCHIVED:
        raise Conflict("The project is archived already.", code="already_archived")
    project.status = ProjectStatus.ARCHIVED
    project.archived_at = timezone.now()
    project.save(update_fields=["status", "archived_at"])
    audit_record(
        actor=actor, action="annotation_project.archived", organisation=project.organisation, target=project
    )
    return project


# -- labels -------------------------------------------------------------------------------------------


def _refresh_final(item: AnnotationItem) -> None:
    """The item's final label from its labels: a reviewed label wins; then people's (two who disagree
    leave it open and flag it for review); then the model's."""
    labels = list(item.label_set.order_by("created_at", "pk"))
    reviewed = [label for label in labels if label.source == LabelSource.REVIEWED]
    human = [label for label in labels if label.source == LabelSource.HUMAN]
    model = [label for label in labels if label.source == LabelSource.MODEL]
    item.human_count = len(human)
    if reviewed:
        item.final_label, item.final_source = reviewed[-1].value, LabelSource.REVIEWED
        item.flagged, item.flag_reason = False, FlagReason.NONE
    elif human:
        values = {label.value for label in human}
        if len(values) > 1:  # people disagree: the item waits for a review
            item.final_label, item.final_source = "", ""
            item.flagged, item.flag_reason = True, FlagReason.DISAGREEMENT
            item.flag_score, item.suggested_label = 0.0, ""
        else:
            item.final_label, item.final_source = human[0].value, LabelSource.HUMAN
            if item.flag_reason == FlagReason.DISAGREEMENT:  # one of the two took theirs back
                item.flagged, item.flag_reason, item.flag_score = False, FlagReason.NONE, None
    elif model:
        item.final_label, item.final_source = model[-1].value, LabelSource.MODEL
    else:  # no label left: nothing to review either
        item.final_label, item.final_source = "", ""
        item.flagged, item.flag_reason, item.flag_score, item.suggested_label = (
            False,
            FlagReason.NONE,
            None,
            "",
        )
    item.save(
        update_fields=[
            "human_count",
            "final_label",
            "final_source",
            "flagged",
            "flag_reason",
            "flag_score",
            "suggested_label",
        ]
    )


def _locked_item(item: AnnotationItem) -> AnnotationItem:
    """The item, locked (callers hold the audit head: `_open_project`)."""
    audit_lock(item.project.organisation_id)
    return AnnotationItem.objects.select_for_update(no_key=True).get(pk=item.pk)


def _open_project(*, actor: Any, project: AnnotationProject) -> AnnotationProject:
    """The project as committed now, after the audit head (so an archive that committed meanwhile is
    seen), checked open and visible to `actor` (services authorise their actor themselves)."""
    audit_lock(project.organisation_id)
    current = project_list(actor=actor).filter(pk=project.pk).first()
    if current is None:
        raise NotFound("Annotation project not found.")
    project_require_open(project=current)
    return current


@transaction.atomic
def label_record(*, actor: Any, project: AnnotationProject, item: AnnotationItem, value: str) -> Label:
    """A person's label. On a flagged item (the review queue) it is a review and settles the item;
    otherwise it is the actor's label of the item (once per person; overlap items take two people).
    Reviews are the managers'; a manager who labelled the item cannot settle its disagreement."""
    project = _open_project(actor=actor, project=project)
    if not isinstance(value, str) or value not in project.labels:
        raise ValidationFailed(
            "That label is not in the project's label set.",
            code="label_not_in_set",
            fields={"label": ["Not in the label set."]},
        )
    item = _locked_item(item)
    if item.project_id != project.pk:
        raise ValidationFailed("The item is not in this project.", code="item_not_in_project")
    if item.flagged:
        project_require_manager(actor=actor, project=project)
        if item.flag_reason == FlagReason.DISAGREEMENT and item.label_set.filter(annotator=actor).exists():
            raise Conflict(
                "Someone who did not label this item settles the disagreement.", code="own_disagreement"
            )
        source = LabelSource.REVIEWED
    else:
        if item.label_set.filter(annotator=actor, source=LabelSource.HUMAN).exists():
            raise Conflict("You have labelled this item already; undo to change it.", code="item_complete")
        needed = 2 if item.needs_two else 1
        if item.final_source in (LabelSource.MODEL, LabelSource.REVIEWED) or item.human_count >= needed:
            raise Conflict("This item has all the labels it needs.", code="item_complete")
        source = LabelSource.HUMAN
    label = Label.objects.create(item=item, annotator=actor, value=value, source=source)
    ItemSkip.objects.filter(item=item, annotator=actor).delete()
    _refresh_final(item)
    audit_record(
        actor=actor,
        action="annotation_label.recorded",
        organisation=project.organisation,
        target=label,
        extra={"project": project.pk, "item": item.pk, "source": source, OWNER_ONLY: {"label": value}},
    )
    return label


@transaction.atomic
def item_skip(*, actor: Any, project: AnnotationProject, item: AnnotationItem) -> None:
    project = _open_project(actor=actor, project=project)
    if item.project_id != project.pk:
        raise ValidationFailed("The item is not in this project.", code="item_not_in_project")
    _, created = ItemSkip.objects.get_or_create(item=item, annotator=actor)
    if not created:
        return
    audit_record(
        actor=actor,
        action="annotation_item.skipped",
        organisation=project.organisation,
        target=item,
        extra={"project": project.pk},
    )


@transaction.atomic
def label_undo(*, actor: Any, project: AnnotationProject) -> Label:
    """Takes back the actor's latest label in this project (a person's or a review)."""
    audit_lock(project.organisation_id)  # _open_project takes it too; here for the lock-order check
    project = _open_project(actor=actor, project=project)
    label = (
        Label.objects.select_for_update(no_key=True, of=("self",))
        .filter(item__project=project, annotator=actor, source__in=[LabelSource.HUMAN, LabelSource.REVIEWED])
        .order_by("-created_at", "-pk")
        .first()
    )
    if label is None:
        raise Conflict("You have no label to undo in this project.", code="nothing_to_undo")
    item = _locked_item(label.item)
    undone = Label(pk=label.pk, item=item, annotator=actor, value=label.value, source=label.source)
    label.delete()
    if undone.source == LabelSource.REVIEWED:  # back to the review queue (as a disagreement if it was one)
        item.flagged, item.flag_reason = True, FlagReason.LABEL_ERROR
    _refresh_final(item)
    audit_record(
        actor=actor,
        action="annotation_label.undone",
        organisation=project.organisation,
        target=item,
        extra={
            "project": project.pk,
            "label": undone.pk,
            "source": undone.source,
            OWNER_ONLY: {"label": undone.value},
        },
    )
    return undone


# -- model runs and automatic labels ------------------------------------------------------------------


def _trainable_counts(project: AnnotationProject) -> dict[str, int]:
    rows = AnnotationItem.objects.filter(
        project=project, final_source__in=[LabelSource.HUMAN, LabelSource.REVIEWED]
    ).values_list("final_label", flat=True)
    counts: dict[str, int] = {}
    for value in rows:
        counts[value] = counts.get(value, 0) + 1
    return counts


@transaction.atomic
def model_run_start(
    *,
    actor: Any,
    project: AnnotationProject,
    kind: str = RunKind.PROPOSE,
    federated_model_id: int | None = None,
) -> ModelRun:
    """Queues a model run. `propose` needs people's labels of two labels at least, unless it proposes
    with a federated model of the consortium for the same label set (`federated_model_id`, one of
    `federated_models_usable`), which needs none; `review` needs labels (people's or the model's) of
    every label, so that each class has examples to compare."""
    audit_lock(project.organisation_id)  # _open_project takes it too; here for the lock-order check
    project = _open_project(actor=actor, project=project)
    project_require_manager(actor=actor, project=project)
    if kind not in RunKind.values:
        raise ValidationFailed(f"kind must be one of {', '.join(RunKind.values)}.", code="invalid_kind")
    project = AnnotationProject.objects.select_for_update(no_key=True).get(pk=project.pk)
    federated = None
    if federated_model_id is not None:
        if kind != RunKind.PROPOSE:
            raise ValidationFailed("Only a propose run uses a federated model.", code="invalid_kind")
        usable = {model.pk: model for model in federated_models_usable(actor=actor, project=project)}
        federated = usable.get(federated_model_id)
        if federated is None:
            raise NotFound("No federated model of that id for this label set.", code="model_not_found")
    counts = _trainable_counts(project)
    if kind == RunKind.PROPOSE and federated is None and (sum(counts.values()) < 2 or len(counts) < 2):
        raise Conflict(
            "The model needs people's labels of at least two different labels.", code="too_few_labels"
        )
    if kind == RunKind.REVIEW:
        labelled = AnnotationItem.objects.filter(project=project).exclude(final_label="")
        present = set(labelled.values_list("final_label", flat=True).distinct())
        if labelled.count() < 10 or present != set(project.labels):
            raise Conflict(
                "Finding label errors needs at least 10 labelled items and an example of every label.",
                code="too_few_labels",
            )
    if project.model_runs.filter(status__in=RUN_ACTIVE).exists():
        raise Conflict("A model run of this project is in progress.", code="run_in_progress")
    run = ModelRun.objects.create(
        project=project,
        kind=kind,
        federated_model=federated,
        created_by=actor,
        target_precision=project.target_precision,
        confidence_level=project.confidence_level,
    )
    audit_record(
        actor=actor,
        action="annotation_run.queued",
        organisation=project.organisation,
        target=run,
        extra={"project": project.pk, "kind": kind, "federated_model": federated_model_id},
    )
    enqueue_on_commit("annotation.model_run", run.pk, robust=True)
    return run


@transaction.atomic
def automatic_apply(*, actor: Any, project: AnnotationProject, run: ModelRun) -> int:
    """Labels, by the model, every item no person has labelled whose confidence in `run` reaches the
    threshold `run` calibrated for the project's target precision. Returns how many."""
    audit_lock(project.organisation_id)  # _open_project takes it too; here for the lock-order check
    project = _open_project(actor=actor, project=project)
    project_require_manager(actor=actor, project=project)
    if run.project_id != project.pk or run.kind != RunKind.PROPOSE or run.status != RunStatus.SUCCEEDED:
        raise Conflict("Apply a finished proposal run of this project.", code="run_not_usable")
    if run.threshold is None:
        raise Conflict(
            "That run found no threshold that reaches the target precision (set a target, label more "
            "calibration items, then run the model again).",
            code="no_threshold",
        )
    candidates = list(
        AnnotationItem.objects.select_for_update(no_key=True)
        .filter(project=project, proposal_run=run, human_count=0, confidence__gte=run.threshold)
        .exclude(final_source__in=[LabelSource.MODEL, LabelSource.REVIEWED])
        .exclude(proposed_label="")
    )
    Label.objects.bulk_create(
        [
            Label(
                item=item,
                value=item.proposed_label,
                source=LabelSource.MODEL,
                model_run=run,
                confidence=item.confidence,
            )
            for item in candidates
        ]
    )
    for item in candidates:
        item.final_label, item.final_source = item.proposed_label, LabelSource.MODEL
    bulk_set(AnnotationItem, candidates, ["final_label", "final_source"])
    audit_record(
        actor=actor,
        action="annotation_run.applied",
        organisation=project.organisation,
        target=run,
        extra={
            "project": project.pk,
            "target_precision": run.target_precision,
            OWNER_ONLY: {
                "labelled": len(candidates),
                "threshold": run.threshold,
                "precision_lower_bound": run.precision_lower_bound,
            },
        },
    )
    return len(candidates)


# -- export -------------------------------------------------------------------------------------------


def export_columns(version_schema: dict, label_column: str, labels: list[str]) -> list[dict[str, Any]]:
    """The exported dataset's columns: the version's, then the label and its provenance."""
    return [
        *version_schema["columns"],
        {"name": label_column, "type": "categorical", "nullable": False, "categories": list(labels)},
        {
            "name": f"{label_column}_source",
            "type": "categorical",
            "nullable": False,
            "categories": list(LabelSource.values),
        },
        {"name": f"{label_column}_confidence", "type": "float", "nullable": True, "lower": 0.0, "upper": 1.0},
        {
            "name": f"{label_column}_model_run",
            "type": "integer",
            "nullable": True,
            "lower": 0,
            "upper": 2_147_483_647,
        },
    ]


def _label_column(version: DatasetVersion, wanted: str) -> str:
    taken = {column["name"] for column in version.schema["columns"]}
    taken |= {name.lower() for name in taken}
    if wanted:
        if any(
            f"{wanted}{suffix}".lower() in taken for suffix in ("", "_source", "_confidence", "_model_run")
        ):
            raise ValidationFailed(
                "The dataset has a column of that name.",
                code="label_column_taken",
                fields={"label_column": ["Taken."]},
            )
        return wanted
    for candidate in ("label", "annotation_label", "annotation_label_2"):
        if not any(
            f"{candidate}{suffix}" in taken for suffix in ("", "_source", "_confidence", "_model_run")
        ):
            return candidate
    raise ValidationFailed("Name the label column.", code="label_column_taken")


@transaction.atomic
def export_start(
    *,
    actor: Any,
    project: AnnotationProject,
    name: str,
    slug: str = "",
    label_column: str = "",
    drop_duplicates: bool = False,
    drop_conflicts: bool = True,
    include_model_labels: bool = True,
) -> AnnotationExport:
    """Registers the new dataset (the version's columns plus the label and its provenance, schema
    confirmed) and queues the worker that writes the labelled rows as its first version."""
    audit_lock(project.organisation_id)
    project_require_manager(actor=actor, project=project)
    if project.status not in (ProjectStatus.READY, ProjectStatus.ARCHIVED):
        raise Conflict("The project's items are not prepared.", code="project_not_ready")
    if not export_items(
        project=project,
        drop_duplicates=bool(drop_duplicates),
        drop_conflicts=bool(drop_conflicts),
        include_model_labels=bool(include_model_labels),
    ):
        raise Conflict("No labelled row is left to export.", code="nothing_to_export")
    if project.exports.filter(status__in=[ExportStatus.QUEUED, ExportStatus.RUNNING]).exists():
        raise Conflict("An export of this project is in progress.", code="export_in_progress")
    version = project.version
    column = _label_column(version, label_column)
    if not COLUMN_NAME.match(column):
        raise ValidationFailed("Not a valid column name.", code="label_column_invalid")
    schema = {**version.schema, "columns": export_columns(version.schema, column, project.labels)}
    name = clean_name(name, field="name", max_length=120)
    dataset = dataset_register(
        actor=actor,
        organisation=project.organisation,
        name=name,
        slug=slug or slugify(name)[:50].strip("-") or f"{project.slug}-labelled",
        description=f"Labels of annotation project “{project.name}” on {project.dataset.name} v{version.number}.",
        schema=schema,
    )
    export = AnnotationExport.objects.create(
        project=project,
        dataset=dataset,
        drop_duplicates=bool(drop_duplicates),
        drop_conflicts=bool(drop_conflicts),
        include_model_labels=bool(include_model_labels),
        created_by=actor,
    )
    audit_record(
        actor=actor,
        action="annotation_export.queued",
        organisation=project.organisation,
        target=export,
        extra={
            "project": project.pk,
            "dataset": dataset.slug,
            "label_column": column,
            "drop_duplicates": export.drop_duplicates,
            "drop_conflicts": export.drop_conflicts,
            "include_model_labels": export.include_model_labels,
        },
    )
    enqueue_on_commit("annotation.export", export.pk, robust=True)
    return export


# -- liveness -----------------------------------------------------------------------------------------


def annotation_recover_stuck() -> dict[str, int]:
    """Beat's sweep: a project left preparing, or a run or export left queued or running, by a lost
    task or worker is queued again (its `attempts` raised, so a late first attempt no longer holds
    it), and failed (`*_stuck`) once it was queued ANNOTATION_MAX_ATTEMPTS times again."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.ANNOTATION_STUCK_SECONDS)
    limit = settings.ANNOTATION_MAX_ATTEMPTS
    counts = {"requeued": 0, "failed": 0}
    stuck_projects = Q(status=ProjectStatus.PREPARING, enqueued_at__lt=stale)
    stuck_work = Q(status="queued", enqueued_at__lt=stale) | Q(status="running", started_at__lt=stale)
    organisations = {
        *AnnotationProject.objects.filter(stuck_projects).values_list("organisation_id", flat=True),
        *ModelRun.objects.filter(stuck_work).values_list("project__organisation_id", flat=True),
        *AnnotationExport.objects.filter(stuck_work).values_list("project__organisation_id", flat=True),
    }
    if not organisations:
        return counts
    with transaction.atomic():
        audit_lock(*organisations)  # first: the lock order of every write (see audit_lock)
        projects = AnnotationProject.objects.select_for_update(no_key=True, skip_locked=True).filter(
            stuck_projects, organisation_id__in=organisations
        )
        for project in projects:
            if project.attempts >= limit:
                project.status, project.error_code = ProjectStatus.FAILED, "preparation_stuck"
                project.save(update_fields=["status", "error_code"])
                _stuck_event(project, project, "annotation_project.failed", "preparation_stuck")
                counts["failed"] += 1
            else:
                project.attempts, project.enqueued_at = project.attempts + 1, now
                project.save(update_fields=["attempts", "enqueued_at"])
                enqueue_on_commit("annotation.prepare", project.pk, robust=True)
                counts["requeued"] += 1
        for model, code in ((ModelRun, "run_stuck"), (AnnotationExport, "export_stuck")):
            stuck = model.objects.select_for_update(no_key=True, skip_locked=True).filter(
                stuck_work, project__organisation_id__in=organisations
            )
            for record in stuck:
                if record.attempts >= limit:
                    record.status, record.error_code, record.finished_at = "failed", code, now
                    record.save(update_fields=["status", "error_code", "finished_at"])
                    _stuck_event(record.project, record, f"{model._meta.model_name}.failed", code)
                    counts["failed"] += 1
                    continue
                record.status, record.started_at = "queued", None
                record.attempts, record.enqueued_at = record.attempts + 1, now
                record.save(update_fields=["status", "started_at", "attempts", "enqueued_at"])
                if model is ModelRun:
                    enqueue_on_commit("annotation.model_run", record.pk, robust=True)
                else:
                    enqueue_on_commit("annotation.export", record.pk, robust=True)
                counts["requeued"] += 1
    if counts["requeued"] or counts["failed"]:
        logger.warning("Recovered stuck annotation work: %s", counts)
    return counts


def _stuck_event(project: AnnotationProject, target: Any, action: str, code: str) -> None:
    audit_record(
        actor=None, action=action, organisation=project.organisation, target=target, extra={"code": code}
    )


__all__ = [
    "annotation_recover_stuck",
    "automatic_apply",
    "export_start",
    "item_skip",
    "label_record",
    "label_undo",
    "model_run_start",
    "project_archive",
    "project_create",
    "project_update",
]
