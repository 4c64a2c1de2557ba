"""The real service behind pytest-django's live_server: the PUMS extract stored encrypted and granted
to organisation B with a budget, a real Celery worker thread on the `dp` queue, and an API token of
B's analyst for the client."""

from __future__ import annotations

from dataclasses import dataclass

import pytest


@dataclass
class Service:
    url: str
    token: str
    world: object
    dataset: object


@pytest.fixture
def service(transactional_db, live_server, media_root):
    from celery.contrib.testing.worker import start_worker

    from clearinghouse.accounts.services import api_token_create
    from clearinghouse.celery import app
    from clearinghouse.datasets.services import dataset_grant_create
    from clearinghouse.queries.ledger import allocation_set, budget_set
    from tests.datasets.conftest import PUMS_SCHEMA
    from tests.factories import build_world, make_dataset
    from tests.shared_data import DATASETS as SHARED

    world = build_world()
    dataset = make_dataset(
        steward=world.a.steward, slug="pums", csv=(SHARED / "pums_1000.csv").read_bytes(), schema=PUMS_SCHEMA
    )
    dataset_grant_create(
        actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, purpose="query"
    )
    budget_set(actor=world.a.steward, dataset=dataset, measure="pure", total=3.0, per_query_max=1.5)
    allocation_set(actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, amount=2.0)
    _, token = api_token_create(actor=world.b.analyst, name="client-tests")
    with start_worker(app, pool="solo", perform_ping_check=False, queues=["dp"], shutdown_timeout=30):
        yield Service(url=live_server.url, token=token, world=world, dataset=dataset)
