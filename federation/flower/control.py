"""The clearinghouse's side of a Flower deployment: submit, watch and stop runs, and register
SuperNode keys, through the ``flwr`` CLI (Flower's Control API client) with JSON output.

Pure (no Django): the caller passes the SuperLink address and its CA certificate. The CLI reads
its connection from ``$FLWR_HOME/config.toml``; each ``SuperLinkControl`` writes its own there, so
nothing depends on a user's home directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: ``flwr ls`` statuses and what they mean for a job.
RUN_ACTIVE = frozenset({"pending", "starting", "running"})
RUN_COMPLETED = "finished:completed"
RUN_FAILED = "finished:failed"
RUN_STOPPED = "finished:stopped"


class FlowerControlError(RuntimeError):
    """The SuperLink refused or could not be reached (message safe to show to an operator)."""


@dataclass(frozen=True)
class RunStatus:
    run_id: str
    status: str
    details: str = ""

    @property
    def active(self) -> bool:
        return self.status in RUN_ACTIVE


def _bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else (shutil.which(name) or name)


def toml_value(value: Any) -> str:
    """A run-config value in the TOML syntax the Flower CLI expects."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if '"' in text:
        # Flower's --run-config parser ends a double-quoted value at its first '"' (it knows no
        # escapes): a value holding quotes (JSON such as dp-plans) goes as a TOML literal string.
        if "'" in text or not all(c.isprintable() or c == "\t" for c in text):
            raise ValueError("a run-config string cannot hold both quote kinds or control characters")
        return f"'{text}'"
    return json.dumps(text)  # a TOML basic string is a JSON string for our purposes


def config_string(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={toml_value(v)}" for k, v in values.items())


class SuperLinkControl:
    CONNECTION = "clearinghouse"

    def __init__(
        self, *, address: str, root_certificates: str | Path | None, home: str | Path, timeout: float = 120.0
    ) -> None:
        if not address:
            raise FlowerControlError("No SuperLink is configured (FLOWER_SUPERLINK is empty).")
        self.address = address
        self.timeout = timeout
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        lines = [
            f'[superlink]\ndefault = "{self.CONNECTION}"\n',
            f"[superlink.{self.CONNECTION}]",
            f"address = {json.dumps(address)}",
        ]
        if root_certificates:
            lines.append(f"root-certificates = {json.dumps(str(root_certificates))}")
        else:
            lines.append("insecure = true")
        (self.home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def _call(self, *args: str) -> dict[str, Any]:
        env = dict(os.environ, FLWR_HOME=str(self.home))
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        try:
            out = subprocess.run(
                [_bin("flwr"), *args, "--format", "json"],
                env=env,
                cwd=self.home,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise FlowerControlError(
                f"The SuperLink at {self.address} did not answer within {self.timeout:g} s."
            ) from exc
        try:
            body = json.loads(out.stdout)
        except json.JSONDecodeError as exc:
            tail = (out.stdout + out.stderr).strip().splitlines()[-3:]
            raise FlowerControlError(f"flwr {args[0]} failed: {' | '.join(tail) or out.returncode}") from exc
        if not body.get("success", False):
            message = str(body.get("error-message", "unknown error")).strip().splitlines()
            raise FlowerControlError(f"flwr {args[0]}: {message[-1] if message else 'failed'}")
        return dict(body)

    def submit(self, app_dir: str | Path, run_config: Mapping[str, Any]) -> str:
        body = self._call("run", str(app_dir), self.CONNECTION, "--run-config", config_string(run_config))
        return str(body["run-id"])

    def runs(self) -> dict[str, RunStatus]:
        body = self._call("ls", self.CONNECTION)
        return {
            str(r["run-id"]): RunStatus(
                str(r["run-id"]), str(r.get("status", "")), str(r.get("status-details", ""))
            )
            for r in body.get("runs", [])
        }

    def stop(self, run_id: str) -> None:
        self._call("stop", str(run_id), self.CONNECTION)

    def register_node(self, public_key: str) -> str:
        """Registers an OpenSSH public key; returns the node id the SuperLink gives it."""
        path = self.home / "register.pub"
        path.write_text(public_key.strip() + "\n", encoding="utf-8")
        try:
            body = self._call("supernode", "register", str(path), self.CONNECTION)
        finally:
            path.unlink(missing_ok=True)
        return str(body["node-id"])

    def unregister_node(self, node_id: str) -> None:
        self._call("supernode", "unregister", str(node_id), self.CONNECTION)
