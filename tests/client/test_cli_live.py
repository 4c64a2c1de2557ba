"""The `clearinghouse` command end to end: `python -m clearinghouse_client` in a subprocess against the
real service, with the URL and token from the environment and HOME in a temporary directory."""

from __future__ import annotations

import csv
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SQL = "SELECT educ, COUNT(*) AS n FROM pums GROUP BY educ"


@pytest.fixture
def cli(service, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    base = {k: v for k, v in os.environ.items() if not k.startswith("CLEARINGHOUSE_")}
    base.update(HOME=str(home), PYTHONPATH=str(ROOT))
    base.pop("XDG_CONFIG_HOME", None)

    def run(*args, env: dict | None = None, with_credentials: bool = True) -> subprocess.CompletedProcess:
        environment = dict(base)
        if with_credentials:
            environment.update(CLEARINGHOUSE_URL=service.url, CLEARINGHOUSE_TOKEN=service.token)
        environment.update(env or {})
        done = subprocess.run(
            [sys.executable, "-m", "clearinghouse_client", *args],
            check=False,
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert service.token not in done.stdout + done.stderr  # the token is never printed
        return done

    run.home = home
    return run


def test_datasets_budget_preview_query_csv_history(cli, service, tmp_path):
    done = cli("whoami")
    assert done.returncode == 0, done.stderr
    assert "analyst_org-b" in done.stdout and "org-b" in done.stdout

    done = cli("datasets")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["DATASET", "NAME", "COLUMNS", "CREATED"]
    assert any(line.split()[:3] == ["org-a/pums", "Pums", "6"] for line in lines[2:])

    done = cli("budget", "org-a/pums")
    assert done.returncode == 0, done.stderr
    assert "organisation" in done.stdout and "2" in done.stdout

    done = cli("preview", "org-a/pums", "--sql", SQL, "--epsilon", "0.5")
    assert done.returncode == 0, done.stderr
    assert "Laplace" in done.stdout and "epsilon=0.5" in done.stdout and "spends nothing" in done.stdout

    out = tmp_path / "counts.csv"
    done = cli("query", "org-a/pums", "--sql", SQL, "--epsilon", "0.5", "--csv", str(out))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["educ", "n"]
    body = [line for line in lines[2:] if line.strip() and line.split()[0].isdigit()]
    assert len(body) == 16
    assert all("[" in line and "]" in line for line in body)  # value  [lo, hi]
    assert "cost 0.5" in done.stdout and f"wrote 16 rows to {out}" in done.stdout
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["educ", "n", "n_lo", "n_hi"]
    assert sorted(int(r["educ"]) for r in rows) == list(range(1, 17))
    assert all(float(r["n_lo"]) <= float(r["n"]) <= float(r["n_hi"]) for r in rows)

    done = cli("query", "org-a/pums", "--sql", SQL, "--epsilon", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    replay = json.loads(done.stdout)
    assert replay["replayed"] is True and replay["status"] == "released"
    assert [str(r["n"]) for r in replay["result"]["rows"]] == [r["n"] for r in rows]

    done = cli("history", "org-a/pums")
    assert done.returncode == 0, done.stderr
    assert "released" in done.stdout and "SELECT educ" in done.stdout


def test_errors_exit_1_with_code_and_detail(cli, service):
    done = cli("query", "org-a/pums", "--sql", "SELECT * FROM pums", "--epsilon", "1")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error (unsupported_sql): ")

    done = cli("budget", "org-c/missing")
    assert done.returncode == 1 and done.stderr.startswith("error (not_found): ")

    done = cli("datasets", env={"CLEARINGHOUSE_TOKEN": "chp_wrong"})
    assert done.returncode == 1 and done.stderr.startswith("error (")

    done = cli("datasets", with_credentials=False)
    assert done.returncode == 1 and done.stderr.startswith("error (not_logged_in): ")

    done = cli("query", "org-a/pums", "--sql", "SELECT COUNT(*) FROM pums")
    assert done.returncode == 1 and done.stderr.startswith("error (invalid_arguments): ")


def test_login_stores_credentials_0600_and_agreement(cli, service):
    from clearinghouse.datasets.services import agreement_publish

    done = cli("login", "--url", service.url, "--token", service.token, with_credentials=False)
    assert done.returncode == 0, done.stderr
    assert "analyst_org-b" in done.stdout
    config = cli.home / ".config" / "clearinghouse" / "config.json"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert json.loads(config.read_text()) == {"url": service.url, "token": service.token}

    agreement_publish(actor=service.world.a.steward, dataset=service.dataset, text="Aggregates only, please.")
    done = cli("agreement", "org-a/pums", with_credentials=False)  # from the stored config
    assert done.returncode == 0, done.stderr
    assert "Aggregates only, please." in done.stdout and "not accepted yet" in done.stdout
    done = cli(
        "query",
        "org-a/pums",
        "--sql",
        "SELECT COUNT(*) FROM pums",
        "--epsilon",
        "0.1",
        with_credentials=False,
    )
    assert done.returncode == 1 and done.stderr.startswith("error (agreement_required): ")
    done = cli("agreement", "org-a/pums", "--accept", with_credentials=False)
    assert done.returncode == 0 and "accepted version 1" in done.stdout
    done = cli(
        "query",
        "org-a/pums",
        "--sql",
        "SELECT COUNT(*) FROM pums",
        "--epsilon",
        "0.1",
        "--no-wait",
        with_credentials=False,
    )
    assert done.returncode == 0, done.stderr
