"""The client and CLI without the service: canned answers through httpx.MockTransport."""

from __future__ import annotations

import io
import json
import stat

import httpx
import pytest

from clearinghouse_client import ClearinghouseError, Client, Release, cli, parse_ref

TOKEN = "chp_unit-test-secret"

RESULT = {
    "columns": ["sex", "n", "mean"],
    "group_by": ["sex"],
    "aggregates": [],
    "cost": {},
    "rows": [{"sex": "0", "n": 10, "mean": 2.5}, {"sex": "1", "n": 12, "mean": None}],
    "intervals": [{"n": [8.0, 12.0], "mean": [1.0, 4.0]}, {"n": [10.0, 14.0]}],
}


def make_client(handler) -> Client:
    return Client("http://service.test/", TOKEN, transport=httpx.MockTransport(handler))


def test_release_table_and_csv():
    release = Release(
        {"id": 7, "status": "released", "result": RESULT, "cost": {"amount": 0.5, "delta": 0.0}}
    )
    assert release.released and release.aggregates == ["n", "mean"]
    assert release.columns() == ["sex", "n", "n_lo", "n_hi", "mean", "mean_lo", "mean_hi"]
    assert release.table() == [
        {"sex": "0", "n": 10, "n_lo": 8.0, "n_hi": 12.0, "mean": 2.5, "mean_lo": 1.0, "mean_hi": 4.0},
        {"sex": "1", "n": 12, "n_lo": 10.0, "n_hi": 14.0, "mean": None, "mean_lo": None, "mean_hi": None},
    ]
    buffer = io.StringIO()
    release.to_csv(buffer)
    assert buffer.getvalue() == (
        "sex,n,n_lo,n_hi,mean,mean_lo,mean_hi\n0,10,8.0,12.0,2.5,1.0,4.0\n1,12,10.0,14.0,,,\n"
    )
    with pytest.raises(ClearinghouseError) as caught:
        Release({"id": 8, "status": "pending"}).table()
    assert caught.value.code == "not_released"


def test_parse_ref():
    assert parse_ref("org-a/pums") == ("org-a", "pums")
    for bad in ("pums", "a/b/c", "/pums", ""):
        with pytest.raises(ClearinghouseError):
            parse_ref(bad)


def test_auth_header_pagination_and_errors():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        if request.url.path == "/api/v1/datasets":
            offset = int(request.url.params.get("offset", 0))
            following = (
                f"http://service.test/api/v1/datasets?limit=2&offset={offset + 2}" if offset < 2 else None
            )
            return httpx.Response(
                200,
                json={
                    "count": 3,
                    "next": following,
                    "previous": None,
                    "results": [{"slug": f"d{i}"} for i in range(offset, min(offset + 2, 3))],
                },
            )
        if request.url.path == "/api/v1/me":
            return httpx.Response(401, json={"code": "not_authenticated", "detail": "Bad token."})
        return httpx.Response(502, text="<html>Bad gateway</html>")

    client = make_client(handler)
    assert [d["slug"] for d in client.datasets()] == ["d0", "d1", "d2"]
    assert len(seen) == 2
    with pytest.raises(ClearinghouseError) as caught:
        client.me()
    assert (caught.value.status, caught.value.code, caught.value.detail) == (
        401,
        "not_authenticated",
        "Bad token.",
    )
    with pytest.raises(ClearinghouseError) as caught:
        client.budget("org/x")
    assert caught.value.status == 502 and caught.value.code == "http_502"
    assert TOKEN not in repr(client) and TOKEN not in str(caught.value)


def test_history_follows_the_pagination():
    """The query list is paginated like every list: history() reads every page."""

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/datasets/org-a/pums/queries"
        offset = int(request.url.params.get("offset", 0))
        following = (
            f"http://service.test/api/v1/datasets/org-a/pums/queries?limit=2&offset={offset + 2}"
            if offset < 2
            else None
        )
        return httpx.Response(
            200,
            json={
                "count": 3,
                "next": following,
                "previous": None,
                "results": [{"id": i, "status": "released"} for i in range(offset, min(offset + 2, 3))],
            },
        )

    assert [release.id for release in make_client(handler).history("org-a/pums")] == [0, 1, 2]


def test_unreachable_service():
    def handler(request):
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ClearinghouseError) as caught:
        make_client(handler).me()
    assert caught.value.status == 0 and caught.value.code == "connection_error"


def test_query_polls_a_pending_release_and_merges_spec_privacy(monkeypatch):
    monkeypatch.setattr("clearinghouse_client.client.time.sleep", lambda s: None)
    polls = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            body = json.loads(request.content)
            assert body == {"spec": {"aggregates": [{"type": "count"}], "privacy": {"epsilon": 0.3}}}
            assert request.url.params["wait"] == "30"
            return httpx.Response(
                202, json={"id": 5, "url": "/api/v1/queries/5", "status": "pending", "replayed": False}
            )
        polls.append(request.url.path)
        status = "running" if len(polls) < 3 else "released"
        return httpx.Response(
            200,
            json={
                "id": 5,
                "url": "/api/v1/queries/5",
                "status": status,
                "replayed": False,
                **({"result": RESULT} if status == "released" else {}),
            },
        )

    release = make_client(handler).query(
        "org/x", spec={"aggregates": [{"type": "count"}]}, privacy={"epsilon": 0.3}
    )
    assert release.released and polls == ["/api/v1/queries/5"] * 3


def test_failed_query_raises_and_no_wait_returns_pending(monkeypatch):
    monkeypatch.setattr("clearinghouse_client.client.time.sleep", lambda s: None)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            return httpx.Response(202, json={"id": 6, "url": "/api/v1/queries/6", "status": "pending"})
        return httpx.Response(
            200,
            json={
                "id": 6,
                "status": "failed",
                "error": {"code": "budget_exceeded", "detail": "Not enough left."},
            },
        )

    client = make_client(handler)
    pending = client.query("org/x", sql="SELECT COUNT(*) FROM t", privacy={"epsilon": 1}, wait=0)
    assert pending.status == "pending" and not pending.released
    with pytest.raises(ClearinghouseError) as caught:
        client.query("org/x", sql="SELECT COUNT(*) FROM t", privacy={"epsilon": 1}, wait=5)
    assert caught.value.code == "budget_exceeded" and caught.value.detail == "Not enough left."
    with pytest.raises(ClearinghouseError) as caught:
        client.query("org/x", privacy={"epsilon": 1})
    assert caught.value.code == "invalid_query"


def test_cli_login_without_verify_writes_0600_config(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("CLEARINGHOUSE_URL", raising=False)
    monkeypatch.delenv("CLEARINGHOUSE_TOKEN", raising=False)
    assert cli.main(["login", "--url", "http://service.test/", "--token", TOKEN, "--no-verify"]) == 0
    path = tmp_path / ".config" / "clearinghouse" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"url": "http://service.test", "token": TOKEN}
    assert cli.settings() == ("http://service.test", TOKEN)
    monkeypatch.setenv("CLEARINGHOUSE_URL", "http://other.test")
    assert cli.settings() == ("http://other.test", TOKEN)  # the environment wins
    path.chmod(0o644)
    assert cli.main(["login", "--url", "http://service.test", "--token", TOKEN, "--no-verify"]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err


def test_cli_error_format(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CLEARINGHOUSE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setenv("CLEARINGHOUSE_TOKEN", TOKEN)
    assert cli.main(["whoami", "--timeout", "5"]) == 1
    out = capsys.readouterr()
    assert out.err.startswith("error (connection_error): ") and TOKEN not in out.err
    spec = tmp_path / "spec.json"
    spec.write_text("[1, 2]")
    assert cli.main(["preview", "org/x", "--spec", str(spec), "--epsilon", "1"]) == 1
    assert capsys.readouterr().err.startswith("error (invalid_arguments): ")
