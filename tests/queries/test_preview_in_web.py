"""Previews read no data, so the web process prices them itself (issue 15): no dp worker runs in these
tests, and a preview still answers at once, as the engine prices it; one that cannot be priced is
refused with the engine's code; nothing is spent or recorded."""

from __future__ import annotations

import pytest

from clearinghouse.datasets.services import dataset_grant_create
from clearinghouse.dp import preview as engine_preview
from clearinghouse.dp import sql_to_spec
from clearinghouse.queries.ledger import allocation_set, budget_set
from clearinghouse.queries.models import LedgerEntry, PrivacyBudget, Query
from clearinghouse.queries.services import query_schema
from tests.datasets.conftest import PUMS_SCHEMA
from tests.factories import api_client, build_world, make_dataset
from tests.shared_data import DATASETS

URL = "/api/v1/datasets/org-a/pums/queries/preview"


@pytest.fixture
def world_without_workers(db, media_root):
    world = build_world()
    dataset = make_dataset(
        steward=world.a.steward,
        slug="pums",
        csv=(DATASETS / "pums_1000.csv").read_bytes(),
        schema=PUMS_SCHEMA,
    )
    dataset_grant_create(
        actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, purpose="query"
    )
    budget_set(actor=world.a.steward, dataset=dataset, measure="approx", total=3.0, delta_total=1e-5)
    allocation_set(actor=world.a.steward, dataset=dataset, organisation=world.b.organisation, amount=2.0)
    return world, dataset


def test_a_preview_is_priced_by_the_web_process_as_the_engine_prices_it(world_without_workers):
    world, dataset = world_without_workers
    body = {"sql": "SELECT educ, COUNT(*), AVG(income) FROM pums GROUP BY educ", "privacy": {"epsilon": 0.5}}
    response = api_client(world.b.analyst).post(URL, body, format="json")
    assert response.status_code == 200, response.json()
    answer = response.json()
    version = dataset.versions.get(number=1)
    schema = query_schema(version=version, budget=PrivacyBudget.objects.get(dataset=dataset))
    expected = engine_preview(schema, sql_to_spec(body["sql"], schema, body["privacy"]))
    assert answer["cost"]["epsilon"] == pytest.approx(expected.cost.epsilon)
    assert [a["scale"] for a in answer["aggregates"]] == pytest.approx([a.scale for a in expected.aggregates])
    assert answer["public_groups"] == 16 and answer["version"] == 1
    assert answer["left"]["organisation"] == pytest.approx(2.0)  # nothing spent
    assert not Query.objects.exists() and not LedgerEntry.objects.exists()


def test_a_query_that_cannot_be_priced_is_refused_with_the_engines_code(world_without_workers):
    world, _ = world_without_workers
    # keys of a column without public categories are released only with δ; this δ is too small to
    # release any key at this ε (OpenDP finds no threshold): refused, not a 500
    body = {
        "sql": "SELECT race, COUNT(*) FROM pums GROUP BY race",
        "privacy": {"epsilon": 0.01, "delta": 1e-300},
    }
    response = api_client(world.b.analyst).post(URL, body, format="json")
    assert response.status_code == 400, response.json()
    assert response.json()["code"] in {"invalid_privacy_loss", "query_not_supported_by_opendp"}
