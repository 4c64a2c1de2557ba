"""The ServerApp: selects the job's participants, runs the rounds, records them, saves the result.

Flow of one job (``run_job``):

1. Settings from the run config (``JobSettings``); a bad job fails at once with every problem listed.
2. The initial trainable state (LoRA adapters + head) is built from the seeded configuration:
   every member builds the same frozen base model locally, only trainable parameters travel.
3. Participant discovery: connected SuperNodes are asked (``query`` message) for the
   ``organisation`` in their node config; only nodes named by the job (``participants``:
   ``org:<slug>`` or ``node:<id>``) are used. Waits up to ``connect-timeout`` for them.
4. Each round: ``train`` to every connected participant (via the strategy's
   ``configure_train``: FedAvg, FedProx which adds ``proximal-mu`` to the config, or FedAdam),
   replies gathered within ``round-timeout``. Missing or failed replies are dropouts: the round
   completes if at least ``min-clients`` replied, otherwise the job fails with the reason. With
   ``secure-aggregation`` the train step runs SecAgg+ (``secure_aggregation.secure_train``): the
   server unmasks only the weighted mean update and hands it to the strategy. Then
   ``evaluate`` of the new global state on every member's local held-out split.
5. Per round, a record (``reporting.RoundRecord``) goes to the reporter (JSON lines and/or HTTP
   callback): aggregated and per-client metrics, bytes sent and received, round time, Flower overhead.

A round is four steps of ``_Job``: ``_select`` (the participants still connected), ``_train``,
``_evaluate`` and ``_record``.
6. At the end: ``adapter.safetensors`` (final global trainable state, training config in its
   metadata) and ``report.json`` in ``output-dir``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx
from flwr.supercore.run import Run

from federation.flower.reporting import (
    ClientRecord,
    DropoutRecord,
    MultiReporter,
    Reporter,
    RoundEvaluation,
    RoundRecord,
    build_reporter,
)
from federation.flower.secure_aggregation import (
    FIRST_ROUND_MAX_WEIGHT,
    SecAggParams,
    SecureRound,
    secure_train,
    train_metrics,
)
from federation.flower.settings import (
    DATA_DIGEST_KEY,
    FederationConfigError,
    JobFailed,
    JobSettings,
    train_config_json,
)
from training.metrics import confusion_metrics
from training.privacy import priced_plan

log = logging.getLogger(__name__)

app = ServerApp()

QUERY_TIMEOUT = 60.0


# ----------------------------------------------------------------------------- strategies
def build_strategy(settings: JobSettings) -> FedAvg:
    """The Flower strategy for the job. Node sampling is ours (participants, dropouts), so the
    strategy is told to take every node it is handed (fraction 1, minimum 1)."""
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 1.0,
        "min_train_nodes": 1,
        "min_evaluate_nodes": 1,
        "min_available_nodes": 1,
    }
    if settings.strategy == "fedavg":
        return FedAvg(**common)
    if settings.strategy == "fedprox":
        return FedProx(**common, proximal_mu=settings.proximal_mu)
    if settings.strategy == "fedadam":
        adam = settings.fedadam
        return FedAdam(
            **common,
            eta=adam["eta"],
            eta_l=adam["eta_l"],
            beta_1=adam["beta_1"],
            beta_2=adam["beta_2"],
            tau=adam["tau"],
        )
    raise FederationConfigError(f"unknown strategy {settings.strategy!r}")


class _SelectedGrid(Grid):
    """A view of the grid whose node list is the round's selection (what the strategy samples);
    everything else is the grid's own."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    @property
    def run(self) -> Run:
        return self._grid.run

    def set_run(self, run: Run) -> None:
        self._grid.set_run(run)

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._grid.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._grid.send_and_receive(messages, timeout=timeout)


# ----------------------------------------------------------------------------- helpers
def initial_arrays(settings: JobSettings) -> ArrayRecord:
    """The seeded initial trainable state, as every member would build it."""
    from training.models import build_model_and_tokenizer
    from training.params import get_trainable_state

    model, _ = build_model_and_tokenizer(settings.train_config())
    return ArrayRecord(OrderedDict((k, v.float()) for k, v in get_trainable_state(model).items()))


def pooled_metrics(confusions: Iterable[Sequence[Sequence[int]]], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy / macro-F1 / per-class F1 of the members' summed confusion matrices (exactly the
    metrics of the union of their held-out splits); ``{}`` when there are none."""
    matrices = [np.asarray(c, dtype=np.int64) for c in confusions]
    if not matrices:
        return {}
    return confusion_metrics(sum(matrices[1:], matrices[0]), label_names=labels)


def weighted_mean(rows: Sequence[Mapping[str, Any]], key: str, weight: str = "num-examples") -> float | None:
    pairs = [(float(r[key]), float(r[weight])) for r in rows if key in r and weight in r]
    total = sum(w for _, w in pairs)
    return sum(v * w for v, w in pairs) / total if total else None


def _metrics_of(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for record in message.content.metric_records.values():
        out.update(dict(record))
    return out


def _info_of(message: Message) -> dict[str, Any]:
    record = message.content.config_records.get("info")
    return dict(record) if record is not None else {}


def _confusion_of(message: Message) -> list[list[int]]:
    """A member's confusion matrix on its held-out split (sent as JSON text in its ``info``)."""
    confusion: list[list[int]] = json.loads(str(_info_of(message).get("confusion", "[]")))
    return confusion


def _or_nan(value: float | None) -> float:
    return float("nan") if value is None else value


def _as_float32(arrays: ArrayRecord) -> ArrayRecord:
    """FedAdam's update is computed in float64 by numpy; keep the global state (and the bytes on
    the wire) in float32, the dtype the members train in."""
    if all(a.numpy().dtype == np.float32 for a in arrays.values()):
        return arrays
    return ArrayRecord(
        OrderedDict(
            (k, Array(a.numpy().astype(np.float32) if a.numpy().dtype == np.float64 else a.numpy()))
            for k, a in arrays.items()
        )
    )


def _reply_node(reply: Message, sent: Mapping[str, int]) -> int:
    """The node a reply is about: error replies made by the SuperLink (e.g. "node unavailable")
    carry the SuperLink's id as source, so look the original message up."""
    return sent.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)


def _content_nbytes(message: Message) -> int:
    """Serialised size of a message's content, every record (secure aggregation's masked updates
    and key shares travel in config records, whose ``count_bytes`` fails on an empty list)."""
    if message.has_error():
        return 0
    return int(recorddict_to_proto(message.content).ByteSize())


def _arrays_nbytes(message: Message) -> int:
    """Serialised array payload of a message (tensor data + keys + numpy headers)."""
    if message.has_error():
        return 0
    return sum(r.count_bytes() for r in message.content.array_records.values())


@dataclass(frozen=True)
class _Trained:
    """The train phase of a round: the new global state and what the members sent back."""

    arrays: ArrayRecord
    metrics: dict[str, Any]  # the strategy's aggregate of the members' train metrics
    clients: dict[int, dict[str, Any]]  # node id -> the member's train metrics
    dropouts: list[DropoutRecord]
    bytes_sent: int
    bytes_received: int
    seconds: float


@dataclass(frozen=True)
class _Evaluated:
    """The evaluate phase of a round: each member's outcome and the pooled evaluation."""

    clients: dict[int, dict[str, Any]]  # node id -> {"evaluate": metrics} or {"evaluate_error": reason}
    evaluation: RoundEvaluation
    bytes_sent: int
    seconds: float


class _Job:
    def __init__(self, grid: Grid, settings: JobSettings, reporter: Reporter) -> None:
        self.grid = grid
        self.settings = settings
        self.reporter = reporter
        self.config_json = train_config_json(settings)
        self.organisations: dict[int, str] = {}  # node id -> organisation slug ("" if none)
        self.rounds: list[RoundRecord] = []
        self.failed = False
        # A private job: per organisation, the DP-SGD steps its member took and reported (checked
        # against its plan), and its last report (for the artifact's guarantee).
        self.dp_steps: dict[str, int] = {}
        self.dp_reports: dict[str, dict[str, Any]] = {}
        # Secure aggregation: the weight scale of the next round (the largest num-examples so far).
        self.secagg_max_weight = FIRST_ROUND_MAX_WEIGHT

    @property
    def history(self) -> list[dict[str, Any]]:
        """The rounds so far, as reported."""
        return [record.to_event() for record in self.rounds]

    # ------------------------------------------------------------------ participants
    def _query(self, node_ids: Sequence[int], timeout: float) -> None:
        record = RecordDict({"config": ConfigRecord({"job-id": self.settings.job_id})})
        messages = [Message(content=record, dst_node_id=n, message_type=MessageType.QUERY) for n in node_ids]
        for reply in self.grid.send_and_receive(messages, timeout=timeout):
            if reply.has_error():
                log.warning(
                    "node %s did not identify itself: %s", reply.metadata.src_node_id, reply.error.reason
                )
                continue
            self.organisations[reply.metadata.src_node_id] = str(_info_of(reply).get("organisation", ""))

    def eligible(self, *, wait: float) -> list[int]:
        """Connected nodes admitted by the job's participant list; waits up to ``wait`` seconds
        for all named participants (or ``min-clients`` nodes when the job is open)."""
        participants = self.settings.participants
        deadline = time.monotonic() + wait
        while True:
            connected = list(self.grid.get_node_ids())
            unknown = [n for n in connected if n not in self.organisations]
            if unknown:
                self._query(unknown, timeout=max(5.0, min(QUERY_TIMEOUT, deadline - time.monotonic())))
            eligible = sorted(
                n
                for n in connected
                if n in self.organisations and participants.admits(n, self.organisations[n])
            )
            if self.settings.private:
                eligible = self._one_planned_node_each(eligible)
            if participants.open:
                complete = len(eligible) >= self.settings.min_clients
            else:
                found_orgs = {self.organisations[n] for n in eligible}
                complete = participants.node_ids <= set(eligible) and participants.organisations <= found_orgs
            if complete or time.monotonic() >= deadline:
                return eligible
            time.sleep(1.0)

    # ------------------------------------------------------------------ failing, reporting
    def fail(self, reason: str) -> NoReturn:
        self.failed = True
        log.error("federated job failed: %s", reason)
        self.reporter.emit({"event": "failed", "reason": reason, "rounds_completed": len(self.rounds)})
        self.write_report(status="failed", reason=reason)
        raise JobFailed(reason)

    def write_report(self, *, status: str, reason: str = "", extra: Mapping[str, Any] | None = None) -> None:
        if not self.settings.output_dir:
            return
        out = Path(self.settings.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        report = {
            "status": status,
            "reason": reason,
            "job_id": self.settings.job_id,
            "settings": self.settings.to_public_dict(),
            "organisations": {str(k): v for k, v in self.organisations.items()},
            "rounds_completed": len(self.rounds),
            "final_evaluation": self._final_evaluation(),
            "rounds": self.history,
            "privacy": self.privacy_report(),
            **dict(extra or {}),
        }
        tmp = out / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str), encoding="utf-8")
        tmp.replace(out / "report.json")

    def _final_evaluation(self) -> dict[str, Any] | None:
        return self.rounds[-1].evaluate.to_json() if self.rounds else None

    # ------------------------------------------------------------------ the job
    def run(self, arrays: ArrayRecord | None = None) -> tuple[ArrayRecord, list[dict[str, Any]]]:
        settings = self.settings
        strategy = build_strategy(settings)
        started = time.perf_counter()
        if arrays is None:
            arrays = initial_arrays(settings)
        model_bytes = int(sum(a.numpy().nbytes for a in arrays.values()))  # raw tensor bytes
        self.reporter.emit(
            {"event": "started", "settings": settings.to_public_dict(), "trainable_bytes": model_bytes}
        )
        self._wait_for_participants()
        for server_round in range(1, settings.num_rounds + 1):
            round_started = time.perf_counter()
            selection = self._select(server_round)
            trained = self._train(server_round, strategy, arrays, selection)
            arrays = trained.arrays
            evaluated = self._evaluate(server_round, arrays, sorted(trained.clients))
            self._record(
                server_round,
                selection=selection,
                trained=trained,
                evaluated=evaluated,
                model_bytes=model_bytes,
                seconds=time.perf_counter() - round_started,
            )
        total = time.perf_counter() - started
        self.save_outputs(arrays, total)
        self.reporter.emit(
            {
                "event": "finished",
                "rounds_completed": len(self.rounds),
                "seconds": total,
                "final_evaluation": self._final_evaluation(),
                "output_dir": settings.output_dir,
            }
        )
        return arrays, self.history

    def _wait_for_participants(self) -> None:
        """Before the first round: the job's participants, waited for up to ``connect-timeout``."""
        settings = self.settings
        selection = self.eligible(wait=settings.connect_timeout)
        if len(selection) < settings.min_clients:
            connected = {n: self.organisations.get(n, "?") for n in self.grid.get_node_ids()}
            self.fail(
                f"only {len(selection)} of the job's participants connected within {settings.connect_timeout:g} s "
                f"(need min-clients={settings.min_clients}; participants: {settings.participants.to_text() or '*'}; "
                f"connected nodes: {connected})"
            )
        log.info("participants: %s", {n: self.organisations.get(n) for n in selection})

    def _select(self, server_round: int) -> list[int]:
        """The round's participants: those connected now, else waiting up to ``connect-timeout``."""
        settings = self.settings
        selection = self.eligible(wait=0.0)
        if len(selection) < settings.min_clients:
            selection = self.eligible(wait=settings.connect_timeout)
        if len(selection) < settings.min_clients:
            self.fail(
                f"round {server_round}: only {len(selection)} participant(s) still connected "
                f"(need min-clients={settings.min_clients})"
            )
        return selection

    def _train(
        self, server_round: int, strategy: FedAvg, arrays: ArrayRecord, selection: Sequence[int]
    ) -> _Trained:
        """``train`` to the selection; fails the job if fewer than ``min-clients`` send an update."""
        settings = self.settings
        config = ConfigRecord(
            {
                "train-config": self.config_json,
                "test-fraction": settings.test_fraction,
                "test-dedup": settings.test_dedup,
                "job-id": settings.job_id,
                "private": settings.private,
            }
        )
        messages = list(
            strategy.configure_train(server_round, arrays, config, _SelectedGrid(self.grid, selection))
        )
        if settings.private:
            messages = [self._with_dp_plan(m) for m in messages]
        if settings.secure_aggregation:
            return self._train_secure(server_round, strategy, arrays, messages)
        started = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=settings.round_timeout))
        seconds = time.perf_counter() - started
        ok = [r for r in replies if not r.has_error()]
        dropouts = self._dropouts(messages, replies)
        if settings.private:
            ok, refused = self._dp_checked(messages, ok)
            dropouts += refused
        if len(ok) < settings.min_clients:
            detail = "; ".join(f"node {d.node_id} ({d.organisation or '?'}): {d.reason}" for d in dropouts)
            self.fail(
                f"round {server_round}: only {len(ok)} of {len(messages)} clients returned a model update "
                f"(need min-clients={settings.min_clients}); {detail}"
            )
        new_arrays, metrics = strategy.aggregate_train(server_round, ok)
        if new_arrays is None:
            self.fail(f"round {server_round}: aggregation produced no model")
        return _Trained(
            arrays=_as_float32(new_arrays),
            metrics=dict(metrics) if metrics is not None else {},
            clients={r.metadata.src_node_id: _metrics_of(r) for r in ok},
            dropouts=dropouts,
            bytes_sent=sum(_arrays_nbytes(m) for m in messages),
            bytes_received=sum(_arrays_nbytes(r) for r in replies),
            seconds=seconds,
        )

    # ------------------------------------------------------------------ secure aggregation
    def _train_secure(
        self, server_round: int, strategy: FedAvg, arrays: ArrayRecord, messages: Sequence[Message]
    ) -> _Trained:
        """``train`` under SecAgg+ (``secure_aggregation``): the server unmasks only the weighted
        mean of the members' updates, adds it to the global state and hands that to the strategy as
        the one "reply" (FedAvg/FedProx keep it, FedAdam takes its server step from it). Members'
        train metrics (num-examples, loss, DP-SGD report) still arrive one by one, in the clear."""
        settings = self.settings
        refused: list[DropoutRecord] = []

        def screen(replies: list[Message]) -> list[Message]:
            if not settings.private:
                return replies
            accepted, dropped = self._dp_checked(messages, replies)
            refused.extend(dropped)
            return accepted

        started = time.perf_counter()
        secure = secure_train(
            self.grid,
            {m.metadata.dst_node_id: m.content for m in messages},
            server_round=server_round,
            timeout=settings.round_timeout,
            min_clients=settings.min_clients,
            screen=screen,
            params=SecAggParams(max_weight=self.secagg_max_weight),
        )
        seconds = time.perf_counter() - started
        summed = secure.contributors
        dropouts = self._secure_dropouts(secure, refused)
        detail = "; ".join(f"node {d.node_id} ({d.organisation or '?'}): {d.reason}" for d in dropouts)
        if secure.mean_update is None:
            self.fail(f"round {server_round}: {secure.failure}; {detail}".rstrip("; "))
        if len(summed) < settings.min_clients:
            self.fail(
                f"round {server_round}: only {len(summed)} of {len(messages)} clients returned a model update "
                f"(need min-clients={settings.min_clients}); {detail}"
            )
        key = strategy.weighted_by_key
        weights = [float(train_metrics(r)[key]) for r in summed]
        mean = secure.mean_update
        averaged = ArrayRecord(
            OrderedDict((k, Array(a.numpy().astype(np.float64) + mean[k].numpy())) for k, a in arrays.items())
        )
        whole = RecordDict({"arrays": averaged, "metrics": MetricRecord({key: sum(weights)})})
        new_arrays, _ = strategy.aggregate_train(
            server_round, [Message(content=whole, dst_node_id=0, message_type=MessageType.TRAIN)]
        )
        if new_arrays is None:
            self.fail(f"round {server_round}: aggregation produced no model")
        metrics = strategy.train_metrics_aggr_fn(
            [RecordDict({"metrics": MetricRecord(train_metrics(r))}) for r in summed], key
        )
        self.secagg_max_weight = max(weights)
        return _Trained(
            arrays=_as_float32(new_arrays),
            metrics=dict(metrics),
            clients={r.metadata.src_node_id: train_metrics(r) for r in summed},
            dropouts=dropouts,
            bytes_sent=sum(_content_nbytes(m) for _stage, sent, _ in secure.exchanges for m in sent),
            bytes_received=sum(
                _content_nbytes(r) for _stage, _, replies in secure.exchanges for r in replies
            ),
            seconds=seconds,
        )

    def _secure_dropouts(self, secure: SecureRound, refused: Sequence[DropoutRecord]) -> list[DropoutRecord]:
        """The selected members whose update is not in the sum: refused (a private job's check),
        or without a reply at one of the protocol's stages (the first one they missed)."""
        summed = {r.metadata.src_node_id for r in secure.contributors}
        found: dict[int, DropoutRecord] = {int(d.node_id or 0): d for d in refused}
        for stage, sent, replies in secure.exchanges:
            for d in self._dropouts(sent, replies):
                node = int(d.node_id or 0)
                if node not in summed and node not in found:
                    reason = f"{d.reason} (secure aggregation, {stage} stage)"
                    found[node] = DropoutRecord(node_id=node, organisation=d.organisation, reason=reason)
        return [found[n] for n in sorted(found)]

    # ------------------------------------------------------------------ private jobs
    def _one_planned_node_each(self, nodes: Sequence[int]) -> list[int]:
        """In a private job, the nodes of organisations with a DP-SGD plan, one each (the lowest
        id): a second node of the same organisation would train its rows again under one plan."""
        chosen: dict[str, int] = {}
        for node in sorted(nodes):
            organisation = self.organisations.get(node, "")
            if organisation in self.settings.dp_plans and organisation not in chosen:
                chosen[organisation] = node
        return sorted(chosen.values())

    def _with_dp_plan(self, message: Message) -> Message:
        """The train message for one member of a private job: its own plan, this round's steps and
        the steps it took before (the strategy's messages share one record, so each gets a copy)."""
        node = message.metadata.dst_node_id
        organisation = self.organisations.get(node, "")
        plan = self.settings.dp_plans[organisation]  # a private job admits only planned organisations
        config = ConfigRecord(dict(message.content.config_records["config"]))
        config["dp-plan"] = json.dumps(plan, sort_keys=True)
        config["dp-round-steps"] = self.settings.dp_round_steps(organisation)
        config["dp-prior-steps"] = self.dp_steps.get(organisation, 0)
        content = RecordDict({"arrays": message.content.array_records["arrays"], "config": config})
        return Message(
            content=content,
            dst_node_id=node,
            message_type=message.metadata.message_type,
            group_id=message.metadata.group_id,
        )

    def _with_data_parse(self, config: ConfigRecord, node: int) -> ConfigRecord:
        """An evaluate message's config for ``node``: in a private job whose member's plan records how
        its registered upload was parsed, that (``data-parse``), so that it reads its file as in
        training (the same rows, the same split); ``config`` itself otherwise."""
        plan = self.settings.dp_plan_for(self.organisations.get(node, "")) if self.settings.private else None
        if plan is None or plan.data is None or plan.data.delimiter is None:
            return config
        parse = {"delimiter": plan.data.delimiter, "quote_char": plan.data.quote_char}
        return ConfigRecord({**dict(config), "data-parse": json.dumps(parse, sort_keys=True)})

    def _dp_checked(
        self, messages: Sequence[Message], ok: Sequence[Message]
    ) -> tuple[list[Message], list[DropoutRecord]]:
        """The replies of a private job whose member reports the planned DP-SGD round (its σ and C,
        a Poisson rate no higher than planned, this round's steps after the earlier ones); any
        other update is refused — never aggregated — and recorded as a dropout with the reason."""
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        accepted: list[Message] = []
        refused: list[DropoutRecord] = []
        for reply in ok:
            node = _reply_node(reply, sent)
            organisation = self.organisations.get(node, "")
            problem = self._dp_problem(organisation, _metrics_of(reply), _info_of(reply))
            if problem:
                log.warning("refused the update of node %s (%s): %s", node, organisation, problem)
                refused.append(DropoutRecord(node_id=node, organisation=organisation, reason=problem))
                continue
            metrics = _metrics_of(reply)
            self.dp_steps[organisation] = int(metrics["dp-total-steps"])
            self.dp_reports[organisation] = metrics
            accepted.append(reply)
        return accepted, refused

    def _dp_problem(
        self, organisation: str, metrics: Mapping[str, Any], info: Mapping[str, Any] | None = None
    ) -> str:
        """Why a member's reported round is not its plan's ("" when it is). A plan bound to the
        registered rows (``data``) also needs the member to state that its file matched their digest
        (``dp-data-digest`` in its ``info``): a member that skipped the check is refused."""
        plan = self.settings.dp_plan_for(organisation)
        if plan is None:
            return "refused: no DP-SGD plan for this organisation"
        if plan.data is not None and (info or {}).get(DATA_DIGEST_KEY) != plan.data.digest:
            return (
                "refused: the update does not report that the member's file matched the registered rows' "
                "digest (the member did not check its data)"
            )
        keys = ("dp-steps", "dp-total-steps", "dp-noise-multiplier", "dp-max-grad-norm", "dp-sample-rate")
        if any(not isinstance(metrics.get(k), (int, float)) for k in keys):
            return "refused: the update does not report a DP-SGD round (trained without DP?)"
        expected = self.settings.dp_round_steps(organisation)
        before = self.dp_steps.get(organisation, 0)
        problems = []
        if int(metrics["dp-steps"]) != expected or int(metrics["dp-total-steps"]) != before + expected:
            problems.append(
                f"{metrics['dp-steps']:g} steps ({metrics['dp-total-steps']:g} in all), planned {expected} "
                f"({before + expected} in all)"
            )
        if not math.isclose(float(metrics["dp-noise-multiplier"]), plan.noise_multiplier, rel_tol=1e-9):
            problems.append(f"noise multiplier {metrics['dp-noise-multiplier']} ≠ {plan.noise_multiplier}")
        if not math.isclose(float(metrics["dp-max-grad-norm"]), plan.max_grad_norm, rel_tol=1e-9):
            problems.append(f"clipping norm {metrics['dp-max-grad-norm']} ≠ {plan.max_grad_norm}")
        if float(metrics["dp-sample-rate"]) > plan.sample_rate * (1 + 1e-9):
            problems.append(f"sample rate {metrics['dp-sample-rate']} above the planned {plan.sample_rate}")
        return "refused: not the planned DP-SGD round: " + "; ".join(problems) if problems else ""

    def privacy_report(self) -> dict[str, Any]:
        """Per organisation, the guarantee its data has in the model: the plan (ε, δ, accountant,
        σ, C, q, steps) and what its member reported doing."""
        if not self.settings.private:
            return {}
        return {
            organisation: {
                # As priced, without the rows it was priced on (their digest is the member's).
                "plan": priced_plan(plan),
                "steps_taken": self.dp_steps.get(organisation, 0),
                "reported_epsilon": self.dp_reports.get(organisation, {}).get("dp-epsilon"),
            }
            for organisation, plan in sorted(self.settings.dp_plans.items())
        }

    def _dropouts(self, messages: Sequence[Message], replies: Sequence[Message]) -> list[DropoutRecord]:
        """The selected nodes that sent no update: an error reply, or no reply within the timeout."""
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        replied = {_reply_node(r, sent) for r in replies}
        failed = [(_reply_node(r, sent), str(r.error.reason)) for r in replies if r.has_error()]
        silent = [
            (m.metadata.dst_node_id, f"no reply within round-timeout ({self.settings.round_timeout:g} s)")
            for m in messages
            if m.metadata.dst_node_id not in replied
        ]
        return [
            DropoutRecord(node_id=node, organisation=self.organisations.get(node, ""), reason=reason)
            for node, reason in failed + silent
        ]

    def _evaluate(self, server_round: int, arrays: ArrayRecord, nodes: Sequence[int]) -> _Evaluated:
        """``evaluate`` of the new global state on the held-out splits of the members that trained."""
        settings = self.settings
        config = ConfigRecord(
            {
                "train-config": self.config_json,
                "test-fraction": settings.test_fraction,
                "test-dedup": settings.test_dedup,
                "server-round": server_round,
                "private": settings.private,
            }
        )
        messages = [
            Message(
                content=RecordDict({"arrays": arrays, "config": self._with_data_parse(config, n)}),
                dst_node_id=n,
                message_type=MessageType.EVALUATE,
            )
            for n in nodes
        ]
        started = time.perf_counter()
        replies = list(self.grid.send_and_receive(messages, timeout=settings.round_timeout))
        seconds = time.perf_counter() - started
        sent = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
        clients: dict[int, dict[str, Any]] = {}
        for r in replies:
            if r.has_error():
                clients[_reply_node(r, sent)] = {"evaluate_error": r.error.reason}
            else:
                clients[_reply_node(r, sent)] = {
                    "evaluate": {**_metrics_of(r), "confusion": _confusion_of(r)}
                }
        ok = [r for r in replies if not r.has_error()]
        rows = [_metrics_of(r) for r in ok]
        evaluation = RoundEvaluation(
            loss=weighted_mean(rows, "eval-loss"),
            mean_client_accuracy=weighted_mean(rows, "eval-accuracy"),
            mean_client_macro_f1=weighted_mean(rows, "eval-macro-f1"),
            clients=len(ok),
            **pooled_metrics([_confusion_of(r) for r in ok], list(settings.train["labels"])),
        )
        return _Evaluated(
            clients=clients,
            evaluation=evaluation,
            bytes_sent=sum(_arrays_nbytes(m) for m in messages),
            seconds=seconds,
        )

    def _record(
        self,
        server_round: int,
        *,
        selection: Sequence[int],
        trained: _Trained,
        evaluated: _Evaluated,
        model_bytes: int,
        seconds: float,
    ) -> None:
        """The round's record: kept for the report and sent to the reporter."""
        clients = []
        for node in sorted(trained.clients.keys() | evaluated.clients.keys()):
            entry: dict[str, Any] = {"node_id": node, "organisation": self.organisations.get(node, "")}
            if node in trained.clients:
                entry["train"] = trained.clients[node]
            clients.append(ClientRecord(**entry, **evaluated.clients.get(node, {})))
        slowest = max(float(m.get("train-seconds", 0.0)) for m in trained.clients.values())
        record = RoundRecord(
            round=server_round,
            strategy=self.settings.strategy,
            participants=len(selection),
            clients_trained=len(trained.clients),
            dropouts=trained.dropouts,
            train=trained.metrics,
            evaluate=evaluated.evaluation,
            clients=clients,
            bytes_sent=trained.bytes_sent + evaluated.bytes_sent,
            bytes_received=trained.bytes_received,
            trainable_bytes=model_bytes,
            round_seconds=seconds,
            train_phase_seconds=trained.seconds,
            evaluate_phase_seconds=evaluated.seconds,
            slowest_client_train_seconds=slowest,
            flower_overhead_seconds=trained.seconds - slowest,
        )
        self.rounds.append(record)
        self.reporter.emit(record.to_event())
        log.info(
            "round %d: %d clients, accuracy %.4f, macro-F1 %.4f, %.1f s",
            server_round,
            record.clients_trained,
            _or_nan(record.evaluate.accuracy),
            _or_nan(record.evaluate.macro_f1),
            seconds,
        )

    def save_outputs(self, arrays: ArrayRecord, seconds: float) -> None:
        if not self.settings.output_dir:
            return
        from training.params import save_trainable_state

        out = Path(self.settings.output_dir)
        state = arrays.to_torch_state_dict()
        save_trainable_state(
            out / "adapter.safetensors",
            state,
            metadata={
                "train_config": self.config_json,
                "strategy": self.settings.strategy,
                "rounds": str(len(self.rounds)),
                "job_id": self.settings.job_id,
                # The guarantee travels with the adapter: per organisation, the DP-SGD it trained under.
                "privacy": json.dumps(self.privacy_report(), sort_keys=True),
            },
        )
        self.write_report(status="succeeded", extra={"seconds": seconds})


def run_job(
    grid: Grid, settings: JobSettings, *, reporter: Reporter | None = None, arrays: ArrayRecord | None = None
) -> tuple[ArrayRecord, list[dict[str, Any]]]:
    """Run a whole job on ``grid``; returns ``(final ArrayRecord, per-round records)``.
    Raises ``JobFailed`` (after reporting it) when too few participants remain; any other error
    is reported as a failure too, then re-raised."""
    job = _Job(grid, settings, reporter or MultiReporter([]))
    try:
        return job.run(arrays)
    except JobFailed:
        raise
    except Exception as exc:
        if not job.failed:
            reason = f"{type(exc).__name__}: {exc}"
            job.reporter.emit({"event": "failed", "reason": reason, "rounds_completed": len(job.rounds)})
            job.write_report(status="failed", reason=reason)
        raise


@app.main()
def main(grid: Grid, context: Context) -> None:
    try:
        settings = JobSettings.from_run_config(context.run_config)
    except FederationConfigError as exc:
        # Still tell the clearinghouse, through whatever reporter the run config names.
        raw = {k: v for k, v in context.run_config.items() if isinstance(v, str)}
        reporter = build_reporter(
            metrics_jsonl=raw.get("metrics-jsonl", ""),
            callback_url=raw.get("callback-url", "")
            if raw.get("callback-url", "").startswith("http")
            else "",
            callback_token=raw.get("callback-token", ""),
            job_id=raw.get("job-id", ""),
        )
        reporter.emit({"event": "failed", "reason": str(exc), "rounds_completed": 0})
        raise
    reporter = build_reporter(
        metrics_jsonl=settings.metrics_jsonl,
        callback_url=settings.callback_url,
        callback_token=settings.resolved_callback_token(),
        job_id=settings.job_id,
    )
    try:
        run_job(grid, settings, reporter=reporter)
    finally:
        reporter.close()
