"""Integration: a real SuperLink and three SuperNodes on loopback (subprocesses), jobs submitted
with ``flwr run``, runtime dependency installation disabled, no network beyond 127.0.0.1.

Slow (minutes on a 2-core machine): ``pytest -m slow tests/federation``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path

import pytest

from federation.flower.local import LocalFederation, read_jsonl
from tests.federation.conftest import SMS_SPAM

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not SMS_SPAM.exists(), reason=f"{SMS_SPAM} not available"),
]

ORGS = ("acme", "globex", "initech")


@contextlib.contextmanager
def three_members(workdir: Path):
    """A SuperLink and the three members' SuperNodes, each on a third of 240 SMS messages."""
    lines = SMS_SPAM.read_text(encoding="utf-8").splitlines()
    header, rows = lines[0], lines[1:241]  # a small slice: 80 messages per member
    fed = LocalFederation(workdir)
    try:
        fed.start_superlink()
        for i, org in enumerate(ORGS):
            part = workdir / f"{org}.tsv"
            part.write_text("\n".join([header, *rows[i::3]]) + "\n", encoding="utf-8")
            fed.add_supernode(
                org,
                {"data-path": str(part), "text-column": "SMS", "label-column": "Label", "organisation": org},
                threads=1,
            )
        yield fed
    finally:
        fed.close()


@pytest.fixture(scope="module")
def federation(tmp_path_factory, tiny_model_dir):
    """Shared by the module's tests; `test_killed_supernode_mid_round` kills initech's node in it."""
    with three_members(tmp_path_factory.mktemp("federation")) as fed:
        yield fed


@pytest.fixture
def all_three(tmp_path, tiny_model_dir):
    """A federation of its own, with all three members running (whatever ran before)."""
    with three_members(tmp_path / "federation") as fed:
        yield fed


def run_config(tiny_model_dir: Path, out: Path, **overrides):
    values = {
        "job-id": out.name,
        "labels": "ham,spam",
        "base-model": str(tiny_model_dir),
        "num-rounds": 2,
        "min-clients": 2,
        "participants": ",".join(f"org:{o}" for o in ORGS),
        "batch-size": 16,
        "max-length": 32,
        "learning-rate": 0.01,
        "round-timeout": 120.0,
        "connect-timeout": 60.0,
        "output-dir": str(out),
        "metrics-jsonl": str(out / "metrics.jsonl"),
    }
    values.update(overrides)
    return values


def test_two_round_job_on_three_supernodes(federation, tiny_model_dir):
    out = federation.workdir / "job-fedavg"
    result = federation.run_app(run_config(tiny_model_dir, out), timeout=480)
    records = read_jsonl(out / "metrics.jsonl")
    assert [r["event"] for r in records] == ["started", "round", "round", "finished"], result.stdout[-3000:]
    for record in records[1:3]:
        assert record["clients_trained"] == 3
        assert {c["organisation"] for c in record["clients"]} == set(ORGS)
        assert record["bytes_sent"] > 0 and record["bytes_received"] > 0 and record["round_seconds"] > 0
        assert 0.0 <= record["evaluate"]["accuracy"] <= 1.0
        assert record["evaluate"]["n"] == 48  # 3 members x 20 % of 80 rows
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "succeeded" and report["rounds_completed"] == 2
    assert (out / "adapter.safetensors").stat().st_size > 0


def test_killed_supernode_mid_round(federation, tiny_model_dir):
    """initech's SuperNode is killed as round 2 starts: round 2 completes with the other two."""
    out = federation.workdir / "job-dropout"
    config = run_config(tiny_model_dir, out, **{"round-timeout": 150.0})

    def killer():
        deadline = time.monotonic() + 400
        while time.monotonic() < deadline:
            if any(r.get("event") == "round" for r in read_jsonl(out / "metrics.jsonl")):
                federation.kill("initech")
                return
            time.sleep(0.5)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    result = federation.run_app(config, timeout=540)
    thread.join(timeout=5)
    records = read_jsonl(out / "metrics.jsonl")
    rounds = [r for r in records if r["event"] == "round"]
    assert [r["event"] for r in records][-1] == "finished", result.stdout[-3000:]
    assert [r["clients_trained"] for r in rounds] == [3, 2]
    assert [d["organisation"] for d in rounds[1]["dropouts"]] == ["initech"]
    assert (out / "adapter.safetensors").exists()


def test_secure_aggregation_matches_plain_fedavg(all_three, tiny_model_dir):
    """The same one-round job with and without SecAgg+ on the three SuperNodes: the server's
    aggregate differs only by the quantisation (each member's stochastic rounding is off by under
    one step), and no member's update reached it (the round's clients report ``secagg-clipped``,
    counted by the ClientApp's SecAgg+ path)."""
    import numpy as np

    from federation.flower.secure_aggregation import SecAggParams
    from training.params import load_trainable_state

    plain_out, secure_out = all_three.workdir / "job-plain-1", all_three.workdir / "job-secagg"
    all_three.run_app(run_config(tiny_model_dir, plain_out, **{"num-rounds": 1}), timeout=300)
    result = all_three.run_app(
        run_config(tiny_model_dir, secure_out, **{"num-rounds": 1, "secure-aggregation": True}), timeout=300
    )
    records = read_jsonl(secure_out / "metrics.jsonl")
    assert [r["event"] for r in records] == ["started", "round", "finished"], result.stdout[-3000:]
    round_record = records[1]
    assert round_record["clients_trained"] == 3 and round_record["dropouts"] == []
    assert all(c["train"]["secagg-clipped"] == 0 for c in round_record["clients"])
    step = SecAggParams().step([c["train"]["num-examples"] for c in round_record["clients"]])
    plain = load_trainable_state(plain_out / "adapter.safetensors")
    secure = load_trainable_state(secure_out / "adapter.safetensors")
    assert plain.keys() == secure.keys()
    worst = max(float(np.max(np.abs(plain[k].numpy() - secure[k].numpy()))) for k in plain)
    assert worst <= 3 * step + 1e-6
    assert json.loads((secure_out / "report.json").read_text())["settings"]["secure_aggregation"] is True
