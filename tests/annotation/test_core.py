"""Annotation projects end to end through the services and the real worker code (run eagerly):
preparation, labels, agreement, model runs, automatic labels, label review, export, liveness."""

from __future__ import annotations

from datetime import timedelta

import pytest

from clearinghouse.annotation import selectors, services
from clearinghouse.annotation.models import AnnotationItem, AnnotationProject, Label, ModelRun
from clearinghouse.audit.models import AuditEvent
from clearinghouse.core.errors import ApplicationError
from tests.factories import make_dataset

from .conftest import TEXT_SCHEMA, text_csv

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def project(world, eager_tasks, media_root):
    csv, texts, labels = text_csv()
    dataset = make_dataset(steward=world.a.steward, slug="messages", csv=csv, schema=TEXT_SCHEMA)
    project = services.project_create(
        actor=world.a.steward,
        dataset=dataset,
        name="Spam or not",
        text_column="text",
        labels=["ham", "spam"],
        overlap=0.1,
        annotators=[world.a.analyst.username],
    )
    project.refresh_from_db()
    project.truth = dict(zip(range(len(texts)), labels, strict=True))
    project.texts = texts
    return project


def _label_all(project, actor, limit, truth):
    done = 0
    while done < limit:
        item = selectors.queue_next(actor=actor, project=project)
        if item is None:
            break
        services.label_record(actor=actor, project=project, item=item, value=truth[item.row])
        done += 1
    return done


def test_preparation_makes_one_item_per_text_with_samples_and_duplicates(project):
    assert project.status == "ready", project.error_code
    items = AnnotationItem.objects.filter(project=project)
    assert project.item_count == items.count() == 84
    assert items.filter(calibration=True).count() == 20
    assert items.filter(needs_two=True).count() == round(0.1 * 84)
    # the 4 copies and their originals are exact duplicates, in 4 groups of (at least) two
    exact = items.filter(duplicate_kind="exact")
    assert exact.count() >= 8
    assert project.duplicate_summary["exact_items"] == exact.count()
    for group in selectors.duplicate_groups(actor=project.created_by, project=project):
        assert len(group["items"]) >= 2
    assert AuditEvent.objects.filter(action="annotation_project.prepared").count() == 1


def test_texts_reach_the_page_sealed_and_only_the_projects(project):
    items = list(AnnotationItem.objects.filter(project=project).order_by("row")[:3])
    texts = selectors.item_texts(project=project, items=items, timeout=5)
    assert texts == {item.pk: project.texts[item.row] for item in items}


def test_labels_skip_undo_agreement_and_the_queue(project, world):
    steward, analyst = world.a.steward, world.a.analyst
    first = selectors.queue_next(actor=steward, project=project)
    services.item_skip(actor=steward, project=project, item=first)
    second = selectors.queue_next(actor=steward, project=project)
    assert second.pk != first.pk
    with pytest.raises(ApplicationError) as refused:
        services.label_record(actor=steward, project=project, item=second, value="eggs")
    assert refused.value.code == "label_not_in_set"
    services.label_record(actor=steward, project=project, item=second, value="ham")
    with pytest.raises(ApplicationError) as again:
        services.label_record(actor=steward, project=project, item=second, value="spam")
    assert again.value.code == "item_complete"
    undone = services.label_undo(actor=steward, project=project)
    assert undone.value == "ham"
    second.refresh_from_db()
    assert second.final_label == "" and second.human_count == 0
    # everyone labels everything they are served (truthfully): every overlap item gets two labels
    truth = project.truth
    _label_all(project, steward, 1000, truth)
    _label_all(project, analyst, 1000, truth)
    progress = selectors.project_progress(project=project)
    assert progress["done"] == progress["total"] == 84
    assert progress["overlap_done"] == progress["overlap_items"] > 0
    assert progress["kappa"] == 1.0
    assert selectors.queue_next(actor=steward, project=project) is None
    # a disagreement leaves the item open and flags it for review; a review settles it
    item = AnnotationItem.objects.filter(project=project, needs_two=True).first()
    services.label_undo(actor=analyst, project=project)
    item = AnnotationItem.objects.get(pk=Label.objects.filter(item__project=project).latest("pk").item_id)
    other = "spam" if truth[item.row] == "ham" else "ham"
    last = AnnotationItem.objects.filter(project=project, needs_two=True, human_count=1).first()
    services.label_record(
        actor=analyst, project=project, item=last, value="spam" if truth[last.row] == "ham" else "ham"
    )
    last.refresh_from_db()
    assert last.flagged and last.final_label == ""
    assert selectors.queue_next(actor=steward, project=project, review=True).pk == last.pk
    assert selectors.queue_next(actor=analyst, project=project, review=True) is None  # the managers' queue
    with pytest.raises(ApplicationError) as annotator:
        services.label_record(actor=analyst, project=project, item=last, value=truth[last.row])
    assert annotator.value.code == "role_forbidden"
    with pytest.raises(ApplicationError) as own:  # the steward gave one of the two labels
        services.label_record(actor=steward, project=project, item=last, value=truth[last.row])
    assert own.value.code == "own_disagreement"
    services.label_record(actor=world.a.admin, project=project, item=last, value=truth[last.row])
    last.refresh_from_db()
    assert last.final_source == "reviewed" and last.final_label == truth[last.row] and not last.flagged
    assert other in ("ham", "spam")


def test_model_run_proposes_calibrates_and_labels_automatically(project, world):
    steward = world.a.steward
    with pytest.raises(ApplicationError) as early:
        services.model_run_start(actor=steward, project=project)
    assert early.value.code == "too_few_labels"
    _label_all(project, steward, 50, project.truth)
    services.project_update(actor=steward, project=project, target_precision=0.8, confidence_level=0.8)
    project.refresh_from_db()
    run = services.model_run_start(actor=steward, project=project)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_code
    assert run.labels_used == 50
    assert run.metrics["embed_seconds"] > 0 and "cv_accuracy" in run.metrics
    items = AnnotationItem.objects.filter(project=project)
    assert not items.filter(proposed_label="").exists()
    assert items.filter(uncertainty__isnull=True).count() == 0
    # the embeddings are stored encrypted and reused by the next run
    project.refresh_from_db()
    assert project.embeddings_path.endswith(".npy.enc")
    if run.threshold is None:
        with pytest.raises(ApplicationError) as none:
            services.automatic_apply(actor=steward, project=project, run=run)
        assert none.value.code == "no_threshold"
        return
    assert 0 < run.threshold <= 1 and run.precision_lower_bound >= 0.8
    labelled = services.automatic_apply(actor=steward, project=project, run=run)
    model_labels = Label.objects.filter(item__project=project, source="model")
    assert labelled == model_labels.count() > 0
    assert all(label.confidence >= run.threshold for label in model_labels)
    second = services.model_run_start(actor=steward, project=project)
    second.refresh_from_db()
    assert second.status == "succeeded" and second.metrics["embed_seconds"] == 0


def test_review_run_flags_flipped_labels(project, world):
    steward = world.a.steward
    truth = dict(project.truth)
    items = list(AnnotationItem.objects.filter(project=project).order_by("row"))
    flipped = {item.row for item in items[:6]}
    for item in items:
        value = truth[item.row]
        if item.row in flipped:
            value = "spam" if value == "ham" else "ham"
        services.label_record(actor=steward, project=project, item=item, value=value)
    run = services.model_run_start(actor=steward, project=project, kind="review")
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_code
    flagged = AnnotationItem.objects.filter(project=project, flagged=True)
    assert run.metrics["flagged"] == flagged.count()
    assert all(item.flag_score is not None and item.suggested_label for item in flagged)


def test_export_writes_a_labelled_encrypted_version_through_ingestion(project, world, media_root):
    from clearinghouse.datasets.models import DatasetVersion
    from clearinghouse.datasets.services import dataset_version_ingest
    from clearinghouse.datasets.storage import data_context, read_table

    steward = world.a.steward
    with pytest.raises(ApplicationError) as empty:
        services.export_start(actor=steward, project=project, name="Messages labelled")
    assert empty.value.code == "nothing_to_export"
    _label_all(project, steward, 30, project.truth)
    export = services.export_start(
        actor=steward, project=project, name="Messages labelled", drop_duplicates=True
    )
    export.refresh_from_db()
    assert export.status == "succeeded", export.error_code
    version = DatasetVersion.objects.get(pk=export.version_id)
    assert dataset_version_ingest(version_id=version.pk).status == "ready"
    version.refresh_from_db()
    table = read_table(
        version.data_path,
        data_context(
            organisation_id=version.dataset.organisation_id, dataset_id=version.dataset_id, number=1
        ),
    )
    assert table.height == export.rows <= 30
    assert set(table.columns) >= {"text", "label", "label_source", "label_confidence", "label_model_run"}
    for row in table.iter_rows(named=True):
        assert row["label"] == row["truth"] and row["label_source"] == "human"
    # no message text anywhere in the store or the database (items name rows; texts stay encrypted)
    for text in project.texts[:5]:
        needle = text.encode()
        for path in media_root.rglob("*"):
            if path.is_file():
                assert needle not in path.read_bytes(), path
    from django.apps import apps

    for model in [*apps.get_app_config("annotation").get_models(), AuditEvent]:
        dump = repr(list(model.objects.values()))
        assert not any(text in dump for text in project.texts[:20]), model


def test_sweeper_requeues_then_fails_a_lost_run(project, world, settings):
    from django.utils import timezone

    steward = world.a.steward
    _label_all(project, steward, 10, project.truth)
    run = ModelRun.objects.create(
        project=project, status="running", started_at=timezone.now() - timedelta(hours=3)
    )
    run.attempts = settings.ANNOTATION_MAX_ATTEMPTS
    run.save()
    counts = services.annotation_recover_stuck()
    run.refresh_from_db()
    assert counts["failed"] == 1 and run.status == "failed" and run.error_code == "run_stuck"


def test_bad_projects_are_refused_and_nothing_is_written(world, eager_tasks, media_root):
    csv, _, _ = text_csv(10)
    dataset = make_dataset(steward=world.a.steward, slug="messages", csv=csv, schema=TEXT_SCHEMA)
    cases = [
        ({"text_column": "truth"}, "column_not_text"),
        ({"text_column": "nope"}, "unknown_column"),
        ({"labels": ["one"]}, "labels_too_few"),
        ({"labels": ["a", "a"]}, "labels_duplicate"),
        ({"overlap": 0.9}, "overlap_out_of_range"),
        ({"annotators": [world.b.analyst.username]}, "annotator_not_member"),
    ]
    events = AuditEvent.objects.count()
    for change, code in cases:
        arguments = {"name": "P", "text_column": "text", "labels": ["ham", "spam"], **change}
        with pytest.raises(ApplicationError) as refused:
            services.project_create(actor=world.a.steward, dataset=dataset, **arguments)
        assert refused.value.code == code
    assert AnnotationProject.objects.count() == 0 and AuditEvent.objects.count() == events
    with pytest.raises(ApplicationError) as analyst:
        services.project_create(
            actor=world.a.analyst, dataset=dataset, name="P", text_column="text", labels=["a", "b"]
        )
    assert analyst.value.status_code in (403, 404)


def _federated_model(world, tiny_model_dir, *, pooling="mean", bias=(0.0, 9.0)):
    """A finished federated job of org A (labels ham, spam) whose model file is a real safetensors
    head, written as the ServerApp writes it: trained labels in the order spam, ham."""
    import json

    import numpy as np
    from django.core.files.base import ContentFile
    from django.core.files.storage import default_storage
    from safetensors.numpy import save

    from tests.factories import make_finished_job

    job = make_finished_job(operator=world.operator, admin=world.a.admin)
    config = {
        "base_model": str(tiny_model_dir),
        "pooling": pooling,
        "head_only": True,
        "labels": ["spam", "ham"],
    }
    state = {
        "classifier.weight": np.zeros((2, 32), dtype=np.float32),
        "classifier.bias": np.asarray(bias, dtype=np.float32),  # spam 0, ham 9: always "ham"
    }
    artifact = job.artifact
    default_storage.delete(artifact.file_name)
    artifact.file_name = default_storage.save(
        artifact.file_name, ContentFile(save(state, metadata={"train_config": json.dumps(config)}))
    )
    artifact.save()
    return artifact


def test_a_federated_model_for_the_label_set_proposes_without_any_label(project, world, tiny_model_dir):
    steward = world.a.steward
    artifact = _federated_model(world, tiny_model_dir)
    from clearinghouse.annotation.selectors import federated_models_usable

    usable = [model.pk for model in federated_models_usable(actor=steward, project=project)]
    assert artifact.pk in usable
    from federation.models import ModelArtifact

    assert ModelArtifact.objects.get(job_id=world.b.job_id).pk not in usable  # org B's, unpublished
    run = services.model_run_start(actor=steward, project=project, federated_model_id=artifact.pk)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_code
    assert run.labels_used == 0 and run.federated_model_id == artifact.pk
    items = AnnotationItem.objects.filter(project=project)
    assert set(items.values_list("proposed_label", flat=True)) == {"ham"}  # mapped to the project's order
    assert all(confidence > 0.99 for confidence in items.values_list("confidence", flat=True))
    with pytest.raises(ApplicationError) as unknown:
        services.model_run_start(actor=steward, project=project, federated_model_id=artifact.pk + 1000)
    assert unknown.value.code == "model_not_found"


def test_an_incompatible_federated_model_fails_the_run_with_a_code(project, world, tiny_model_dir):
    artifact = _federated_model(world, tiny_model_dir, pooling="cls")
    run = services.model_run_start(actor=world.a.steward, project=project, federated_model_id=artifact.pk)
    run.refresh_from_db()
    assert run.status == "failed" and run.error_code == "model_incompatible"
    assert not AnnotationItem.objects.filter(project=project).exclude(proposed_label="").exists()


def test_the_api_and_the_portal_start_a_run_with_a_federated_model(project, world, tiny_model_dir):
    from django.test import Client

    from tests.factories import api_client

    artifact = _federated_model(world, tiny_model_dir)
    url = f"/api/v1/annotation/projects/{project.pk}/model-runs"
    missing = api_client(world.a.steward).post(
        url, {"kind": "propose", "federated_model": 99999}, format="json"
    )
    assert missing.status_code == 404 and missing.json()["code"] == "model_not_found"
    response = api_client(world.a.steward).post(url, {"federated_model": artifact.pk}, format="json")
    assert response.status_code in (201, 202), response.content
    assert response.json()["federated_model"] == artifact.pk
    ModelRun.objects.all().delete()
    browser = Client()
    browser.force_login(world.a.steward)
    page = browser.get(f"/annotation/{project.pk}/")
    assert f'value="{artifact.pk}"' in page.content.decode()
    browser.post(f"/annotation/{project.pk}/model-runs/", {"kind": "propose", "federated_model": artifact.pk})
    assert ModelRun.objects.get().federated_model_id == artifact.pk
