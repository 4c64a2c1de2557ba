"""A world with the real PUMS extract stored encrypted, granted to organisation B with a budget,
and a real Celery worker thread consuming the `dp` queue."""

import pytest
from celery.contrib.testing.worker import start_worker

from clearinghouse.celery import app
from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.queries.ledger import allocation_set, budget_set
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import build_world, make_dataset
from tests.shared_data import DATASETS as SHARED


@pytest.fixture
def setup(transactional_db, media_root):
    world = build_world()
    dataset = make_dataset(
        steward=world.a.steward, slug="pums", csv=(SHARED / "pums_1000.csv").read_bytes(), schema=PUMS_SCHEMA
    )
    dataset_grant_create(
        actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, purpose="query"
    )
    budget_set(actor=world.a.steward, dataset=dataset, measure="pure", total=3.0, per_query_max=1.5)
    allocation_set(actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, amount=2.0)
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["dp"], shutdown_timeout=30):
        yield world, dataset
