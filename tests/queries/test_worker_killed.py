"""A dp worker killed mid-query (SIGKILL: the OOM killer, a lost host) leaves no query pending for
ever, pays nothing twice, and leaves no plaintext behind (issue 15). The worker stages the decrypted
table on tmpfs for OpenDP and keeps it in its cache between queries; a killed process runs no clean-up,
so the next worker to start removes what dead workers staged."""

from __future__ import annotations

import os
import signal
import sys
import time

import polars as pl
import pytest
from django.db import connection

from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.queries.ledger import allocation_set, budget_set
from clearinghouse.queries.models import LedgerEntry, PrivacyBudget, Query, QueryStatus
from clearinghouse.queries.services import query_recover_stuck, query_submit_many
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import build_world, make_dataset
from tests.processes import child_env, start, stop
from tests.shared_data import DATASETS as SHARED

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

ROWS = 400_000
# Slow enough (~150 ms each at 400k rows on 2 cores) that the batch is still running when it is killed.
HEAVY = "SELECT educ, sex, QUANTILE(income, 0.9), QUANTILE(age, 0.5) FROM pums GROUP BY educ, sex"
BATCH = 6


def _worker(name: str, *, tmp_path, store, spill):
    home = tmp_path / name
    home.mkdir()
    settings_db = connection.settings_dict
    env = child_env(
        DJANGO_SETTINGS_MODULE="clearinghouse.settings.test",
        MEDIA_ROOT=str(store),
        CLEARINGHOUSE_DP_SPILL_DIR=str(spill),
        DATABASE_URL=(
            f"postgres://{settings_db['USER']}@{settings_db['HOST']}:{settings_db['PORT']}/{settings_db['NAME']}"
        ),
    )
    args = [sys.executable, "-m", "celery", "-A", "clearinghouse", "worker", "--pool", "solo"]
    args += ["--loglevel", "INFO", "--queues", "dp", "--hostname", f"{name}@%h"]
    return start(args, env, f"celery-{name}")


def _wait_for(condition, *, seconds: float, step: float = 0.2, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _staged(spill) -> list[str]:
    return sorted(str(path.relative_to(spill)) for path in spill.rglob("*"))


@pytest.mark.skipif("postgresql" not in connection.vendor, reason="worker processes share PostgreSQL")
def test_a_dp_worker_killed_mid_query_leaves_nothing_pending_and_no_plaintext(media_root, tmp_path):
    world = build_world()
    pums = pl.read_csv(SHARED / "pums_1000.csv", infer_schema_length=0)
    csv = pums.sample(ROWS, with_replacement=True, seed=20261206).write_csv().encode()
    dataset = make_dataset(steward=world.a.steward, slug="pums", csv=csv, schema=PUMS_SCHEMA)
    dataset_grant_create(
        actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, purpose="query"
    )
    budget_set(actor=world.a.steward, dataset=dataset, measure="pure", total=20.0, per_query_max=1.0)
    allocation_set(actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, amount=10.0)
    spill = tmp_path / "spill"
    spill.mkdir(mode=0o700)

    killed, killed_log = _worker("dp-killed", tmp_path=tmp_path, store=media_root, spill=spill)
    try:
        items = [{"sql": HEAVY, "privacy": {"epsilon": 0.2 + i / 1000}} for i in range(BATCH)]
        queries = [
            query for query, _ in query_submit_many(actor=world.b.analyst, dataset=dataset, items=items)
        ]
        ids = [query.pk for query in queries]
        _wait_for(
            lambda: Query.objects.filter(pk__in=ids).exclude(status=QueryStatus.PENDING).exists(),
            seconds=120,
            step=0.005,
            what="the batch to be paid and running",
        )
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(timeout=20)
    finally:
        if killed.poll() is None:
            killed.kill()
    statuses = list(Query.objects.filter(pk__in=ids).values_list("status", "error_code"))
    assert (QueryStatus.RUNNING, "") in statuses, statuses  # killed mid-batch: paid, not all released
    assert _staged(spill), "the killed worker had staged the decrypted table (the case under test)"
    paid_before = {entry.query_id: entry.amount for entry in LedgerEntry.objects.filter(query_id__in=ids)}

    survivor, survivor_log = _worker("dp-survivor", tmp_path=tmp_path, store=media_root, spill=spill)
    try:
        _wait_for(lambda: "ready." in survivor_log.read_text(), seconds=120, what="the second worker")
        # What a dead worker staged is gone as soon as another worker starts on the host.
        assert _staged(spill) == []
        # The sweeper (beat runs it every QUERY_STUCK_SECONDS): nothing stays pending or running.
        recovered = query_recover_stuck(idle_seconds=0, max_attempts=3)
        assert recovered["requeued"] >= 1 and recovered["failed"] == 0, recovered
        _wait_for(
            lambda: not Query.objects.filter(pk__in=ids).exclude(status=QueryStatus.RELEASED).exists(),
            seconds=180,
            what="every query of the batch to be released",
        )
    finally:
        stop(survivor)
    assert survivor.returncode is not None
    # A worker that stops as told removes its staged tables itself.
    assert _staged(spill) == []

    final = {query.pk: query for query in Query.objects.filter(pk__in=ids)}
    assert all(query.status == QueryStatus.RELEASED and query.result for query in final.values())
    # Paid once each: the queries the killed worker had paid were released without a second debit.
    entries = list(LedgerEntry.objects.filter(query_id__in=ids).values_list("query_id", "amount"))
    assert sorted(query_id for query_id, _ in entries) == sorted(ids)
    for query_id, amount in paid_before.items():
        assert dict(entries)[query_id] == amount
    spent = PrivacyBudget.objects.get(dataset=dataset).spent
    assert spent == pytest.approx(sum(query.cost for query in final.values()), rel=1e-9)
    assert "Task queries.execute[" in survivor_log.read_text()
    assert killed_log.exists()
