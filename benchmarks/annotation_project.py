"""An annotation project on the whole SMS Spam collection (5,574 messages), through the app's own
services and worker code on PostgreSQL, with a simulated annotator who answers the true label.

    HF_HUB_OFFLINE=1 python benchmarks/annotation_project.py [--human-labels 300] [--target 0.98]

Measures what a project costs at this size: preparation (decrypting the version, items, duplicate
search), serving the next item and recording a label, the sealed texts for one page, a model run
(embedding every message with the packaged MiniLM-L6 once, then the stored encrypted embeddings),
automatic labelling at a target precision calibrated on the random calibration sample, with the
precision the auto labels really have against the true labels, a label-review run, and the export.

Needs PostgreSQL and Redis (the defaults are the local ones, in a database
`clearinghouse_annotation_bench` and Redis databases 7-8: BENCH_DATABASE_URL, BENCH_BROKER_URL,
BENCH_RESULT_BACKEND). Starts a Celery worker on the `ingestion` and `dp` queues as a subprocess, as
a deployment runs them; each figure is from the service call until the record it queued has settled
(its status polled in the database), so it includes the broker's round trip.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {
    "DJANGO_SETTINGS_MODULE": "clearinghouse.settings.dev",
    "CLEARINGHOUSE_VAR_DIR": tempfile.mkdtemp(prefix="clearinghouse-annotation-bench-"),
    "DATABASE_URL": os.environ.get(
        "BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/clearinghouse_annotation_bench"
    ),
    "CELERY_BROKER_URL": os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/7"),
    "CELERY_RESULT_BACKEND": os.environ.get("BENCH_RESULT_BACKEND", "redis://127.0.0.1:6379/8"),
    "HF_HUB_OFFLINE": "1",
}
os.environ.update(ENV)
QUEUES = ("ingestion", "dp")
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


def start_worker() -> subprocess.Popen:
    """A Celery worker on the annotation queues, on this run's database, store and keyring (the
    environment above); messages a killed earlier run left in its queues are dropped first."""
    from clearinghouse.celery import app

    with app.connection_for_write() as connection:
        for queue in QUEUES:
            connection.default_channel.queue_purge(queue)
    command = [sys.executable, "-m", "celery", "-A", "clearinghouse", "worker", "-Q", ",".join(QUEUES)]
    return subprocess.Popen(
        [*command, "--pool", "solo", "--loglevel", "WARNING"], cwd=ROOT, env={**os.environ, **ENV}
    )


def settled(record, *, done, worker: subprocess.Popen, timeout: float = 900.0):
    """`record` read back from the database once its status is one of `done` (the worker's task has
    had its effect); fails if the worker exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        record.refresh_from_db()
        if record.status in done:
            return record
        if worker.poll() is not None:
            raise SystemExit(f"the worker exited ({worker.returncode}) before {record!r} settled")
        if time.monotonic() > deadline:
            raise SystemExit(f"{record!r} still {record.status} after {timeout:.0f} s")
        time.sleep(0.02)


def until_settled(function, *, done, worker: subprocess.Popen, **kwargs):
    """Calls the service and waits for the record it returns to settle: (record, seconds)."""
    started = time.perf_counter()
    record = settled(function(**kwargs), done=done, worker=worker)
    return record, time.perf_counter() - started


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
    worker = start_worker()
    try:
        run_project(args, worker)
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


def run_project(args: argparse.Namespace, worker: subprocess.Popen) -> None:
    from django.conf import settings

    from clearinghouse.annotation import selectors, services
    from clearinghouse.annotation.models import AnnotationItem, ModelRun
    from clearinghouse.datasets.services import dataset_register, dataset_version_import
    from clearinghouse.organisations.roles import Role
    from tests.factories import add_member_by_invitation, make_operator, make_organisation, make_user

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
    # Ingested by the worker (this also waits for the worker to start).
    version = dataset_version_import(actor=steward, dataset=dataset, data=data, name="sms.csv")
    version = settled(version, done={"ready", "failed", "corrupt", "awaiting_schema"}, worker=worker)
    assert version.status == "ready", version.status

    project, seconds = until_settled(
        services.project_create,
        done={"ready", "failed"},
        worker=worker,
        actor=steward,
        dataset=dataset,
        name="Spam",
        text_column="text",
        labels=["ham", "spam"],
        overlap=0.0,
    )
    assert project.status == "ready", project.error_code
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
    item = AnnotationItem.objects.filter(project=project).first()
    assert item is not None
    wait = settings.ANNOTATION_TEXTS_WAIT_SECONDS
    for what in (
        "sealed text of one item (item_texts: to the dp queue, sealed by the worker, opened here)",
        "  again",
    ):
        sealed, seconds = timed(selectors.item_texts, project=project, items=[item], timeout=wait)
        assert sealed[item.pk] == texts[item.row], "the worker's text is not the item's"
        print(f"{what}: {seconds * 1000:.1f} ms")
    services.project_update(
        actor=steward, project=project, target_precision=args.target, confidence_level=args.confidence
    )
    project.refresh_from_db()
    run_done = {"succeeded", "failed"}
    run, seconds = until_settled(
        services.model_run_start, done=run_done, worker=worker, actor=steward, project=project
    )
    assert run.status == "succeeded", run.error_code
    print(
        f"model run 1 ({run.labels_used} labels): {seconds:.1f} s (embedding {run.metrics['embed_seconds']:.1f} s, "
        f"fit {run.metrics['fit_seconds']:.2f} s); cv accuracy {run.metrics.get('cv_accuracy')}"
    )
    timings = label(args.human_labels - first)  # now in uncertainty order, beside the calibration sample
    run, seconds = until_settled(
        services.model_run_start, done=run_done, worker=worker, actor=steward, project=project
    )
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
    review, seconds = until_settled(
        services.model_run_start, done=run_done, worker=worker, actor=steward, project=project, kind="review"
    )
    assert review.status == "succeeded", review.error_code
    print(f"review run: {seconds:.1f} s; {review.metrics}")
    started = time.perf_counter()
    export = services.export_start(actor=steward, project=project, name="SMS labelled", drop_duplicates=True)
    export = settled(export, done={"succeeded", "failed"}, worker=worker)
    assert export.status == "succeeded", export.error_code
    exported = settled(export.version, done={"ready", "failed", "corrupt", "awaiting_schema"}, worker=worker)
    seconds = time.perf_counter() - started
    print(
        f"export: {seconds:.1f} s; {export.status} {export.rows} rows (duplicates dropped), "
        f"its version {exported.status}"
    )
    progress, seconds = timed(selectors.project_progress, project=project)
    print(f"progress query: {seconds * 1000:.1f} ms; {progress}")
    print(f"model runs: {ModelRun.objects.filter(project=project).count()}")


if __name__ == "__main__":
    main()
