"""The operators' consortium overview (`portal:operator_overview`, `/operator/`, and its API twin
`GET /api/v1/operator/overview`): every organisation, dataset, budget and federated job, metadata
only, from the same selectors; searchable by name or slug and paged; operators only.

What it must never show is what the API hides from operators (docs/data-exposure.md): a version's
row count, sizes, file name, storage paths, key ids, a pending or failed version; and no token."""

from __future__ import annotations

import io
import json
import re

import pytest
from django.test import Client
from django.urls import reverse

from clearinghouse.datasets.models import DatasetVersion
from clearinghouse.datasets.services import dataset_version_ingest
from clearinghouse.organisations.models import Organisation
from clearinghouse.portal.shortcuts import PAGE_SIZE
from tests.factories import SMALL_SCHEMA, api_client, make_dataset

PAGE = reverse("portal:operator_overview")
API = "/api/v1/operator/overview"
ROWS = 1373  # the distinctive dataset's row count: operators must never read it
SOURCE_NAME = "Quokka-Ledger-Export.csv"


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _csv(rows: int) -> bytes:
    return ("age,group\n" + "".join(f"{20 + i % 60},{'ab'[i % 2]}\n" for i in range(rows))).encode()


@pytest.fixture
def consortium(world, media_root):
    """The world, plus org A's `distinct` dataset: a ready version of ROWS rows uploaded under a
    distinctive file name, and a second upload that broke its schema (failed)."""
    dataset = make_dataset(steward=world.a.steward, slug="distinct", csv=_csv(ROWS), schema=SMALL_SCHEMA)
    upload = io.BytesIO(b"age,group\n300,zzz\n")  # out of bounds, unknown category: fails validation
    upload.name = SOURCE_NAME
    response = api_client(world.a.steward).post(
        "/api/v1/datasets/org-a/distinct/versions", {"file": upload}, format="multipart"
    )
    assert response.status_code == 202, response.content
    failed = dataset_version_ingest(version_id=DatasetVersion.objects.get(dataset=dataset, number=2).pk)
    assert failed.status == "failed"
    ready = dataset.versions.get(number=1)
    assert ready.row_count == ROWS
    DatasetVersion.objects.filter(pk=ready.pk).update(source_name=SOURCE_NAME)
    return world, dataset


def _row(html: str, testid: str) -> str:
    assert f'data-testid="{testid}"' in html, f"no {testid} on the page"
    return html.split(f'data-testid="{testid}"', 1)[1].split("</tr>", 1)[0]


def _cell(html: str, testid: str) -> str:
    match = re.search(rf'data-testid="{re.escape(testid)}"[^>]*>([^<]*)<', html)
    assert match, f"no {testid} on the page"
    return match.group(1).strip()


def _hidden_from_operators(world, dataset) -> list[str]:
    """What the API hides from operators, as any page or body could show it."""
    ready, failed = dataset.versions.get(number=1), dataset.versions.get(number=2)
    secrets = [
        f"{ROWS:,}",
        str(ROWS),
        SOURCE_NAME,
        failed.error_code,
        ready.data_path,
        ready.kek_id,
        world.a.invitation_token,
        world.b.invitation_token,
    ]
    return [s for s in secrets if s]


def test_operator_sees_every_organisations_metadata_and_nothing_hidden(consortium):
    world, dataset = consortium
    response = _client(world.operator).get(PAGE)
    assert response.status_code == 200
    page = response.content.decode()

    # Organisations: every status, with their members counted (admin, analyst, steward; org C: admin).
    for slug, members in (("org-a", 3), ("org-b", 3), ("org-c", 1)):
        assert "Approved" in _row(page, f"organisation-{slug}")
        assert _cell(page, f"members-{slug}") == str(members)
    # Datasets of both organisations; of `distinct` only its ready version counts (not the failed one).
    assert _cell(page, "versions-org-a-distinct") == "1"
    distinct = _row(page, "dataset-org-a-distinct")
    assert "v1," in distinct and "v2" not in distinct and "not confirmed" not in distinct
    assert 'data-testid="dataset-org-b-survey"' in page
    # Budgets: policy and spending as `GET .../budget` shows operators (world: total 10, one allocation).
    assert _cell(page, "total-org-a-survey") == "10"
    assert _cell(page, "spent-org-a-survey") == "0"
    assert _cell(page, "left-org-a-survey") == "10"
    assert _cell(page, "allocations-org-a-survey") == "1"
    # Jobs: both organisations' jobs, one participant each, accepted.
    for side in (world.a, world.b):
        assert "Succeeded" in _row(page, f"job-{side.job_id}")
        assert _cell(page, f"participants-{side.job_id}") == "1 (1)"
    # Reached from the navigation.
    assert f'href="{PAGE}"' in page

    leaks = [s for s in _hidden_from_operators(world, dataset) if s in page]
    assert not leaks, leaks


@pytest.mark.parametrize("actor", ["analyst", "steward", "admin"])
def test_members_are_refused_on_the_page_and_the_api(world, actor):
    user = getattr(world.a, actor)
    response = _client(user).get(PAGE)
    assert response.status_code == 403
    assert "org-b" not in response.content.decode()
    answer = api_client(user).get(API)
    assert answer.status_code == 403 and answer.json()["code"] == "operator_required"
    assert 'href="/operator/"' not in _client(user).get(reverse("portal:dashboard")).content.decode()


def test_anonymous_visitors_log_in_first(world):
    assert Client().get(PAGE).status_code == 302
    assert api_client(None).get(API).status_code == 401


def test_search_filters_every_section_by_name_or_slug(consortium):
    world, _ = consortium
    operator = _client(world.operator)

    page = operator.get(PAGE, {"q": "org-c"}).content.decode()
    assert 'data-testid="organisation-org-c"' in page
    assert 'data-testid="organisation-org-a"' not in page
    assert 'data-testid="dataset-' not in page and 'data-testid="budget-' not in page
    assert 'data-testid="job-' not in page
    assert 'value="org-c"' in page  # the search box keeps what was typed

    page = operator.get(PAGE, {"q": "DISTINCT"}).content.decode()  # any case
    assert 'data-testid="dataset-org-a-distinct"' in page
    assert 'data-testid="dataset-org-a-survey"' not in page and 'data-testid="organisation-' not in page

    page = operator.get(PAGE, {"q": "Spam filter org-b"}).content.decode()
    assert f'data-testid="job-{world.b.job_id}"' in page and f'data-testid="job-{world.a.job_id}"' not in page

    page = operator.get(PAGE, {"q": "survey"}).content.decode()
    assert 'data-testid="budget-org-a-survey"' in page and 'data-testid="budget-org-b-survey"' in page
    assert 'data-testid="organisation-' not in page

    page = operator.get(PAGE, {"q": "no-such-thing"}).content.decode()
    assert page.count("None matching “no-such-thing”") == 4


def test_each_section_pages_on_its_own(world):
    Organisation.objects.bulk_create(
        Organisation(name=f"Zeta {i:03}", slug=f"zeta-{i:03}", country="NL", contact_email="z@example.org")
        for i in range(PAGE_SIZE + 2)
    )
    operator = _client(world.operator)
    first = operator.get(PAGE).content.decode()
    total = PAGE_SIZE + 5  # org-a, org-b, org-c and the zetas
    assert f"Page 1 of 2 ({total} in all)" in first
    assert 'href="?organisations_page=2"' in first
    second = operator.get(PAGE, {"organisations_page": "2", "q": "zeta"}).content.decode()
    assert second.count('data-testid="organisation-zeta-') == 2
    # The other sections stay on their first page; the pager keeps the search.
    assert 'data-testid="organisation-org-a"' not in second
    assert "q=zeta" in second.split('data-testid="pager-organisations_page"', 1)[1].split("</nav>")[0]


OVERVIEW_KEYS = {
    "organisations": {"name", "slug", "country", "status", "members", "created_at"},
    "datasets": {
        "organisation",
        "slug",
        "name",
        "schema_confirmed",
        "listed",
        "versions_ready",
        "latest_version",
        "latest_version_at",
        "created_at",
    },
    "budgets": {"dataset", "measure", "total", "spent", "left", "delta_total", "delta_spent", "allocations"},
    "jobs": {
        "id",
        "name",
        "state",
        "participants",
        "participants_accepted",
        "rounds_completed",
        "num_rounds",
        "created_at",
    },
}


def test_the_api_twin_answers_operators_the_same_metadata(consortium):
    world, dataset = consortium
    response = api_client(world.operator).get(API)
    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"q", "page", *OVERVIEW_KEYS}
    for section, keys in OVERVIEW_KEYS.items():
        assert body[section]["count"] == len(body[section]["results"])
        for item in body[section]["results"]:
            assert set(item) == keys, (section, set(item) ^ keys)

    organisations = {o["slug"]: o for o in body["organisations"]["results"]}
    assert {slug: o["members"] for slug, o in organisations.items()} == {"org-a": 3, "org-b": 3, "org-c": 1}
    datasets = {f"{d['organisation']}/{d['slug']}": d for d in body["datasets"]["results"]}
    assert set(datasets) == {"org-a/survey", "org-a/distinct", "org-b/survey"}
    distinct = datasets["org-a/distinct"]
    assert (distinct["versions_ready"], distinct["latest_version"]) == (1, 1)
    budgets = {b["dataset"]: b for b in body["budgets"]["results"]}
    assert budgets["org-a/survey"] | {"dataset": None} == {
        "dataset": None,
        "measure": "pure",
        "total": 10.0,
        "spent": 0.0,
        "left": 10.0,
        "delta_total": 0.0,
        "delta_spent": 0.0,
        "allocations": 1,
    }
    jobs = {j["id"]: j for j in body["jobs"]["results"]}
    assert jobs[world.a.job_id]["state"] == "succeeded"
    assert (jobs[world.a.job_id]["participants"], jobs[world.a.job_id]["participants_accepted"]) == (1, 1)

    text = json.dumps(body)
    leaks = [s for s in _hidden_from_operators(world, dataset) if s in text]
    assert not leaks, leaks
    assert "row_count" not in text and "source_" not in text

    found = api_client(world.operator).get(API, {"q": "distinct"}).json()
    assert [d["slug"] for d in found["datasets"]["results"]] == ["distinct"]
    assert found["organisations"]["count"] == 0 and found["jobs"]["count"] == 0
    beyond = api_client(world.operator).get(API, {"page": 2}).json()
    assert beyond["page"] == 2 and beyond["organisations"] == {"count": 3, "results": []}
    bad = api_client(world.operator).get(API, {"page": "0"})
    assert bad.status_code == 400 and bad.json()["code"] == "invalid"
