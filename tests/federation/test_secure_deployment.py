"""Integration: TLS (self-signed CA made with ``cryptography``) and SuperNode authentication
(registered public keys) on loopback. Slow: ``pytest -m slow tests/federation``."""

from __future__ import annotations

import json
import time

import pytest

from federation.flower.local import LocalFederation, read_jsonl
from federation.flower.security import make_supernode_keypair, make_tls_material
from tests.federation.conftest import SMS_SPAM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SMS_SPAM.exists(), reason=f"{SMS_SPAM} not available"),
]


def test_tls_and_supernode_authentication(tmp_path, tiny_model_dir):
    lines = SMS_SPAM.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:121]
    tls = make_tls_material(tmp_path / "tls")
    with LocalFederation(tmp_path / "fed", tls=tls.as_dict(), node_auth=True) as fed:
        fed.start_superlink()
        for i, org in enumerate(("acme", "globex", "intruder")):
            part = tmp_path / f"{org}.tsv"
            part.write_text("\n".join([header, *rows[i::3]]) + "\n", encoding="utf-8")
            private, public = make_supernode_keypair(tmp_path / "keys", org)
            if org != "intruder":
                registered = fed.register_supernode(public, name=org)
                assert registered.returncode == 0, registered.stdout + registered.stderr
            node_config = {
                "data-path": str(part),
                "text-column": "SMS",
                "label-column": "Label",
                "organisation": org,
            }
            fed.add_supernode(org, node_config, threads=1, auth_private_key=private, wait=org != "intruder")

        out = tmp_path / "out"
        result = fed.run_app(
            {
                "labels": "ham,spam",
                "base-model": str(tiny_model_dir),
                "num-rounds": 1,
                "min-clients": 2,
                "participants": "",
                "batch-size": 16,
                "max-length": 32,
                "learning-rate": 0.01,
                "connect-timeout": 20.0,
                "round-timeout": 120.0,
                "output-dir": str(out),
                "metrics-jsonl": str(out / "metrics.jsonl"),
            },
            timeout=300,
        )
        records = read_jsonl(out / "metrics.jsonl")
        assert [r["event"] for r in records] == ["started", "round", "finished"], result.stdout[-3000:]
        assert {c["organisation"] for c in records[1]["clients"]} == {
            "acme",
            "globex",
        }  # intruder never joined
        assert json.loads((out / "report.json").read_text())["status"] == "succeeded"
        time.sleep(0.5)
        assert "SuperNode ID" not in fed.log_text("intruder")
