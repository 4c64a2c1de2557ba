"""The check that no log line of a test run holds a secret the tests used (tests/conftest.py runs it at
the end of every session; tests/core/test_logs.py shows that it finds what it should).

Every process of the run writes its log records to the run's log directory (clearinghouse/settings/
test.py) and, at its end, the secrets it knows of to `secrets-<pid>.json` there; the main process then
reads every log file for every secret. A finding names the file, the line and what kind of secret it
is, never the secret itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

# Full API token texts look like this wherever they come from.
API_TOKEN = re.compile(r"chp_[0-9a-f]{12}_[A-Za-z0-9_-]{16,}")
MIN_LENGTH = 8  # shorter values would match by chance

_remembered: dict[str, str] = {}


def remember(value: str | None, label: str) -> None:
    """Adds a secret to look for (ignored when too short to search for)."""
    if value and len(value) >= MIN_LENGTH:
        _remembered[value] = label


def keyring_material(path: Path) -> dict[str, str]:
    """The base64 key bytes of a keyring file (KEKs and staging private keys) and their hex form."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    import base64

    found: dict[str, str] = {}
    for entry in [*doc.get("keys", []), *doc.get("staging_keys", [])]:
        for field in ("key", "private"):
            if isinstance(entry.get(field), str):
                found[entry[field]] = f"keyring {field} ({entry.get('id')})"
                found[base64.b64decode(entry[field]).hex()] = f"keyring {field} ({entry.get('id')}, hex)"
    return found


def write_secrets(directory: Path, extra: dict[str, str]) -> None:
    secrets = {**_remembered, **extra}
    path = directory / f"secrets-{os.getpid()}.json"
    path.write_text(json.dumps(secrets))
    path.chmod(0o600)


def read_secrets(directory: Path) -> dict[str, str]:
    secrets: dict[str, str] = {}
    for path in directory.glob("secrets-*.json"):
        secrets.update(json.loads(path.read_text()))
    return secrets


_WORD = re.compile(r"[A-Za-z0-9_-]+")


def scan(directory: Path, secrets: dict[str, str]) -> list[str]:
    """Findings `file:line: kind` for every log line holding a secret or an API token.

    Thousands of token secrets are looked for in every line, so secrets made of word characters are
    found by set lookups over the line's word runs, not one substring search each."""
    words: dict[int, dict[str, str]] = {}
    others: dict[str, str] = {}
    for value, label in secrets.items():
        if _WORD.fullmatch(value):
            words.setdefault(len(value), {})[value] = label
        else:
            others[value] = label
    findings = []
    for path in sorted(p for p in directory.iterdir() if p.suffix in {".jsonl", ".log"}):
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                kinds = {label for value, label in others.items() if value in line}
                for run in _WORD.findall(line):
                    for length, table in words.items():
                        kinds.update(
                            table[run[i : i + length]]
                            for i in range(len(run) - length + 1)
                            if run[i : i + length] in table
                        )
                if API_TOKEN.search(line):
                    kinds.add("API token")
                findings += [f"{path.name}:{number}: {kind}" for kind in sorted(kinds)]
    return findings
