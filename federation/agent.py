"""The member agent: the one command a member runs on its own (GPU) machine.

    python -m federation.agent keygen --out keys/ --name acme-gpu1
        # a SuperNode key pair; paste keys/acme-gpu1.pub into the portal (Organisation → SuperNode keys)
    python -m federation.agent preflight --data /data/sms.tsv --text-column SMS --label-column Label \\
        --labels ham,spam [--expect-rows 5574 --expect-digest sha256:...]   # a private job's version
    python -m federation.agent run --superlink flower.example.org:9092 --root-certificates ca.crt \\
        --auth-key keys/acme-gpu1.key --data /data/sms.tsv --text-column SMS --label-column Label \\
        --labels ham,spam --organisation acme

`run` first runs the preflight (the data and the model load, the labels match), then becomes
`flower-supernode` with the key, the certificates, the SuperLink address and the local data path in
its node config. Only model updates leave this machine; the data file is read locally by the
ClientApp. Nothing is installed at run time: this package must be installed (the agent image has it).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from federation.flower.control import _bin, config_string
from federation.flower.settings import (
    NODE_DATA_PATH,
    NODE_DELIMITER,
    NODE_DEVICE,
    NODE_LABEL_COLUMN,
    NODE_ORGANISATION,
    NODE_REQUIRE_DP,
    NODE_TEXT_COLUMN,
)


def supernode_command(args: argparse.Namespace) -> list[str]:
    node_config = {
        NODE_DATA_PATH: str(Path(args.data).resolve()),
        NODE_TEXT_COLUMN: args.text_column,
        NODE_LABEL_COLUMN: args.label_column,
        NODE_ORGANISATION: args.organisation,
    }
    if args.delimiter:
        node_config[NODE_DELIMITER] = args.delimiter
    if args.device:
        node_config[NODE_DEVICE] = args.device
    if args.require_dp:
        node_config[NODE_REQUIRE_DP] = "true"
    command = [
        _bin("flower-supernode"),
        "--superlink",
        args.superlink,
        "--node-config",
        config_string(node_config),
    ]
    if args.root_certificates:
        command += ["--root-certificates", args.root_certificates]
    elif args.insecure:
        command += ["--insecure"]
    else:
        raise SystemExit("agent: --root-certificates is required (or --insecure, for a local test only)")
    if args.auth_key:
        command += ["--auth-supernode-private-key", args.auth_key]
    if args.port:
        command += ["--port", str(args.port)]
    return command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m federation.agent", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    keygen = commands.add_parser("keygen", help="create a SuperNode key pair (EC P-384, OpenSSH)")
    keygen.add_argument("--out", required=True)
    keygen.add_argument("--name", required=True)

    commands.add_parser("preflight", help="check the local data and the model", add_help=False)

    run = commands.add_parser("run", help="preflight, then run the SuperNode")
    run.add_argument("--superlink", required=True, help="host:port of the SuperLink's Fleet API")
    run.add_argument("--root-certificates", default="", help="the consortium's CA certificate (TLS)")
    run.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    run.add_argument("--auth-key", default="", help="this SuperNode's private key (registered in the portal)")
    run.add_argument("--data", required=True, help="the local CSV/TSV/Parquet file")
    run.add_argument("--text-column", required=True)
    run.add_argument("--label-column", required=True)
    run.add_argument("--labels", required=True, help="the job's labels, comma-separated, for the preflight")
    run.add_argument("--organisation", required=True, help="your organisation's slug")
    run.add_argument("--base-model", default="minilm-l6", help="for the preflight: the job's base model")
    run.add_argument("--delimiter", default="")
    run.add_argument("--device", default="", help="cpu or cuda (default: cuda when available)")
    run.add_argument(
        "--port", type=int, default=0, help="local ClientAppIo port (several agents on one host)"
    )
    run.add_argument(
        "--require-dp",
        action="store_true",
        help="train only private jobs (record-level DP-SGD, priced on the ledger); refuse every other job",
    )
    run.add_argument("--skip-preflight", action="store_true")
    run.add_argument(
        "--expect-rows",
        type=int,
        default=None,
        help="for the preflight: a private job's registered row count",
    )
    run.add_argument(
        "--expect-digest", default="", help="for the preflight: a private job's registered content digest"
    )
    run.add_argument(
        "--quote-char",
        default=None,
        help="for the preflight: the quote character the registered version was parsed with, or 'none' "
        "(its version page says; a private job's members read their file the same way)",
    )
    return parser


def _keygen(args: argparse.Namespace) -> int:
    from federation.flower.security import make_supernode_keypair

    private, public = make_supernode_keypair(args.out, args.name)
    print(f"private key: {private} (keep it on this machine)")
    print(f"public key:  {public} — register it in the portal:\n{public.read_text().strip()}")
    return 0


def _preflight_checks(args: argparse.Namespace) -> list[str]:
    """The preflight's arguments for what ``run`` was given."""
    checks = [
        "--data-path",
        args.data,
        "--text-column",
        args.text_column,
        "--label-column",
        args.label_column,
        "--labels",
        args.labels,
        "--base-model",
        args.base_model,
    ]
    if args.delimiter:
        checks += ["--delimiter", args.delimiter]
    if args.device:
        checks += ["--device", args.device]
    if args.expect_rows is not None:
        checks += ["--expect-rows", str(args.expect_rows)]
    if args.expect_digest:
        checks += ["--expect-digest", args.expect_digest]
    if args.quote_char is not None:
        checks += ["--quote-char", args.quote_char]
    return checks


def _run(args: argparse.Namespace) -> int:
    """Preflight (unless skipped), then become the SuperNode."""
    if not args.skip_preflight:
        from federation.flower.preflight import main as preflight_main

        status = preflight_main(_preflight_checks(args))
        if status != 0:
            print("agent: preflight failed; the SuperNode was not started.", file=sys.stderr)
            return status
    command = supernode_command(args)
    sys.stdout.flush()
    os.execvp(command[0], command)  # become the SuperNode: signals and exit status are its own
    return 0  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["preflight"]:
        from federation.flower.preflight import main as preflight_main

        rest = ["--data-path" if a == "--data" else a for a in argv[1:]]
        return preflight_main(rest)
    args = parser.parse_args(argv)
    if args.command == "keygen":
        return _keygen(args)
    return _run(args)


if __name__ == "__main__":
    sys.exit(main())
