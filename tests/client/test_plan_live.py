"""Planning by accuracy from the Python client and the `clearinghouse plan` command, against the real
service (live_server + a real Celery worker thread): the least ε for a target, the curve, nothing spent."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clearinghouse_client import ClearinghouseError, Client

REF = "org-a/pums"
SQL = "SELECT educ, COUNT(*) AS n, AVG(income) AS mean_income FROM pums GROUP BY educ"
ROOT = Path(__file__).resolve().parents[2]


def test_client_plan_target_curve_and_errors(service):
    with Client(service.url, service.token, timeout=60) as client:
        plan = client.plan(REF, sql=SQL, target=10, curve=True)
        assert plan["measure"] == "epsilon" and plan["target_half_width"] == 10.0
        n = next(a for a in plan["preview"]["aggregates"] if a["name"] == "n")
        assert n["half_width_95"] <= 10 and plan["preview"]["cost"]["epsilon"] <= plan["level"]
        assert [u["aggregate"] for u in plan["unplanned"]] == ["mean_income"]
        assert any(w["code"] == "group_too_small_for_mean" for w in plan["preview"]["warnings"])
        assert [p["level"] for p in plan["curve"]] == [0.05, 0.1, 0.25, 0.5, 1.0, 2.0]

        # the level it found, previewed, meets the target; the preview carries the same warnings
        preview = client.preview(REF, sql=SQL, privacy={"epsilon": plan["level"]})
        assert next(a for a in preview["aggregates"] if a["name"] == "n")["half_width_95"] <= 10
        assert [w["code"] for w in preview["warnings"]] == [w["code"] for w in plan["preview"]["warnings"]]

        spec_plan = client.plan(REF, spec={"aggregates": [{"type": "count"}]}, levels=[1, 0.5])
        assert spec_plan["level"] is None and [p["level"] for p in spec_plan["curve"]] == [0.5, 1.0]

        with pytest.raises(ClearinghouseError) as refused:
            client.plan(REF, sql="SELECT MEDIAN(age) FROM pums", target=5)
        assert refused.value.status == 400 and refused.value.code == "accuracy_not_plannable"
        with pytest.raises(ClearinghouseError) as refused:
            client.plan(REF, sql=SQL, target=-1)
        assert refused.value.code == "accuracy_target_invalid"
        assert client.budget(REF)["left"]["organisation"] == pytest.approx(2.0)  # nothing spent
        assert client.history(REF) == []


def test_cli_plan(service, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLEARINGHOUSE_")}
    env.update(
        HOME=str(home), PYTHONPATH=str(ROOT), CLEARINGHOUSE_URL=service.url, CLEARINGHOUSE_TOKEN=service.token
    )

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, "-m", "clearinghouse_client", *args],
            check=False,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert service.token not in done.stdout + done.stderr
        return done

    done = cli("plan", REF, "--sql", SQL, "--target", "50", "--curve")
    assert done.returncode == 0, done.stderr
    first = done.stdout.splitlines()[0]
    assert first.startswith("least ε for ±50 at 95%: ")
    level = float(first.rsplit(" ", 1)[1])
    assert 0 < level < 1
    assert "not planned: mean_income" in done.stdout
    assert "warning (group_too_small_for_mean)" in done.stdout
    assert "A plan spends nothing." in done.stdout
    curve_header = next(line for line in done.stdout.splitlines() if line.startswith("EPSILON"))
    assert curve_header.split() == ["EPSILON", "±n", "mean_income", "n≥"]

    spec = tmp_path / "count.json"
    spec.write_text('{"aggregates": [{"type": "count"}]}')
    done = cli("plan", REF, "--spec", str(spec), "--levels", "0.5,1")
    assert done.returncode == 0, done.stderr
    rows = [
        line.split() for line in done.stdout.splitlines() if line.strip() and line.split()[0][0].isdigit()
    ]
    assert [r[0] for r in rows] == ["0.5", "1"]

    done = cli("plan", REF, "--sql", SQL)
    assert done.returncode == 1 and "error (invalid_arguments)" in done.stderr
    done = cli("plan", REF, "--sql", "SELECT MEDIAN(age) FROM pums", "--target", "5")
    assert done.returncode == 1 and "error (accuracy_not_plannable)" in done.stderr
