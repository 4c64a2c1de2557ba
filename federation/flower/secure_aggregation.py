"""Secure aggregation (SecAgg+) of a round's model updates, on Flower 1.41's own protocol code.

With ``secure-aggregation`` on, the ServerApp never sees a member's update: each member sends its
update masked (pairwise masks that cancel in the sum, plus a private mask whose seed the other
members hold in Shamir shares), and the server recovers only the weighted sum of the updates and
the sum of the weights. Flower ships the protocol for its legacy strategies
(``SecAggPlusWorkflow`` + ``secaggplus_mod``); this module adapts it to our Message-API apps:

- Server: ``secure_train`` runs the workflow's four stages (setup, share keys, collect masked
  vectors, unmask) for one round, with our ``train`` contents as the "fit instructions" and a
  small stand-in for the legacy context that hands the unmasked aggregate back instead of giving it
  to a legacy strategy. The ServerApp then adds the mean update to the global state and gives the
  result to its own strategy (FedAvg/FedProx keep it; FedAdam takes its server step from it).
- Member: ``secaggplus_train_mod`` wraps the ClientApp's ``train`` handler in Flower's
  ``secaggplus_mod`` when (and only when) the message is part of the protocol. What the member
  masks is its *update* (trained state minus the global state it received), which keeps the
  quantisation fine for LoRA-sized changes; the trained state itself never leaves the machine.

Two things differ from Flower's defaults on purpose:

- Masks come from SHAKE256 (an extendable-output hash) of the whole 256-bit secret. Flower 1.41's
  ``pseudo_rand_gen`` folds the secret into a 32-bit seed for ``numpy.random.RandomState`` (not a
  cryptographic generator; flwrlabs/flower#7522), so a curious server could search the 2^32 seeds
  to strip the pairwise mask of a two-member round. Both ends are this package, so both use
  ``strong_pseudo_rand_gen``. The replacement is process-wide (Flower's two protocol modules, on
  this module's import); ``secure_train`` and ``secaggplus_train_mod`` check it is still in place.
- The quantisation is sized for updates, not weights (``SecAggParams``), and every update carries
  a canary entry whose mean the server knows from the weights the members reported: a mask that
  did not cancel, or an overflow of the modulus, fails the round instead of producing a garbage model.
  A member refuses to mask a non-finite update (Flower casts NaN to -2^31), the server checks every
  entry of the mean against the bound the clipping gives, and a round takes at most 255 members.
- Two dropout cases Flower 1.41 gets wrong are handled here: a member that leaves before its key
  shares went out (the unmask stage asks the others for shares they never received), and the masks
  of a member dropped later rebuilt with members that never masked with it (a corrupted sum).

Pure: flwr and numpy only (no Django, no torch).
"""

from __future__ import annotations

import hashlib
import importlib
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import (
    Code,
    FitIns,
    FitRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE
from flwr.compat.common import recorddict_compat as compat
from flwr.server.workflow import constant as _workflow_constant
from flwr.server.workflow.secure_aggregation import secaggplus_workflow as _server_protocol

# The protocol's modules (the member's package re-exports a function under its module's name).
_client_protocol = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")

#: The config record that marks a message of the protocol (Flower's name for it).
PROTOCOL_RECORD = RECORD_KEY_CONFIGS
#: The member's per-entry count of update values its quantisation clipped (a train metric).
CLIPPED_METRIC = "secagg-clipped"
_FITRES = "fitres."  # Flower's legacy record names the protocol code reads a member's reply from


# ----------------------------------------------------------------------------- the mask PRG
def strong_pseudo_rand_gen(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[Any]:
    """Masks uniform in ``[0, num_range)`` (a power of 2, at most 2^32): consecutive 32-bit words
    of SHAKE256 of the whole secret ``seed``, one per entry, in place of Flower's 32-bit-seeded
    ``RandomState``."""
    if num_range > 2**32 or num_range & (num_range - 1):
        raise ValueError("the mask range must be a power of 2, at most 2^32")
    sizes = [math.prod(shape) for shape in dimensions_list]
    words = np.frombuffer(hashlib.shake_256(seed).digest(4 * sum(sizes)), dtype="<u4").astype(np.int64)
    words &= num_range - 1
    masks, start = [], 0
    for shape, size in zip(dimensions_list, sizes, strict=True):
        masks.append(words[start : start + size].reshape(shape))
        start += size
    return masks


# The protocol modules call the PRG by this module-level name; both ends of our apps use ours.
# The replacement is process-wide (every SecAgg+ run in this Python process, ours or not, masks
# with it) and happens on this module's import; ``require_strong_prg`` checks it is still in place.
_client_protocol.pseudo_rand_gen = strong_pseudo_rand_gen  # type: ignore[attr-defined]
_server_protocol.pseudo_rand_gen = strong_pseudo_rand_gen


class SecureAggregationError(RuntimeError):
    """Secure aggregation refuses to go on: the mask generator was replaced, or a member's update is
    not finite (the message says which; no update values in it)."""


def require_strong_prg(side: str) -> None:
    """Refuse to mask or unmask unless Flower's protocol module for ``side`` ("member" or
    "server") still calls ``strong_pseudo_rand_gen`` (something in the process replaced it again)."""
    module = _client_protocol if side == "member" else _server_protocol
    if getattr(module, "pseudo_rand_gen", None) is not strong_pseudo_rand_gen:
        raise SecureAggregationError(
            f"secure aggregation ({side}): Flower's {module.__name__}.pseudo_rand_gen is not "
            "strong_pseudo_rand_gen (it was replaced after federation.flower.secure_aggregation was "
            "imported); refusing to mask with another generator"
        )


# ----------------------------------------------------------------------------- parameters
#: The weight scale of a job's first secure round (later rounds use the largest ``num-examples``
#: the members reported, which they report in the clear anyway).
FIRST_ROUND_MAX_WEIGHT = 10_000.0
#: Each member's update carries one extra entry, ``CANARY / max(1, n/max_weight)``, whose mean
#: the server knows in advance: it comes out right only if every mask cancelled and no sum overflowed.
CANARY = 0.5


@dataclass(frozen=True)
class SecAggParams:
    """How updates become integers. A member with ``n`` examples and update ``Δ`` sends
    ``r·Δ`` (``r = n/max_weight``) clipped to ``[-clipping_range, clipping_range]`` and
    quantised (stochastic, unbiased rounding) into ``quantization_range`` steps, plus ``r`` as an
    integer; sums are taken modulo ``modulus_range``; the server divides the sums.

    The defaults fit LoRA updates (per-entry changes well below 1 in a round): the step on the
    mean update is ``2·clipping_range / quantization_range / Σr`` (1.2e-7 / Σr). With
    ``max_weight`` the largest member's ``n``, Σr is between 1 and the number of members, and no
    update entry below ``clipping_range`` is clipped. The sums fit the modulus while fewer than
    ``modulus_range / quantization_range`` = 256 members take part (``max_members``) and Σr < 256."""

    clipping_range: float = 1.0
    quantization_range: int = 2**24
    modulus_range: int = 2**32
    max_weight: float = FIRST_ROUND_MAX_WEIGHT

    def ratio(self, weight: float) -> float:
        """``r``: a member's weight as the protocol scales its update (quantised as it does)."""
        return round(weight / self.max_weight * self.quantization_range) / self.quantization_range

    def step(self, weights: Sequence[float]) -> float:
        """The quantisation step on the mean update of members with these weights (examples)."""
        return 2 * self.clipping_range / self.quantization_range / sum(self.ratio(w) for w in weights)

    @property
    def max_members(self) -> int:
        """The most members a round may have: each adds up to ``quantization_range`` to every
        entry's sum, which must stay below ``modulus_range`` (255 with the defaults)."""
        return (self.modulus_range - 1) // self.quantization_range

    def bound(self, weights: Sequence[float]) -> float:
        """The largest ``|entry|`` the unmasked mean update of members with these weights can have:
        each adds at most ``clipping_range`` to an entry's sum, divided by Σr (plus a step per member
        for the rounding)."""
        return len(weights) * (self.clipping_range + self.step(weights)) / sum(self.ratio(w) for w in weights)


def canary(weight: float, max_weight: float) -> float:
    """The check entry a member with ``weight`` examples adds to its update (never clipped)."""
    return CANARY / max(1.0, weight / max_weight)


def threshold_for(members: int, min_clients: int) -> int:
    """Shares needed to rebuild a member's secrets: a majority of the round's members (the server
    must collude with that many to unmask one), and at least ``min-clients`` and 2. Every member
    holds a share of every other member's secrets (SecAgg+ with full neighbourhoods)."""
    return max(2, min_clients, members // 2 + 1)


# ----------------------------------------------------------------------------- server
@dataclass
class SecureRound:
    """One round's secure aggregation, as the ServerApp needs it."""

    mean_update: ArrayRecord | None  # the weighted mean of the members' updates (None: failed)
    contributors: list[Message]  # the replies whose masked update is in the sum (no arrays in them)
    exchanges: list[tuple[str, list[Message], list[Message]]] = field(default_factory=list)
    failure: str = ""  # why the round produced no aggregate ("" when it did)


class _Proxy:
    """What the protocol code reads of a legacy ``ClientProxy``: its node id."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _LegacyStandIn:
    """What the workflow's stages read of a ``LegacyContext`` (state, strategy, client manager and
    history), answered for one round; the unmasked aggregate is kept, not aggregated again."""

    def __init__(self, server_round: int, nodes: Sequence[int]) -> None:
        self.nodes = list(nodes)
        self.state = RecordDict(
            {
                _workflow_constant.MAIN_CONFIGS_RECORD: ConfigRecord(
                    {_workflow_constant.Key.CURRENT_ROUND: server_round}
                ),
                _workflow_constant.MAIN_PARAMS_RECORD: ArrayRecord(),
            }
        )
        self.strategy = self
        self.client_manager = self
        self.history = self
        self.aggregate: list[Any] | None = None

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> list[Any]:
        return [(_Proxy(n), FitIns(parameters, {})) for n in self.nodes]

    def num_available(self) -> int:
        return len(self.nodes)

    def aggregate_fit(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[None, dict[str, Any]]:
        # Every result carries the same unmasked weighted mean (the workflow's "legacy" hand-over).
        self.aggregate = parameters_to_ndarrays(results[0][1].parameters) if results else None
        return None, {}

    def add_metrics_distributed_fit(self, server_round: int, metrics: Any) -> None:
        return None


class _RecordingGrid:
    """The grid as the workflow sees it: every exchange is kept (for dropouts and bytes), and the
    masked-update replies go through ``screen`` (a refused reply is left out, as a dropout)."""

    def __init__(self, grid: Any, screen: Callable[[list[Message]], list[Message]]) -> None:
        self._grid = grid
        self._screen = screen
        self.stage = ""
        self.exchanges: list[tuple[str, list[Message], list[Message]]] = []
        self.summed: list[Message] = []

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        self.exchanges.append((self.stage, messages, replies))
        if self.stage != COLLECT:
            return replies
        self.summed = self._screen([r for r in replies if not r.has_error()])
        return [r for r in replies if r.has_error()] + self.summed


SETUP, SHARE_KEYS, COLLECT, UNMASK = "setup", "share keys", "collect masked updates", "unmask"


def secure_train(
    grid: Any,
    contents: Mapping[int, RecordDict],
    *,
    server_round: int,
    timeout: float,
    min_clients: int,
    screen: Callable[[list[Message]], list[Message]] = list,
    params: SecAggParams | None = None,
) -> SecureRound:
    """Run SecAgg+ for one round's ``train`` messages (``contents``: node id -> its ``arrays`` +
    ``config``); returns the weighted mean update of the members whose masked update was summed.

    ``screen`` sees the members' (masked) replies before they are summed and returns the accepted
    ones (a private job's DP-SGD check); a refused or missing reply is a dropout, recovered by
    the protocol while enough of the round's members remain (``threshold_for``)."""
    require_strong_prg("server")
    params = params or SecAggParams()
    nodes = sorted(contents)
    if len(nodes) > params.max_members:
        return SecureRound(
            None,
            [],
            failure=f"secure aggregation takes at most {params.max_members} members in a round (their sums "
            f"must fit the modulus), {len(nodes)} selected",
        )
    threshold = threshold_for(len(nodes), min_clients)
    if len(nodes) < threshold:
        return SecureRound(
            None, [], failure=f"secure aggregation needs at least {threshold} members, {len(nodes)} selected"
        )
    workflow = _server_protocol.SecAggPlusWorkflow(
        num_shares=1.0,  # every member shares its secrets with every other member
        reconstruction_threshold=threshold,
        max_weight=params.max_weight,
        clipping_range=params.clipping_range,
        quantization_range=params.quantization_range,
        modulus_range=params.modulus_range,
        timeout=timeout,
    )
    legacy = _LegacyStandIn(server_round, nodes)
    state = _server_protocol.WorkflowState()
    recorder = _RecordingGrid(grid, screen)
    stages = (
        (SETUP, workflow.setup_stage),
        (SHARE_KEYS, workflow.share_keys_stage),
        (COLLECT, workflow.collect_masked_vectors_stage),
        (UNMASK, workflow.unmask_stage),
    )
    for name, stage in stages:
        recorder.stage = name
        if name == SHARE_KEYS:
            # Our own train contents, one record per member (the collect stage adds its shares to it).
            state.nid_to_fitins = {n: RecordDict(dict(contents[n])) for n in nodes}
        if name == UNMASK:
            _unmask_only_what_was_summed(state)
        if not stage(cast(Any, recorder), cast(Any, legacy), state):
            return SecureRound(
                None,
                recorder.summed,
                recorder.exchanges,
                failure=f"secure aggregation stopped at its {name} stage: fewer than {threshold} of the "
                f"{len(nodes)} selected members remain (a majority, at least min-clients, must hold shares)",
            )
        if name in (SETUP, SHARE_KEYS):
            # Flower 1.41 keeps a member that left before its key shares went out among the
            # "sampled" ones, and its unmask stage then asks the others for shares of it they never
            # received (a KeyError on every member). Such a member never masked anything: forget it.
            state.sampled_node_ids = set(state.active_node_ids)
    template = contents[nodes[0]].array_records["arrays"]
    aggregate = legacy.aggregate
    problem = _sum_problem(aggregate, recorder.summed, params, len(template))
    if problem or aggregate is None:
        return SecureRound(None, recorder.summed, recorder.exchanges, failure=problem)
    mean = ArrayRecord(
        OrderedDict(
            (key, Array(np.asarray(value, dtype=np.float64).reshape(template[key].numpy().shape)))
            for key, value in zip(template.keys(), aggregate[:-1], strict=True)
        )
    )
    return SecureRound(mean, recorder.summed, recorder.exchanges)


def _unmask_only_what_was_summed(state: Any) -> None:
    """Before the unmask stage: a member that dropped after sharing its keys left pairwise masks in
    the sum with the members whose update was summed, and with them only. Flower 1.41 rebuilds its
    masks with every neighbour chosen at setup, members that left before sharing their keys
    included (masks that are in no update: a corrupted sum, or a KeyError for a member that left
    before sending its public keys); keep only the summed neighbours of a dropped member."""
    summed = set(state.active_node_ids)
    for node in state.sampled_node_ids - summed:
        state.nid_to_neighbours[node] &= summed | {node}


def reported_weight(reply: Message) -> float:
    """A member's weight (its ``num-examples``), as the protocol code masked it."""
    return float(cast(float, reply.content.metric_records[_FITRES + "num_examples"]["num_examples"]))


def _sum_problem(
    aggregate: list[Any] | None, summed: Sequence[Message], params: SecAggParams, size: int
) -> str:
    """Why the unmasked mean is not to be trusted ("" when it is): the canary entry's mean is
    known from the weights the members reported; masks that did not cancel (a member on another
    PRG) or a sum that overflowed the modulus put it anywhere."""
    if aggregate is None or not summed:
        return "secure aggregation produced no sum"
    weights = [reported_weight(r) for r in summed]
    if len(aggregate) != size + 1:
        return "secure aggregation: the unmasked sum does not have the model's parameters"
    ratios = [params.ratio(w) for w in weights]
    expected = sum(r * canary(w, params.max_weight) for r, w in zip(ratios, weights, strict=True)) / sum(
        ratios
    )
    found = float(np.asarray(aggregate[-1]).reshape(-1)[0])
    if not abs(found - expected) <= 2 * len(weights) * params.step(weights) + 1e-9:
        return (
            "secure aggregation: the unmasked sum failed its check (a member's masks did not cancel, "
            f"or {len(weights)} members with {sum(weights):g} examples overflowed the modulus)"
        )
    # Every entry of the mean is within ±bound: a member that masked a non-finite update (Flower
    # quantises NaN to -2^31, far outside its range) or an entry that overflowed puts it beyond.
    bound = params.bound(weights)
    outside = sum(
        int(np.count_nonzero(~(np.abs(np.asarray(a, dtype=np.float64)) <= bound))) for a in aggregate[:-1]
    )
    if outside:
        return (
            f"secure aggregation: {outside} entries of the unmasked mean update are beyond ±{bound:.4g}, the "
            f"most {len(weights)} members' clipped updates can give (a member masked a non-finite update, "
            "or its masks did not cancel)"
        )
    return ""


# ----------------------------------------------------------------------------- member
def secaggplus_train_mod(message: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """The ClientApp's ``train`` mod: a message of the SecAgg+ protocol goes through Flower's
    ``secaggplus_mod`` (which calls the handler at its "collect masked vectors" stage); any other
    ``train`` message goes straight to the handler."""
    if PROTOCOL_RECORD not in message.content.config_records:
        return call_next(message, context)
    require_strong_prg("member")

    def train_as_update(msg: Message, ctxt: Context) -> Message:
        return update_reply(msg, call_next(msg, ctxt), ctxt)

    return cast(Message, _client_protocol.secaggplus_mod(message, context, train_as_update))


def update_reply(message: Message, reply: Message, context: Context) -> Message:
    """The handler's reply as the protocol code reads it: the update (trained state minus the
    received global state, in the global state's key order, then the canary entry) as the legacy
    ``FitRes`` parameters, weighted by ``num-examples``; the member's metrics and info kept beside
    it. The trained state itself is dropped (the protocol masks the update and clears every array
    record). ``secagg-clipped`` counts the update entries the quantisation will clip.

    A non-finite update is refused (``SecureAggregationError``: the member drops out of the round
    with that reason): Flower quantises NaN to -2^31, which would corrupt every member's mean."""
    if reply.has_error():
        return reply
    received = message.content.array_records["arrays"]
    trained = reply.content.array_records["arrays"]
    if list(trained.keys()) != list(received.keys()):
        raise ValueError("the trained state does not have the global state's parameters")
    update = [
        trained[k].numpy().astype(np.float64) - received[k].numpy().astype(np.float64) for k in received
    ]
    non_finite = sum(int(np.count_nonzero(~np.isfinite(u))) for u in update)
    if non_finite:
        raise SecureAggregationError(
            f"the model update has {non_finite} non-finite entries (NaN or infinite): refusing to mask it "
            "(it would corrupt the round's sum)"
        )
    metrics = reply.content.metric_records["metrics"]
    weight = int(cast(int, metrics["num-examples"]))
    protocol = context.state.config_records[RECORD_KEY_STATE]
    clip, max_weight = (
        float(cast(float, protocol["clipping_range"])),
        float(cast(float, protocol["max_weight"])),
    )
    ratio = weight / max_weight
    metrics[CLIPPED_METRIC] = sum(int(np.count_nonzero(np.abs(u) * ratio > clip)) for u in update)
    update.append(np.array([canary(weight, max_weight)], dtype=np.float64))
    fitres = FitRes(
        status=Status(code=Code.OK, message="Success"),
        parameters=ndarrays_to_parameters(update),
        num_examples=weight,
        metrics={},
    )
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    for name, record in reply.content.items():
        if not isinstance(record, ArrayRecord):
            content[name] = record
    return Message(content=content, reply_to=message)


def train_metrics(reply: Message) -> dict[str, Any]:
    """A secure round's reply's train metrics (the member's own ``metrics`` record)."""
    record = reply.content.metric_records.get("metrics")
    return dict(record) if record is not None else {}
