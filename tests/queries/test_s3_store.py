"""Workers on other hosts with the encrypted store on an S3-compatible service (issue 15, "beyond one
machine"): an ingestion worker and a dp worker, each a process with a var directory and a MEDIA_ROOT
of its own (a filesystem path would not be shared: any code that wrote there would break the flow),
sharing nothing but PostgreSQL, Redis, the S3 bucket (moto's server over HTTP, tests/s3.py) and the
mounted keyring secret. This process plays the web host: the upload streams, encrypted to the staging
public key, into the bucket; the ingestion worker checks and stores it; the dp worker releases
queries from it. The bucket only ever holds ciphertext."""

from __future__ import annotations

import io
import shutil
import sys
import time

import pytest
from django.db import connection

from clearinghouse.core.keys import keyring
from clearinghouse.crypto.header import MAGIC
from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.queries.ledger import allocation_set, budget_set
from clearinghouse.queries.models import PrivacyBudget, Query, QueryStatus
from clearinghouse.queries.services import query_submit_many
from tests.factories import api_client, build_world
from tests.processes import child_env, start, stop

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
MARKER = b"Zebulon-Quixotic-4471"  # a distinctive value of the uploaded rows (the log check knows it)
ROWS = 20_000
SCHEMA = {
    "columns": [
        {"name": "age", "type": "integer", "lower": 0, "upper": 100},
        {"name": "region", "type": "categorical", "categories": ["north", "south"]},
        {"name": "note", "type": "text"},
    ]
}
QUERIES = [
    "SELECT COUNT(*) FROM notes",
    "SELECT AVG(age) FROM notes",
    "SELECT region, COUNT(*) FROM notes GROUP BY region",
]


def _csv() -> bytes:
    return b"age,region,note\n" + b"".join(
        b"%d,%s,%s row %d\n" % (20 + i % 60, (b"north", b"south")[i % 2], MARKER, i) for i in range(ROWS)
    )


def _worker(name: str, queue: str, *, tmp_path, s3_store, secret):
    """`celery worker --queues <queue>` as a host of its own would run it: the store is the bucket."""
    home = tmp_path / name
    (home / "store").mkdir(parents=True)
    db = connection.settings_dict
    env = child_env(
        DJANGO_SETTINGS_MODULE="clearinghouse.settings.test",
        CLEARINGHOUSE_VAR_DIR=str(home),
        MEDIA_ROOT=str(home / "store"),  # ignored with STORAGE_BACKEND set; nothing may land there
        KEYRING_FILE=str(secret),
        KEYRING_ALLOW_DEV="0",
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        **s3_store.env,
    )
    args = [sys.executable, "-m", "celery", "-A", "clearinghouse", "worker", "--pool", "solo"]
    args += ["--loglevel", "INFO", "--queues", queue, "--hostname", f"{name}@%h"]
    return start(args, env, f"celery-{name}")


def _wait(condition, seconds: float, what: str, workers) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            tails = {output.name: output.read_text()[-1500:] for _, output in workers}
            raise AssertionError(f"{what} did not happen in {seconds:.0f} s; worker output: {tails}")
        time.sleep(0.3)


@pytest.mark.skipif("postgresql" not in connection.vendor, reason="worker processes share PostgreSQL")
def test_ingestion_and_dp_workers_on_other_hosts_with_the_store_on_s3(s3_store, tmp_path):
    world = build_world()
    steward = world.a.steward
    secret = tmp_path / "secret" / "keyring.json"
    secret.parent.mkdir()
    keyring().save(secret)  # the mounted keyring secret both hosts read
    before = set(s3_store.objects())  # the world's own datasets, ingested in this process
    workers = [
        _worker("ingest-a", "ingestion", tmp_path=tmp_path, s3_store=s3_store, secret=secret),
        _worker("dp-b", "dp", tmp_path=tmp_path, s3_store=s3_store, secret=secret),
    ]
    try:
        client = api_client(steward)
        response = client.post(
            "/api/v1/datasets", {"name": "Notes", "slug": "notes", "schema": SCHEMA}, format="json"
        )
        assert response.status_code == 201, response.content
        response = client.post(
            "/api/v1/datasets/org-a/notes/versions", {"file": io.BytesIO(_csv())}, format="multipart"
        )
        assert response.status_code == 202, response.content
        version = DatasetVersion.objects.get(dataset__slug="notes", number=1)
        staged = s3_store.objects()
        assert set(staged) - before == {version.staging_path}  # the upload went to the bucket only

        _wait(
            lambda: DatasetVersion.objects.get(pk=version.pk).status in {"ready", "failed"},
            180,
            "ingestion",
            workers,
        )
        version.refresh_from_db()
        assert version.status == "ready", (version.error_code, version.error_message)

        dataset = version.dataset
        dataset_grant_create(
            actor=steward, dataset=dataset, organisation=world.b.organisation, purpose="query"
        )
        budget_set(actor=steward, dataset=dataset, measure="pure", total=10.0, per_query_max=1.0)
        allocation_set(actor=steward, dataset=dataset, organisation=world.b.organisation, amount=5.0)
        queries = [
            query
            for sql in QUERIES
            for query, _ in query_submit_many(
                actor=world.b.analyst, dataset=dataset, items=[{"sql": sql, "privacy": {"epsilon": 0.5}}]
            )
        ]
        pks = [q.pk for q in queries]
        _wait(
            lambda: not Query.objects.filter(pk__in=pks, status__in=["pending", "running"]).exists(),
            180,
            "the releases",
            workers,
        )
        released = list(Query.objects.filter(pk__in=pks).order_by("pk").values_list("status", "error_code"))
        assert released == [(QueryStatus.RELEASED, "")] * len(QUERIES), released
    finally:
        for process, _ in workers:
            stop(process)

    logs = {name: output.read_text() for name, (_, output) in zip(("ingest", "dp"), workers, strict=True)}
    assert (
        "Task datasets.ingest_version[" in logs["ingest"]
        and "Task datasets.ingest_version[" not in logs["dp"]
    )
    assert "Task queries.execute[" in logs["dp"] and "Task queries.execute[" not in logs["ingest"]
    results = [Query.objects.get(pk=pk).result for pk in pks]
    assert all(result for result in results), results
    costs = sum(Query.objects.get(pk=pk).cost for pk in pks)
    assert PrivacyBudget.objects.get(dataset=dataset).spent == pytest.approx(costs, rel=1e-9)

    # The bucket: the version's data file, encrypted; the staging file deleted once it was stored.
    objects = s3_store.objects()
    assert set(objects) - before == {version.data_path}, sorted(set(objects) - before)
    for key, body in objects.items():
        assert MARKER not in body, f"plaintext found in s3://{key}"
        if key.startswith(("datasets/", "staging/")):
            assert body.startswith(MAGIC), key
    # Neither host wrote a file of its own store directory, nor made a keyring of its own.
    for name in ("ingest-a", "dp-b"):
        assert not any(p.is_file() for p in (tmp_path / name / "store").rglob("*")), name
        assert not any((tmp_path / name).rglob("keyring*")), name
    shutil.rmtree(secret.parent)
