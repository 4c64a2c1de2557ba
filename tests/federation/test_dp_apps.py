"""Private federated jobs in the Flower apps: each member trains with the DP-SGD plan it was priced
for (Opacus, record level), the ServerApp aggregates only updates that report that plan's round,
and the artifact carries the guarantee. On the in-process grid of ``test_apps`` (tiny BERT)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.flower.reporting import MemoryReporter
from federation.flower.settings import FederationConfigError, JobFailed
from tests.federation.test_apps import InProcessGrid, settings_for
from tests.training.conftest import LABELS, make_texts
from training.privacy import DpSgdError, DpSgdPlan, train_rows

ROWS = 40  # each of three_nodes' files
TEST_FRACTION = 0.2
ROUNDS = 2
LOCAL_STEPS = 3


def plans(*organisations: str, **overrides) -> str:
    """Each organisation's plan, priced as the clearinghouse prices it: on the train side of the
    unstratified split of its registered rows."""
    options = {
        "rows": train_rows(ROWS, TEST_FRACTION),
        "batch_size": 8,
        "rounds": ROUNDS,
        "target_epsilon": 8.0,
        "delta": 1e-3,
        "max_grad_norm": 1.0,
        "local_steps": LOCAL_STEPS,
        **overrides,
    }
    return json.dumps({o: DpSgdPlan.from_job(**options).to_dict() for o in organisations})


def private_settings(tiny_model_dir, tmp_path, participants=("acme", "globex"), **overrides):
    values = {
        "participants": ",".join(f"org:{o}" for o in participants),
        "dp-plans": plans(*participants),
        "test-fraction": TEST_FRACTION,
        "num-rounds": ROUNDS,
        **overrides,
    }
    return settings_for(tiny_model_dir, tmp_path, **values)


def test_a_private_job_trains_each_member_with_its_plan_and_reports_the_guarantee(
    tiny_model_dir, tmp_path, three_nodes
):
    from federation.flower.server_app import run_job
    from training.params import load_trainable_state_metadata

    settings = private_settings(tiny_model_dir, tmp_path)
    assert settings.private and settings.dp_round_steps("acme") == LOCAL_STEPS
    reporter = MemoryReporter()
    arrays, history = run_job(InProcessGrid(three_nodes), settings, reporter=reporter)

    assert [r["clients_trained"] for r in history] == [2, 2]
    for number, record in enumerate(history, start=1):
        assert record["dropouts"] == []
        for client in record["clients"]:
            train = client["train"]
            plan = settings.dp_plan_for(client["organisation"])
            assert train["dp-steps"] == LOCAL_STEPS and train["dp-total-steps"] == number * LOCAL_STEPS
            assert train["dp-noise-multiplier"] == pytest.approx(plan.noise_multiplier, rel=1e-12)
            assert train["dp-max-grad-norm"] == 1.0
            assert train["dp-sample-rate"] <= plan.sample_rate
            assert train["num-examples"] == train_rows(ROWS, TEST_FRACTION) == 32
            assert 0 < train["dp-epsilon"] <= 8.0 * 1.01  # Opacus' own accountant, beside the plan's
    assert all(np.isfinite(a.numpy()).all() for a in arrays.values())

    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["privacy"]) == {"acme", "globex"}
    for organisation, guarantee in report["privacy"].items():
        # The plan as priced; the rows it was priced on (`data`) are the member's business.
        assert guarantee["plan"] == {k: v for k, v in settings.dp_plans[organisation].items() if k != "data"}
        assert guarantee["steps_taken"] == ROUNDS * LOCAL_STEPS == guarantee["plan"]["steps"]
        assert guarantee["plan"]["epsilon"] <= guarantee["plan"]["target_epsilon"] == 8.0
        assert guarantee["reported_epsilon"] > 0
    metadata = load_trainable_state_metadata(tmp_path / "out" / "adapter.safetensors")
    assert json.loads(metadata["privacy"]) == report["privacy"]


def test_a_private_job_trains_one_node_per_planned_organisation(tiny_model_dir, tmp_path, three_nodes):
    """Participants named by node (as the clearinghouse names registered SuperNodes): a second node
    of acme would train acme's rows again under the same plan, and an unplanned one none at all."""
    from federation.flower.server_app import run_job

    nodes = {**three_nodes, 303: {**three_nodes[303], "organisation": "acme"}, 404: three_nodes[303]}
    settings = settings_for(
        tiny_model_dir,
        tmp_path,
        participants="node:101,node:202,node:303,node:404",
        **{"dp-plans": plans("acme", "globex"), "test-fraction": TEST_FRACTION, "num-rounds": ROUNDS},
    )
    _, history = run_job(InProcessGrid(nodes), settings)
    for record in history:
        assert sorted((c["node_id"], c["organisation"]) for c in record["clients"]) == [
            (101, "acme"),
            (202, "globex"),
        ]


class NonPrivateMember(InProcessGrid):
    """A member (``cheat``) that sends back an update without its DP-SGD report, or with one that
    is not its plan's: what a member training without DP, or with less noise, would send."""

    def __init__(self, node_configs, cheat: int, tamper):
        super().__init__(node_configs)
        self.cheat, self.tamper = cheat, tamper

    def send_and_receive(self, messages, *, timeout=None):
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            if reply.metadata.src_node_id == self.cheat and "metrics" in reply.content.metric_records:
                self.tamper(reply.content.metric_records["metrics"])
        return replies


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda m: [m.pop(k) for k in list(m) if k.startswith("dp-")], "does not report a DP-SGD round"),
        (lambda m: m.__setitem__("dp-noise-multiplier", 0.01), "noise multiplier"),
        (lambda m: m.__setitem__("dp-steps", LOCAL_STEPS + 5), "steps"),
    ],
)
def test_an_update_not_trained_as_planned_is_refused_never_aggregated(
    tiny_model_dir, tmp_path, three_nodes, tamper, reason
):
    from federation.flower.server_app import run_job

    settings = private_settings(
        tiny_model_dir, tmp_path, participants=("acme", "globex", "initech"), **{"min-clients": 2}
    )
    grid = NonPrivateMember(three_nodes, cheat=202, tamper=tamper)
    _, history = run_job(grid, settings)
    for record in history:
        assert record["clients_trained"] == 2
        assert {c["organisation"] for c in record["clients"] if "train" in c} == {"acme", "initech"}
        (dropout,) = record["dropouts"]
        assert dropout["organisation"] == "globex" and dropout["reason"].startswith("refused:")
        assert reason in dropout["reason"]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["privacy"]["globex"]["steps_taken"] == 0


def test_a_private_job_fails_rather_than_aggregate_too_few_private_updates(
    tiny_model_dir, tmp_path, three_nodes
):
    from federation.flower.server_app import run_job

    settings = private_settings(tiny_model_dir, tmp_path)  # acme and globex, min-clients 2
    grid = NonPrivateMember(three_nodes, cheat=101, tamper=lambda m: m.pop("dp-steps"))
    with pytest.raises(JobFailed, match="only 1 of 2 clients returned a model update"):
        run_job(grid, settings)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["status"] == "failed" and "refused" in report["reason"]


def _train_message(settings, organisation: str | None) -> Message:
    from federation.flower.server_app import initial_arrays
    from federation.flower.settings import train_config_json

    config = ConfigRecord(
        {
            "train-config": train_config_json(settings),
            "test-fraction": TEST_FRACTION,
            "server-round": 1,
            "private": settings.private,
        }
    )
    if organisation is not None:
        config["dp-plan"] = json.dumps(settings.dp_plans[organisation])
        config["dp-round-steps"] = settings.dp_round_steps(organisation)
    content = RecordDict({"arrays": initial_arrays(settings), "config": config})
    return Message(content=content, dst_node_id=101, message_type=MessageType.TRAIN)


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=101, node_config=node_config, state=RecordDict(), run_config={})


def test_a_member_never_trains_a_private_job_without_its_plan(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.client_app import handle_train

    settings = private_settings(tiny_model_dir, tmp_path)
    with pytest.raises(DpSgdError, match="sent no DP-SGD plan") as caught:
        handle_train(_train_message(settings, None), _context(three_nodes[101]))
    assert caught.value.code == "dp_required"


def test_a_member_that_requires_dp_refuses_a_job_that_is_not_private(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.client_app import handle_train

    settings = settings_for(tiny_model_dir, tmp_path, **{"test-fraction": TEST_FRACTION})
    node = {**three_nodes[101], "require-dp": "true"}
    with pytest.raises(DpSgdError, match="require-dp") as caught:
        handle_train(_train_message(settings, None), _context(node))
    assert caught.value.code == "dp_required"
    # The same member trains a private job, with its plan.
    private = private_settings(tiny_model_dir, tmp_path)
    reply = handle_train(_train_message(private, "acme"), _context(node))
    assert reply.content.metric_records["metrics"]["dp-steps"] == LOCAL_STEPS


def test_a_plan_priced_for_other_rows_is_refused_before_training(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.client_app import handle_train

    settings = private_settings(tiny_model_dir, tmp_path, **{"dp-plans": plans("acme", "globex", rows=31)})
    with pytest.raises(DpSgdError, match="priced for 31") as caught:
        handle_train(_train_message(settings, "acme"), _context(three_nodes[101]))
    assert caught.value.code == "plan_mismatch"


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"participants": "org:acme,org:globex", "dp-plans": "{"}, "not valid JSON"),
        (
            {"participants": "org:acme,org:globex", "dp-plans": plans("acme")},
            "no plan for participant(s) ['globex']",
        ),
        ({"participants": "", "dp-plans": plans("acme")}, "a DP job names its participants"),
        (
            {"participants": "node:7,org:globex", "dp-plans": plans("acme")},
            "no plan for participant(s) ['globex']",
        ),
        (
            {"participants": "org:acme,org:globex", "dp-plans": plans("acme", "globex", batch_size=4)},
            "priced batches of 4",
        ),
        (
            {"participants": "org:acme,org:globex", "dp-plans": plans("acme", "globex"), "num-rounds": 4},
            "do not split evenly over 4 rounds",
        ),
        (
            {
                "participants": "org:acme,org:globex",
                "dp-plans": plans("acme", "globex"),
                "strategy": "fedprox",
                "proximal-mu": 0.1,
            },
            "cannot use fedprox",
        ),
        (
            {
                "participants": "org:acme,org:globex",
                "dp-plans": json.dumps({"acme": {"delta": 2}, "globex": {}}),
            },
            "dp-plans['acme']",
        ),
    ],
)
def test_private_job_settings_are_checked(tiny_model_dir, tmp_path, overrides, problem):
    with pytest.raises(FederationConfigError) as caught:
        settings_for(tiny_model_dir, tmp_path, **{"num-rounds": ROUNDS, **overrides})
    assert problem in str(caught.value)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(min_value=2, max_value=400), test_fraction=st.floats(min_value=0.01, max_value=0.99))
def test_train_rows_is_the_size_of_an_unstratified_split(rows, test_fraction):
    from training.data import LabelledTable, split_train_test

    texts, labels = make_texts(rows, seed=rows)
    table = LabelledTable.from_lists(texts=texts, labels=labels, label_names=["ham", "spam"])
    train, test = split_train_test(table, test_fraction=test_fraction, seed=1, stratify=False)
    assert len(train) == train_rows(rows, test_fraction) and len(train) + len(test) == rows


@pytest.mark.parametrize(
    ("rows", "fraction", "code"), [(1, 0.2, "too_few_rows"), (10, 1.0, "invalid_test_fraction")]
)
def test_train_rows_refuses_what_cannot_be_split(rows, fraction, code):
    with pytest.raises(DpSgdError) as caught:
        train_rows(rows, fraction)
    assert caught.value.code == code


# ----------------------------------------------------------------------------- the registered rows
def _registered(node: dict) -> dict:
    """A plan's ``data`` for the rows in ``node``'s file, as the clearinghouse computes it from the
    registered version (the digest agrees with the training loader's reading, tests/datasets)."""
    from training.data import load_labelled_table
    from training.digest import labelled_table_digest

    table = load_labelled_table(node["data-path"], text_column="SMS", label_column="Label", labels=LABELS)
    local = labelled_table_digest(table)
    return {"rows": local.rows, "digest": local.digest, "text_column": "SMS", "label_column": "Label"}


def _bound_plans(nodes: dict, *organisations: str) -> str:
    by_org = {node["organisation"]: node for node in nodes.values()}
    priced = json.loads(plans(*organisations))
    return json.dumps({o: {**priced[o], "data": _registered(by_org[o])} for o in organisations})


class SuperNodeGrid(InProcessGrid):
    """As ``InProcessGrid``, but a ClientApp's exception becomes the error reply a real SuperNode
    sends (``flwr.supernode.runtime.run_clientapp``: code CLIENT_APP_RAISED_EXCEPTION, reason
    "<class ...>:<'message'>")."""

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error
        from flwr.common.constant import ErrorCode

        from federation.flower.client_app import app

        replies = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            node = message.metadata.dst_node_id
            context = Context(
                run_id=1, node_id=node, node_config=self.node_configs[node], state=RecordDict(), run_config={}
            )
            try:
                replies.append(app(message, context))
            except Exception as exc:  # noqa: BLE001 (as the SuperNode's runtime catches every one)
                reason = str(type(exc)) + ":<'" + str(exc) + "'>"
                replies.append(
                    Message(
                        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message
                    )
                )
        return replies


def test_a_member_whose_file_is_not_the_registered_version_trains_nothing(
    tiny_model_dir, tmp_path, three_nodes
):
    """initech's plan was priced on c.tsv; its node reads a copy with one label changed (same row
    count, so only the digest tells): it refuses every round before any DP-SGD step, and the job
    sees it drop out with ``data_mismatch``; acme and globex, on their registered files, train."""
    from federation.flower.server_app import run_job

    dp_plans = _bound_plans(three_nodes, "acme", "globex", "initech")
    original = Path(three_nodes[303]["data-path"]).read_text(encoding="utf-8").splitlines(keepends=True)
    changed = tmp_path / "c-changed.tsv"
    row = original[1]
    flipped = ("spam" if row.startswith("ham") else "ham") + row[row.index("\t") :]
    changed.write_text("".join([original[0], flipped, *original[2:]]), encoding="utf-8")
    nodes = {**three_nodes, 303: {**three_nodes[303], "data-path": str(changed)}}
    settings = private_settings(
        tiny_model_dir,
        tmp_path,
        participants=("acme", "globex", "initech"),
        **{"min-clients": 2, "dp-plans": dp_plans},
    )
    _, history = run_job(SuperNodeGrid(nodes), settings)
    local = _registered(nodes[303])["digest"]
    for record in history:
        assert record["clients_trained"] == 2
        assert {c["organisation"] for c in record["clients"] if "train" in c} == {"acme", "globex"}
        (dropout,) = record["dropouts"]
        assert dropout["organisation"] == "initech" and "data_mismatch" in dropout["reason"]
        assert local not in dropout["reason"]  # the member's local digest stays on its machine
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["privacy"]["initech"]["steps_taken"] == 0
    assert "data" not in report["privacy"]["acme"]["plan"]  # the report keeps the price, not the digest


def test_the_registered_file_shuffled_is_still_the_registered_rows(tiny_model_dir, tmp_path, three_nodes):
    from federation.flower.client_app import handle_train

    settings = private_settings(
        tiny_model_dir, tmp_path, **{"dp-plans": _bound_plans(three_nodes, "acme", "globex")}
    )
    header, *lines = Path(three_nodes[101]["data-path"]).read_text(encoding="utf-8").splitlines(keepends=True)
    shuffled = tmp_path / "a-shuffled.tsv"
    shuffled.write_text(header + "".join(reversed(lines)), encoding="utf-8")
    reply = handle_train(
        _train_message(settings, "acme"), _context({**three_nodes[101], "data-path": str(shuffled)})
    )
    assert reply.content.metric_records["metrics"]["dp-steps"] == LOCAL_STEPS
    # globex's rows under acme's plan: refused before training, with the stable code.
    with pytest.raises(DpSgdError, match="not the registered dataset version") as caught:
        handle_train(
            _train_message(settings, "acme"),
            _context({**three_nodes[101], "data-path": three_nodes[202]["data-path"]}),
        )
    assert caught.value.code == "data_mismatch"


# ----------------------------------------------------------------------------- data out of band
def _data_file(tmp_path, nodes: dict, *organisations: str, **parse) -> tuple[str, str]:
    """The plans without their rows (the run config's ``dp-plans``, as the clearinghouse sends
    them) and ``dp-data-file`` holding each one's rows (the job's shared directory)."""
    by_org = {node["organisation"]: node for node in nodes.values()}
    priced = json.loads(plans(*organisations))
    path = tmp_path / "dp-data.json"
    path.write_text(json.dumps({o: {**_registered(by_org[o]), **parse} for o in organisations}))
    return json.dumps(priced), str(path)


class RecordingGrid(SuperNodeGrid):
    """Keeps every message the ServerApp sends; ``tamper`` edits a node's train reply's ``info``."""

    def __init__(self, node_configs, tamper=None):
        super().__init__(node_configs)
        self.sent: list[Message] = []
        self.tamper = tamper or {}

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        self.sent.extend(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        for reply in replies:
            node = reply.metadata.src_node_id
            train = reply.metadata.message_type == MessageType.TRAIN
            if node in self.tamper and train and not reply.has_error():
                self.tamper[node](reply.content.config_records["info"])
        return replies


def test_each_member_gets_only_its_own_rows_digest_in_its_own_train_message(
    tiny_model_dir, tmp_path, three_nodes
):
    """The run config (which Flower gives every SuperNode) holds no row count's digest; the
    ServerApp reads the rows from ``dp-data-file`` and sends each member its own in its train
    message, never another's; each member reports the digest its file matched."""
    from federation.flower.server_app import run_job

    dp_plans, data_file = _data_file(tmp_path, three_nodes, "acme", "globex")
    assert "sha256:" not in dp_plans
    settings = private_settings(tiny_model_dir, tmp_path, **{"dp-plans": dp_plans, "dp-data-file": data_file})
    digests = {org: settings.dp_plan_for(org).data.digest for org in ("acme", "globex")}
    assert digests["acme"] != digests["globex"]
    grid = RecordingGrid(three_nodes)
    _, history = run_job(grid, settings)
    assert all(record["clients_trained"] == 2 and not record["dropouts"] for record in history)
    trains = [m for m in grid.sent if m.metadata.message_type == MessageType.TRAIN]
    assert trains
    for message in trains:
        own = "acme" if message.metadata.dst_node_id == 101 else "globex"
        other = "globex" if own == "acme" else "acme"
        config = json.dumps(dict(message.content.config_records["config"]))
        assert digests[own] in config and digests[other] not in config
    report = (tmp_path / "out" / "report.json").read_text()
    assert digests["acme"] not in report and digests["globex"] not in report


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda plans, data: (plans, data.pop("globex")), "no data for planned organisation(s) ['globex']"),
        (lambda plans, data: (plans, data.update(hooli=data["acme"])), "without a plan ['hooli']"),
        (
            lambda plans, data: (plans["acme"].update(data=data["acme"]), None),
            "carry data in the run config",
        ),
        (lambda plans, data: (plans, data["acme"].update(rows=0)), "dp-data-file['acme']"),
    ],
)
def test_the_data_file_must_bind_exactly_the_planned_organisations(
    tiny_model_dir, tmp_path, three_nodes, edit, problem
):
    dp_plans, data_file = _data_file(tmp_path, three_nodes, "acme", "globex")
    plans_, data = json.loads(dp_plans), json.loads(Path(data_file).read_text())
    edit(plans_, data)
    Path(data_file).write_text(json.dumps(data))
    with pytest.raises(FederationConfigError, match=re.escape(problem)):
        private_settings(
            tiny_model_dir, tmp_path, **{"dp-plans": json.dumps(plans_), "dp-data-file": data_file}
        )
    with pytest.raises(FederationConfigError, match="cannot read dp-data-file"):
        private_settings(
            tiny_model_dir, tmp_path, **{"dp-plans": dp_plans, "dp-data-file": str(tmp_path / "missing.json")}
        )


def test_a_reply_that_does_not_report_the_checked_digest_is_refused(tiny_model_dir, tmp_path, three_nodes):
    """A member whose plan names the registered rows but whose reply does not state the digest its
    file matched (a member that skipped the check) is refused, never aggregated."""
    from federation.flower.server_app import run_job

    dp_plans, data_file = _data_file(tmp_path, three_nodes, "acme", "globex", "initech")
    settings = private_settings(
        tiny_model_dir,
        tmp_path,
        participants=("acme", "globex", "initech"),
        **{"min-clients": 2, "dp-plans": dp_plans, "dp-data-file": data_file},
    )
    grid = RecordingGrid(three_nodes, tamper={202: lambda info: info.pop("dp-data-digest")})
    _, history = run_job(grid, settings)
    for record in history:
        assert {c["organisation"] for c in record["clients"] if "train" in c} == {"acme", "initech"}
        (dropout,) = record["dropouts"]
        assert dropout["organisation"] == "globex" and "did not check its data" in dropout["reason"]


def test_a_member_reads_its_file_as_the_registered_upload_was_parsed(tiny_model_dir, tmp_path, three_nodes):
    """acme's registered upload was a TSV parsed with quoting ("): its file, every text quoted,
    matches the digest of the unquoted cells when read with the recorded options (the TSV loader's
    own default, no quoting, would read the quotes into the texts and refuse it)."""
    from federation.flower.client_app import handle_train

    dp_plans, data_file = _data_file(tmp_path, three_nodes, "acme", "globex", delimiter="\t", quote_char='"')
    settings = private_settings(tiny_model_dir, tmp_path, **{"dp-plans": dp_plans, "dp-data-file": data_file})
    header, *lines = Path(three_nodes[101]["data-path"]).read_text(encoding="utf-8").splitlines(keepends=True)
    assert header.rstrip("\n").split("\t")[1] == "SMS"
    quoted = tmp_path / "a-quoted.tsv"
    rows = []
    for line in lines:
        label, text = line.rstrip("\n").split("\t", 1)
        rows.append(label + "\t" + '"' + text.replace('"', '""') + '"\n')
    quoted.write_text(header + "".join(rows), encoding="utf-8")
    node = {**three_nodes[101], "data-path": str(quoted)}
    reply = handle_train(_train_message(settings, "acme"), _context(node))
    assert reply.content.metric_records["metrics"]["dp-steps"] == LOCAL_STEPS
    assert reply.content.config_records["info"]["dp-data-digest"] == settings.dp_plan_for("acme").data.digest
    # The same plan without the recorded parse: the loader's TSV default reads the quotes as text.
    unparsed = json.loads(Path(data_file).read_text())
    for value in unparsed.values():
        value.pop("delimiter"), value.pop("quote_char")
    Path(data_file).write_text(json.dumps(unparsed))
    bare = private_settings(tiny_model_dir, tmp_path, **{"dp-plans": dp_plans, "dp-data-file": data_file})
    with pytest.raises(DpSgdError) as caught:
        handle_train(_train_message(bare, "acme"), _context(node))
    assert caught.value.code == "data_mismatch"


def test_under_secure_aggregation_the_checked_digest_still_reaches_the_server(
    tiny_model_dir, tmp_path, three_nodes
):
    """SecAgg+ masks the update and keeps the member's records beside it: the digest it matched
    reaches the ServerApp's check (each member is accepted), and one that drops it is refused."""
    from federation.flower.server_app import run_job
    from tests.federation.test_secure_aggregation import StatefulGrid

    class DroppingDigest(StatefulGrid):
        def send_and_receive(self, messages, *, timeout=None):
            replies = super().send_and_receive(messages, timeout=timeout)
            for reply in replies:
                info = reply.content.config_records.get("info")
                if reply.metadata.src_node_id == 202 and info is not None:
                    info.pop("dp-data-digest", None)
            return replies

    dp_plans, data_file = _data_file(tmp_path, three_nodes, "acme", "globex", "initech")
    settings = private_settings(
        tiny_model_dir,
        tmp_path,
        participants=("acme", "globex", "initech"),
        **{"min-clients": 2, "secure-aggregation": True, "dp-plans": dp_plans, "dp-data-file": data_file},
    )
    _, history = run_job(DroppingDigest(three_nodes), settings)
    for record in history:
        assert {c["organisation"] for c in record["clients"] if "train" in c} == {"acme", "initech"}
        (dropout,) = record["dropouts"]
        assert dropout["organisation"] == "globex" and "did not check its data" in dropout["reason"]
