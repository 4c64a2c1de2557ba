"""The Python client against the real service (live_server + a real Celery worker thread)."""

from __future__ import annotations

import csv
import io

import pytest

from clearinghouse_client import ClearinghouseError, Client, Release

REF = "org-a/pums"
SQL = "SELECT educ, COUNT(*) AS n, AVG(income) AS mean_income FROM pums WHERE age >= 30 GROUP BY educ"
PRIVACY = {"epsilon": 0.5}


@pytest.fixture
def client(service):
    with Client(service.url, service.token, timeout=60) as client:
        yield client


def test_me_datasets_and_budget(client, service):
    me = client.me()
    assert me["username"] == "analyst_org-b" and me["organisation"] == "org-b"
    refs = {f"{d['organisation']}/{d['slug']}" for d in client.datasets()}
    assert REF in refs
    dataset = client.dataset(REF)
    assert {c["name"] for c in dataset["schema"]["columns"]} >= {"age", "educ", "income"}
    assert dataset["agreement_version"] is None
    left = client.budget(REF)["left"]
    assert left["measure"] == "pure" and left["organisation"] == pytest.approx(2.0)
    assert left["per_query_max"] == pytest.approx(1.5)
    assert "chp_" not in repr(client)


def test_preview_release_replay_csv_and_history(client, service, tmp_path):
    preview = client.preview(REF, sql=SQL, privacy=PRIVACY)
    assert preview["cost"]["epsilon"] == pytest.approx(0.5)
    assert {a["name"] for a in preview["aggregates"]} == {"n", "mean_income"}
    assert all(a["mechanism"] for a in preview["aggregates"])
    assert client.budget(REF)["left"]["organisation"] == pytest.approx(2.0)  # previews are free

    release = client.query(REF, sql=SQL, privacy=PRIVACY, wait=60)
    assert isinstance(release, Release) and release.released and release.replayed is False
    assert release.cost["amount"] == pytest.approx(0.5)
    assert release.group_by == ["educ"] and release.aggregates == ["n", "mean_income"]
    table = release.table()
    assert len(table) == 16 and {r["educ"] for r in table} == {str(i) for i in range(1, 17)}
    assert list(table[0]) == ["educ", "n", "n_lo", "n_hi", "mean_income", "mean_income_lo", "mean_income_hi"]
    for record, row, interval in zip(table, release.rows, release.intervals, strict=True):
        assert record["n"] == row["n"] and [record["n_lo"], record["n_hi"]] == interval["n"]
        assert record["n_lo"] <= record["n"] <= record["n_hi"]
    assert client.budget(REF)["left"]["organisation"] == pytest.approx(1.5)

    again = client.query(REF, sql=SQL, privacy=PRIVACY)
    assert again.replayed is True and again.id == release.id and again.result == release.result
    assert client.budget(REF)["left"]["organisation"] == pytest.approx(1.5)  # a replay spends nothing

    path = tmp_path / "out.csv"
    release.to_csv(path)
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["educ", "n", "n_lo", "n_hi", "mean_income", "mean_income_lo", "mean_income_hi"]
    assert len(rows) == 17
    assert [r[0] for r in rows[1:]] == [r["educ"] for r in table]
    assert [float(r[1]) for r in rows[1:]] == [float(r["n"]) for r in table]
    buffer = io.StringIO()
    release.to_csv(buffer)
    assert buffer.getvalue() == path.read_text()

    history = client.history(REF)
    assert [q.id for q in history] == [release.id] and history[0].status == "released"
    assert client.get_query(release.id).result == release.result


def test_spec_query_with_separate_privacy(client):
    spec = {"aggregates": [{"type": "count"}]}
    release = client.query(REF, spec=spec, privacy={"epsilon": 0.25})
    assert release.released and release.cost["amount"] == pytest.approx(0.25)
    (record,) = release.table()
    name = release.aggregates[0]
    assert record[f"{name}_lo"] <= record[name] <= record[f"{name}_hi"]


def test_errors_raise_clearinghouse_error(client, service):
    with pytest.raises(ClearinghouseError) as caught:
        client.query(REF, sql="SELECT * FROM pums", privacy={"epsilon": 1})
    assert caught.value.status == 400 and caught.value.code == "unsupported_sql" and caught.value.detail
    with pytest.raises(ClearinghouseError) as caught:
        client.preview(REF, sql="SELECT COUNT(*) FROM pums", privacy={"epsilon": 1.4999, "delta": 0.1})
    assert caught.value.status == 400
    with pytest.raises(ClearinghouseError) as caught:
        client.query(REF, sql="SELECT AVG(income) FROM pums", privacy={"epsilon": 1.6})
    assert caught.value.status == 409 and caught.value.code == "above_per_query_max"
    with pytest.raises(ClearinghouseError) as caught:
        client.dataset("org-c/nothing")
    assert caught.value.status == 404 and caught.value.code == "not_found"
    with pytest.raises(ClearinghouseError) as caught:
        Client(service.url, "chp_not-a-real-token").me()
    assert caught.value.status in {401, 403}
    with pytest.raises(ClearinghouseError) as caught:
        client.dataset("no-slash")
    assert caught.value.code == "invalid_ref"
    assert client.budget(REF)["left"]["organisation"] == pytest.approx(2.0)


def test_agreement_must_be_accepted(client, service):
    from clearinghouse.datasets.services import agreement_publish

    agreement_publish(actor=service.world.a.steward, dataset=service.dataset, text="Research only.")
    with pytest.raises(ClearinghouseError) as caught:
        client.query(REF, sql="SELECT COUNT(*) FROM pums", privacy={"epsilon": 0.1})
    assert caught.value.status == 403 and caught.value.code == "agreement_required"
    agreement = client.agreement(REF)
    assert (
        agreement["version"] == 1 and agreement["text"] == "Research only." and agreement["accepted"] is False
    )
    accepted = client.accept_agreement(REF, agreement["version"])
    assert accepted["version"] == 1
    assert client.dataset(REF)["agreement_accepted"] is True
    assert client.query(REF, sql="SELECT COUNT(*) FROM pums", privacy={"epsilon": 0.1}).released
