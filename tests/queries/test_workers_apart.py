"""Two dp workers that share nothing but the broker, the database, the object store and the keyring
secret (issue 15, "beyond one machine"): each has its own var directory (no development keyring, no
shared local files), reads the keyring from a mounted file, and decrypts on its own. Both answer, and
the ledger stays exact."""

from __future__ import annotations

import shutil
import sys
import time

import pytest
from django.db import connection

from clearinghouse.core.keys import keyring
from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.queries.ledger import allocation_set, budget_set
from clearinghouse.queries.models import PrivacyBudget, Query, QueryStatus
from clearinghouse.queries.services import query_submit_many
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import build_world, make_dataset
from tests.processes import child_env, start, stop
from tests.shared_data import DATASETS as SHARED

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]
QUERIES = 8


def _worker(name: str, *, tmp_path, store, secret):
    """`celery worker --queues dp` as a host of its own would run it."""
    home = tmp_path / name
    home.mkdir()
    settings_db = connection.settings_dict
    env = child_env(
        DJANGO_SETTINGS_MODULE="clearinghouse.settings.test",
        CLEARINGHOUSE_VAR_DIR=str(home),
        MEDIA_ROOT=str(store),
        KEYRING_FILE=str(secret),
        KEYRING_ALLOW_DEV="0",
        DATABASE_URL=(
            f"postgres://{settings_db['USER']}@{settings_db['HOST']}:{settings_db['PORT']}/{settings_db['NAME']}"
        ),
    )
    return start(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "clearinghouse",
            "worker",
            "--pool",
            "solo",
            "--loglevel",
            "INFO",
            "--queues",
            "dp",
            "--hostname",
            f"{name}@%h",
        ],
        env,
        f"celery-{name}",
    )


@pytest.mark.skipif("postgresql" not in connection.vendor, reason="worker processes share PostgreSQL")
def test_two_dp_workers_on_their_own_hosts_answer_and_pay_exactly(media_root, tmp_path):
    world = build_world()
    dataset = make_dataset(
        steward=world.a.steward, slug="pums", csv=(SHARED / "pums_1000.csv").read_bytes(), schema=PUMS_SCHEMA
    )
    dataset_grant_create(
        actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, purpose="query"
    )
    budget_set(actor=world.a.steward, dataset=dataset, measure="pure", total=10.0, per_query_max=1.0)
    allocation_set(actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, amount=5.0)
    secret = tmp_path / "secret" / "keyring.json"
    secret.parent.mkdir()
    keyring().save(secret)  # the mounted keyring secret both hosts read
    workers = [_worker(name, tmp_path=tmp_path, store=media_root, secret=secret) for name in ("dp-a", "dp-b")]
    try:
        queries = []
        for i in range(QUERIES):  # one task each, so that both workers take some
            item = {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.1 + i / 100}}
            queries += [
                query for query, _ in query_submit_many(actor=world.b.analyst, dataset=dataset, items=[item])
            ]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if (
                not Query.objects.filter(pk__in=[q.pk for q in queries])
                .exclude(status=QueryStatus.RELEASED)
                .exists()
            ):
                break
            time.sleep(0.5)
        statuses = list(
            Query.objects.filter(pk__in=[q.pk for q in queries]).values_list("status", "error_code")
        )
        assert statuses == [(QueryStatus.RELEASED, "")] * QUERIES, statuses
    finally:
        for process, _ in workers:
            stop(process)
    answered = {
        name: output.read_text().count("Task queries.execute[")
        for name, (_, output) in zip(("a", "b"), workers, strict=True)
    }
    assert all(count >= 1 for count in answered.values()), answered  # both hosts took part
    costs = sum(Query.objects.get(pk=q.pk).cost for q in queries)
    assert PrivacyBudget.objects.get(dataset=dataset).spent == pytest.approx(costs, rel=1e-9)
    # neither host made a development keyring of its own: they decrypted with the mounted secret only
    for name in ("dp-a", "dp-b"):
        assert not any((tmp_path / name).rglob("keyring*")), name
    shutil.rmtree(secret.parent)
