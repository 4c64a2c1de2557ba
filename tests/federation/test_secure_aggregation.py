"""Secure aggregation (SecAgg+): Flower's protocol code driven by our ServerApp round and our
ClientApp's train handler, on an in-process grid that keeps each node's context between messages
(as a SuperNode does); the loopback run is in test_deployment.py."""

from __future__ import annotations

import copy
import importlib
import json
from itertools import count

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.constant import ErrorCode

from federation.flower.reporting import MemoryReporter
from federation.flower.secure_aggregation import (
    PROTOCOL_RECORD,
    SecAggParams,
    SecureAggregationError,
    canary,
    secaggplus_train_mod,
    secure_train,
    strong_pseudo_rand_gen,
    threshold_for,
    update_reply,
)
from federation.flower.settings import (
    SECURE_AGGREGATION_MAX_MEMBERS,
    FederationConfigError,
    JobFailed,
    JobSettings,
)
from tests.federation.test_apps import settings_for

_CLIENT_PROTOCOL = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
_SERVER_PROTOCOL = importlib.import_module("flwr.server.workflow.secure_aggregation.secaggplus_workflow")


class StatefulGrid:
    """Delivers a copy of each message to ``client_app.app`` (or the node's own callable in
    ``members``) with the destination node's context, kept across messages; a raised exception
    becomes the error reply a SuperNode sends; records what the server received; ``silent`` nodes
    never answer and ``drop_at`` makes a node fall silent from a protocol stage on."""

    def __init__(self, node_configs: dict[int, dict], members: dict | None = None):
        self.node_configs = node_configs
        self.members = members or {}
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config=c, state=RecordDict(), run_config={})
            for n, c in node_configs.items()
        }
        self.silent: set[int] = set()
        self.drop_at: dict[int, str] = {}
        self.received: list = []
        self._ids = count(1)

    def get_node_ids(self):
        return list(self.node_configs)

    def send_and_receive(self, messages, *, timeout=None):
        from federation.flower.client_app import app

        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            node = message.metadata.dst_node_id
            record = message.content.config_records.get(PROTOCOL_RECORD)
            stage = record.get("stage") if record is not None else None
            if stage is not None and self.drop_at.get(node) == stage:
                self.silent.add(node)
            if node in self.silent:
                continue
            # A copy, as if it crossed the network (the protocol's handlers change what they read).
            member = self.members.get(node, app)
            try:
                replies.append(member(copy.deepcopy(message), self.contexts[node]))
            except Exception as exc:  # noqa: BLE001 (as flwr.supernode.runtime.run_clientapp does)
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(exc)}:<'{exc}'>")
                replies.append(Message(error, reply_to=message))
        self.received += replies
        return replies


def _updates_seen(grid: StatefulGrid) -> list[np.ndarray]:
    """Every float array the server received in a train reply."""
    seen = []
    for reply in grid.received:
        if reply.metadata.message_type != MessageType.TRAIN or reply.has_error():
            continue
        for record in reply.content.array_records.values():
            seen += [a.numpy() for a in record.values() if a.numpy().dtype.kind == "f"]
    return seen


def test_secure_round_matches_plain_fedavg_within_quantisation(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.server_app import initial_arrays, run_job

    everyone = "org:acme,org:globex,org:initech"
    plain = settings_for(tiny_model_dir, tmp_path / "plain", participants=everyone, **{"num-rounds": 1})
    secure = settings_for(
        tiny_model_dir,
        tmp_path / "secure",
        participants=everyone,
        **{"num-rounds": 1, "secure-aggregation": True},
    )
    start = initial_arrays(plain)
    plain_grid, secure_grid = StatefulGrid(three_nodes), StatefulGrid(three_nodes)
    plain_arrays, plain_history = run_job(plain_grid, plain, arrays=start)
    reporter = MemoryReporter()
    secure_arrays, history = run_job(secure_grid, secure, arrays=start, reporter=reporter)

    # Quantisation: the step on the mean update is 2·C/T/Σ(n/max_weight), rounding unbiased.
    weights = [c["train"]["num-examples"] for c in history[0]["clients"]]
    step = SecAggParams().step(weights)
    moved = 0.0
    for key, plain_value in plain_arrays.items():
        a, b, s = plain_value.numpy(), secure_arrays[key].numpy(), start[key].numpy()
        assert b.dtype == np.float32 and a.shape == b.shape
        # Worst case: each of the 3 members' stochastic rounding is off by under one step.
        assert np.max(np.abs(a - b)) <= 3 * step + 1e-6, key
        moved = max(moved, float(np.max(np.abs(a - s))))
    assert moved > 100 * step  # the round did change the model: the comparison means something

    record = history[0]
    assert record["clients_trained"] == 3 and record["dropouts"] == []
    # The strategy's weighted mean of the members' train metrics, as in the plain job.
    assert record["train"]["train-loss"] == pytest.approx(plain_history[0]["train"]["train-loss"])
    for client in record["clients"]:
        assert {"train-loss", "num-examples", "secagg-clipped"} <= set(client["train"])
        assert client["train"]["secagg-clipped"] == 0
        assert "eval-accuracy" in client["evaluate"]
    # The server never received a member's trained state or update: no float array came back, in
    # any train reply of the protocol (the masked updates are integers in config records).
    assert _updates_seen(secure_grid) == []
    assert len(_updates_seen(plain_grid)) > 0
    assert record["bytes_received"] > 0 and record["bytes_sent"] > record["trainable_bytes"]
    assert secure.to_public_dict()["secure_aggregation"] is True


@pytest.mark.parametrize("strategy", ["fedprox", "fedadam"])
def test_secure_aggregation_with_the_other_strategies(tiny_model_dir, tmp_path, three_nodes, strategy):
    from federation.flower.server_app import initial_arrays, run_job

    everyone = "org:acme,org:globex,org:initech"
    kwargs = {"num-rounds": 1, "strategy": strategy, "participants": everyone}
    plain = settings_for(tiny_model_dir, tmp_path / "p", **kwargs)
    secure = settings_for(tiny_model_dir, tmp_path / "s", **kwargs, **{"secure-aggregation": True})
    start = initial_arrays(plain)
    plain_arrays, _ = run_job(StatefulGrid(three_nodes), plain, arrays=start)
    secure_arrays, history = run_job(StatefulGrid(three_nodes), secure, arrays=start)
    assert history[0]["clients_trained"] == 3
    # FedProx aggregates as FedAvg; FedAdam's server step moves at most as far as its input.
    step = SecAggParams().step([c["train"]["num-examples"] for c in history[0]["clients"]])
    for key, value in plain_arrays.items():
        assert np.max(np.abs(value.numpy() - secure_arrays[key].numpy())) <= 3 * step + 1e-6, key


def test_a_member_dropping_after_sharing_keys_is_recovered(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.server_app import run_job

    settings = settings_for(
        tiny_model_dir,
        tmp_path,
        participants="org:acme,org:globex,org:initech",
        **{"num-rounds": 2, "secure-aggregation": True},
    )
    grid = StatefulGrid(three_nodes)
    # initech's machine dies when asked for its masked update in round 1 (its keys are shared).
    grid.drop_at[303] = "collect_masked_vectors"
    _, history = run_job(grid, settings)
    assert [r["clients_trained"] for r in history] == [2, 2]
    assert history[0]["dropouts"] == [
        {
            "node_id": 303,
            "organisation": "initech",
            "reason": "no reply within round-timeout (30 s) (secure aggregation, collect masked updates stage)",
        }
    ]
    assert history[1]["dropouts"][0]["reason"].endswith("(secure aggregation, setup stage)")


def test_too_few_members_left_to_unmask_fails_the_job(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.server_app import run_job

    settings = settings_for(
        tiny_model_dir,
        tmp_path,
        participants="org:acme,org:globex,org:initech",
        **{"num-rounds": 1, "secure-aggregation": True, "min-clients": 3},
    )
    grid = StatefulGrid(three_nodes)
    grid.drop_at[202] = "share_keys"
    with pytest.raises(
        JobFailed, match=r"round 1: secure aggregation stopped at its share keys stage.*node 202"
    ):
        run_job(grid, settings)


def test_masks_of_another_prg_are_caught(tiny_model_dir, tmp_path, three_nodes):
    """A member whose masks do not cancel (here: initech on stock Flower, its masks from Flower's
    own 32-bit-seeded PRG, while the server unmasks with ours) fails the round by the canary check
    instead of producing a garbage model."""
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    from federation.flower.client_app import app, handle_train
    from federation.flower.server_app import run_job

    def stock_flower_member(message, context):
        if PROTOCOL_RECORD not in message.content.config_records:
            return app(message, context)  # its other messages (identify, evaluate) as ours
        _CLIENT_PROTOCOL.pseudo_rand_gen = pseudo_rand_gen
        try:
            return _CLIENT_PROTOCOL.secaggplus_mod(
                message, context, lambda m, c: update_reply(m, handle_train(m, c), c)
            )
        finally:
            _CLIENT_PROTOCOL.pseudo_rand_gen = strong_pseudo_rand_gen

    settings = settings_for(
        tiny_model_dir,
        tmp_path,
        participants="org:acme,org:globex,org:initech",
        **{"num-rounds": 1, "secure-aggregation": True},
    )
    with pytest.raises(JobFailed, match="the unmasked sum failed its check"):
        run_job(StatefulGrid(three_nodes, members={303: stock_flower_member}), settings)


def test_plain_jobs_are_untouched_by_the_mod(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.server_app import run_job

    settings = settings_for(tiny_model_dir, tmp_path, participants="org:acme,org:globex", **{"num-rounds": 1})
    grid = StatefulGrid(three_nodes)
    _, history = run_job(grid, settings)
    assert history[0]["clients_trained"] == 2
    assert all("secagg-clipped" not in c["train"] for c in history[0]["clients"])


def test_settings():
    base = {"labels": "ham,spam", "participants": "org:a,org:b"}
    assert JobSettings.from_run_config(base).secure_aggregation is False
    assert JobSettings.from_run_config({**base, "secure-aggregation": True}).secure_aggregation is True
    with pytest.raises(FederationConfigError, match="secure-aggregation must be true or false"):
        JobSettings.from_run_config({**base, "secure-aggregation": "yes"})
    with pytest.raises(FederationConfigError, match="secure-aggregation needs min-clients >= 2"):
        JobSettings.from_run_config({**base, "secure-aggregation": True, "min-clients": 1})


def test_threshold_is_a_majority_and_at_least_min_clients():
    assert [threshold_for(k, 2) for k in (2, 3, 4, 5, 7)] == [2, 2, 3, 3, 4]
    assert threshold_for(3, 3) == 3


def test_strong_prg_uses_the_whole_seed():
    """Flower's PRG XOR-folds the secret into 32 bits: two secrets equal after folding give the
    same mask. Ours is SHAKE256 of the whole secret."""
    import hashlib

    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    a = bytes(range(32))
    b = a[4:8] + a[:4] + a[8:]  # the same 4-byte words in another order: the same 32-bit fold
    shape = [(16,)]
    assert np.array_equal(pseudo_rand_gen(a, 2**32, shape)[0], pseudo_rand_gen(b, 2**32, shape)[0])
    assert not np.array_equal(
        strong_pseudo_rand_gen(a, 2**32, shape)[0], strong_pseudo_rand_gen(b, 2**32, shape)[0]
    )
    first, scalar, matrix = strong_pseudo_rand_gen(a, 2**32, [(1000,), (), (3, 4)])
    assert first.dtype == np.int64 and first.min() >= 0 and first.max() < 2**32 and first.max() > 2**31
    stream = hashlib.shake_256(a).digest(4 * 1013)
    assert int(first[0]) == int.from_bytes(stream[:4], "little")
    assert scalar.shape == () and int(scalar) == int.from_bytes(stream[4000:4004], "little")
    assert matrix.shape == (3, 4)
    assert strong_pseudo_rand_gen(a, 2**16, [(1000,)])[0].max() < 2**16
    with pytest.raises(ValueError, match="power of 2"):
        strong_pseudo_rand_gen(a, 1000, [(1,)])


def test_members_dropping_at_two_stages_of_one_round(tiny_model_dir, tmp_path, three_nodes):
    """Five members: one gone before it shared its keys, one gone when asked for its masked
    update. The other three's sum is unmasked (their masks with the second rebuilt from shares,
    none with the first) and is their plain FedAvg."""
    from federation.flower.server_app import initial_arrays, run_job
    from tests.federation.conftest import write_tsv

    nodes = dict(three_nodes)
    for node, org, seed in ((404, "hooli", 14), (505, "vandelay", 15)):
        nodes[node] = {**three_nodes[101], "organisation": org}
        nodes[node]["data-path"] = str(write_tsv(tmp_path / f"{org}.tsv", 40, seed))
    everyone = ",".join(f"org:{c['organisation']}" for c in nodes.values())
    secure = settings_for(
        tiny_model_dir, tmp_path / "s", participants=everyone, **{"num-rounds": 1, "secure-aggregation": True}
    )
    grid = StatefulGrid(nodes)
    grid.drop_at[404], grid.drop_at[505] = "collect_masked_vectors", "share_keys"
    start = initial_arrays(secure)
    secure_arrays, history = run_job(grid, secure, arrays=start)
    assert history[0]["clients_trained"] == 3
    assert [d["node_id"] for d in history[0]["dropouts"]] == [404, 505]

    three = settings_for(
        tiny_model_dir, tmp_path / "p", participants="org:acme,org:globex,org:initech", **{"num-rounds": 1}
    )
    plain_arrays, _ = run_job(StatefulGrid(three_nodes), three, arrays=start)
    step = SecAggParams().step([c["train"]["num-examples"] for c in history[0]["clients"]])
    for key, value in plain_arrays.items():
        assert np.max(np.abs(value.numpy() - secure_arrays[key].numpy())) <= 3 * step + 1e-6, key


class TamperingGrid(StatefulGrid):
    """A member (``cheat``) whose masked update comes with a DP-SGD report that is not its plan's."""

    def __init__(self, node_configs, cheat: int):
        super().__init__(node_configs)
        self.cheat = cheat

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            if reply.metadata.src_node_id == self.cheat and "metrics" in reply.content.metric_records:
                reply.content.metric_records["metrics"]["dp-noise-multiplier"] = 0.01
        return replies


def test_a_private_job_refuses_a_masked_update_not_trained_as_planned(tiny_model_dir, tmp_path, three_nodes):
    """A private job's check runs on the members' reports before their masked updates are summed:
    the refused update is left out of the sum (the protocol treats it as a dropout)."""
    from federation.flower.server_app import run_job
    from tests.federation.test_dp_apps import private_settings

    settings = private_settings(
        tiny_model_dir,
        tmp_path,
        participants=("acme", "globex", "initech"),
        **{"min-clients": 2, "secure-aggregation": True},
    )
    arrays, history = run_job(TamperingGrid(three_nodes, cheat=202), settings)
    for record in history:
        assert record["clients_trained"] == 2
        assert {c["organisation"] for c in record["clients"] if "train" in c} == {"acme", "initech"}
        (dropout,) = record["dropouts"]
        assert dropout["organisation"] == "globex" and "noise multiplier" in dropout["reason"]
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["privacy"]["globex"]["steps_taken"] == 0 and report["privacy"]["acme"]["steps_taken"] > 0


def test_an_operator_turns_it_on_in_the_job_settings(world):
    """``secure-aggregation`` is a run-config key the operator tunes through the job's settings
    (checked by ``JobSettings`` when the job is created, sent in the run config at schedule)."""
    from federation.models import FederatedJob
    from tests.factories import api_client
    from tests.federation.test_jobs import job_payload

    operator = api_client(world.operator)
    response = operator.post(
        "/api/v1/federated-jobs", job_payload(settings={"secure-aggregation": True}), format="json"
    )
    assert response.status_code == 201, response.json()
    job = FederatedJob.objects.get(pk=response.json()["id"])
    assert job.settings == {"secure-aggregation": True}
    refused = operator.post(
        "/api/v1/federated-jobs", job_payload(settings={"secure-aggregation": "yes"}), format="json"
    )
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_job_settings"
    assert "secure-aggregation must be true or false" in refused.json()["detail"]


# ----------------------------------------------------------------------------- non-finite updates,
# the member limit and the mask generator, on a small model of fixed updates (no training)
SHAPES = {"a": (4,), "b": (2, 3)}
WEIGHTS = {101: 30, 202: 50, 303: 20}


def _global_state() -> ArrayRecord:
    return ArrayRecord({k: Array(np.linspace(-1, 1, int(np.prod(s))).reshape(s)) for k, s in SHAPES.items()})


def _update_of(node: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(node)
    return {k: rng.uniform(-0.01, 0.01, s) for k, s in SHAPES.items()}


def _trained_reply(message: Message, node: int, update: dict[str, np.ndarray]) -> Message:
    received = message.content.array_records["arrays"]
    trained = ArrayRecord({k: Array(received[k].numpy() + update[k]) for k in received})
    content = RecordDict({"arrays": trained, "metrics": MetricRecord({"num-examples": WEIGHTS[node]})})
    return Message(content=content, reply_to=message)


def _member(node: int, update: dict[str, np.ndarray]):
    """A member on our ClientApp's mod whose training gives ``update``."""

    def member(message, context):
        return secaggplus_train_mod(message, context, lambda m, c: _trained_reply(m, node, update))

    return member


def _stock_flower_member(node: int, update: dict[str, np.ndarray]):
    """A member on stock Flower's ``secaggplus_mod`` (no refusal of its own): it masks ``update``
    (and the canary entry, which it gets right) as the legacy ``FitRes`` it reads."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    def handler(message, context):
        weight = WEIGHTS[node]
        max_weight = float(context.state.config_records["secaggplus_state"]["max_weight"])
        arrays = [update[k] for k in SHAPES] + [np.array([canary(weight, max_weight)])]
        fitres = FitRes(Status(Code.OK, "Success"), ndarrays_to_parameters(arrays), weight, {})
        return Message(content=compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=message)

    return lambda message, context: _CLIENT_PROTOCOL.secaggplus_mod(message, context, handler)


def _round(members: dict, **kwargs):
    grid = StatefulGrid({n: {} for n in members}, members=members)
    contents = {n: RecordDict({"arrays": _global_state(), "config": ConfigRecord({})}) for n in members}
    return secure_train(grid, contents, server_round=1, timeout=30, min_clients=2, **kwargs)


def _collect_errors(secure) -> dict[int, str]:
    return {
        r.metadata.src_node_id: str(r.error.reason)
        for stage, _, replies in secure.exchanges
        if stage == "collect masked updates"
        for r in replies
        if r.has_error()
    }


def test_fixed_updates_round_trip():
    """The small model the tests below use: three members' mean update comes back within the bound."""
    params = SecAggParams(max_weight=50)
    secure = _round({n: _member(n, _update_of(n)) for n in WEIGHTS}, params=params)
    assert secure.failure == "" and secure.mean_update is not None
    total = sum(WEIGHTS.values())
    for key in SHAPES:
        expected = sum(WEIGHTS[n] * _update_of(n)[key] for n in WEIGHTS) / total
        assert np.max(np.abs(secure.mean_update[key].numpy() - expected)) <= 3 * params.step(
            list(WEIGHTS.values())
        )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_member_refuses_to_mask_a_non_finite_update(bad):
    """Flower quantises NaN to -2^31 (and clips ±inf silently): the member refuses, drops out of
    the round with that reason, and the others' mean is unmasked without it."""
    params = SecAggParams(max_weight=50)
    poisoned = _update_of(202)
    poisoned["b"][1, 2] = bad
    members = {n: _member(n, _update_of(n)) for n in WEIGHTS}
    members[202] = _member(202, poisoned)
    secure = _round(members, params=params)
    assert secure.failure == "" and secure.mean_update is not None
    assert sorted(r.metadata.src_node_id for r in secure.contributors) == [101, 303]
    reason = _collect_errors(secure)[202]
    assert "SecureAggregationError" in reason and "1 non-finite entries" in reason
    both = WEIGHTS[101] + WEIGHTS[303]
    for key in SHAPES:
        expected = (WEIGHTS[101] * _update_of(101)[key] + WEIGHTS[303] * _update_of(303)[key]) / both
        assert np.max(np.abs(secure.mean_update[key].numpy() - expected)) <= 2 * params.step([30, 20])


def test_update_reply_refuses_non_finite_entries():
    from flwr.common import parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    message = Message(
        RecordDict({"arrays": _global_state()}), dst_node_id=101, message_type=MessageType.TRAIN
    )
    context = Context(run_id=1, node_id=101, node_config={}, state=RecordDict(), run_config={})
    context.state.config_records["secaggplus_state"] = ConfigRecord(
        {"clipping_range": 1.0, "max_weight": 50.0}
    )
    fine = update_reply(message, _trained_reply(message, 101, _update_of(101)), context)
    sent = parameters_to_ndarrays(compat.recorddict_to_fitres(fine.content, keep_input=True).parameters)
    assert np.allclose(sent[0], _update_of(101)["a"]) and np.allclose(sent[1], _update_of(101)["b"])
    assert sent[2].tolist() == [canary(30, 50.0)]
    poisoned = _update_of(101)
    poisoned["a"][:2] = np.nan
    with pytest.raises(SecureAggregationError, match="2 non-finite entries"):
        update_reply(message, _trained_reply(message, 101, poisoned), context)


def test_the_server_range_checks_every_entry_of_the_mean():
    """A member that masks a NaN anyway (stock Flower, no refusal) turns one entry of the sum into
    garbage that the canary entry does not see: the round fails instead of returning that mean."""
    poisoned = _update_of(202)
    poisoned["a"][3] = np.nan
    members = {n: _member(n, _update_of(n)) for n in WEIGHTS}
    members[202] = _stock_flower_member(202, poisoned)
    secure = _round(members, params=SecAggParams(max_weight=50))
    assert secure.mean_update is None
    assert "1 entries of the unmasked mean update are beyond" in secure.failure
    assert "non-finite" in secure.failure
    # Its finite updates alone pass (the stand-in member is otherwise right).
    members[202] = _stock_flower_member(202, _update_of(202))
    assert _round(members, params=SecAggParams(max_weight=50)).failure == ""


def test_the_member_limit():
    # 256 members' quantised entries could sum past the modulus: refused before any exchange.
    contents = {n: RecordDict({"arrays": _global_state(), "config": ConfigRecord({})}) for n in range(1, 257)}

    class NoGrid:
        def send_and_receive(self, messages, *, timeout=None):
            raise AssertionError("no message may go out")

    secure = secure_train(NoGrid(), contents, server_round=1, timeout=1, min_clients=2)
    assert secure.mean_update is None
    assert (
        secure.failure
        == "secure aggregation takes at most 255 members in a round (their sums must fit the modulus), 256 selected"
    )
    base = {"labels": "ham,spam", "participants": "*", "secure-aggregation": True}
    assert JobSettings.from_run_config({**base, "min-clients": 255}).min_clients == 255
    with pytest.raises(FederationConfigError, match="secure-aggregation takes at most 255 members"):
        JobSettings.from_run_config({**base, "min-clients": 256})
    assert SecAggParams().max_members == SECURE_AGGREGATION_MAX_MEMBERS == 255


def test_both_ends_refuse_to_run_without_the_strong_prg(monkeypatch):
    """The PRG replacement is process-wide and made on import: if anything puts Flower's back,
    the member refuses to mask and the server to unmask (instead of a silent weak mask)."""
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    protocol = Message(
        RecordDict({PROTOCOL_RECORD: ConfigRecord({"stage": "setup"})}),
        dst_node_id=101,
        message_type=MessageType.TRAIN,
    )
    context = Context(run_id=1, node_id=101, node_config={}, state=RecordDict(), run_config={})
    with monkeypatch.context() as patch:
        patch.setattr(_CLIENT_PROTOCOL, "pseudo_rand_gen", pseudo_rand_gen)
        with pytest.raises(SecureAggregationError, match=r"secure aggregation \(member\).*pseudo_rand_gen"):
            secaggplus_train_mod(protocol, context, lambda m, c: pytest.fail("the handler ran"))
        plain = Message(RecordDict(), dst_node_id=101, message_type=MessageType.TRAIN)
        assert secaggplus_train_mod(plain, context, lambda m, c: "handled") == "handled"
    with monkeypatch.context() as patch:
        patch.setattr(_SERVER_PROTOCOL, "pseudo_rand_gen", pseudo_rand_gen)
        with pytest.raises(SecureAggregationError, match=r"secure aggregation \(server\)"):
            _round({n: _member(n, _update_of(n)) for n in WEIGHTS})
    assert _round({n: _member(n, _update_of(n)) for n in WEIGHTS}).failure == ""
