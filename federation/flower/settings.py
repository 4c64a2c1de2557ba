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
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from training.config import TrainConfig, TrainingConfigError

STRATEGIES = ("fedavg", "fedprox", "fedadam")

#: Node-config keys a member sets on their SuperNode (``--node-config "data-path='...' ..."``).
NODE_DATA_PATH = "data-path"
NODE_TEXT_COLUMN = "text-column"
NODE_LABEL_COLUMN = "label-column"
NODE_ORGANISATION = "organisation"
NODE_DELIMITER = "delimiter"
NODE_DEVICE = "device"

#: Run-config keys that map one-to-one onto ``TrainConfig`` fields.
_TRAIN_KEYS = {
    "base-model": "base_model",
    "lora": "lora",
    "lora-r": "lora_r",
    "lora-alpha": "lora_alpha",
    "lora-dropout": "lora_dropout",
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
        "output-dir",
        "metrics-jsonl",
        "callback-url",
        "callback-token",
        "callback-token-file",
        "job-id",
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
    output_dir: str = ""
    metrics_jsonl: str = ""
    callback_url: str = ""
    callback_token: str = ""
    callback_token_file: str = (
        ""  # a file on the SuperLink host holding the token (kept out of the run config)
    )
    job_id: str = ""

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, Any]) -> JobSettings:
        problems: list[str] = []
        unknown = sorted(set(run_config) - KNOWN_RUN_KEYS)
        if unknown:
            problems.append(f"unknown run-config keys {unknown!r}")

        def get(key: str, default: Any) -> Any:
            return run_config.get(key, default)

        # ---- training core configuration
        labels_raw = get("labels", "")
        labels = [s.strip() for s in str(labels_raw).split(",") if s.strip()]
        train: dict[str, Any] = {"labels": labels}
        for key, name in _TRAIN_KEYS.items():
            if key in run_config:
                train[name] = run_config[key]
        targets = get("lora-target-modules", None)
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
        try:
            # Columns are each member's business (node config); placeholders just to validate.
            config = TrainConfig.from_dict({**train, "text_column": "text", "label_column": "label"})
            train = config.to_dict()
            del train["text_column"], train["label_column"]
        except TrainingConfigError as exc:
            problems.append(str(exc))

        strategy = str(get("strategy", "fedavg")).strip().lower()
        if strategy not in STRATEGIES:
            problems.append(f"unknown strategy {strategy!r} (one of {list(STRATEGIES)!r})")

        def positive_int(key: str, default: int) -> int:
            value = get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                problems.append(f"{key} must be a positive integer, got {value!r}")
                return default
            return value

        def positive_real(key: str, default: float, *, allow_zero: bool = False) -> float:
            value = get(key, default)
            ok = (
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and math.isfinite(value)
                and (value >= 0 if allow_zero else value > 0)
            )
            if not ok:
                problems.append(
                    f"{key} must be a finite number {'>= 0' if allow_zero else '> 0'}, got {value!r}"
                )
                return default
            return float(value)

        num_rounds = positive_int("num-rounds", 3)
        min_clients = positive_int("min-clients", 2)
        round_timeout = positive_real("round-timeout", 600.0)
        connect_timeout = positive_real("connect-timeout", 120.0)
        proximal_mu = positive_real("proximal-mu", 0.01, allow_zero=True)
        if strategy == "fedprox" and proximal_mu == 0:
            problems.append("strategy 'fedprox' needs proximal-mu > 0 (0 is plain FedAvg)")
        fedadam = {
            "eta": positive_real("fedadam-eta", 1e-2),
            "eta_l": positive_real("fedadam-eta-l", 1e-1),
            "beta_1": positive_real("fedadam-beta-1", 0.9, allow_zero=True),
            "beta_2": positive_real("fedadam-beta-2", 0.99, allow_zero=True),
            "tau": positive_real("fedadam-tau", 1e-3),
        }
        for beta in ("beta_1", "beta_2"):
            if not fedadam[beta] < 1:
                problems.append(f"fedadam-{beta.replace('_', '-')} must be < 1")
        test_fraction = positive_real("test-fraction", 0.2)
        if not 0 < test_fraction < 1:
            problems.append(f"test-fraction must be strictly between 0 and 1, got {test_fraction!r}")

        try:
            participants = Participants.parse(str(get("participants", "")))
        except FederationConfigError as exc:
            problems.append(str(exc))
            participants = Participants()
        if not participants.open and min_clients > participants.declared:
            problems.append(
                f"min-clients ({min_clients}) exceeds the number of participants the job names "
                f"({participants.declared}: {participants.to_text()})"
            )

        strings = {}
        for key in (
            "output-dir",
            "metrics-jsonl",
            "callback-url",
            "callback-token",
            "callback-token-file",
            "job-id",
        ):
            value = get(key, "")
            if not isinstance(value, str):
                problems.append(f"{key} must be a string, got {value!r}")
                value = ""
            strings[key.replace("-", "_")] = value
        url = strings["callback_url"]
        if url and not url.startswith(("http://", "https://")):
            problems.append(f"callback-url must be an http(s) URL, got {url!r}")

        if problems:
            raise FederationConfigError("invalid federated job: " + "; ".join(problems))
        return cls(
            train=train,
            strategy=strategy,
            num_rounds=num_rounds,
            min_clients=min_clients,
            round_timeout=round_timeout,
            connect_timeout=connect_timeout,
            participants=participants,
            proximal_mu=proximal_mu,
            fedadam=fedadam,
            test_fraction=test_fraction,
            **strings,
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
        return out


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
        )
