"""What annotation workers do with the texts: the only code of this app that decrypts.

Each function is called by a task (`tasks.py`) with ids; it reads the project's dataset version in
memory (`datasets.storage`), does its work with the pure core (`training.annotation`) and writes
back only what the models hold: items, proposals, flags, run figures. Texts leave a worker only
sealed to the requesting page's one-off key (`item_texts_sealed`) or as a new encrypted dataset
version (`export_execute`).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import threading
import time
import uuid
from typing import Any, BinaryIO, cast

import numpy as np
import polars as pl
from cachetools import LRUCache
from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction
from django.utils import timezone

from clearinghouse.audit.services import OWNER_ONLY, audit_lock, audit_record
from clearinghouse.core.db import bulk_set
from clearinghouse.core.keys import keyring
from clearinghouse.crypto.envelope import StreamEncryptor, decrypt_to_bytes
from clearinghouse.crypto.sealed import seal
from clearinghouse.datasets import storage
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_version_import
from training.annotation.dedup import find_duplicates
from training.annotation.errors import AnnotationError
from training.annotation.proposer import fit, out_of_sample_probabilities

from .models import (
    AnnotationExport,
    AnnotationItem,
    AnnotationProject,
    ExportStatus,
    FlagReason,
    Label,
    LabelSource,
    ModelRun,
    ProjectStatus,
    RunKind,
    RunStatus,
)
from .selectors import export_items, texts_context

logger = logging.getLogger(__name__)

# Decrypted text columns by (version, column), in this worker's memory only: a page's texts then cost
# a lookup, not a decryption. Few entries: each holds a whole column.
_texts_cache: LRUCache[tuple[int, str], list[str | None]] = LRUCache(maxsize=4)
_texts_lock = threading.Lock()


def _version_table(version: DatasetVersion, columns: list[str] | None = None) -> pl.DataFrame:
    """The version's stored table, decrypted: all its columns, or only `columns`."""
    dataset = version.dataset
    return storage.read_table(
        version.data_path,
        storage.data_context(
            organisation_id=dataset.organisation_id, dataset_id=dataset.pk, number=version.number
        ),
        columns=columns,
    )


def version_texts(version: DatasetVersion, column: str) -> list[str | None]:
    key = (version.pk, column)
    with _texts_lock:
        hit = _texts_cache.get(key)
    if hit is not None:
        return hit
    texts = _version_table(version, [column]).get_column(column).cast(pl.Utf8).to_list()
    with _texts_lock:
        _texts_cache[key] = texts
    return texts


# -- preparation --------------------------------------------------------------------------------------


def _sample(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    chosen = np.zeros(n, dtype=bool)
    chosen[rng.permutation(n)[: max(0, min(n, size))]] = True
    return chosen


def _project_owner(project_id: int) -> int | None:
    """The organisation whose audit stream a project's events go to (None: the project is gone)."""
    return AnnotationProject.objects.filter(pk=project_id).values_list("organisation_id", flat=True).first()


def _run_owner(run_id: int) -> int | None:
    return ModelRun.objects.filter(pk=run_id).values_list("project__organisation_id", flat=True).first()


def _export_owner(export_id: int) -> int | None:
    return (
        AnnotationExport.objects.filter(pk=export_id)
        .values_list("project__organisation_id", flat=True)
        .first()
    )


def project_prepare(*, project_id: int) -> str:
    """The project's items: one per non-empty text of the version, each with its random order key,
    whether it is in the calibration and the overlap samples, and its duplicate group."""
    with transaction.atomic():
        audit_lock(_project_owner(project_id))  # the lock order: the audit head before any row
        project = AnnotationProject.objects.select_for_update(no_key=True).filter(pk=project_id).first()
        if project is None or project.status != ProjectStatus.PREPARING:
            return project.status if project else "gone"
        # the sweeper measures a run's staleness from its start, not from when it was queued
        project.enqueued_at = timezone.now()
        project.save(update_fields=["enqueued_at"])
    attempt = project.attempts
    try:
        texts = version_texts(project.version, project.text_column)
        rows = [row for row, text in enumerate(texts) if isinstance(text, str) and text.strip()]
        if not rows:
            raise AnnotationError("no_texts", "the text column holds no text")
        kept = [texts[row] or "" for row in rows]
        report = find_duplicates(kept)
    except AnnotationError as exc:
        return _project_failed(project_id, exc.code)
    except Exception as exc:  # noqa: BLE001 - its message may quote a cell: the class name only
        logger.error("annotation project %s: preparation failed (%s)", project_id, exc.__class__.__name__)
        return _project_failed(project_id, "preparation_error")
    n = len(rows)
    rng = np.random.default_rng(project_id)
    shuffle = rng.permutation(n)
    calibration = _sample(rng, n, settings.ANNOTATION_CALIBRATION_ITEMS)
    needs_two = _sample(rng, n, round(project.overlap * n))
    exact = {i for pair in report.exact_pairs for i in pair}
    group_of: dict[int, int] = {}
    for number, members in enumerate(report.groups, start=1):
        for index in members:
            group_of[index] = number
    items = [
        AnnotationItem(
            project_id=project_id,
            row=row,
            shuffle_key=int(shuffle[index]),
            calibration=bool(calibration[index]),
            needs_two=bool(needs_two[index]),
            duplicate_group=group_of.get(index),
            duplicate_kind=("exact" if index in exact else "near") if index in group_of else "",
        )
        for index, row in enumerate(rows)
    ]
    summary = {
        "exact_items": len(exact),
        "near_items": sum(1 for index in group_of if index not in exact),
        "groups": len(report.groups),
    }
    with transaction.atomic():
        audit_lock(_project_owner(project_id))
        project = AnnotationProject.objects.select_for_update(no_key=True).get(pk=project_id)
        if project.status != ProjectStatus.PREPARING or project.attempts != attempt:
            return project.status  # prepared by a newer attempt (the sweeper's), or failed meanwhile
        AnnotationItem.objects.filter(project=project).delete()
        AnnotationItem.objects.bulk_create(items, batch_size=2000)
        project.status, project.item_count, project.duplicate_summary = ProjectStatus.READY, n, summary
        project.save(update_fields=["status", "item_count", "duplicate_summary"])
        audit_record(
            actor=None,
            action="annotation_project.prepared",
            organisation=project.organisation,
            target=project,
            extra={OWNER_ONLY: {"items": n, **summary}},
        )
    return ProjectStatus.READY


def _project_failed(project_id: int, code: str) -> str:
    with transaction.atomic():
        audit_lock(_project_owner(project_id))
        project = AnnotationProject.objects.select_for_update(no_key=True).get(pk=project_id)
        if project.status == ProjectStatus.PREPARING:
            project.status, project.error_code = ProjectStatus.FAILED, code
            project.save(update_fields=["status", "error_code"])
            audit_record(
                actor=None,
                action="annotation_project.failed",
                organisation=project.organisation,
                target=project,
                extra={"code": code},
            )
    return ProjectStatus.FAILED


# -- texts for a page ---------------------------------------------------------------------------------


def item_texts_sealed(*, project_id: int, item_ids: list[int], public_key: str) -> str:
    """The texts of the project's `item_ids`, as JSON {item id: text}, sealed to `public_key` (the
    requesting page's one-off key) and base64-encoded. Ids not in the project are left out."""
    project = AnnotationProject.objects.select_related("version__dataset").get(pk=project_id)
    rows = dict(
        AnnotationItem.objects.filter(project=project, pk__in=item_ids[:100]).values_list("pk", "row")
    )
    texts = version_texts(project.version, project.text_column)
    payload = json.dumps({str(item_id): texts[row] or "" for item_id, row in rows.items()}).encode()
    return base64.b64encode(
        seal(base64.b64decode(public_key), payload, context=texts_context(project_id))
    ).decode()


# -- model runs ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=2)
def _embedder(base_model: str) -> Any:
    from training.annotation.embed import load_embedder

    return load_embedder(base_model)


def _embeddings_context(project: AnnotationProject) -> dict[str, Any]:
    return {
        "purpose": "annotation-embeddings",
        "organisation": project.organisation_id,
        "project": project.pk,
    }


def _embeddings(project: AnnotationProject, rows: list[int]) -> tuple[np.ndarray, float]:
    """The items' sentence embeddings (in `rows` order) and the seconds spent computing them (0 when
    read back). Computed once per project and encoder, stored encrypted, reused by later runs."""
    model = settings.ANNOTATION_BASE_MODEL
    if (
        project.embeddings_path
        and project.embeddings_model == model
        and default_storage.exists(project.embeddings_path)
    ):
        with default_storage.open(project.embeddings_path, "rb") as src:
            data = decrypt_to_bytes(
                cast(BinaryIO, src), keyring=keyring(), context=_embeddings_context(project)
            )
        stored = np.load(io.BytesIO(data), allow_pickle=False)
        if stored.shape[0] == len(rows):
            return stored, 0.0
    started = time.perf_counter()
    texts = version_texts(project.version, project.text_column)
    vectors = _embedder(model).embed([texts[row] or "" for row in rows])
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    name = f"annotation/{project.organisation_id}/{project.pk}/embeddings.{uuid.uuid4().hex}.npy.enc"
    with storage.open_for_write(name) as target:
        encryptor = StreamEncryptor(target, keyring=keyring(), context=_embeddings_context(project))
        encryptor.write(buffer.getbuffer())
        info = encryptor.finish()
    old = project.embeddings_path
    AnnotationProject.objects.filter(pk=project.pk).update(
        embeddings_path=name, embeddings_model=model, embeddings_kek_id=info.kek_id
    )
    if old and old != name:
        default_storage.delete(old)
    return vectors, seconds


def _claim_run(run_id: int) -> ModelRun | None:
    with transaction.atomic():
        audit_lock(_run_owner(run_id))  # the lock order: the audit head before any row
        run = (
            ModelRun.objects.select_for_update(no_key=True, of=("self",))
            .select_related("project")
            .filter(pk=run_id)
            .first()
        )
        if run is None or run.status != RunStatus.QUEUED:
            return None
        run.status, run.started_at = RunStatus.RUNNING, timezone.now()
        run.save(update_fields=["status", "started_at"])
        return run


def model_run_execute(*, run_id: int) -> str:
    run = _claim_run(run_id)
    if run is None:
        return "not_queued"
    try:
        if run.kind == RunKind.PROPOSE:
            _propose(run)
        else:
            _review(run)
    except AnnotationError as exc:
        return _run_failed(run, exc.code)
    except Exception as exc:  # noqa: BLE001 - any failure ends the run with a code, never stuck
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            return _run_failed(run, "run_timeout")
        logger.error("annotation model run %s failed (%s)", run_id, exc.__class__.__name__)
        return _run_failed(run, "run_error")
    return RunStatus.SUCCEEDED


def _run_failed(run: ModelRun, code: str) -> str:
    with transaction.atomic():
        audit_lock(run.project.organisation_id)
        locked = (
            ModelRun.objects.select_for_update(no_key=True, of=("self",))
            .select_related("project__organisation")
            .get(pk=run.pk)
        )
        if locked.status == RunStatus.RUNNING and locked.attempts == run.attempts:
            locked.status, locked.error_code, locked.finished_at = RunStatus.FAILED, code, timezone.now()
            locked.save(update_fields=["status", "error_code", "finished_at"])
            audit_record(
                actor=None,
                action="annotation_run.failed",
                organisation=locked.project.organisation,
                target=locked,
                extra={"project": locked.project_id, "code": code},
            )
    return RunStatus.FAILED


def _items(project: AnnotationProject) -> list[AnnotationItem]:
    return list(AnnotationItem.objects.filter(project=project).order_by("row"))


_LABEL_STATE = ("final_label", "final_source", "flag_reason", "human_count")


def _label_state(item: AnnotationItem) -> tuple[Any, ...]:
    return tuple(getattr(item, name) for name in _LABEL_STATE)


def _finish_run(
    run: ModelRun,
    items: list[AnnotationItem],
    fields: list[str],
    *,
    unchanged_only: bool = False,
    **figures: Any,
) -> None:
    """Writes the run's item fields and figures, unless the sweeper handed the run to a newer attempt.
    `unchanged_only` (a review run's flags): items whose labels changed while the run read them are
    left alone (a label, an undo, a disagreement or a review since the run's snapshot)."""
    with transaction.atomic():
        audit_lock(run.project.organisation_id)
        locked = (
            ModelRun.objects.select_for_update(no_key=True, of=("self",))
            .select_related("project__organisation")
            .get(pk=run.pk)
        )
        if locked.status != RunStatus.RUNNING or locked.attempts != run.attempts:
            return  # taken over by the sweeper meanwhile: the newer attempt writes
        if unchanged_only:
            now = {
                row[0]: tuple(row[1:])
                for row in AnnotationItem.objects.select_for_update(no_key=True)
                .filter(pk__in=[item.pk for item in items])
                .values_list("pk", *_LABEL_STATE)
            }
            items = [item for item in items if now.get(item.pk) == item.snapshot]  # type: ignore[attr-defined]
        bulk_set(AnnotationItem, items, fields)
        for name, value in figures.items():
            setattr(locked, name, value)
        locked.status, locked.finished_at = RunStatus.SUCCEEDED, timezone.now()
        locked.save()
        audit_record(
            actor=None,
            action="annotation_run.succeeded",
            organisation=locked.project.organisation,
            target=locked,
            extra={
                "project": locked.project_id,
                "kind": locked.kind,
                OWNER_ONLY: {"labels_used": locked.labels_used},
            },
        )


def _propose(run: ModelRun) -> None:
    project = run.project
    labels = list(project.labels)
    index = {label: i for i, label in enumerate(labels)}
    items = _items(project)
    embeddings, embed_seconds = _embeddings(project, [item.row for item in items])
    trainable = np.array([item.final_source in (LabelSource.HUMAN, LabelSource.REVIEWED) for item in items])
    y = np.array([index.get(item.final_label, -1) for item in items], dtype=np.int64)
    trainable &= y >= 0
    started = time.perf_counter()
    if run.federated_model_id is not None:
        proposer: Any = _federated_head(run)
    else:
        proposer = fit(embeddings[trainable], y[trainable], n_classes=len(labels))
    proposals = proposer.propose(embeddings)
    fit_seconds = time.perf_counter() - started
    ordered = np.sort(proposals.probabilities, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    for i, item in enumerate(items):
        item.proposed_label = labels[int(proposals.label_ids[i])]
        item.confidence = float(proposals.confidences[i])
        item.uncertainty = float(margins[i])
        item.proposal_run = run
    figures: dict[str, Any] = {
        "labels_used": int(trainable.sum()),
        "metrics": {
            "items": len(items),
            "per_label": {label: int((y[trainable] == i).sum()) for i, label in enumerate(labels)},
            "embed_seconds": round(embed_seconds, 3),
            "fit_seconds": round(fit_seconds, 3),
        },
    }
    figures.update(_calibrate(run, items, embeddings, y, trainable, proposals, figures["metrics"]))
    _finish_run(run, items, ["proposed_label", "confidence", "uncertainty", "proposal_run"], **figures)


def _calibrate(
    run: ModelRun,
    items: list[AnnotationItem],
    embeddings: np.ndarray,
    y: np.ndarray,
    trainable: np.ndarray,
    proposals: Any,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The automatic threshold for the run's target precision, on the human-labelled calibration
    sample's out-of-sample predictions (a model never scores the items it was fitted on: a federated
    model saw none of them; a proposer fitted here is cross-fitted)."""
    from training.annotation.auto import calibrate_threshold, coverage

    confidences = proposals.confidences
    n_classes = len(run.project.labels)
    if run.federated_model_id is not None:
        held_out = proposals.probabilities[trainable]
    else:
        try:
            held_out = out_of_sample_probabilities(embeddings[trainable], y[trainable], n_classes=n_classes)
        except AnnotationError as exc:
            metrics["calibration"] = exc.code
            return {}
    if not trainable.any():
        metrics["calibration"] = "no_calibration_items"
        return {}
    predicted = held_out.argmax(axis=1)
    metrics["cv_accuracy"] = round(float((predicted == y[trainable]).mean()), 4)
    calibration = np.array([item.calibration for item in items])[trainable]
    metrics["calibration_items"] = int(calibration.sum())
    if run.target_precision is None:
        metrics["calibration"] = "no_target"
        return {}
    if not calibration.any():
        metrics["calibration"] = "no_calibration_items"
        return {}
    choice = calibrate_threshold(
        held_out.max(axis=1)[calibration],
        (predicted == y[trainable])[calibration],
        target_precision=run.target_precision,
        confidence_level=run.confidence_level or 0.95,
    )
    unlabelled = np.array(
        [item.human_count == 0 and item.final_source != LabelSource.MODEL for item in items]
    )
    return {
        "threshold": choice.threshold,
        "estimated_precision": None if choice.threshold is None else round(choice.observed_precision, 4),
        "precision_lower_bound": round(choice.precision_lower_bound, 4),
        "coverage": round(coverage(confidences[unlabelled], choice.threshold), 4),
    }


def _federated_head(run: ModelRun) -> Any:
    from training.annotation.proposer import federated_head

    artifact = run.federated_model
    assert artifact is not None
    with default_storage.open(artifact.file_name, "rb") as source:
        data = source.read()
    return federated_head(data, labels=list(run.project.labels), base_model=settings.ANNOTATION_BASE_MODEL)


def _review(run: ModelRun) -> None:
    from training.annotation.quality import find_label_errors

    project = run.project
    labels = list(project.labels)
    index = {label: i for i, label in enumerate(labels)}
    items = _items(project)
    embeddings, _ = _embeddings(project, [item.row for item in items])
    y = np.array([index.get(item.final_label, -1) for item in items], dtype=np.int64)
    labelled = np.flatnonzero(y >= 0)
    held_out = out_of_sample_probabilities(embeddings[labelled], y[labelled], n_classes=len(labels))
    issues = find_label_errors(y[labelled], held_out)
    flagged = set(int(i) for i in issues.ranked)
    changed = []
    for position, i in enumerate(labelled):
        item = items[int(i)]
        if item.final_source == LabelSource.REVIEWED or item.flag_reason == FlagReason.DISAGREEMENT:
            continue
        item.snapshot = _label_state(item)  # type: ignore[attr-defined]
        item.flagged = position in flagged
        item.flag_reason = FlagReason.LABEL_ERROR if item.flagged else FlagReason.NONE
        item.flag_score = float(issues.quality[position]) if item.flagged else None
        item.suggested_label = labels[int(held_out[position].argmax())] if item.flagged else ""
        changed.append(item)
    _finish_run(
        run,
        changed,
        ["flagged", "flag_reason", "flag_score", "suggested_label"],
        unchanged_only=True,
        labels_used=len(labelled),
        metrics={"items": len(items), "checked": len(labelled), "flagged": len(flagged)},
    )


# -- export -------------------------------------------------------------------------------------------


def export_execute(*, export_id: int) -> str:
    with transaction.atomic():
        audit_lock(_export_owner(export_id))  # the lock order: the audit head before any row
        export = AnnotationExport.objects.select_for_update(no_key=True).filter(pk=export_id).first()
        if export is None or export.status != ExportStatus.QUEUED:
            return "not_queued"
        export.status, export.started_at = ExportStatus.RUNNING, timezone.now()
        export.save(update_fields=["status", "started_at"])
    attempt = export.attempts
    try:
        data, rows = _export_table(export)
        # The version and the export's outcome commit together: a worker lost in between leaves
        # neither (its staged upload is swept), so a retry never writes the rows twice.
        with transaction.atomic():
            audit_lock(_export_owner(export_id))
            if not _export_holds(export_id, attempt):
                return "taken_over"
            version = dataset_version_import(
                actor=export.created_by,
                dataset=export.dataset,
                data=data,
                name=f"annotation-export-{export.pk}.parquet",
                fmt="parquet",
            )
            return _export_finished(
                export_id, attempt, status=ExportStatus.SUCCEEDED, version=version, rows=rows
            )
    except Exception as exc:  # noqa: BLE001 - a refusal (its code) or a failure (the class name only)
        code = getattr(exc, "code", "") or "export_error"
        if code == "export_error":
            logger.error("annotation export %s failed (%s)", export_id, exc.__class__.__name__)
        with transaction.atomic():
            audit_lock(_export_owner(export_id))
            if not _export_holds(export_id, attempt):
                return "taken_over"
            return _export_finished(export_id, attempt, status=ExportStatus.FAILED, error_code=str(code)[:64])


def _export_holds(export_id: int, attempt: int) -> bool:
    """Whether this attempt still owns the export (the sweeper may have handed it to a newer one);
    the caller holds the audit head."""
    audit_lock(_export_owner(export_id))
    export = AnnotationExport.objects.select_for_update(no_key=True).get(pk=export_id)
    return export.status == ExportStatus.RUNNING and export.attempts == attempt


def _export_finished(
    export_id: int,
    attempt: int,
    *,
    status: str,
    error_code: str = "",
    version: DatasetVersion | None = None,
    rows: int | None = None,
) -> str:
    export = AnnotationExport.objects.select_related("project__organisation").get(pk=export_id)
    export.status, export.error_code, export.finished_at = status, error_code, timezone.now()
    export.version, export.rows = version, rows
    export.save(update_fields=["status", "error_code", "finished_at", "version", "rows"])
    audit_record(
        actor=None,
        action=f"annotation_export.{status}",
        organisation=export.project.organisation,
        target=export,
        extra={
            "project": export.project_id,
            "version": getattr(version, "number", None),
            "code": error_code,
            "attempt": attempt,
            OWNER_ONLY: {"rows": rows},
        },
    )
    return status


def _export_table(export: AnnotationExport) -> tuple[bytes, int]:
    """The version's labelled rows with the label and its provenance (Parquet bytes), and their count."""
    project = export.project
    items = export_items(
        project=project,
        drop_duplicates=export.drop_duplicates,
        drop_conflicts=export.drop_conflicts,
        include_model_labels=export.include_model_labels,
    )
    if not items:
        raise AnnotationError("nothing_to_export", "no labelled row is left to export")
    model_labels = {
        label.item_id: label
        for label in Label.objects.filter(item__project=project, source=LabelSource.MODEL)
    }
    exported_schema = export.dataset.schema or {}
    column = exported_schema["columns"][len(project.version.schema["columns"])]["name"]
    table = _version_table(project.version)[[item.row for item in items]]
    confidence = [
        model_labels[item.pk].confidence if item.final_source == LabelSource.MODEL else None for item in items
    ]
    model_run = [
        model_labels[item.pk].model_run_id if item.final_source == LabelSource.MODEL else None
        for item in items
    ]
    table = table.with_columns(
        pl.Series(column, [item.final_label for item in items], dtype=pl.Utf8),
        pl.Series(f"{column}_source", [item.final_source for item in items], dtype=pl.Utf8),
        pl.Series(f"{column}_confidence", confidence, dtype=pl.Float64),
        pl.Series(f"{column}_model_run", model_run, dtype=pl.Int64),
    )
    buffer = io.BytesIO()
    table.write_parquet(buffer)
    return buffer.getvalue(), len(items)


# -- keys ---------------------------------------------------------------------------------------------


def embeddings_rewrap() -> int:
    """Re-wraps the data key of every project's stored embeddings under the keyring's current KEK
    (`keyring_rotate`, beside the dataset files); the number of files re-wrapped."""
    current = keyring()
    rewrapped = 0
    projects = AnnotationProject.objects.exclude(embeddings_path="").exclude(
        embeddings_kek_id=current.current_id
    )
    for project in projects.iterator():
        storage.rewrap_file(project.embeddings_path, current)
        AnnotationProject.objects.filter(pk=project.pk).update(embeddings_kek_id=current.current_id)
        rewrapped += 1
    return rewrapped
