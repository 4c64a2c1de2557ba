"""An annotation project on the whole SMS Spam collection (5,574 messages), through the app's own
services and worker code on PostgreSQL, with a simulated annotator who answers the true label.

    HF_HUB_OFFLINE=1 python benchmarks/annotation_project.py [--human-labels 300] [--target 0.98]

Measures what a project costs at this size: preparation (decrypting the version, items, duplicate
search), serving the next item and recording a label, the sealed texts for one page, a model run
(embedding every message with the packaged MiniLM-L6 once, then the stored encrypted embeddings),
automatic labelling at a target precision calibrated on the random calibration sample, with the
precision the auto labels really have against the true labels, a label-review run, and the export.
Tasks run in-process (Celery eager): the figures are the work, not the broker.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.update(
    {
        "DJANGO_SETTINGS_MODULE": "clearinghouse.settings.dev",
        "CLEARINGHOUSE_VAR_DIR": tempfile.mkdtemp(prefix="clearinghouse-annotation-bench-"),
        "DATABASE_URL": os.environ.get(
            "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/clearinghouse_annotation_bench"
        ),
        "HF_HUB_OFFLINE": "1",
    }
)
SMS = ROOT.parent / "shared" / "datasets" / "sms_spam.tsv"


def create_database() -> None:
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def sms_csv() -> tuple[bytes, list[str], list[str]]:
    with SMS.open(encoding="utf-8") as source:
        rows = list(csv.reader(source, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["id", "text", "truth"])
    for i, (label, text) in enumerate(rows):
        writer.writerow([i, text, label])
    return out.getvalue().encode(), [text for _, text in rows], [label for label, _ in rows]


def timed(function, *args, **kwargs):
    started = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--human-labels", type=int, default=300)
    parser.add_argument("--target", type=float, default=0.98)
    parser.add_argument("--confidence", type=float, default=0.8)
    args = parser.parse_args()
    create_database()

    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from clearinghouse.annotation import selectors, services
    from clearinghouse.annotation.models import AnnotationItem, ModelRun
    from clearinghouse.annotation.worker import item_texts_sealed
    from clearinghouse.celery import app
    from clearinghouse.crypto.sealed import OneOffRecipient
    from clearinghouse.datasets.services import (
        dataset_register,
        dataset_version_import,
        dataset_version_ingest,
    )
    from clearinghouse.organisations.roles import Role
    from tests.factories import add_member_by_invitation, make_operator, make_organisation, make_user

    app.conf.task_always_eager = True
    operator, admin = make_operator(), make_user("admin")
    organisation = make_organisation(operator=operator, admin=admin, slug="bench")
    steward = make_user("steward")
    add_member_by_invitation(organisation=organisation, admin=admin, user=steward, role=Role.DATA_STEWARD)
    data, texts, truth = sms_csv()
    schema = {
        "columns": [
            {"name": "id", "type": "integer", "lower": 0, "upper": 100000},
            {"name": "text", "type": "text", "max_length": 1000},
            {"name": "truth", "type": "categorical", "categories": ["ham", "spam"]},
        ]
    }
    dataset = dataset_register(
        actor=steward, organisation=organisation, name="SMS", slug="sms", schema=schema
    )
    version = dataset_version_import(actor=steward, dataset=dataset, data=data, name="sms.csv")
    assert dataset_version_ingest(version_id=version.pk).status == "ready"

    project, seconds = timed(
        services.project_create,
        actor=steward,
        dataset=dataset,
        name="Spam",
        text_column="text",
        labels=["ham", "spam"],
        overlap=0.0,
    )
    project.refresh_from_db()
    print(f"messages: {len(texts)}; items: {project.item_count}; status {project.status}")
    print(
        f"preparation (decrypt, items, duplicate search): {seconds:.2f} s; duplicates {project.duplicate_summary}"
    )

    def label(count: int) -> list[float]:
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            item = selectors.queue_next(actor=steward, project=project)
            if item is None:
                break
            services.label_record(actor=steward, project=project, item=item, value=truth[item.row])
            timings.append(time.perf_counter() - started)
        return timings

    first = args.human_labels // 2
    timings = label(first)
    print(
        f"next item + label: median {statistics.median(timings) * 1000:.1f} ms, "
        f"p95 {sorted(timings)[int(0.95 * len(timings))] * 1000:.1f} ms over {len(timings)} labels"
    )
    items = list(AnnotationItem.objects.filter(project=project)[:1])
    recipient = OneOffRecipient()
    import base64

    _, seconds = timed(
        item_texts_sealed,
        project_id=project.pk,
        item_ids=[items[0].pk],
        public_key=base64.b64encode(recipient.public).decode(),
    )
    print(f"sealed text of one item (worker side, column cached after the first): {seconds * 1000:.1f} ms")
    _, seconds = timed(
        item_texts_sealed,
        project_id=project.pk,
        item_ids=[items[0].pk],
        public_key=base64.b64encode(recipient.public).decode(),
    )
    print(f"  again: {seconds * 1000:.1f} ms")
    services.project_update(
        actor=steward, project=project, target_precision=args.target, confidence_level=args.confidence
    )
    project.refresh_from_db()
    run, seconds = timed(services.model_run_start, actor=steward, project=project)
    run.refresh_from_db()
    print(
        f"model run 1 ({run.labels_used} labels): {seconds:.1f} s (embedding {run.metrics['embed_seconds']:.1f} s, "
        f"fit {run.metrics['fit_seconds']:.2f} s); cv accuracy {run.metrics.get('cv_accuracy')}"
    )
    timings = label(args.human_labels - first)  # now in uncertainty order, beside the calibration sample
    run, seconds = timed(services.model_run_start, actor=steward, project=project)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_code
    print(
        f"model run 2 ({run.labels_used} labels, {run.metrics.get('calibration_items')} calibration): {seconds:.1f} s "
        f"(embeddings read back: {run.metrics['embed_seconds'] == 0})"
    )
    print(
        f"automatic labelling at target precision {args.target} (confidence {args.confidence}): threshold "
        f"{run.threshold}, lower bound {run.precision_lower_bound}, estimated precision {run.estimated_precision}, "
        f"coverage of the unlabelled {run.coverage}"
    )
    if run.threshold is not None:
        applied, seconds = timed(services.automatic_apply, actor=steward, project=project, run=run)
        auto = AnnotationItem.objects.filter(project=project, final_source="model")
        right = sum(1 for item in auto if item.final_label == truth[item.row])
        remaining = project.item_count - args.human_labels
        print(
            f"applied in {seconds:.2f} s: {applied} items labelled by the model = {applied / remaining:.1%} of the "
            f"{remaining} not labelled by people; measured precision {right / max(applied, 1):.4f}"
        )
    review, seconds = timed(services.model_run_start, actor=steward, project=project, kind="review")
    review.refresh_from_db()
    print(f"review run: {seconds:.1f} s; {review.metrics}")
    export, seconds = timed(
        services.export_start, actor=steward, project=project, name="SMS labelled", drop_duplicates=True
    )
    export.refresh_from_db()
    print(f"export: {seconds:.1f} s; {export.status} {export.rows} rows (duplicates dropped)")
    progress, seconds = timed(selectors.project_progress, project=project)
    print(f"progress query: {seconds * 1000:.1f} ms; {progress}")
    print(f"model runs: {ModelRun.objects.filter(project=project).count()}")


if __name__ == "__main__":
    main()
