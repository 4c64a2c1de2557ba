"""Who may read what of an annotation project, decided here once for the API and the portal.

Managers are the owning organisation's admins and stewards (the dataset capability); annotators are
the members a manager listed on the project. Everyone else — other organisations, operators, members
not listed — is told the project does not exist: its labels are derived from the organisation's rows.
"""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

from celery.exceptions import TimeoutError as CeleryTimeout
from django.db.models import Count, F, Q, QuerySet

from clearinghouse.core.enqueue import enqueue
from clearinghouse.core.errors import ApplicationError, NotFound, PermissionDenied
from clearinghouse.crypto.errors import IntegrityError
from clearinghouse.crypto.sealed import OneOffRecipient
from clearinghouse.organisations.models import OrganisationStatus
from clearinghouse.organisations.roles import MANAGE_DATASETS, ROLE_CAPABILITIES
from clearinghouse.organisations.selectors import membership_active
from federation.models import ModelArtifact
from federation.selectors import published_models

from .models import (
    AnnotationExport,
    AnnotationItem,
    AnnotationProject,
    ItemSkip,
    Label,
    LabelSource,
    ModelRun,
    ProjectStatus,
)

logger = logging.getLogger(__name__)

#: The most texts one request may ask the workers for.
TEXTS_BATCH_MAX = 50


def texts_context(project_id: int) -> bytes:
    """What a sealed batch of texts is bound to: it opens only as this project's."""
    return f"annotation-texts:{project_id}".encode()


def _manager_of(actor: Any, organisation_id: int) -> bool:
    membership = membership_active(user=actor)
    return (
        membership is not None
        and membership.organisation_id == organisation_id
        and MANAGE_DATASETS in ROLE_CAPABILITIES[membership.role]
    )


def project_list(*, actor: Any) -> QuerySet[AnnotationProject]:
    """The projects `actor` may see: all of their organisation's for a manager, the ones they are
    listed on for anyone else of it; none for operators or people outside the organisation."""
    if not getattr(actor, "is_authenticated", False) or getattr(actor, "is_operator", False):
        return AnnotationProject.objects.none()
    membership = membership_active(user=actor)
    if membership is None or membership.organisation.status != OrganisationStatus.APPROVED:
        return AnnotationProject.objects.none()
    projects = AnnotationProject.objects.filter(organisation_id=membership.organisation_id)
    if MANAGE_DATASETS not in ROLE_CAPABILITIES[membership.role]:
        projects = projects.filter(annotators=actor)
    return (
        projects.select_related("organisation", "dataset__organisation", "version", "created_by")
        .prefetch_related("annotators")
        .order_by("-created_at", "-pk")
    )


def project_get(*, actor: Any, project_id: int) -> AnnotationProject:
    project = project_list(actor=actor).filter(pk=project_id).first()
    if project is None:
        raise NotFound("Annotation project not found.")
    return project


def project_is_manager(*, actor: Any, project: AnnotationProject) -> bool:
    return _manager_of(actor, project.organisation_id)


def project_require_manager(*, actor: Any, project: AnnotationProject) -> None:
    """Managers only; an annotator (who can see the project) is told why not."""
    if not project_is_manager(actor=actor, project=project):
        raise PermissionDenied(
            "Only the organisation's admins and stewards manage a project.", code="role_forbidden"
        )


def project_require_open(*, project: AnnotationProject) -> None:
    """Labels and runs need a project whose items are prepared and which is not archived."""
    from clearinghouse.core.errors import Conflict

    if project.status != ProjectStatus.READY:
        raise Conflict(f"The project is {project.get_status_display().lower()}.", code="project_not_ready")


def kappa(*, project: AnnotationProject) -> float | None:
    """Cohen's κ between the first and second person to label each overlap item (None until two
    items have two labels, or when it is undefined: both people always gave one and the same label)."""
    pairs: dict[int, list[str]] = {}
    human = Label.objects.filter(item__project=project, item__needs_two=True, source=LabelSource.HUMAN)
    for item_id, value in human.order_by("item_id", "created_at", "pk").values_list("item_id", "value"):
        pairs.setdefault(item_id, []).append(value)
    first = [values[0] for values in pairs.values() if len(values) >= 2]
    second = [values[1] for values in pairs.values() if len(values) >= 2]
    if len(first) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    with _quiet_numpy():
        agreement = float(cohen_kappa_score(first, second))
    return None if agreement != agreement else round(agreement, 4)  # NaN: every label the same on both sides


def _quiet_numpy():
    import numpy as np

    return np.errstate(divide="ignore", invalid="ignore")


def project_progress(*, project: AnnotationProject) -> dict[str, Any]:
    items = AnnotationItem.objects.filter(project=project)
    counts = items.aggregate(
        done=Count("pk", filter=~Q(final_label="")),
        auto=Count("pk", filter=Q(final_source=LabelSource.MODEL)),
        reviewed=Count("pk", filter=Q(final_source=LabelSource.REVIEWED)),
        overlap_items=Count("pk", filter=Q(needs_two=True)),
        overlap_done=Count("pk", filter=Q(needs_two=True, human_count__gte=2)),
        flagged=Count("pk", filter=Q(flagged=True)),
        proposed=Count("pk", filter=~Q(proposed_label="")),
    )
    per_label = dict(
        items.exclude(final_label="")
        .values_list("final_label")
        .annotate(n=Count("pk"))
        .values_list("final_label", "n")
    )
    total = project.item_count
    return {
        "total": total,
        "done": counts["done"],
        "auto": counts["auto"],
        "reviewed": counts["reviewed"],
        "remaining": max(total - counts["done"], 0),
        "human_labels": Label.objects.filter(item__project=project, source=LabelSource.HUMAN).count(),
        "overlap_items": counts["overlap_items"],
        "overlap_done": counts["overlap_done"],
        "kappa": kappa(project=project),
        "per_label": {label: per_label.get(label, 0) for label in project.labels},
        "flagged": counts["flagged"],
        "proposed": counts["proposed"],
    }


def item_get(*, actor: Any, project: AnnotationProject, item_id: int) -> AnnotationItem:
    """An item of a project the actor may see (`project` comes from `project_get`)."""
    item = AnnotationItem.objects.filter(project=project, pk=item_id).first()
    if item is None:
        raise NotFound("Item not found.")
    return item


def items_get(*, actor: Any, project: AnnotationProject, item_ids: list[int]) -> list[AnnotationItem]:
    """The project's items among `item_ids`, in that order (ids of other projects are left out)."""
    found = AnnotationItem.objects.filter(project=project, pk__in=item_ids).in_bulk()
    return [found[item_id] for item_id in item_ids if item_id in found]


def _open_items(project: AnnotationProject, actor: Any) -> QuerySet[AnnotationItem]:
    """Items still needing a person's label that `actor` has not labelled: not labelled by the model,
    with fewer human labels than they need (two for overlap items)."""
    return (
        AnnotationItem.objects.filter(project=project, flagged=False)
        .exclude(final_source__in=[LabelSource.MODEL, LabelSource.REVIEWED])
        .filter(Q(human_count=0) | Q(needs_two=True, human_count=1))
        .exclude(label_set__annotator=actor, label_set__source=LabelSource.HUMAN)
    )


def queue_next(*, actor: Any, project: AnnotationProject, review: bool = False) -> AnnotationItem | None:
    """The item to show `actor` next.

    Review queue: the flagged items (likely label errors, disagreements), least plausible first.
    Labelling queue: an overlap item someone else started comes first (it gives agreement sooner);
    then the random calibration sample and the model's least certain items take turns (so the
    automatic threshold is calibrated on a random sample, not only on hard items); before any model,
    a seeded random order. Items the actor skipped come after all others."""
    if project.status != ProjectStatus.READY:
        return None
    if review:  # the managers' queue
        if not project_is_manager(actor=actor, project=project):
            return None
        return (
            AnnotationItem.objects.filter(project=project, flagged=True)
            .order_by(F("flag_score").asc(nulls_first=True), "shuffle_key", "pk")
            .first()
        )
    skipped = ItemSkip.objects.filter(annotator=actor, item__project=project).values("item_id")
    open_items = _open_items(project, actor)
    for candidates in (open_items.exclude(pk__in=skipped), open_items.filter(pk__in=skipped)):
        second = candidates.filter(human_count=1).order_by("shuffle_key", "pk").first()
        if second is not None:
            return second
        calibration = candidates.filter(calibration=True).order_by("shuffle_key", "pk").first()
        uncertain = (
            candidates.filter(calibration=False)
            .order_by(F("uncertainty").asc(nulls_last=True), "shuffle_key", "pk")
            .first()
        )
        if calibration is None or uncertain is None:
            pick = calibration or uncertain
        else:
            done = AnnotationItem.objects.filter(project=project, human_count__gte=1).aggregate(
                calibration_done=Count("pk", filter=Q(calibration=True)),
                other_done=Count("pk", filter=Q(calibration=False)),
            )
            pick = calibration if done["calibration_done"] <= done["other_done"] else uncertain
        if pick is not None:
            return pick
    return None


def item_human_labels(*, item: AnnotationItem) -> list[str]:
    return list(
        item.label_set.filter(source__in=[LabelSource.HUMAN, LabelSource.REVIEWED])
        .order_by("created_at", "pk")
        .values_list("value", flat=True)
    )


def item_texts(*, project: AnnotationProject, items: list[AnnotationItem], timeout: float) -> dict[int, str]:
    """The texts of `items` (at most TEXTS_BATCH_MAX), from a worker: the web process cannot decrypt
    the dataset. The worker seals them to a key pair drawn for this call alone, so the broker and the
    result store carry them only sealed. 503 `texts_unavailable` when no worker answers in time."""
    if not items:
        return {}
    if len(items) > TEXTS_BATCH_MAX:
        from clearinghouse.core.errors import ValidationFailed

        raise ValidationFailed(f"At most {TEXTS_BATCH_MAX} items at once.", code="too_many_items")
    recipient = OneOffRecipient()
    public = base64.b64encode(recipient.public).decode()
    try:
        answer = enqueue("annotation.item_texts", project.pk, [item.pk for item in items], public).get(
            timeout=max(timeout, 1.0), interval=0.02
        )
        texts = json.loads(recipient.open(base64.b64decode(answer), context=texts_context(project.pk)))
    except (CeleryTimeout, IntegrityError, ValueError, TypeError) as exc:
        logger.warning("annotation.item_texts not answered: %s", exc.__class__.__name__)
        raise _texts_unavailable() from None
    except Exception as exc:  # noqa: BLE001 - a broker or result store that is down
        logger.error("annotation.item_texts not answered: %s", exc.__class__.__name__)
        raise _texts_unavailable() from None
    return {int(key): value for key, value in texts.items()}


def _texts_unavailable() -> ApplicationError:
    error = ApplicationError(
        "The workers did not return the texts in time; try again.", code="texts_unavailable"
    )
    error.status_code = 503
    return error


def model_run_list(*, actor: Any, project: AnnotationProject) -> QuerySet[ModelRun]:
    return project.model_runs.order_by("-created_at", "-pk")


def model_run_get(*, actor: Any, project: AnnotationProject, run_id: int) -> ModelRun:
    run = project.model_runs.filter(pk=run_id).first()
    if run is None:
        raise NotFound("Model run not found.")
    return run


def model_run_latest(*, project: AnnotationProject, kind: str = "propose") -> ModelRun | None:
    return project.model_runs.filter(kind=kind, status="succeeded").order_by("-finished_at", "-pk").first()


def federated_models_usable(*, actor: Any, project: AnnotationProject) -> list[ModelArtifact]:
    """The consortium's federated models this project may propose with: the ones `actor` may
    download (federation's rule: published to every member, or of a job their organisation took part
    in), trained for the project's label set (whether a model's head fits the project's encoder is the
    run's to find: `model_incompatible`)."""
    from federation.models import ParticipantStatus
    from federation.selectors import job_receives_model

    candidates = (
        ModelArtifact.objects.filter(
            Q(published_at__isnull=False)
            | Q(
                job__participants__organisation_id=project.organisation_id,
                job__participants__status=ParticipantStatus.ACCEPTED,
            )
        )
        .select_related("job")
        .distinct()
        .order_by("-created_at", "-pk")
    )
    published = {model.pk for model in published_models(actor=actor)}
    return [
        artifact
        for artifact in candidates
        if sorted(artifact.job.labels or []) == sorted(project.labels)
        and (artifact.pk in published or job_receives_model(actor=actor, job=artifact.job))
    ]


def export_items(
    *, project: AnnotationProject, drop_duplicates: bool, drop_conflicts: bool, include_model_labels: bool
) -> list[AnnotationItem]:
    """The items an export writes, by row: those with a final label of an exported source; without the
    duplicate groups whose exported labels conflict (`drop_conflicts`); one item per duplicate group
    (`drop_duplicates`, the first row)."""
    sources = [LabelSource.HUMAN, LabelSource.REVIEWED] + (
        [LabelSource.MODEL] if include_model_labels else []
    )
    items = list(
        AnnotationItem.objects.filter(project=project, final_source__in=sources)
        .exclude(final_label="")
        .order_by("row")
    )
    if drop_conflicts:
        labels_of: dict[int, set[str]] = {}
        for item in items:
            if item.duplicate_group is not None:
                labels_of.setdefault(item.duplicate_group, set()).add(item.final_label)
        conflicting = {group for group, labels in labels_of.items() if len(labels) > 1}
        items = [item for item in items if item.duplicate_group not in conflicting]
    if drop_duplicates:
        seen: set[int] = set()
        kept = []
        for item in items:
            if item.duplicate_group is None or item.duplicate_group not in seen:
                kept.append(item)
                if item.duplicate_group is not None:
                    seen.add(item.duplicate_group)
        items = kept
    return items


def duplicate_groups(*, actor: Any, project: AnnotationProject) -> list[dict[str, Any]]:
    """Each group of exact or near-duplicate items: its items, their labels, and whether the labels
    conflict (two different final labels in one group)."""
    groups: dict[int, dict[str, Any]] = {}
    rows = (
        AnnotationItem.objects.filter(project=project, duplicate_group__isnull=False)
        .order_by("duplicate_group", "row")
        .values_list("duplicate_group", "duplicate_kind", "pk", "row", "final_label")
    )
    for group, kind, item_id, row, label in rows:
        assert group is not None  # filtered above
        entry = groups.setdefault(group, {"group": group, "kind": "exact", "items": []})
        if kind == "near":
            entry["kind"] = "near"
        entry["items"].append({"id": item_id, "row": row, "label": label})
    for entry in groups.values():
        entry["conflicting"] = len({i["label"] for i in entry["items"] if i["label"]}) > 1
    return list(groups.values())


def review_list(*, actor: Any, project: AnnotationProject) -> QuerySet[AnnotationItem]:
    return AnnotationItem.objects.filter(project=project, flagged=True).order_by(
        F("flag_score").asc(nulls_first=True), "pk"
    )


def export_list(*, actor: Any, project: AnnotationProject) -> QuerySet[AnnotationExport]:
    return project.exports.select_related("dataset", "dataset__organisation", "version").order_by(
        "-created_at", "-pk"
    )


def export_get(*, actor: Any, project: AnnotationProject, export_id: int) -> AnnotationExport:
    export = export_list(actor=actor, project=project).filter(pk=export_id).first()
    if export is None:
        raise NotFound("Export not found.")
    return export
