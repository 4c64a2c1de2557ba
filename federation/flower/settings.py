"""The federated job's settings (from Flower's run config) and a member's node settings.

Flower's run config is a flat mapping of TOML scalars (str, int, float, bool), defaults in the
app's ``pyproject.toml`` under ``[tool.flwr.app.config]`` and overridden per run
(``flwr run ... --run-config 'num-rounds=5 strategy="fedprox"'``). ``JobSettings.from_run_config``
turns it into one validated value, so a bad job fails at its start with every problem listed,
rather than minutes later on a member's machine.

Light on purpose (no torch): the clearinghouse validates job settings with it before submitting.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from training.config import TestDedup, TrainConfig, TrainingConfigError
from training.privacy import DpSgdError, DpSgdPlan, priced_plan
from training.validation import Rules, positive_int, problem, real, rule

STRATEGIES = ("fedavg", "fedprox", "fedadam")

#: Node-config keys a member sets on their SuperNode (``--node-config "data-path='...' ..."``).
NODE_DATA_PATH = "data-path"
NODE_TEXT_COLUMN = "text-column"
NODE_LABEL_COLUMN = "label-column"
NODE_ORGANISATION = "organisation"
NODE_DELIMITER = "delimiter"
NODE_DEVICE = "device"
#: A member that sets ``require-dp=true`` trains only jobs that carry a DP-SGD plan for it.
NODE_REQUIRE_DP = "require-dp"

#: A private job's train reply: the ``info`` key under which the member states the registered rows'
#: digest its file matched (its plan's ``data.digest``); the ServerApp refuses a reply without it.
DATA_DIGEST_KEY = "dp-data-digest"

#: Run-config keys that map one-to-one onto ``TrainConfig`` fields.
_TRAIN_KEYS = {
    "base-model": "base_model",
    "lora": "lora",
    "lora-r": "lora_r",
    "lora-alpha": "lora_alpha",
    "lora-dropout": "lora_dropout",
    "pooling": "pooling",
    "head-only": "head_only",
    "optimizer": "optimizer",
    "max-length": "max_length",
    "batch-size": "batch_size",
    "learning-rate": "learning_rate",
    "weight-decay": "weight_decay",
    "local-epochs": "local_epochs",
    "max-steps": "max_steps",
    "seed": "seed",
    "mixed-precision": "mixed_precision",
}

#: Every run-config key this app understands (anything else is refused as a probable typo).
KNOWN_RUN_KEYS = frozenset(
    {
        "labels",
        "lora-target-modules",
        "strategy",
        "num-rounds",
        "min-clients",
        "round-timeout",
        "connect-timeout",
        "participants",
        "proximal-mu",
        "fedadam-eta",
        "fedadam-eta-l",
        "fedadam-beta-1",
        "fedadam-beta-2",
        "fedadam-tau",
        "test-fraction",
        "test-dedup",
        "output-dir",
        "metrics-jsonl",
        "callback-url",
        "callback-token",
        "callback-token-file",
        "job-id",
        "dp-plans",
        "dp-data-file",
        "secure-aggregation",
        *_TRAIN_KEYS,
    }
)


class FederationConfigError(ValueError):
    """The job's settings are unusable (message safe to show to the user)."""


class JobFailed(RuntimeError):
    """A federated job stopped before completing all rounds (e.g. too few participants left)."""


@dataclass(frozen=True)
class Participants:
    """Who may take part: explicit SuperNode ids and/or organisation slugs (matched against the
    node-config attribute ``organisation``). Both empty means every connected node."""

    node_ids: frozenset[int] = frozenset()
    organisations: frozenset[str] = frozenset()

    @property
    def open(self) -> bool:
        return not self.node_ids and not self.organisations

    @property
    def declared(self) -> int:
        """How many participants the job names (0 when open)."""
        return len(self.node_ids) + len(self.organisations)

    @classmethod
    def parse(cls, text: str) -> Participants:
        """``"org:acme, org:globex, node:123, 456"``; bare integers are node ids, other bare
        words organisation slugs; ``""`` or ``"*"`` means open."""
        node_ids: set[int] = set()
        orgs: set[str] = set()
        if not isinstance(text, str):
            raise FederationConfigError(f"participants must be a string, got {text!r}")
        for raw in text.split(","):
            item = raw.strip()
            if not item or item == "*":
                continue
            kind, _, value = item.partition(":")
            if not value:
                kind, value = ("node" if item.isdigit() else "org"), item
            kind, value = kind.strip().lower(), value.strip()
            if kind == "node":
                if not value.isdigit():
                    raise FederationConfigError(f"participant {item!r}: a node id must be an integer")
                node_ids.add(int(value))
            elif kind in ("org", "organisation", "organization"):
                if not value:
                    raise FederationConfigError(f"participant {item!r}: empty organisation slug")
                orgs.add(value)
            else:
                raise FederationConfigError(
                    f"participant {item!r}: expected 'org:<slug>', 'node:<id>', a node id or a slug"
                )
        return cls(frozenset(node_ids), frozenset(orgs))

    def admits(self, node_id: int, organisation: str | None) -> bool:
        if self.open:
            return True
        return node_id in self.node_ids or (organisation is not None and organisation in self.organisations)

    def to_text(self) -> str:
        return ",".join(
            [f"node:{n}" for n in sorted(self.node_ids)] + [f"org:{o}" for o in sorted(self.organisations)]
        )


@dataclass(frozen=True)
class JobSettings:
    """One federated fine-tuning job, as the ServerApp runs it."""

    train: dict[str, Any]  # TrainConfig.to_dict() minus the per-member columns
    strategy: str = "fedavg"
    num_rounds: int = 3
    min_clients: int = 2
    round_timeout: float = 600.0
    connect_timeout: float = 120.0
    participants: Participants = field(default_factory=Participants)
    proximal_mu: float = 0.01
    fedadam: dict[str, float] = field(default_factory=dict)
    test_fraction: float = 0.2
    # Held-out rows of a member's split that duplicate one of its training rows, exactly or nearly
    # (``training.data.deduplicate_test_split``): "drop" them, "report" them only, or "off".
    test_dedup: TestDedup = "drop"
    output_dir: str = ""
    metrics_jsonl: str = ""
    callback_url: str = ""
    callback_token: str = ""
    callback_token_file: str = (
        ""  # a file on the SuperLink host holding the token (kept out of the run config)
    )
    job_id: str = ""
    # A DP job: organisation slug -> its member's priced DP-SGD plan (``DpSgdPlan.to_dict()``).
    # Only a node of a planned organisation takes part (one node per organisation: two would train
    # the same rows twice under one plan); none trains without its plan.
    dp_plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    # A file on the SuperLink host (the job's shared directory) holding, per organisation, the rows
    # its plan was priced on (``DataExpectation``: row count, content digest, parse options). Kept out
    # of the run config, which every SuperNode receives: each member gets only its own ``data``, inside
    # its own train message. Merged into ``dp_plans`` when the settings are read.
    dp_data_file: str = ""
    # SecAgg+ (federation.flower.secure_aggregation): the server sees the sum of the members'
    # updates, never one member's update (at most SECURE_AGGREGATION_MAX_MEMBERS in a round).
    secure_aggregation: bool = False

    @property
    def private(self) -> bool:
        """Whether every member trains with record-level DP-SGD (the job carries their plans)."""
        return bool(self.dp_plans)

    def dp_plan_for(self, organisation: str) -> DpSgdPlan | None:
        """The member's DP-SGD plan (None in a non-private job; a private job has one for each
        of its participants, checked when the settings were read)."""
        plan = self.dp_plans.get(organisation)
        return DpSgdPlan(**plan) if plan is not None else None

    def dp_round_steps(self, organisation: str) -> int:
        """The DP-SGD steps the member takes each round: its plan's steps over the rounds."""
        plan = self.dp_plan_for(organisation)
        return plan.steps // self.num_rounds if plan is not None else 0

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> JobSettings:
        """The job of a run config; ``FederationConfigError`` lists every problem at once."""
        problems: list[str] = []
        unknown = sorted(set(run_config) - KNOWN_RUN_KEYS)
        if unknown:
            problems.append(f"unknown run-config keys {unknown!r}")
        train: dict[str, Any] = {}
        try:
            train = _train_settings(run_config)
        except TrainingConfigError as exc:
            problems.append(str(exc))
        problems += _RunConfig.problems(run_config)
        if problems:
            raise FederationConfigError("invalid federated job: " + "; ".join(problems))
        job = _RunConfig.model_validate(run_config)
        dp_plans, dp_problems = _dp_plans(run_config.get("dp-plans", ""), job=job, train=train)
        if job.dp_data_file and not dp_problems:
            dp_plans, dp_problems = _dp_data(job.dp_data_file, dp_plans)
        if dp_problems:
            raise FederationConfigError("invalid federated job: " + "; ".join(dp_problems))
        return cls(
            train=train,
            strategy=job.strategy,
            num_rounds=job.num_rounds,
            min_clients=job.min_clients,
            round_timeout=job.round_timeout,
            connect_timeout=job.connect_timeout,
            participants=job.participants,
            proximal_mu=job.proximal_mu,
            fedadam={
                "eta": job.fedadam_eta,
                "eta_l": job.fedadam_eta_l,
                "beta_1": job.fedadam_beta_1,
                "beta_2": job.fedadam_beta_2,
                "tau": job.fedadam_tau,
            },
            test_fraction=job.test_fraction,
            test_dedup=job.test_dedup,
            output_dir=job.output_dir,
            metrics_jsonl=job.metrics_jsonl,
            callback_url=job.callback_url,
            callback_token=job.callback_token,
            callback_token_file=job.callback_token_file,
            job_id=job.job_id,
            dp_plans=dp_plans,
            dp_data_file=job.dp_data_file,
            secure_aggregation=job.secure_aggregation,
        )

    def resolved_callback_token(self) -> str:
        """The bearer token: ``callback-token``, else the stripped content of ``callback-token-file``.

        Prefer the file: run-config values are stored by the SuperLink and shown by ``flwr ls``."""
        if self.callback_token or not self.callback_token_file:
            return self.callback_token
        try:
            with open(self.callback_token_file, encoding="utf-8") as handle:
                return handle.read().strip()
        except OSError as exc:
            raise FederationConfigError(
                f"cannot read callback-token-file {self.callback_token_file!r}: {exc}"
            ) from exc

    def train_config(self, *, text_column: str = "text", label_column: str = "label") -> TrainConfig:
        return TrainConfig.from_dict({**self.train, "text_column": text_column, "label_column": label_column})

    def to_public_dict(self) -> dict[str, Any]:
        """For reports: everything but the callback token."""
        out = asdict(self)
        out["participants"] = self.participants.to_text() or "*"
        out["callback_token"] = "***" if self.callback_token else ""
        # The rows each plan was priced on (their digest) are for the member alone.
        out["dp_plans"] = {o: priced_plan(p) for o, p in self.dp_plans.items()}
        return out


def _train_settings(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The job's ``TrainConfig`` (validated) as a dict, without the per-member columns."""
    labels = [s.strip() for s in str(run_config.get("labels", "")).split(",") if s.strip()]
    train: dict[str, Any] = {"labels": labels}
    for key, name in _TRAIN_KEYS.items():
        if key in run_config:
            train[name] = run_config[key]
    targets = run_config.get("lora-target-modules")
    if targets is not None:
        train["lora_target_modules"] = [s.strip() for s in str(targets).split(",") if s.strip()]
    # TOML has no null: 0 / "" stand for "unset".
    if train.get("max_steps") in (0, ""):
        train["max_steps"] = None
    if train.get("learning_rate") in (0, 0.0, ""):
        train["learning_rate"] = None
    for name in ("learning_rate", "lora_dropout", "weight_decay"):
        if isinstance(train.get(name), int) and not isinstance(train.get(name), bool):
            train[name] = float(train[name])
    # Columns are each member's business (node config); placeholders just to validate.
    config = TrainConfig.from_dict({**train, "text_column": "text", "label_column": "label"})
    train = config.to_dict()
    del train["text_column"], train["label_column"]
    return train


def _dp_plans(
    value: Any, *, job: _RunConfig, train: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The ``dp-plans`` run-config value (a JSON object: organisation slug -> DP-SGD plan) checked
    against the job: ``({}, [])`` for a non-private job, else the plans or every problem found."""
    if value in ("", None):
        return {}, []
    try:
        raw = json.loads(value) if isinstance(value, str) else None
    except json.JSONDecodeError as exc:
        return {}, [f"dp-plans is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"]
    if not isinstance(raw, dict) or not raw:
        return {}, ["dp-plans must be a JSON object of organisation slug -> DP-SGD plan"]
    problems: list[str] = []
    plans: dict[str, dict[str, Any]] = {}
    for organisation, fields in sorted(raw.items()):
        try:
            plan = DpSgdPlan(**fields) if isinstance(fields, dict) else None
        except (DpSgdError, TypeError) as exc:
            problems.append(f"dp-plans[{organisation!r}]: {exc}")
            continue
        if plan is None:
            problems.append(f"dp-plans[{organisation!r}] must be an object")
            continue
        if plan.rows is None or plan.batch_size is None:
            problems.append(f"dp-plans[{organisation!r}] must state the rows and the batch size it priced")
        elif plan.batch_size != train.get("batch_size"):
            problems.append(
                f"dp-plans[{organisation!r}] priced batches of {plan.batch_size}, "
                f"the job trains with {train.get('batch_size')}"
            )
        if plan.steps % job.num_rounds:
            problems.append(
                f"dp-plans[{organisation!r}]: {plan.steps} steps do not split evenly over {job.num_rounds} rounds"
            )
        plans[organisation] = plan.to_dict()
    if job.strategy == "fedprox":
        problems.append(
            "a DP job cannot use fedprox: its proximal term is not part of the priced DP-SGD step"
        )
    participants = job.participants
    if participants.open:
        problems.append("a DP job names its participants (organisations or registered nodes)")
    missing = sorted(participants.organisations - set(raw))
    if missing:
        problems.append(f"dp-plans has no plan for participant(s) {missing}")
    return plans, problems


def _dp_data(path: str, plans: Mapping[str, dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The plans bound to the rows each was priced on, read from ``dp-data-file`` (a JSON object:
    organisation slug -> ``DataExpectation``): one for every plan, none for anyone else. A plan of the
    run config that already carries ``data`` is refused: the run config reaches every SuperNode."""
    if not plans:
        return {}, ["dp-data-file is set but the job has no dp-plans"]
    try:
        with open(path, encoding="utf-8") as handle:
            raw = json.load(handle)
    except OSError as exc:
        return {}, [f"cannot read dp-data-file {path!r}: {exc.strerror or exc}"]
    except json.JSONDecodeError as exc:
        return {}, [f"dp-data-file is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"]
    if not isinstance(raw, dict):
        return {}, ["dp-data-file must hold a JSON object of organisation slug -> data"]
    problems: list[str] = []
    inline = sorted(o for o, plan in plans.items() if plan.get("data") is not None)
    if inline:
        problems.append(
            f"dp-plans{inline} carry data in the run config, which every SuperNode receives; "
            "give it in dp-data-file only"
        )
    missing = sorted(set(plans) - set(raw))
    if missing:
        problems.append(f"dp-data-file has no data for planned organisation(s) {missing}")
    unknown = sorted(set(raw) - set(plans))
    if unknown:
        problems.append(f"dp-data-file names organisation(s) without a plan {unknown}")
    bound: dict[str, dict[str, Any]] = {}
    for organisation, plan in sorted(plans.items()):
        try:
            bound[organisation] = DpSgdPlan(**{**plan, "data": raw.get(organisation)}).to_dict()
        except (DpSgdError, TypeError) as exc:
            problems.append(f"dp-data-file[{organisation!r}]: {exc}")
    return bound, problems


def _strategy_name(value: Any) -> str:
    return str(value).strip().lower()


def _known_strategy(strategy: str) -> str:
    if strategy not in STRATEGIES:
        raise problem(f"unknown strategy {strategy!r} (one of {list(STRATEGIES)!r})")
    return strategy


def _participants(value: Any) -> Participants:
    try:
        return Participants.parse(str(value))
    except FederationConfigError as exc:
        raise problem(str(exc)) from exc


_Text = Annotated[str, rule("must be a string")]


#: The most members a secure-aggregation round may have (``SecAggParams().max_members``: 2^32 // 2^24
#: - 1; their quantised updates' sums must fit the modulus). Checked again when a round starts.
SECURE_AGGREGATION_MAX_MEMBERS = 255


def _default(name: str) -> Any:
    """``JobSettings``'s default for ``name``: what a run config that leaves the key out gets."""
    return JobSettings.__dataclass_fields__[name].default


class _RunConfig(Rules):
    """The run-config keys of the job itself (the training ones are ``TrainConfig``'s), each with
    its rule; keys are the run config's own (``num-rounds``)."""

    strategy: Annotated[str, BeforeValidator(_strategy_name), AfterValidator(_known_strategy)] = Field(
        _default("strategy"), alias="strategy"
    )
    num_rounds: Annotated[int, positive_int()] = Field(_default("num_rounds"), alias="num-rounds")
    min_clients: Annotated[int, positive_int()] = Field(_default("min_clients"), alias="min-clients")
    round_timeout: Annotated[float, real(0, low_open=True)] = Field(
        _default("round_timeout"), alias="round-timeout"
    )
    connect_timeout: Annotated[float, real(0, low_open=True)] = Field(
        _default("connect_timeout"), alias="connect-timeout"
    )
    proximal_mu: Annotated[float, real(0)] = Field(_default("proximal_mu"), alias="proximal-mu")
    fedadam_eta: Annotated[float, real(0, low_open=True)] = Field(1e-2, alias="fedadam-eta")
    fedadam_eta_l: Annotated[float, real(0, low_open=True)] = Field(1e-1, alias="fedadam-eta-l")
    fedadam_beta_1: Annotated[float, real(0, high=1, high_open=True)] = Field(0.9, alias="fedadam-beta-1")
    fedadam_beta_2: Annotated[float, real(0, high=1, high_open=True)] = Field(0.99, alias="fedadam-beta-2")
    fedadam_tau: Annotated[float, real(0, low_open=True)] = Field(1e-3, alias="fedadam-tau")
    test_fraction: Annotated[float, real(0, high=1, low_open=True, high_open=True)] = Field(
        _default("test_fraction"), alias="test-fraction"
    )
    test_dedup: Annotated[TestDedup, Field(description="must be 'drop', 'report' or 'off'")] = Field(
        _default("test_dedup"), alias="test-dedup"
    )
    participants: Annotated[Participants, BeforeValidator(_participants)] = Field(
        Participants(), alias="participants"
    )
    output_dir: _Text = Field("", alias="output-dir")
    metrics_jsonl: _Text = Field("", alias="metrics-jsonl")
    callback_url: Annotated[str, rule("must be an http(s) URL", pattern=r"^(?:https?://[\s\S]*)?$")] = Field(
        "", alias="callback-url"
    )
    callback_token: _Text = Field("", alias="callback-token")
    callback_token_file: _Text = Field("", alias="callback-token-file")
    dp_data_file: _Text = Field("", alias="dp-data-file")
    job_id: _Text = Field("", alias="job-id")
    secure_aggregation: Annotated[bool, rule("must be true or false")] = Field(
        _default("secure_aggregation"), alias="secure-aggregation"
    )

    @model_validator(mode="after")
    def _consistent(self) -> _RunConfig:
        problems = []
        if self.strategy == "fedprox" and self.proximal_mu == 0:
            problems.append("strategy 'fedprox' needs proximal-mu > 0 (0 is plain FedAvg)")
        if self.secure_aggregation and self.min_clients < 2:
            problems.append(
                "secure-aggregation needs min-clients >= 2 (the sum of one update is that update)"
            )
        if self.secure_aggregation and self.min_clients > SECURE_AGGREGATION_MAX_MEMBERS:
            problems.append(
                f"secure-aggregation takes at most {SECURE_AGGREGATION_MAX_MEMBERS} members in a round "
                f"(its sums must fit the modulus); min-clients is {self.min_clients}"
            )
        declared = self.participants.declared
        if not self.participants.open and self.min_clients > declared:
            problems.append(
                f"min-clients ({self.min_clients}) exceeds the number of participants the job names "
                f"({declared}: {self.participants.to_text()})"
            )
        if problems:
            raise problem("; ".join(problems))
        return self


def train_config_json(settings: JobSettings) -> str:
    return json.dumps(settings.train, sort_keys=True)


@dataclass(frozen=True)
class NodeSettings:
    """What a member configures on their SuperNode."""

    data_path: str
    text_column: str = "text"
    label_column: str = "label"
    organisation: str = ""
    delimiter: str | None = None
    device: str | None = None
    require_dp: bool = False

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> NodeSettings:
        path = node_config.get(NODE_DATA_PATH)
        if not isinstance(path, str) or not path:
            raise FederationConfigError(
                f"this SuperNode has no '{NODE_DATA_PATH}' in its node config; start it with "
                f"--node-config \"{NODE_DATA_PATH}='/path/to/data.csv' {NODE_TEXT_COLUMN}='text' "
                f"{NODE_LABEL_COLUMN}='label'\""
            )
        delimiter = node_config.get(NODE_DELIMITER) or None
        if delimiter == "\\t" or delimiter == "tab":
            delimiter = "\t"
        return cls(
            data_path=path,
            text_column=str(node_config.get(NODE_TEXT_COLUMN, "text")),
            label_column=str(node_config.get(NODE_LABEL_COLUMN, "label")),
            organisation=str(node_config.get(NODE_ORGANISATION, "")),
            delimiter=delimiter,
            device=str(node_config.get(NODE_DEVICE)) if node_config.get(NODE_DEVICE) else None,
            require_dp=str(node_config.get(NODE_REQUIRE_DP, "")).strip().lower()
            in ("1", "true", "yes", "on"),
        )
