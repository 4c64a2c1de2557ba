"""/healthz and /readyz against the real database and broker; the SuperLink check against a real socket."""

import socket

import pytest

from clearinghouse.celery import app


def test_healthz_answers_without_touching_anything(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_checks_database_and_broker(db, client):
    response = client.get("/readyz")
    assert response.status_code == 200, response.content
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok", "superlink": "disabled"},
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_readyz_reports_an_unreachable_superlink_and_a_listening_one(db, client, settings):
    settings.FLOWER_SUPERLINK = f"127.0.0.1:{_free_port()}"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["superlink"] == "unreachable"

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        settings.FLOWER_SUPERLINK = f"127.0.0.1:{listener.getsockname()[1]}"
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["superlink"] == "ok"


@pytest.fixture
def unreachable_broker():
    configured = app.conf.broker_write_url
    app.conf.broker_write_url = f"redis://127.0.0.1:{_free_port()}/0"  # the URL publishers connect to
    yield
    app.conf.broker_write_url = configured


def test_readyz_is_unready_without_the_broker_and_hides_its_address(db, client, unreachable_broker):
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"] == "unreachable"
    assert "127.0.0.1" not in response.content.decode()
