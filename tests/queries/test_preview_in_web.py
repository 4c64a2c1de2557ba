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


def _reads_of(statements, table: str) -> int:
    """The SELECTs that read rows of `table`, not the existence checks, which select nothing of the
    row (`SELECT 1 AS "a" ...`) or its id alone (`user_is_suspended`, a compiled read)."""
    return sum(
        1
        for s in statements.captured_queries
        if s["sql"].startswith("SELECT")
        and not s["sql"].startswith('SELECT 1 AS "a"')
        and not s["sql"].startswith(f'SELECT "{table}"."id" FROM')
        and f'FROM "{table}"' in s["sql"]
    )


def test_a_preview_reads_the_membership_and_the_budget_once(world_without_workers):
    # The token's read joins the analyst's membership and its organisation (`TokenAuth`); the request
    # gives that reading to every check (`request_membership`, `membership_given`) and reads it no
    # more. The budget that priced the preview also answers what is left: 7 statements in all.
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    world, _ = world_without_workers
    client = api_client(world.b.analyst)
    body = {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.5}}
    assert client.post(URL, body, format="json").status_code == 200  # warm: the calibration is cached
    with CaptureQueriesContext(connection) as statements:
        response = client.post(URL, body, format="json")
    assert response.status_code == 200, response.json()
    sqls = [s["sql"] for s in statements.captured_queries]
    membership = [sql for sql in sqls if '"organisations_membership"' in sql]
    assert len(membership) == 1, membership
    assert membership[0].startswith("SELECT") and 'FROM "accounts_apitoken"' in membership[0]
    assert _reads_of(statements, "queries_privacybudget") == 1
    assert len(sqls) <= 7, [sql[:80] for sql in sqls]


def test_a_session_request_reads_the_membership_once_itself(world_without_workers):
    # Without a token (the portal's session, the browsable API) there is no joined reading:
    # `request_membership` reads it, once (the session's checks of suspension only ask whether one
    # exists).
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from rest_framework.test import APIClient

    world, _ = world_without_workers
    client = APIClient()
    client.force_login(world.b.analyst)
    body = {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.5}}
    assert client.post(URL, body, format="json").status_code == 200
    with CaptureQueriesContext(connection) as statements:
        response = client.post(URL, body, format="json")
    assert response.status_code == 200, response.json()
    assert _reads_of(statements, "organisations_membership") == 1


def test_a_token_of_a_suspended_organisation_is_refused_at_its_next_request(world_without_workers):
    # The membership joined to the token's read is read fresh with each request: a suspension
    # between two requests refuses the second.
    from clearinghouse.organisations.services import organisation_set_status

    world, _ = world_without_workers
    client = api_client(world.b.analyst)
    body = {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.5}}
    assert client.post(URL, body, format="json").status_code == 200
    organisation_set_status(
        actor=world.operator,
        organisation=world.b.organisation,
        status="suspended",
        reason="A test of suspension.",
    )
    refused = client.post(URL, body, format="json")
    assert refused.status_code == 401 and refused.json()["code"] == "organisation_suspended"


def test_one_reading_per_request_still_sees_each_change_at_the_next_request(world_without_workers):
    # Read once per request, never kept between requests: an analyst removed from their organisation
    # no longer sees the dataset at their very next preview.
    from clearinghouse.organisations.models import Membership

    world, _ = world_without_workers
    client = api_client(world.b.analyst)
    body = {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 0.5}}
    assert client.post(URL, body, format="json").status_code == 200
    Membership.objects.filter(user=world.b.analyst).delete()
    refused = client.post(URL, body, format="json")
    assert refused.status_code == 404, refused.json()
