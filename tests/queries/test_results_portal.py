"""A released answer in the portal: its result page (SQL, cost, times, the table with 95% intervals,
the bar chart with error bars, a note on intervals that say little) and its CSV download, reopened
from the console's history. Who may see them is the API's rule (`query_get`, `query_answer_visible`):
the asking organisation and the dataset owner read the answer, operators see only that it ran, other
organisations get 404."""

from __future__ import annotations

import csv
import io
import re
import uuid
import xml.etree.ElementTree as ET

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from clearinghouse.accounts.models import User
from clearinghouse.queries.models import Query

EVIL = "<script>alert(1)</script>"
FORMULA = '=HYPERLINK("http://evil.example","x")'

RESULT = {
    "columns": ["group", "count", "avg_age"],
    "group_by": ["group"],
    "aggregates": [
        {"name": "count", "type": "count", "column": None},
        {"name": "avg_age", "type": "mean", "column": "age"},
    ],
    "rows": [
        {"group": "a", "count": 1234, "avg_age": 41.23456},
        {"group": EVIL, "count": 17, "avg_age": 35.0},
        {"group": FORMULA, "count": -3, "avg_age": None},
        {"group": "@SUM(1)", "count": 8, "avg_age": 50.5},
    ],
    "intervals": [
        {"count": [1230.5, 1237.5], "avg_age": [40.0, 42.5]},
        {"count": [13.5, 20.5], "avg_age": [10.0, 70.0]},  # 60 of age's public 0..100: says little
        {"count": [-6.5, 0.5]},
        {"count": [4.5, 11.5], "avg_age": [20.0, 71.0]},  # 51 of 100: says little too
    ],
    "cost": {"measure": "pure", "epsilon": 0.5, "delta": 0.0, "rho": None},
}


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _released(world, *, result: dict | None = RESULT, status: str = "released", asker=None) -> Query:
    """A release on org A's dataset, as the worker stores it: asked by org A's analyst unless `asker`
    (a member of another organisation) asked it."""
    dataset = world.a.dataset
    analyst = asker or world.a.analyst
    return Query.objects.create(
        dataset=dataset,
        version=dataset.versions.get(number=1),
        organisation=analyst.membership.organisation,
        analyst=analyst,
        spec={"q": uuid.uuid4().hex},
        sql='SELECT "group", COUNT(*), AVG(age) AS avg_age FROM survey GROUP BY "group"',
        query_hash=uuid.uuid4().hex,
        status=status,
        cost=0.5,
        privacy={"epsilon": 0.5},
        result=result,
        finished_at=timezone.now() if status == "released" else None,
    )


def _urls(query: Query) -> tuple[str, str]:
    args = [query.dataset.organisation.slug, query.dataset.slug, query.pk]
    return reverse("portal:query_result", args=args), reverse("portal:query_result_csv", args=args)


def test_result_page_shows_the_answer_as_a_table_and_a_chart(world):
    query = _released(world)
    page_url, csv_url = _urls(query)
    response = _client(world.a.analyst).get(page_url)
    assert response.status_code == 200
    page = response.content.decode()
    assert "AVG(age) AS avg_age" in page and 'data-testid="query-cost">ε = 0.5<' in page
    # Numbers through `sig`: integers grouped, floats to 4 significant digits, intervals too.
    assert '1,234 <span class="muted">[1,230, 1,238]</span>' in page
    assert '41.23 <span class="muted">[40, 42.5]</span>' in page
    # User text is escaped in the table and in the chart alike; no script reaches the page.
    assert EVIL not in page and page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 2
    # One note: avg_age's interval covers most of age's public range in two of four rows.
    notes = re.findall(r'data-testid="wide-interval">(.*?)</p>', page, re.S)
    assert len(notes) == 1 and "avg_age" in notes[0] and "2 of 4 rows" in notes[0] and "0 to 100" in notes[0]
    assert page.count('data-wide="true"') == 2
    # The chart: a grouped answer with two aggregates, one panel each, error bars per interval.
    svg = re.search(r"<svg.*?</svg>", page, re.S).group(0)
    root = ET.fromstring(svg)
    assert root.get("data-testid") == f"result-{query.pk}-chart"
    series = {}
    for element in root.iter():
        if element.get("data-series"):
            series.setdefault(element.get("data-series"), []).append(element)
    assert len(series["count"]) == len(series["avg_age"]) == 4
    (count_errors,) = series["count 95% interval"]
    (mean_errors,) = series["avg_age 95% interval"]
    assert len(count_errors.findall("{http://www.w3.org/2000/svg}path")) == 4
    assert len(mean_errors.findall("{http://www.w3.org/2000/svg}path")) == 3  # one row has no mean
    assert f'href="{csv_url}"' in page


def test_csv_download_matches_the_stored_answer_and_defuses_formulas(world):
    query = _released(world)
    _, csv_url = _urls(query)
    response = _client(world.a.analyst).get(csv_url)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"] == f'attachment; filename="org-a-survey-query-{query.pk}.csv"'
    rows = list(csv.reader(io.StringIO(response.content.decode())))
    assert rows[0] == ["group", "count", "count_lo", "count_hi", "avg_age", "avg_age_lo", "avg_age_hi"]
    assert len(rows) == 1 + len(RESULT["rows"])
    for line, row, interval in zip(rows[1:], RESULT["rows"], RESULT["intervals"], strict=True):
        record = dict(zip(rows[0], line, strict=True))
        assert int(record["count"]) == row["count"]  # a negative number stays a number
        assert [float(record["count_lo"]), float(record["count_hi"])] == interval["count"]
        if row["avg_age"] is None:
            assert record["avg_age"] == record["avg_age_lo"] == record["avg_age_hi"] == ""
        else:
            assert float(record["avg_age"]) == row["avg_age"]  # every digit kept
            assert [float(record["avg_age_lo"]), float(record["avg_age_hi"])] == interval["avg_age"]
    groups = [line[0] for line in rows[1:]]
    # Text a spreadsheet would run as a formula starts with a quote; other text is left as it is.
    assert groups == ["a", EVIL, f"'{FORMULA}", "'@SUM(1)"]


def test_the_asker_and_the_dataset_owner_read_the_answer_and_other_organisations_get_404(world):
    grantee = User.objects.get(username="admin_org-c")  # org C holds a query grant on org A's dataset
    asked_by_grantee = _released(world, asker=grantee)
    for user in (grantee, world.a.analyst, world.a.steward):  # the asker; the dataset's owner
        client = _client(user)
        page_url, csv_url = _urls(asked_by_grantee)
        assert 'data-testid="result-table"' in client.get(page_url).content.decode()
        assert client.get(csv_url).status_code == 200
    # Another organisation: neither the page nor the CSV exists for it (as the API's 404), even for
    # org C, which sees the dataset but did not ask org A's query.
    asked_by_owner = _released(world)
    for user, query in (
        (world.b.analyst, asked_by_grantee),
        (world.b.admin, asked_by_owner),
        (grantee, asked_by_owner),
    ):
        client = _client(user)
        page_url, csv_url = _urls(query)
        assert client.get(page_url).status_code == 404
        assert client.get(csv_url).status_code == 404
    # A query id under another dataset's URL is not found either, even for org C, which sees both
    # datasets and asked the query.
    elsewhere = ["org-b", world.b.dataset.slug, asked_by_grantee.pk]
    assert _client(grantee).get(reverse("portal:query_result", args=elsewhere)).status_code == 404
    assert _client(grantee).get(reverse("portal:query_result_csv", args=elsewhere)).status_code == 404
    wrong = reverse("portal:query_result", args=["org-b", world.b.dataset.slug, asked_by_owner.pk])
    assert _client(world.b.analyst).get(wrong).status_code == 404
    assert _client(world.a.analyst).get(wrong).status_code == 404
    # Anonymous visitors are sent to log in.
    assert Client().get(_urls(asked_by_owner)[1]).status_code == 302


def test_operators_see_that_it_ran_not_what_it_said(world):
    query = _released(world)
    page_url, csv_url = _urls(query)
    client = _client(world.operator)
    page = client.get(page_url).content.decode()
    assert 'data-testid="answer-withheld"' in page and "AVG(age) AS avg_age" in page
    assert "1,234" not in page and "<svg" not in page
    assert client.get(csv_url).status_code == 404


@pytest.mark.parametrize("status", ["pending", "refused"])
def test_an_unanswered_query_has_a_page_but_no_csv(world, status):
    query = _released(world, result=None, status=status)
    page_url, csv_url = _urls(query)
    client = _client(world.a.analyst)
    assert client.get(page_url).status_code == 200
    assert client.get(csv_url).status_code == 404


def test_history_rows_reopen_their_results(world):
    first, second = _released(world), _released(world, result=None, status="refused")
    console = reverse("portal:query_console", args=["org-a", world.a.dataset.slug])
    page = _client(world.a.analyst).get(console).content.decode()
    for query in (first, second):
        link = re.search(rf'<a href="([^"]+)" data-testid="history-result-{query.pk}">', page)
        assert link and link.group(1) == _urls(query)[0]
    assert _client(world.a.analyst).get(_urls(first)[0]).status_code == 200


def test_a_single_count_is_a_table_without_a_chart(world):
    query = _released(
        world,
        result={
            "columns": ["count"],
            "group_by": [],
            "aggregates": [{"name": "count", "type": "count", "column": None}],
            "rows": [{"count": 2}],
            "intervals": [{"count": [-1.2, 5.2]}],
        },
    )
    page = _client(world.a.analyst).get(_urls(query)[0]).content.decode()
    assert '<table data-testid="result-table">' in page and "<svg" not in page
    assert "[-1.2, 5.2]" in page and 'data-testid="wide-interval"' not in page  # a count has no public range


def test_a_release_in_the_console_shows_table_chart_and_links_then_reopens(setup):
    """A real release (PUMS, the DP worker): the console's released card shows the table, the chart
    and the links; the CSV holds exactly what was stored; the history reopens the same page."""
    world, dataset = setup
    client = _client(world.b.analyst)
    console = reverse("portal:query_console", args=["org-a", dataset.slug])
    sql = "SELECT sex, COUNT(*), AVG(income) FROM pums GROUP BY sex"
    response = client.post(console, {"sql": sql, "epsilon": "0.5", "action": "run"})
    assert response.status_code == 200
    query = Query.objects.get(dataset=dataset, status="released")
    page_url, csv_url = _urls(query)
    page = response.content.decode()
    card = page[page.index('id="result"') :]
    assert '<table data-testid="result-table">' in card and f'data-testid="result-{query.pk}-chart"' in card
    assert f'href="{page_url}"' in card and f'href="{csv_url}"' in card
    assert f'data-testid="history-result-{query.pk}"' in page

    rows = list(csv.reader(io.StringIO(client.get(csv_url).content.decode())))
    columns = query.result["columns"]
    assert rows[0][0] == "sex" and {f"{c}_lo" for c in columns[1:]} <= set(rows[0])
    assert [line[0] for line in rows[1:]] == [row["sex"] for row in query.result["rows"]]
    for line, row, interval in zip(rows[1:], query.result["rows"], query.result["intervals"], strict=True):
        record = dict(zip(rows[0], line, strict=True))
        for column in columns[1:]:
            assert float(record[column]) == pytest.approx(row[column], rel=1e-12)
            assert float(record[f"{column}_lo"]) == pytest.approx(interval[column][0], rel=1e-12)
    # The operator sees that it ran, not its answer: no CSV (as the API withholds the result).
    assert _client(world.operator).get(csv_url).status_code == 404
    assert client.get(page_url).status_code == 200
