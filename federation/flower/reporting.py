"""Where the ServerApp sends its per-round records: pluggable reporters.

Every record is a JSON object with an ``event`` (``"started"``, ``"round"``, ``"finished"``,
``"failed"``), the ``job_id`` and a UTC ``time``. The clearinghouse consumes them either from a
JSON-lines file or through an HTTP callback (POST, JSON body, ``Authorization: Bearer <token>``).
A reporter must never bring the job down: delivery failures are logged and swallowed.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


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
