"""The ClientApp handlers called with real ``Message`` objects, and the ServerApp's job loop on an
in-process grid that delivers messages straight to the ClientApp (no SuperLink, no simulation)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from itertools import count

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict

from federation.flower.reporting import HttpCallbackReporter, JsonLinesReporter, MemoryReporter
from federation.flower.settings import JobFailed, JobSettings
from training.config import TrainingDataError


def settings_for(tiny_model_dir, tmp_path, **overrides):
    values = {
        "labels": "ham,spam",
        "base-model": str(tiny_model_dir),
        "batch-size": 8,
        "max-length": 16,
        "learning-rate": 0.01,
        "lora-dropout": 0.0,
        "num-rounds": 2,
        "min-clients": 2,
        "round-timeout": 30.0,
        "connect-timeout": 2.0,
        "output-dir": str(tmp_path / "out"),
        "job-id": "job-1",
    }
    values.update(overrides)
    return JobSettings.from_run_config(values)


class InProcessGrid:
    """Delivers each message to ``client_app.app`` with the destination node's context.
    ``silent`` nodes never answer (a crashed machine); ``offline`` nodes are not listed."""

    def __init__(self, node_configs: dict[int, dict]):
        self.node_configs = node_configs
        self.silent: set[int] = set()
        self.offline: set[int] = set()
        self.on_round: dict[int, callable] = {}
        self._ids = count(1)
        self.trains = 0

    def get_node_ids(self):
        return [n for n in self.node_configs if n not in self.offline]

    def send_and_receive(self, messages, *, timeout=None):
        from federation.flower.client_app import app

        messages = list(messages)
        if messages and messages[0].metadata.message_type == MessageType.TRAIN:
            self.trains += 1
            if self.trains in self.on_round:
                self.on_round[self.trains](self)
        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            node = message.metadata.dst_node_id
            if node in self.silent or node in self.offline:
                continue
            context = Context(
                run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(), run_config={}
            )
            replies.append(app(message, context))
        return replies


# ----------------------------------------------------------------------------- ClientApp
def test_client_handlers_with_real_messages(tiny_model_dir, tmp_path, toy_tsv):
    from federation.flower.client_app import app
    from federation.flower.server_app import initial_arrays

    settings = settings_for(tiny_model_dir, tmp_path)
    arrays = initial_arrays(settings)
    context = Context(
        run_id=1,
        node_id=7,
        state=RecordDict(),
        run_config={},
        node_config={
            "data-path": str(toy_tsv),
            "text-column": "SMS",
            "label-column": "Label",
            "organisation": "acme",
        },
    )
    config = ConfigRecord(
        {
            "train-config": json.dumps(settings.train),
            "server-round": 1,
            "test-fraction": 0.25,
            "proximal-mu": 0.1,
        }
    )

    train_msg = Message(
        content=RecordDict({"arrays": arrays, "config": config}),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )
    reply = app(train_msg, context)
    assert not reply.has_error(), reply.error
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 30 and metrics["train-steps"] == 4
    assert metrics["train-proximal-loss"] >= 0.0 and metrics["train-seconds"] > 0
    trained = reply.content["arrays"]
    assert list(trained.keys()) == list(arrays.keys())
    assert any("lora" in k for k in trained) and any("classifier" in k or "score" in k for k in trained)
    assert not all(np.array_equal(trained[k].numpy(), arrays[k].numpy()) for k in arrays)
    assert reply.content["info"]["organisation"] == "acme"

    eval_msg = Message(
        content=RecordDict({"arrays": trained, "config": config}),
        dst_node_id=7,
        message_type=MessageType.EVALUATE,
    )
    reply = app(eval_msg, context)
    assert not reply.has_error(), reply.error
    m = reply.content["metrics"]
    assert m["num-examples"] == 10 and 0.0 <= m["eval-accuracy"] <= 1.0 and 0.0 <= m["eval-macro-f1"] <= 1.0
    assert np.asarray(json.loads(reply.content["info"]["confusion"])).sum() == 10

    query = Message(
        content=RecordDict({"config": ConfigRecord({})}), dst_node_id=7, message_type=MessageType.QUERY
    )
    reply = app(query, context)
    assert reply.content["info"]["organisation"] == "acme" and reply.content["info"]["has-data"] is True


def test_client_raises_clear_error_for_bad_column(tiny_model_dir, tmp_path, toy_tsv):
    from federation.flower.client_app import app
    from federation.flower.server_app import initial_arrays

    settings = settings_for(tiny_model_dir, tmp_path)
    context = Context(
        run_id=1,
        node_id=7,
        state=RecordDict(),
        run_config={},
        node_config={"data-path": str(toy_tsv), "text-column": "text", "label-column": "Label"},
    )
    config = ConfigRecord({"train-config": json.dumps(settings.train), "server-round": 1})
    msg = Message(
        content=RecordDict({"arrays": initial_arrays(settings), "config": config}),
        dst_node_id=7,
        message_type=MessageType.TRAIN,
    )
    # The ClientApp raises; Flower's ClientApp runner turns it into an error reply whose reason the
    # ServerApp records as this member's dropout reason.
    with pytest.raises(
        TrainingDataError, match="has no column 'text'; available columns: \\['Label', 'SMS'\\]"
    ):
        app(msg, context)


# ----------------------------------------------------------------------------- ServerApp
@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedadam"])
def test_job_selects_participants_and_saves_outputs(tiny_model_dir, tmp_path, three_nodes, strategy):
    from federation.flower.server_app import run_job
    from training.models import build_model_and_tokenizer
    from training.params import load_trainable_state, load_trainable_state_metadata, set_trainable_state

    settings = settings_for(
        tiny_model_dir,
        tmp_path,
        strategy=strategy,
        participants="org:acme,org:globex",
        **{"metrics-jsonl": str(tmp_path / "out" / "metrics.jsonl")},
    )
    grid = InProcessGrid(three_nodes)
    reporter = MemoryReporter()
    arrays, history = run_job(grid, settings, reporter=reporter)

    assert [r["event"] for r in reporter.records] == ["started", "round", "round", "finished"]
    for record in history:
        assert {c["organisation"] for c in record["clients"]} == {"acme", "globex"}  # initech not selected
        assert record["clients_trained"] == 2 and record["dropouts"] == []
        # train + evaluate to 2 clients, updates from 2 (serialised: keys + numpy headers on top)
        assert 4 * record["trainable_bytes"] <= record["bytes_sent"]
        assert 2 * record["trainable_bytes"] <= record["bytes_received"]
        assert record["evaluate"]["n"] == 16 and 0 <= record["evaluate"]["accuracy"] <= 1
        assert record["round_seconds"] >= record["train_phase_seconds"] > 0
        for client in record["clients"]:
            assert {"train-loss", "train-seconds", "num-examples"} <= set(client["train"])
            assert {"eval-loss", "eval-accuracy", "eval-macro-f1"} <= set(client["evaluate"])
            # FedProx's mu reaches the clients (config "proximal-mu"), which add the proximal term.
            assert (client["train"]["train-proximal-loss"] > 0) == (strategy == "fedprox")

    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "succeeded" and report["rounds_completed"] == 2
    assert report["final_evaluation"]["accuracy"] == history[-1]["evaluate"]["accuracy"]
    state = load_trainable_state(out / "adapter.safetensors")
    assert all(t.dtype == torch.float32 for t in state.values())  # FedAdam's float64 math cast back
    assert (
        json.loads(load_trainable_state_metadata(out / "adapter.safetensors")["train_config"])
        == settings.train
    )
    model, _ = build_model_and_tokenizer(settings.train_config())
    set_trainable_state(model, state)  # strict: fits the model exactly
    assert np.allclose(state[next(iter(state))].numpy(), arrays[next(iter(state))].numpy())
    # metrics-jsonl is written by main() (not run_job); checked in the integration test.


def test_round_completes_without_a_dropped_client(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.server_app import run_job

    settings = settings_for(tiny_model_dir, tmp_path, participants="org:acme,org:globex,org:initech")
    grid = InProcessGrid(three_nodes)
    grid.on_round[2] = lambda g: g.silent.add(303)  # initech's machine dies during round 2
    _, history = run_job(grid, settings)
    assert [r["clients_trained"] for r in history] == [3, 2]
    assert history[1]["dropouts"] == [
        {"node_id": 303, "organisation": "initech", "reason": "no reply within round-timeout (30 s)"}
    ]


def test_job_fails_with_clear_reason_when_too_few_clients_remain(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.server_app import run_job

    settings = settings_for(
        tiny_model_dir, tmp_path, participants="org:acme,org:globex,org:initech", **{"min-clients": 3}
    )
    grid = InProcessGrid(three_nodes)
    grid.on_round[2] = lambda g: g.silent.add(202)
    reporter = MemoryReporter()
    with pytest.raises(
        JobFailed,
        match=r"round 2: only 2 of 3 clients returned a model update \(need min-clients=3\); node 202 \(globex\)",
    ):
        run_job(grid, settings, reporter=reporter)
    assert reporter.records[-1]["event"] == "failed" and reporter.records[-1]["rounds_completed"] == 1
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and "only 2 of 3" in report["reason"]
    assert not (tmp_path / "out" / "adapter.safetensors").exists()


def test_job_fails_when_participants_do_not_connect(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.server_app import run_job

    settings = settings_for(tiny_model_dir, tmp_path, participants="org:acme,org:umbrella")
    with pytest.raises(
        JobFailed, match=r"only 1 of the job's participants connected within 2 s \(need min-clients=2"
    ):
        run_job(InProcessGrid(three_nodes), settings)


# ----------------------------------------------------------------------------- reporters
def test_jsonl_reporter(tmp_path):
    reporter = JsonLinesReporter(tmp_path / "sub" / "m.jsonl", job_id="j")
    reporter.emit({"event": "round", "round": 1})
    reporter.emit({"event": "finished"})
    lines = [json.loads(line) for line in (tmp_path / "sub" / "m.jsonl").read_text().splitlines()]
    assert (
        [line["event"] for line in lines] == ["round", "finished"]
        and lines[0]["job_id"] == "j"
        and "time" in lines[0]
    )


def test_http_callback_reporter_sends_bearer_token():
    received = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.headers.get("Authorization"), json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        HttpCallbackReporter(f"http://127.0.0.1:{server.server_port}/cb", token="tok", job_id="j").emit(
            {"event": "round"}
        )
        # An unreachable callback is logged, never raised.
        HttpCallbackReporter("http://127.0.0.1:1/cb", retries=0, timeout=1).emit({"event": "round"})
    finally:
        server.shutdown()
    assert received == [("Bearer tok", {"event": "round", "job_id": "j", "time": received[0][1]["time"]})]


def test_main_reports_an_invalid_job_before_failing(tmp_path):
    from federation.flower import server_app
    from federation.flower.settings import FederationConfigError

    jsonl = tmp_path / "m.jsonl"
    context = Context(
        run_id=1,
        node_id=1,
        node_config={},
        state=RecordDict(),
        run_config={
            "labels": "ham,spam",
            "num-rounds": 0,
            "strategy": "fedsgd",
            "metrics-jsonl": str(jsonl),
            "job-id": "j9",
        },
    )
    with pytest.raises(FederationConfigError):
        server_app.main(InProcessGrid({}), context)
    (record,) = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert record["event"] == "failed" and record["job_id"] == "j9"
    assert (
        "num-rounds must be a positive integer" in record["reason"] and "unknown strategy" in record["reason"]
    )


def test_main_runs_a_job_and_writes_jsonl(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower import server_app

    out = tmp_path / "out"
    context = Context(
        run_id=1,
        node_id=1,
        node_config={},
        state=RecordDict(),
        run_config={
            "labels": "ham,spam",
            "base-model": str(tiny_model_dir),
            "num-rounds": 1,
            "batch-size": 8,
            "max-length": 16,
            "participants": "org:acme,org:initech",
            "output-dir": str(out),
            "metrics-jsonl": str(out / "m.jsonl"),
        },
    )
    server_app.main(InProcessGrid(three_nodes), context)
    events = [json.loads(line)["event"] for line in (out / "m.jsonl").read_text().splitlines()]
    assert events == ["started", "round", "finished"]
    assert (out / "adapter.safetensors").exists() and (out / "report.json").exists()
