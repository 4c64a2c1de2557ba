"""JSON log lines with request ids; paths redacted to routes; the run-wide secrets check can fail."""

import json
import logging
import os
from pathlib import Path

from django.test import Client

from clearinghouse.core import request_context
from tests import log_secrets


def this_process_log() -> list[dict]:
    path = Path(os.environ["CLEARINGHOUSE_TEST_LOG_DIR"]) / f"process-{os.getpid()}.jsonl"
    for handler in logging.getLogger().handlers:
        handler.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_log_line_is_json_with_the_request_id():
    token = request_context.activate(
        request_context.RequestContext(request_id="req-logs-0123456789", ip=None)
    )
    try:
        logging.getLogger("clearinghouse.test").warning("something %s", "happened")
    finally:
        request_context.deactivate(token)
    line = this_process_log()[-1]
    assert line["message"] == "something happened"
    assert line["request_id"] == "req-logs-0123456789"
    assert line["level"] == "WARNING" and line["logger"] == "clearinghouse.test" and line["time"]


def test_request_warnings_name_the_route_not_the_path(world):
    """An invitation link holds its token: Django's "Forbidden: <path>" warning must not."""
    client = Client()
    client.force_login(world.b.admin)
    path = f"/invitations/{world.a.invitation_token}/"
    response = client.post(path, HTTP_X_REQUEST_ID="req-forbidden-0123456789")
    assert response.status_code == 403
    lines = [line for line in this_process_log() if line.get("request_id") == "req-forbidden-0123456789"]
    assert {line["logger"] for line in lines} >= {"django.request", "clearinghouse.access"}
    assert all(world.a.invitation_token not in json.dumps(line) for line in lines)
    assert any(
        "invitations/<str:token>/" in line["message"] for line in lines if line["logger"] == "django.request"
    )
    access = next(line for line in lines if line["logger"] == "clearinghouse.access")
    assert access["route"] == "invitations/<str:token>/" and access["status"] == 403


def test_the_secrets_scan_finds_secrets_and_tokens_and_nothing_else(tmp_path):
    (tmp_path / "process-1.jsonl").write_text(
        '{"message": "ok"}\n'
        '{"message": "password is correct-horse-battery-staple"}\n'
        '{"message": "Bearer chp_0123456789ab_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}\n'
        '{"message": "key+/material=="}\n'
        '{"message": "secret inside:tokenpart-xyz_0123456789-tail"}\n'
    )
    (tmp_path / "secrets-1.json").write_text("{}")  # not a log: never scanned
    secrets = {
        "correct-horse-battery-staple": "password",
        "key+/material==": "keyring key",
        "tokenpart-xyz_0123456789": "API token secret",
    }
    assert log_secrets.scan(tmp_path, secrets) == [
        "process-1.jsonl:2: password",
        "process-1.jsonl:3: API token",
        "process-1.jsonl:4: keyring key",
        "process-1.jsonl:5: API token secret",
    ]
    assert log_secrets.scan(tmp_path, {}) == ["process-1.jsonl:3: API token"]


def test_keyring_material_lists_key_bytes_in_base64_and_hex(tmp_path):
    path = tmp_path / "keyring.json"
    path.write_text(
        json.dumps({"keys": [{"id": "k1", "key": "AAEC"}], "staging_keys": [{"id": "s1", "private": "/w=="}]})
    )
    assert log_secrets.keyring_material(path) == {
        "AAEC": "keyring key (k1)",
        "000102": "keyring key (k1, hex)",
        "/w==": "keyring private (s1)",
        "ff": "keyring private (s1, hex)",
    }
