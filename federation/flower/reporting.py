"""Where the ServerApp sends its per-round records: the round record's model and pluggable reporters.

Every record is a JSON object with an ``event`` (``"started"``, ``"round"``, ``"finished"``,
``"failed"``), the ``job_id`` and a UTC ``time``. The clearinghouse consumes them either from a
JSON-lines file or through an HTTP callback (POST, JSON body, ``Authorization: Bearer <token>``).
A reporter must never bring the job down: delivery failures are logged and swallowed.

A ``"round"`` event is a ``RoundRecord``: the ServerApp builds one and emits ``to_event()``; the
clearinghouse stores the event as sent and reads it back with ``RoundRecord.parse``, which takes
any stored JSON (older rows, a hand-made callback) and keeps what it cannot type out of the typed
fields (a value of the wrong type reads as unset), so a reader never meets junk.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- the round record
def _or_none(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """A value of the wrong type reads as None (records are JSON that anyone holding the job's
    token could have written)."""
    try:
        return handler(value)
    except ValidationError:
        return None


def _finite(value: Any) -> float | None:
    """A reported metric as a float; None for anything else (text, NaN, a number past a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _count(value: Any) -> int:
    """A count or byte total; 0 when missing or not a non-negative integer."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _mappings(value: Any) -> list[Any]:
    """The JSON objects (or records) of a list; anything else in it, or a non-list, is left out."""
    if not isinstance(value, list):
        return []
    return [item for item in value if isinstance(item, (Mapping, BaseModel))]


def _mapping(value: Any) -> Any:
    """A JSON object (or a record), or an empty one in its place."""
    return value if isinstance(value, (Mapping, BaseModel)) else {}


#: A metric: a finite float or None.
Metric = Annotated[float | None, BeforeValidator(_finite)]
#: A count or a number of bytes (0 when unset).
Count = Annotated[int, BeforeValidator(_count)]
_OptionalInt = Annotated[int | None, WrapValidator(_or_none)]
_OptionalText = Annotated[str | None, WrapValidator(_or_none)]
_OptionalMapping = Annotated[dict[str, Any] | None, WrapValidator(_or_none)]


class _Record(BaseModel):
    # Unknown keys are kept (a record is stored and shown as the ServerApp sent it); frozen: a
    # record is a value.
    model_config = ConfigDict(frozen=True, extra="allow")

    def to_json(self) -> dict[str, Any]:
        """The JSON object: the fields that were given (or parsed), and unknown keys as they came."""
        return self.model_dump(exclude_unset=True)


class DropoutRecord(_Record):
    """A selected node that gave no model update in the round, and why."""

    node_id: _OptionalInt = None
    organisation: _OptionalText = None
    reason: _OptionalText = None

    @property
    def label(self) -> str:
        """``"<organisation>: <reason>"`` (the node id when no organisation is known)."""
        return f"{self.organisation or f'node {self.node_id}'}: {self.reason or ''}"


class ClientRecord(_Record):
    """One member's entry in a round: its train metrics, and its evaluation of the new global
    state (or why that failed). Only the member's own organisation may read it."""

    node_id: _OptionalInt = None
    organisation: _OptionalText = None
    train: _OptionalMapping = None
    evaluate: _OptionalMapping = None
    evaluate_error: _OptionalText = None

    @property
    def evaluate_accuracy(self) -> float | None:
        """The member's held-out accuracy, when it reported a number."""
        return _finite((self.evaluate or {}).get("eval-accuracy"))

    @property
    def label(self) -> str:
        return self.organisation or f"node {self.node_id}"


class RoundEvaluation(_Record):
    """The new global state's evaluation on the members' held-out splits: the example-weighted
    means of the members' own metrics, and the metrics of their pooled confusion matrices."""

    loss: Metric = None
    mean_client_accuracy: Metric = None
    mean_client_macro_f1: Metric = None
    clients: _OptionalInt = None
    accuracy: Metric = None
    macro_f1: Metric = None
    per_class_f1: Annotated[dict[str, Metric] | None, WrapValidator(_or_none)] = None
    confusion: Annotated[list[list[int]] | None, WrapValidator(_or_none)] = None
    n: _OptionalInt = None


class RoundRecord(_Record):
    """One completed round, as the ServerApp reports it (the ``"round"`` event)."""

    event: str = "round"
    round: _OptionalInt = None
    strategy: _OptionalText = None
    participants: _OptionalInt = None
    clients_trained: Count = 0
    dropouts: Annotated[list[DropoutRecord], BeforeValidator(_mappings)] = Field(default_factory=list)
    train: Annotated[dict[str, Any], BeforeValidator(_mapping)] = Field(default_factory=dict)
    evaluate: Annotated[RoundEvaluation, BeforeValidator(_mapping)] = Field(default_factory=RoundEvaluation)
    clients: Annotated[list[ClientRecord], BeforeValidator(_mappings)] = Field(default_factory=list)
    bytes_sent: Count = 0
    bytes_received: Count = 0
    trainable_bytes: Count = 0
    round_seconds: Metric = None
    train_phase_seconds: Metric = None
    evaluate_phase_seconds: Metric = None
    slowest_client_train_seconds: Metric = None
    flower_overhead_seconds: Metric = None

    @classmethod
    def parse(cls, data: Any) -> RoundRecord:
        """A stored (or received) round event as a record; never fails (see the module's note)."""
        return cls.model_validate(data if isinstance(data, Mapping) else {})

    def to_event(self) -> dict[str, Any]:
        """The ``"round"`` event the reporters send (and the clearinghouse stores as sent)."""
        return {"event": self.event, **self.to_json()}


class Reporter(Protocol):
    def emit(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def _stamp(record: Mapping[str, Any], job_id: str) -> dict[str, Any]:
    out = {"job_id": job_id, "time": datetime.now(UTC).isoformat(timespec="milliseconds")}
    out.update(record)
    return out


class JsonLinesReporter:
    """Append one JSON object per line to ``path`` (flushed after each record)."""

    def __init__(self, path: str | Path, *, job_id: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.job_id = job_id
        self._lock = threading.Lock()

    def emit(self, record: Mapping[str, Any]) -> None:
        line = json.dumps(_stamp(record, self.job_id), sort_keys=True, default=str)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    def close(self) -> None:
        pass


class HttpCallbackReporter:
    """POST each record as JSON to ``url`` with a bearer token (a few retries, short timeout)."""

    def __init__(
        self, url: str, *, token: str = "", job_id: str = "", timeout: float = 10.0, retries: int = 2
    ):
        self.url = url
        self.token = token
        self.job_id = job_id
        self.timeout = timeout
        self.retries = retries

    def emit(self, record: Mapping[str, Any]) -> None:
        body = json.dumps(_stamp(record, self.job_id), default=str).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    response.read()
                return
            except Exception as exc:  # noqa: BLE001 - a reporter must not kill the job
                if attempt == self.retries:
                    log.warning("callback %s failed for event %r: %s", self.url, record.get("event"), exc)

    def close(self) -> None:
        pass


class MultiReporter:
    def __init__(self, reporters: Sequence[Reporter]) -> None:
        self.reporters = list(reporters)

    def emit(self, record: Mapping[str, Any]) -> None:
        for reporter in self.reporters:
            try:
                reporter.emit(record)
            except Exception as exc:  # noqa: BLE001
                log.warning("reporter %r failed: %s", reporter, exc)

    def close(self) -> None:
        for reporter in self.reporters:
            reporter.close()


class MemoryReporter:
    """Keeps records in a list (tests)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def emit(self, record: Mapping[str, Any]) -> None:
        self.records.append(dict(record))

    def close(self) -> None:
        pass


def build_reporter(
    *, metrics_jsonl: str = "", callback_url: str = "", callback_token: str = "", job_id: str = ""
) -> MultiReporter:
    reporters: list[Reporter] = []
    if metrics_jsonl:
        reporters.append(JsonLinesReporter(metrics_jsonl, job_id=job_id))
    if callback_url:
        reporters.append(HttpCallbackReporter(callback_url, token=callback_token, job_id=job_id))
    return MultiReporter(reporters)
