"""A SuperLink and SuperNodes as local subprocesses, and job submission with the ``flwr`` CLI.

Used by the integration tests, the benchmark and demos; the same commands a deployment runs:

    flower-superlink --insecure --disable-runtime-dependency-installation --port 9093 --database link.db
    flower-supernode --insecure --superlink 127.0.0.1:9093 --port 9101 \
        --node-config "data-path='/data/part0.tsv' text-column='SMS' label-column='Label' organisation='acme'"
    FLWR_HOME=<dir with config.toml naming the SuperLink> \
        flwr run federation/flower/app local --stream --run-config "num-rounds=2 ..."

In flwr 1.41 the SuperLink serves its Fleet, Control and Runtime APIs over HTTP on one port
(``--port``); each SuperNode serves its ClientApp runtime API on its own ``--port``. With
``--disable-runtime-dependency-installation`` nothing is installed at run time: the
``federation.flower`` package must already be importable on every machine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federation.flower.control import _bin, config_string, toml_value

APP_DIR = Path(__file__).resolve().parent / "app"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalFederation:
    """Start with ``start_superlink()`` and ``add_supernode(...)``; always ``close()`` (or use
    ``with``): every process is killed, children included."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    tls: Mapping[str, str] | None = None  # {"ca": ..., "cert": ..., "key": ...} for TLS
    node_auth: bool = False  # SuperLink --enable-supernode-auth: only registered SuperNodes join
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    supernode_ports: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home = self.workdir / "flwr-home"
        self.flwr_home.mkdir(exist_ok=True)
        base = dict(os.environ)
        base.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "FLWR_HOME": str(self.flwr_home)})
        # Flower starts its helpers (flower-superexec, flwr-serverapp, flwr-clientapp) by name.
        base["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), base.get("PATH", "")])
        base.update(self.env)
        self.env = base

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _spawn(
        self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        process = subprocess.Popen(
            list(args),
            cwd=self.workdir,
            env=dict(env or self.env),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: close() kills its children (superexec, apps)
        )
        self.processes[name] = process
        return process

    def log_text(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def _tls_args(self) -> list[str]:
        if not self.tls:
            return ["--insecure"]
        return [
            "--ssl-ca-certfile",
            self.tls["ca"],
            "--ssl-certfile",
            self.tls["cert"],
            "--ssl-keyfile",
            self.tls["key"],
        ]

    def start_superlink(self, *, extra_args: Sequence[str] = (), timeout: float = 60.0) -> None:
        self.port = self.port or free_port()
        self._spawn(
            "superlink",
            [
                _bin("flower-superlink"),
                *self._tls_args(),
                "--disable-runtime-dependency-installation",
                "--port",
                str(self.port),
                "--database",
                str(self.workdir / "superlink.db"),
                *(["--enable-supernode-auth"] if self.node_auth else []),
                *extra_args,
            ],
        )
        self._wait_for(lambda: "Uvicorn running" in self.log_text("superlink"), "superlink", timeout)
        config = [f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{self.address}"']
        if self.tls:
            config.append(f'root-certificates = "{self.tls["ca"]}"')
        else:
            config.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(config) + "\n", encoding="utf-8")

    def add_supernode(
        self,
        name: str,
        node_config: Mapping[str, Any],
        *,
        threads: int | None = None,
        auth_private_key: str | Path | None = None,
        extra_args: Sequence[str] = (),
        timeout: float = 60.0,
        wait: bool = True,
    ) -> None:
        port = free_port()
        if auth_private_key is not None:
            extra_args = [*extra_args, "--auth-supernode-private-key", str(auth_private_key)]
        env = dict(self.env)
        if threads:
            env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        security = ["--insecure"] if not self.tls else ["--root-certificates", self.tls["ca"]]
        self._spawn(
            name,
            [
                _bin("flower-supernode"),
                *security,
                "--superlink",
                self.address,
                "--port",
                str(port),
                "--node-config",
                config_string(node_config),
                *extra_args,
            ],
            env=env,
        )
        self.supernode_ports[name] = port
        if wait:
            self._wait_for(lambda: "SuperNode ID" in self.log_text(name), name, timeout)

    def register_supernode(
        self, public_key: str | Path, *, name: str = ""
    ) -> subprocess.CompletedProcess[str]:
        """``flwr supernode register <public key> local [--name ...]`` (the operator's side of
        SuperNode authentication)."""
        args = [_bin("flwr"), "supernode", "register", str(public_key), "local"]
        if name:
            args += ["--name", name]
        return subprocess.run(
            args, cwd=self.workdir, env=self.env, capture_output=True, text=True, timeout=60, check=False
        )

    def node_id(self, name: str) -> int | None:
        for line in self.log_text(name).splitlines():
            if "SuperNode ID:" in line:
                return int(line.rsplit(":", 1)[1].strip())
        return None

    def _wait_for(self, predicate: Any, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            process = self.processes[name]
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_text(name)[-3000:]}")
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready within {timeout:g} s:\n{self.log_text(name)[-3000:]}")

    def kill(self, name: str) -> None:
        """Kill one process and its whole process group (SIGKILL: a crash, not a goodbye)."""
        process = self.processes.get(name)
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=10)

    def close(self) -> None:
        for name in reversed(list(self.processes)):
            process = self.processes[name]
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    continue
        deadline = time.monotonic() + 10
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            # SIGKILL the group regardless: children (superexec, serverapp, clientapps) may outlive the parent.
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    # ------------------------------------------------------------------ jobs
    def run_app(
        self,
        run_config: Mapping[str, Any],
        *,
        app_dir: Path = APP_DIR,
        timeout: float = 600.0,
        stream_log: str = "flwr-run",
    ) -> subprocess.CompletedProcess[str]:
        """``flwr run <app> local --stream --run-config ...``; returns when the run ends (the
        stream closes) or raises ``subprocess.TimeoutExpired``."""
        args = [
            _bin("flwr"),
            "run",
            str(app_dir),
            "local",
            "--stream",
            "--run-config",
            config_string(run_config),
        ]
        with (self.workdir / f"{stream_log}.log").open("wb") as out:
            process = subprocess.Popen(
                args,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.processes[stream_log] = process
            try:
                returncode = process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                raise
        return subprocess.CompletedProcess(args, returncode, self.log_text(stream_log), "")

    def list_runs(self) -> list[dict[str, Any]]:
        """``flwr ls --format json``: runs and their status."""
        out = subprocess.run(
            [_bin("flwr"), "ls", "local", "--format", "json"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        try:
            return list(json.loads(out.stdout).get("runs", []))
        except (json.JSONDecodeError, AttributeError):
            return []


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def wait_for_file(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if Path(path).exists():
            return True
        time.sleep(0.5)
    return False


__all__ = [
    "APP_DIR",
    "LocalFederation",
    "config_string",
    "free_port",
    "read_jsonl",
    "toml_value",
    "wait_for_file",
]
