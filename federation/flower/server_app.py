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
   completes if at least ``min-clients`` replied, otherwise the job fails with the reason. Then
   ``evaluate`` of the new global state on every member's local held-out split.
5. Per round, a record goes to the reporter (JSON lines and/or HTTP callback): aggregated and
   per-client metrics, bytes sent and received, round time, Flower overhead.
6. At the end: ``adapter.safetensors`` (final global trainable state, training config in its
   metadata) and ``report.json`` in ``output-dir``.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

from federation.flower.reporting import MultiReporter, Reporter, build_reporter
from federation.flower.settings import FederationConfigError, JobFailed, JobSettings, train_config_json

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
        return FedAdam(**common, **settings.fedadam)
    raise FederationConfigError(f"unknown strategy {settings.strategy!r}")


class _SelectedGrid:
    """A view of the grid whose node list is the round's selection (what the strategy samples)."""

    def __init__(self, grid: Grid, node_ids: Sequence[int]) -> None:
        self._grid = grid
        self._node_ids = list(node_ids)

    def get_node_ids(self) -> list[int]:
        return list(self._node_ids)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


# ----------------------------------------------------------------------------- helpers
def initial_arrays(settings: JobSettings) -> ArrayRecord:
    """The seeded initial trainable state, as every member would build it."""
    from training.models import build_model_and_tokenizer
    from training.params import get_trainable_state

    model, _ = build_model_and_tokenizer(settings.train_config())
    return ArrayRecord(OrderedDict((k, v.float()) for k, v in get_trainable_state(model).items()))


def pooled_metrics(confusions: Iterable[Sequence[Sequence[int]]], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy / macro-F1 / per-class F1 of the members' summed confusion matrices (exactly the
    metrics of the union of their held-out splits)."""
    total = None
    for c in confusions:
        m = np.asarray(c, dtype=np.int64)
        total = m if total is None else total + m
    if total is None:
        return {}
    tp = np.diag(total)
    support, predicted = total.sum(axis=1), total.sum(axis=0)
    per_class: dict[str, float | None] = {}
    present = []
    for i, label in enumerate(labels):
        if support[i] == 0 and predicted[i] == 0:
            per_class[label] = None
            continue
        per_class[label] = float(2 * tp[i] / (support[i] + predicted[i]))
        present.append(per_class[label])
    n = int(total.sum())
    return {
        "accuracy": float(tp.sum() / n) if n else 0.0,
        "macro_f1": float(np.mean(present)) if present else 0.0,
        "per_class_f1": per_class,
        "confusion": total.tolist(),
        "n": n,
    }


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


def _arrays_nbytes(message: Message) -> int:
    """Serialised array payload of a message (tensor data + keys + numpy headers)."""
    if message.has_error():
        return 0
    return sum(r.count_bytes() for r in message.content.array_records.values())


class _Job:
    def __init__(self, grid: Grid, settings: JobSettings, reporter: Reporter) -> None:
        self.grid = grid
        self.settings = settings
        self.reporter = reporter
        self.organisations: dict[int, str] = {}  # node id -> organisation slug ("" if none)
        self.history: list[dict[str, Any]] = []
        self.failed = False

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
            if participants.open:
                complete = len(eligible) >= self.settings.min_clients
            else:
                found_orgs = {self.organisations[n] for n in eligible}
                complete = participants.node_ids <= set(eligible) and participants.organisations <= found_orgs
            if complete or time.monotonic() >= deadline:
                return eligible
            time.sleep(1.0)

    # ------------------------------------------------------------------ the job
    def fail(self, reason: str, history: list[dict[str, Any]]) -> None:
        self.failed = True
        log.error("federated job failed: %s", reason)
        self.reporter.emit({"event": "failed", "reason": reason, "rounds_completed": len(history)})
        self.write_report(status="failed", reason=reason, history=history)
        raise JobFailed(reason)

    def write_report(
        self,
        *,
        status: str,
        history: list[dict[str, Any]],
        reason: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        if not self.settings.output_dir:
            return
        out = Path(self.settings.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        final = history[-1]["evaluate"] if history else None
        report = {
            "status": status,
            "reason": reason,
            "job_id": self.settings.job_id,
            "settings": self.settings.to_public_dict(),
            "organisations": {str(k): v for k, v in self.organisations.items()},
            "rounds_completed": len(history),
            "final_evaluation": final,
            "rounds": history,
            **dict(extra or {}),
        }
        tmp = out / "report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2, sort_keys=True, default=str), encoding="utf-8")
        tmp.replace(out / "report.json")

    def run(self, arrays: ArrayRecord | None = None) -> tuple[ArrayRecord, list[dict[str, Any]]]:
        settings = self.settings
        strategy = build_strategy(settings)
        labels = list(settings.train["labels"])
        history = self.history
        started = time.perf_counter()
        if arrays is None:
            arrays = initial_arrays(settings)
        model_bytes = int(sum(a.numpy().nbytes for a in arrays.values()))  # raw tensor bytes
        self.reporter.emit(
            {"event": "started", "settings": settings.to_public_dict(), "trainable_bytes": model_bytes}
        )

        selection = self.eligible(wait=settings.connect_timeout)
        if len(selection) < settings.min_clients:
            self.fail(
                f"only {len(selection)} of the job's participants connected within {settings.connect_timeout:g} s "
                f"(need min-clients={settings.min_clients}; participants: {settings.participants.to_text() or '*'}; "
                f"connected nodes: { {n: self.organisations.get(n, '?') for n in self.grid.get_node_ids()} })",
                history,
            )
        log.info("participants: %s", {n: self.organisations.get(n) for n in selection})
        config_json = train_config_json(settings)

        for server_round in range(1, settings.num_rounds + 1):
            round_started = time.perf_counter()
            selection = self.eligible(wait=0.0)
            if len(selection) < settings.min_clients:
                selection = self.eligible(wait=settings.connect_timeout)
            if len(selection) < settings.min_clients:
                self.fail(
                    f"round {server_round}: only {len(selection)} participant(s) still connected "
                    f"(need min-clients={settings.min_clients})",
                    history,
                )
            config = ConfigRecord(
                {
                    "train-config": config_json,
                    "test-fraction": settings.test_fraction,
                    "job-id": settings.job_id,
                }
            )
            messages = list(
                strategy.configure_train(server_round, arrays, config, _SelectedGrid(self.grid, selection))
            )
            sent = sum(_arrays_nbytes(m) for m in messages)
            train_started = time.perf_counter()
            replies = list(self.grid.send_and_receive(messages, timeout=settings.round_timeout))
            train_wall = time.perf_counter() - train_started
            sent_ids = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
            received = sum(_arrays_nbytes(r) for r in replies)
            ok = [r for r in replies if not r.has_error()]
            replied = {_reply_node(r, sent_ids) for r in replies}
            dropouts = [
                {
                    "node_id": _reply_node(r, sent_ids),
                    "organisation": self.organisations.get(_reply_node(r, sent_ids), ""),
                    "reason": r.error.reason,
                }
                for r in replies
                if r.has_error()
            ] + [
                {
                    "node_id": m.metadata.dst_node_id,
                    "organisation": self.organisations.get(m.metadata.dst_node_id, ""),
                    "reason": f"no reply within round-timeout ({settings.round_timeout:g} s)",
                }
                for m in messages
                if m.metadata.dst_node_id not in replied
            ]
            if len(ok) < settings.min_clients:
                detail = "; ".join(
                    f"node {d['node_id']} ({d['organisation'] or '?'}): {d['reason']}" for d in dropouts
                )
                self.fail(
                    f"round {server_round}: only {len(ok)} of {len(messages)} clients returned a model update "
                    f"(need min-clients={settings.min_clients}); {detail}",
                    history,
                )
            new_arrays, agg_train = strategy.aggregate_train(server_round, ok)
            if new_arrays is None:
                self.fail(f"round {server_round}: aggregation produced no model", history)
            arrays = _as_float32(new_arrays)
            clients: dict[int, dict[str, Any]] = {}
            for r in ok:
                node = r.metadata.src_node_id
                clients[node] = {
                    "node_id": node,
                    "organisation": self.organisations.get(node, ""),
                    "train": _metrics_of(r),
                }
            slowest = max(float(c["train"].get("train-seconds", 0.0)) for c in clients.values())

            # ---- federated evaluation of the new global state on the members' held-out splits
            eval_nodes = sorted(clients)
            eval_config = ConfigRecord(
                {
                    "train-config": config_json,
                    "test-fraction": settings.test_fraction,
                    "server-round": server_round,
                }
            )
            content = RecordDict({"arrays": arrays, "config": eval_config})
            eval_messages = [
                Message(content=content, dst_node_id=n, message_type=MessageType.EVALUATE) for n in eval_nodes
            ]
            sent += sum(_arrays_nbytes(m) for m in eval_messages)
            eval_started = time.perf_counter()
            eval_replies = list(self.grid.send_and_receive(eval_messages, timeout=settings.round_timeout))
            eval_wall = time.perf_counter() - eval_started
            eval_ok = [r for r in eval_replies if not r.has_error()]
            eval_ids = {m.metadata.message_id: m.metadata.dst_node_id for m in eval_messages}
            for r in eval_replies:
                node = _reply_node(r, eval_ids)
                entry = clients.setdefault(
                    node, {"node_id": node, "organisation": self.organisations.get(node, "")}
                )
                if r.has_error():
                    entry["evaluate_error"] = r.error.reason
                else:
                    info = _info_of(r)
                    entry["evaluate"] = _metrics_of(r)
                    entry["evaluate"]["confusion"] = json.loads(info.get("confusion", "[]"))
            eval_rows = [_metrics_of(r) for r in eval_ok]
            pooled = pooled_metrics([json.loads(_info_of(r).get("confusion", "[]")) for r in eval_ok], labels)
            evaluation = {
                "loss": weighted_mean(eval_rows, "eval-loss"),
                "mean_client_accuracy": weighted_mean(eval_rows, "eval-accuracy"),
                "mean_client_macro_f1": weighted_mean(eval_rows, "eval-macro-f1"),
                "clients": len(eval_ok),
                **pooled,
            }
            round_seconds = time.perf_counter() - round_started
            record = {
                "event": "round",
                "round": server_round,
                "strategy": settings.strategy,
                "participants": len(selection),
                "clients_trained": len(ok),
                "dropouts": dropouts,
                "train": dict(agg_train) if agg_train is not None else {},
                "evaluate": evaluation,
                "clients": [clients[n] for n in sorted(clients)],
                "bytes_sent": sent,
                "bytes_received": received,
                "trainable_bytes": model_bytes,
                "round_seconds": round_seconds,
                "train_phase_seconds": train_wall,
                "evaluate_phase_seconds": eval_wall,
                "slowest_client_train_seconds": slowest,
                "flower_overhead_seconds": train_wall - slowest,
            }
            history.append(record)
            self.reporter.emit(record)
            log.info(
                "round %d: %d clients, accuracy %.4f, macro-F1 %.4f, %.1f s",
                server_round,
                len(ok),
                evaluation.get("accuracy", float("nan")),
                evaluation.get("macro_f1", float("nan")),
                round_seconds,
            )

        total = time.perf_counter() - started
        self.save_outputs(arrays, history, total)
        self.reporter.emit(
            {
                "event": "finished",
                "rounds_completed": len(history),
                "seconds": total,
                "final_evaluation": history[-1]["evaluate"] if history else None,
                "output_dir": settings.output_dir,
            }
        )
        return arrays, history

    def save_outputs(self, arrays: ArrayRecord, history: list[dict[str, Any]], seconds: float) -> None:
        if not self.settings.output_dir:
            return
        from training.params import save_trainable_state

        out = Path(self.settings.output_dir)
        state = arrays.to_torch_state_dict()
        save_trainable_state(
            out / "adapter.safetensors",
            state,
            metadata={
                "train_config": train_config_json(self.settings),
                "strategy": self.settings.strategy,
                "rounds": str(len(history)),
                "job_id": self.settings.job_id,
            },
        )
        self.write_report(status="succeeded", history=history, extra={"seconds": seconds})


def run_job(
    grid: Grid, settings: JobSettings, *, reporter: Reporter | None = None, arrays: ArrayRecord | None = None
):
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
            job.reporter.emit({"event": "failed", "reason": reason, "rounds_completed": len(job.history)})
            job.write_report(status="failed", reason=reason, history=job.history)
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
