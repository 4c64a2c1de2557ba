"""The member agent (`python -m federation.agent`): key generation, the preflight gate before the
SuperNode starts, and the SuperNode command it becomes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.agent import main

ROOT_ARGS = [
    "--superlink",
    "link.example.org:9092",
    "--text-column",
    "SMS",
    "--label-column",
    "Label",
    "--labels",
    "ham,spam",
    "--organisation",
    "acme",
]


def test_keygen_writes_a_p384_pair(tmp_path, capsys):
    assert main(["keygen", "--out", str(tmp_path), "--name", "gpu-1"]) == 0
    public = serialization.load_ssh_public_key((tmp_path / "gpu-1.pub").read_bytes())
    assert isinstance(public.curve, ec.SECP384R1)
    assert (tmp_path / "gpu-1.key").stat().st_mode & 0o077 == 0  # private key readable by its owner only
    assert "register it in the portal" in capsys.readouterr().out


def test_failed_preflight_never_starts_the_supernode(tmp_path):
    data = tmp_path / "local.tsv"
    data.write_text("Label\tText\nham\thello\nspam\twin now\n", encoding="utf-8")  # no 'SMS' column
    result = subprocess.run(
        [sys.executable, "-m", "federation.agent", "run", *ROOT_ARGS, "--data", str(data), "--insecure"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "SMS" in result.stderr and "the SuperNode was not started" in result.stderr


def test_run_requires_tls_unless_insecure_is_asked_for(tmp_path, monkeypatch):
    from federation import agent

    started = []
    monkeypatch.setattr(agent.os, "execvp", lambda program, args: started.append(args))
    data = tmp_path / "local.tsv"
    data.write_text("Label\tSMS\nham\thi\n", encoding="utf-8")
    try:
        main(["run", *ROOT_ARGS, "--data", str(data), "--skip-preflight"])
    except SystemExit as exc:
        assert "--root-certificates is required" in str(exc)
    else:
        raise AssertionError("started without TLS")
    assert (
        main(
            [
                "run",
                *ROOT_ARGS,
                "--data",
                str(data),
                "--skip-preflight",
                "--root-certificates",
                "ca.crt",
                "--auth-key",
                "gpu-1.key",
            ]
        )
        == 0
    )
    command = started[0]
    assert command[0].endswith("flower-supernode")
    assert command[command.index("--root-certificates") + 1] == "ca.crt"
    assert command[command.index("--auth-supernode-private-key") + 1] == "gpu-1.key"
    node_config = command[command.index("--node-config") + 1]
    assert f'data-path="{data.resolve()}"' in node_config and 'organisation="acme"' in node_config


def test_a_member_that_requires_dp_says_so_in_its_node_config(tmp_path, monkeypatch):
    from federation import agent
    from federation.flower.settings import NodeSettings

    started = []
    monkeypatch.setattr(agent.os, "execvp", lambda program, args: started.append(args))
    data = tmp_path / "local.tsv"
    data.write_text("Label\tSMS\nham\thi\n", encoding="utf-8")
    base = ["run", *ROOT_ARGS, "--data", str(data), "--skip-preflight", "--insecure"]
    assert main(base) == 0 and main([*base, "--require-dp"]) == 0
    plain, private = (command[command.index("--node-config") + 1] for command in started)
    assert "require-dp" not in plain and 'require-dp="true"' in private
    assert NodeSettings.from_node_config({"data-path": str(data), "require-dp": "true"}).require_dp
    assert not NodeSettings.from_node_config({"data-path": str(data)}).require_dp


def test_flower_tls_command_issues_a_server_certificate_for_the_named_hosts(tmp_path):
    from cryptography import x509

    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "flower_tls",
            "--out",
            str(tmp_path),
            "--host",
            "flower.example.org",
            "--host",
            "10.0.0.5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "flower.example.org" in names.get_values_for_type(x509.DNSName)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert (tmp_path / "ca.key").stat().st_mode & 0o077 == 0


def test_run_passes_the_expected_rows_and_digest_to_the_preflight(tmp_path):
    """`run --expect-rows/--expect-digest` (a private job's registered version): a file that is not
    that version fails the preflight (`data_mismatch`) and the SuperNode is not started."""
    data = tmp_path / "local.tsv"
    rows = "".join(f"{('ham', 'spam')[i % 2]}\tmessage {i}\n" for i in range(6))
    data.write_text("Label\tSMS\n" + rows, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "federation.agent",
            "run",
            *ROOT_ARGS,
            "--data",
            str(data),
            "--insecure",
            "--expect-rows",
            "6",
            "--expect-digest",
            "sha256:" + "0" * 64,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "data_mismatch" in result.stderr and "the SuperNode was not started" in result.stderr


def test_run_passes_the_registered_parse_options_to_the_preflight():
    """A version registered without quoting (a TSV with stray quotes) is checked the same way."""
    from federation.agent import _parser, _preflight_checks

    argv = ["run", *ROOT_ARGS, "--data", "local.tsv", "--insecure", "--quote-char", "none"]
    checks = _preflight_checks(_parser().parse_args(argv))
    assert checks[checks.index("--quote-char") + 1] == "none"
    assert "--quote-char" not in _preflight_checks(_parser().parse_args(argv[:-2]))
