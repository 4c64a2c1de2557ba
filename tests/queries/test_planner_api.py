"""The accuracy planner's API (`POST .../queries/plan`) and the preview's warnings, end to end with a
real Celery worker on the `dp` queue: plans spend nothing, errors answer with stable codes."""

from __future__ import annotations

import pytest

from clearinghouse.queries.ledger import budget_set
from clearinghouse.queries.models import LedgerEntry, PrivacyBudget, Query
from tests.factories import api_client

URL = "/api/v1/datasets/org-a/pums/queries"
SQL = "SELECT educ, COUNT(*) AS n, SUM(age) AS years, AVG(income) AS m FROM pums GROUP BY educ"


def ledger(dataset) -> tuple[float, int, int]:
    budget = PrivacyBudget.objects.get(dataset=dataset)
    return budget.spent, LedgerEntry.objects.filter(budget=budget).count(), Query.objects.count()


def test_plan_finds_the_least_epsilon_and_spends_nothing(setup):
    world, dataset = setup
    analyst = api_client(world.b.analyst)
    answer = analyst.post(URL + "/plan", {"sql": SQL, "target_half_width": 400, "curve": True}, format="json")
    assert answer.status_code == 200, answer.json()
    plan = answer.json()
    assert plan["measure"] == "epsilon" and plan["target_half_width"] == 400.0
    level = plan["level"]
    assert 0 < level < 10
    assert (
        plan["preview"]["cost"]["epsilon"] == pytest.approx(level)
        and plan["preview"]["cost"]["epsilon"] <= level
    )
    widths = {a["name"]: a["half_width_95"] for a in plan["preview"]["aggregates"]}
    assert widths["n"] <= 400 and widths["years"] <= 400 and widths["m"] is None
    assert widths["years"] > 0.9 * 400  # the binding aggregate is close to the target: minimal
    assert plan["unplanned"] == [{"aggregate": "m", "type": "mean", "reason": plan["unplanned"][0]["reason"]}]
    assert plan["min_group_sizes"]["m"] > 1 and plan["calibrations"] >= 2
    codes = {(w["code"], w["aggregate"]) for w in plan["preview"]["warnings"]}
    assert ("group_too_small_for_mean", "m") in codes
    assert plan["version"] == 1 and plan["left"]["organisation"] == pytest.approx(2.0)
    curve = plan["curve"]
    assert [p["level"] for p in curve] == [0.05, 0.1, 0.25, 0.5, 1.0, 2.0]
    years = [p["half_widths"]["years"] for p in curve]
    assert years == sorted(years, reverse=True) and years[0] > years[-1]
    assert all(p["half_widths"]["m"] is None for p in curve)
    assert ledger(dataset) == (0.0, 0, 0)  # planning spends nothing and records no query

    # The level it found, asked for in a preview, meets the target; one 1% lower does not.
    at = analyst.post(URL + "/preview", {"sql": SQL, "privacy": {"epsilon": level}}, format="json").json()
    assert max(a["half_width_95"] or 0 for a in at["aggregates"]) <= 400
    below = analyst.post(URL + "/preview", {"sql": SQL, "privacy": {"epsilon": level * 0.99}}, format="json")
    assert max(a["half_width_95"] or 0 for a in below.json()["aggregates"]) > 400
    assert ledger(dataset) == (0.0, 0, 0)


def test_curve_at_chosen_levels_for_a_spec(setup):
    world, dataset = setup
    analyst = api_client(world.b.analyst)
    body = {"spec": {"aggregates": [{"type": "count"}]}, "levels": [2, 0.5, 1]}
    plan = analyst.post(URL + "/plan", body, format="json").json()
    assert plan["level"] is None and plan["preview"] is None
    assert [p["level"] for p in plan["curve"]] == [0.5, 1.0, 2.0]
    widths = [p["half_widths"]["count"] for p in plan["curve"]]
    assert widths[0] > widths[1] > widths[2] > 0
    assert ledger(dataset) == (0.0, 0, 0)


def test_preview_warns_when_the_interval_covers_the_range(setup):
    world, dataset = setup
    budget_set(
        actor=world.a.steward, dataset=dataset, measure="pure", total=3.0, per_query_max=1.5, max_rows=1000
    )
    analyst = api_client(world.b.analyst)
    body = {"sql": "SELECT COUNT(*) AS n, AVG(age) AS a FROM pums", "privacy": {"epsilon": 0.01}}
    preview = analyst.post(URL + "/preview", body, format="json")
    assert preview.status_code == 200, preview.json()
    warnings = {w["aggregate"]: w for w in preview.json()["warnings"]}
    assert warnings["n"]["code"] == "interval_covers_range" and "1000" in warnings["n"]["message"]
    assert warnings["n"]["details"]["public_range"] == 1000
    assert warnings["a"]["code"] == "interval_covers_range"  # even 1000 rows are too few at ε = 0.01
    calm = analyst.post(
        URL + "/preview", {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 1}}, format="json"
    )
    assert calm.json()["warnings"] == []
    assert ledger(dataset) == (0.0, 0, 0)


@pytest.mark.parametrize(
    "body,code",
    [
        ({"sql": "SELECT COUNT(*) FROM pums", "target_half_width": 0}, "accuracy_target_invalid"),
        ({"sql": "SELECT COUNT(*) FROM pums", "target_half_width": -3}, "accuracy_target_invalid"),
        ({"sql": "SELECT COUNT(*) FROM pums", "target_half_width": "inf"}, "accuracy_target_invalid"),
        ({"sql": "SELECT SUM(income) FROM pums", "target_half_width": 1e-3}, "accuracy_target_invalid"),
        ({"sql": "SELECT MEDIAN(age), AVG(age) FROM pums", "target_half_width": 5}, "accuracy_not_plannable"),
        (
            {"sql": "SELECT COUNT(*) FROM pums", "privacy": {"epsilon": 1}, "target_half_width": 5},
            "invalid_privacy_loss",
        ),
        ({"sql": "SELECT COUNT(*) FROM pums"}, "invalid_query"),
        ({"sql": "SELECT COUNT(*) FROM pums", "levels": [1, -1]}, "invalid_privacy_loss"),
        ({"sql": "SELECT * FROM pums", "target_half_width": 5}, "unsupported_sql"),
    ],
)
def test_plan_errors_answer_with_codes(setup, body, code):
    world, dataset = setup
    answer = api_client(world.b.analyst).post(URL + "/plan", body, format="json")
    assert answer.status_code == 400, answer.json()
    assert answer.json()["code"] == code
    assert ledger(dataset) == (0.0, 0, 0)


def test_foreign_dataset_is_not_found(setup):
    world, _ = setup
    answer = api_client(world.b.analyst).post(
        "/api/v1/datasets/org-a/survey/queries/plan",
        {"sql": "SELECT COUNT(*) FROM survey", "target_half_width": 5},
        format="json",
    )
    assert answer.status_code == 404 and answer.json()["code"] == "not_found"
