"""The ClientApp: runs on a member's SuperNode, trains and evaluates on the member's own data.

Messages from the ServerApp:

- ``query``: "who are you?" -> the node's ``organisation`` (node config) so the ServerApp can keep
  only the job's participants. No data leaves: just the slug the member configured.
- ``train``: global trainable state (``ArrayRecord`` "arrays") + ``ConfigRecord`` "config"
  (``server-round``, ``train-config`` JSON, ``test-fraction``, ``test-dedup``, ``proximal-mu`` under
  FedProx) -> the locally trained trainable state + train metrics.
- ``evaluate``: global trainable state -> metrics on the member's local held-out split. Held-out rows
  that duplicate a training row, exactly or nearly, are dropped from it (``test-dedup``: "drop", the
  default; "report" keeps them; "off" does not look), and the metrics say how many were found
  (``test-duplicates-found``) and dropped (``test-duplicates-dropped``): a score counting copies of
  training rows is inflated.
- a secure-aggregation job's ``train`` messages run the SecAgg+ protocol
  (``secure_aggregation.secaggplus_train_mod``): the member sends its update masked, never its
  trained state.

A private job (``private`` in the config) sends each member its priced DP-SGD plan (``dp-plan``,
``dp-round-steps``, ``dp-prior-steps``): the member trains with record-level DP-SGD (Opacus:
Poisson sampling, per-example clipping, Gaussian noise on the trainable parameters) exactly as
priced, on the train side of an unstratified split (whose size the plan was priced on), and reports
the steps, σ, C, q and Opacus' ε. There is no non-private fallback: a private job without a plan
for this member, or any run that would not match the plan, is refused; a member whose node config
says ``require-dp=true`` refuses every job that is not private. Before any step, the member checks
that its local file holds the registered rows the plan was priced on (the plan's ``data``: row
count and content digest, ``training.digest``) and refuses with ``data_mismatch`` otherwise; it
reads a delimited file as the registered upload was parsed (the plan's ``data.delimiter`` and
``quote_char``; ``data-parse`` in evaluate messages), and states in its reply's ``info`` the digest it
matched (``dp-data-digest``), without which the ServerApp refuses the update.

Where the data is and which columns hold text and label come from the node config
(``--node-config "data-path='/data/sms.tsv' text-column='SMS' label-column='Label'
organisation='acme'"``), never from the server. Only trainable parameters (LoRA adapters + head)
travel; the base model is loaded locally.

The ML stack is imported lazily, so a ``query`` costs no torch import.
"""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federation.flower.secure_aggregation import secaggplus_train_mod
from federation.flower.settings import DATA_DIGEST_KEY, NodeSettings

log = logging.getLogger(__name__)

app = ClientApp()

# Per-process cache: (train-config JSON, node settings, test fraction, test dedup, stratify, parse
# options) -> (config, model, tokenizer, train, test, device, node, held-out duplicates).
_CACHE: dict[tuple[str, NodeSettings, float, str, bool, tuple[str, str | None] | None], tuple[Any, ...]] = {}

#: The evaluate metrics that count the held-out rows duplicating a training row.
DUPLICATES_FOUND = "test-duplicates-found"
DUPLICATES_DROPPED = "test-duplicates-dropped"


def _config_number(record: ConfigRecord, key: str, default: float) -> float:
    """A number the ServerApp put in the message's config."""
    value = record.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"config {key!r} must be a number, got {value!r}")
    return float(value)


def _test_dedup(record: ConfigRecord) -> str:
    """What to do with held-out rows that duplicate a training row ("drop" where the config says
    nothing, as the run config's default)."""
    from training.config import TEST_DEDUP_MODES

    value = record.get("test-dedup", "drop")
    if value not in TEST_DEDUP_MODES:
        raise ValueError(f"config 'test-dedup' must be one of {list(TEST_DEDUP_MODES)!r}, got {value!r}")
    return str(value)


def _private(record: ConfigRecord) -> bool:
    """Whether the job is private (its members train and split as DP-SGD plans assume)."""
    return record.get("private", False) is True


def _registered_parse(record: ConfigRecord) -> tuple[str, str | None] | None:
    """How the registered upload this member's plan was priced on was parsed (delimiter, quote
    character or None), so that the member reads its file the same way: from its plan's ``data`` in
    a train message, from ``data-parse`` in an evaluate message; None where none was recorded."""
    from training.privacy import DpSgdPlan

    raw = record.get("dp-plan")
    if isinstance(raw, str) and raw:
        data = DpSgdPlan(**json.loads(raw)).data
        return (data.delimiter, data.quote_char) if data is not None and data.delimiter is not None else None
    raw = record.get("data-parse")
    if not isinstance(raw, str) or not raw:
        return None
    parse = json.loads(raw)
    delimiter, quote = parse.get("delimiter"), parse.get("quote_char")
    if (
        not isinstance(delimiter, str)
        or len(delimiter) != 1
        or not (quote is None or (isinstance(quote, str) and len(quote) == 1))
    ):
        raise ValueError(f"config 'data-parse' must be {{delimiter, quote_char}} characters, got {raw!r}")
    return (delimiter, quote)


def _prepare(message: Message, context: Context) -> tuple[Any, ...]:
    from training.config import TrainConfig
    from training.data import deduplicate_test_split, load_table_for_config, split_train_test
    from training.models import build_model_and_tokenizer, select_device

    node = NodeSettings.from_node_config(context.node_config)
    config_record = message.content.config_records["config"]
    train_json = str(config_record["train-config"])
    test_fraction = _config_number(config_record, "test-fraction", 0.2)
    test_dedup = _test_dedup(config_record)
    # A private job's split is unstratified: its train side's size, which the member's DP-SGD
    # plan was priced on, then depends on the row count alone (training.privacy.train_rows).
    stratify = not _private(config_record)
    parse = _registered_parse(config_record)
    key = (train_json, node, test_fraction, test_dedup, stratify, parse)
    if key not in _CACHE:
        _CACHE.clear()
        config = TrainConfig.from_dict(
            {**json.loads(train_json), "text_column": node.text_column, "label_column": node.label_column}
        )
        options: dict[str, Any] = {"delimiter": node.delimiter} if node.delimiter else {}
        if parse is not None:  # read as the registered upload was parsed: its digest is of those cells
            options = {"delimiter": node.delimiter or parse[0], "quote_char": parse[1]}
        table = load_table_for_config(node.data_path, config, **options)
        train_table, test_table = split_train_test(
            table, test_fraction=test_fraction, seed=config.seed, stratify=stratify
        )
        test_table, duplicates = deduplicate_test_split(train_table, test_table, mode=test_dedup)
        if duplicates.found:
            log.info(
                "%d of the %d held-out rows duplicate a training row (test-dedup %s): %d dropped",
                duplicates.found,
                len(test_table) + len(duplicates.dropped),
                test_dedup,
                len(duplicates.dropped),
            )
        model, tokenizer = build_model_and_tokenizer(config)
        device = select_device(node.device)
        model.to(device)
        _CACHE[key] = (config, model, tokenizer, train_table, test_table, device, node, duplicates)
    return _CACHE[key]


def _apply_global(model: Any, arrays: ArrayRecord) -> None:
    from training.params import set_trainable_state

    set_trainable_state(model, OrderedDict((k, v.numpy()) for k, v in arrays.items()))


def _state_record(model: Any) -> ArrayRecord:
    from training.params import get_trainable_state

    state = get_trainable_state(model)
    # fp32 numpy for transport (bf16 has no numpy dtype); names are the model's parameter names.
    return ArrayRecord(OrderedDict((k, v.float() if v.is_floating_point() else v) for k, v in state.items()))


def _dp_plan(cfg: ConfigRecord, node: NodeSettings) -> Any:
    """The member's DP-SGD plan from a train message, or None for a non-private job; refuses
    (``dp_required``) a private job without one, and any job without one on a member that
    requires DP."""
    from training.privacy import DpSgdError, DpSgdPlan

    raw = cfg.get("dp-plan")
    if not isinstance(raw, str) or not raw:
        if _private(cfg):
            raise DpSgdError("dp_required", "the job is private but sent no DP-SGD plan for this member")
        if node.require_dp:
            raise DpSgdError(
                "dp_required", "this member trains only with DP-SGD (require-dp) and the job is not private"
            )
        return None
    if not _private(cfg):
        raise DpSgdError("plan_mismatch", "a DP-SGD plan came with a job that is not private")
    return DpSgdPlan(**json.loads(raw))


def _check_data(plan: Any, prepared: tuple[Any, ...]) -> None:
    """Before any DP-SGD step: the local file must hold the registered rows the plan was priced on
    (the plan's ``data``: their count and content digest, ``training.digest``); refused with
    ``data_mismatch`` otherwise. The refusal, which reaches the job, states neither the local count
    nor the local digest; this node's log has them for its member (and the preflight prints them)."""
    from training.digest import labelled_table_digest
    from training.privacy import DpSgdError

    if plan.data is None:
        # A plan the clearinghouse did not price (it always binds one to the registered rows): a
        # hand-made run (benchmarks/federated_sms.py, tests) with no rows to check against.
        log.warning("the DP-SGD plan names no registered rows (no data): the local file is not checked")
        return
    _, _, _, train_table, test_table, _, node, duplicates = prepared
    # The whole file (the held-out rows dropped as duplicates included): the digest ignores order.
    local = labelled_table_digest(train_table, test_table, duplicates.dropped)
    if plan.data.matches(local):
        return
    log.error(
        "data_mismatch: %s has %d rows with digest %s; the job's plan was priced on %d rows with digest %s "
        "(columns %s, %s of the registered version)",
        node.data_path,
        local.rows,
        local.digest,
        plan.data.rows,
        plan.data.digest,
        plan.data.text_column,
        plan.data.label_column,
    )
    raise DpSgdError(
        "data_mismatch",
        "the local data file is not the registered dataset version this member's DP-SGD plan was priced on "
        "(its rows or their content differ); nothing was trained. Compare with `python -m "
        "federation.flower.preflight ... --expect-rows N --expect-digest sha256:...`",
    )


def _train_private(message: Message, plan: Any, prepared: tuple[Any, ...], started: float) -> MetricRecord:
    """One round of the member's DP-SGD plan: ``dp-round-steps`` steps after the ``dp-prior-steps``
    its earlier rounds took (all at the plan's σ and Poisson rate, as Opacus accounts them)."""
    from training.data import make_loader
    from training.dp_sgd import train_with_plan

    config, model, tokenizer, train_table, _, device, _, _ = prepared
    cfg = message.content.config_records["config"]
    _apply_global(model, message.content.array_records["arrays"])
    round_steps = int(_config_number(cfg, "dp-round-steps", 0))
    prior_steps = int(_config_number(cfg, "dp-prior-steps", 0))
    # Opacus resamples the loader (Poisson, rate 1/len(loader)) with its own unpredictable generator.
    loader = make_loader(train_table, tokenizer=tokenizer, config=config, shuffle=False)
    prior = [(plan.noise_multiplier, 1.0 / len(loader), prior_steps)] if prior_steps else []
    report = train_with_plan(
        model,
        loader,
        plan,
        learning_rate=config.effective_learning_rate,
        optimizer=config.optimizer,
        steps=round_steps,
        prior_history=prior,
        weight_decay=config.weight_decay,
        device=device,
    )
    return MetricRecord(
        {
            "num-examples": len(train_table),
            "train-loss": report.loss,
            "train-proximal-loss": report.loss,
            "train-steps": report.steps,
            "train-examples": report.examples,
            "train-seconds": report.seconds,
            "client-seconds": time.perf_counter() - started,
            "dp-steps": report.steps,
            "dp-total-steps": report.total_steps,
            "dp-noise-multiplier": report.noise_multiplier,
            "dp-max-grad-norm": report.max_grad_norm,
            "dp-sample-rate": report.sample_rate,
            "dp-delta": report.delta,
            "dp-epsilon": report.epsilon,
            "dp-empty-batches": report.empty_batches,
        }
    )


def handle_train(message: Message, context: Context) -> Message:
    """Train on the local split starting from the received global state (with DP-SGD, exactly as
    planned, in a private job)."""
    from training.data import make_loader
    from training.loops import train

    started = time.perf_counter()
    cfg = message.content.config_records["config"]
    plan = _dp_plan(cfg, NodeSettings.from_node_config(context.node_config))
    prepared = _prepare(message, context)
    config, model, tokenizer, train_table, _, device, node, _ = prepared
    if plan is not None:
        _check_data(plan, prepared)
        metrics = _train_private(message, plan, prepared, started)
        content = RecordDict({"arrays": _state_record(model), "metrics": metrics})
        info: dict[str, Any] = {"organisation": node.organisation, "device": str(device)}
        if plan.data is not None:
            # That the file was checked: the digest it matched (the plan's own; no row data). In
            # ``info``: a MetricRecord holds numbers only. The ServerApp refuses a reply without it.
            info[DATA_DIGEST_KEY] = plan.data.digest
        content["info"] = ConfigRecord(info)
        return Message(content=content, reply_to=message)
    server_round = int(_config_number(cfg, "server-round", 1))
    mu = _config_number(cfg, "proximal-mu", 0.0)
    if mu != config.fedprox_mu:
        config = config.replace(fedprox_mu=mu)
    _apply_global(model, message.content.array_records["arrays"])
    seed = (config.seed + 1000 * server_round) % 2**32  # new batch order / dropout every round
    loader = make_loader(train_table, tokenizer=tokenizer, config=config, shuffle=True, seed=seed)
    result = train(model, loader, config=config, device=device, seed=seed)
    metrics = MetricRecord(
        {
            "num-examples": len(train_table),
            "train-loss": result.loss,
            "train-proximal-loss": result.proximal_loss,
            "train-steps": result.steps,
            "train-examples": result.examples,
            "train-seconds": result.seconds,
            "client-seconds": time.perf_counter() - started,
        }
    )
    content = RecordDict({"arrays": _state_record(model), "metrics": metrics})
    content["info"] = ConfigRecord({"organisation": node.organisation, "device": str(device)})
    return Message(content=content, reply_to=message)


def handle_evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received global state on the local held-out split."""
    from training.data import make_loader
    from training.loops import evaluate

    started = time.perf_counter()
    config, model, tokenizer, _, test_table, device, node, duplicates = _prepare(message, context)
    _apply_global(model, message.content.array_records["arrays"])
    loader = make_loader(
        test_table, tokenizer=tokenizer, config=config, shuffle=False, batch_size=config.batch_size * 2
    )
    result = evaluate(model, loader, device=device, mixed_precision=config.mixed_precision)
    values: dict[str, Any] = {
        "num-examples": result.n,
        "eval-loss": result.loss,
        "eval-accuracy": result.accuracy,
        "eval-macro-f1": result.macro_f1,
        "eval-seconds": time.perf_counter() - started,
    }
    for label, f1 in result.per_class_f1.items():
        if f1 is not None:
            values[f"eval-f1-{label}"] = f1
    if duplicates.found is not None:  # test-dedup "off" does not look
        values[DUPLICATES_FOUND] = duplicates.found
        values[DUPLICATES_DROPPED] = len(duplicates.dropped)
    content = RecordDict({"metrics": MetricRecord(values)})
    content["info"] = ConfigRecord(
        {"organisation": node.organisation, "confusion": json.dumps(result.confusion)}
    )
    return Message(content=content, reply_to=message)


def handle_query(message: Message, context: Context) -> Message:
    """Identify this node (organisation slug from the node config); checks the data path exists."""
    from pathlib import Path

    organisation = str(context.node_config.get("organisation", ""))
    data_path = context.node_config.get("data-path")
    info = ConfigRecord(
        {
            "organisation": organisation,
            "has-data": bool(isinstance(data_path, str) and Path(data_path).is_file()),
        }
    )
    return Message(content=RecordDict({"info": info}), reply_to=message)


# A train message of a secure-aggregation job goes through the SecAgg+ protocol (its update leaves
# masked); any other train message goes straight to the handler.
@app.train(mods=[secaggplus_train_mod])
def _train(message: Message, context: Context) -> Message:
    return handle_train(message, context)


@app.evaluate()
def _evaluate(message: Message, context: Context) -> Message:
    return handle_evaluate(message, context)


@app.query()
def _query(message: Message, context: Context) -> Message:
    return handle_query(message, context)
