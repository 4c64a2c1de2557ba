"""`clearinghouse`: the Clearinghouse API from a shell.

    clearinghouse login --url https://clearinghouse.example.org --token chp_...
    clearinghouse datasets
    clearinghouse agreement org-a/pums --accept
    clearinghouse preview org-a/pums --sql "SELECT educ, COUNT(*) FROM pums GROUP BY educ" --epsilon 0.5
    clearinghouse plan org-a/pums --sql "SELECT educ, COUNT(*) FROM pums GROUP BY educ" --target 50 --curve
    clearinghouse query org-a/pums --sql "SELECT educ, COUNT(*) FROM pums GROUP BY educ" --epsilon 0.5 --csv out.csv

The URL and token come from CLEARINGHOUSE_URL / CLEARINGHOUSE_TOKEN when set, otherwise from
~/.config/clearinghouse/config.json (written by `login`, mode 0600). Errors are printed as
`error (<code>): <detail>` on stderr, with exit status 1. The token is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .client import ClearinghouseError, Client, Release

ENV_URL = "CLEARINGHOUSE_URL"
ENV_TOKEN = "CLEARINGHOUSE_TOKEN"


# --------------------------------------------------------------------------------------------
# configuration


def config_path() -> Path:
    return Path.home() / ".config" / "clearinghouse" / "config.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ClearinghouseError(0, "bad_config", f"cannot read {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def save_config(url: str, token: str) -> Path:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(path.parent, 0o700)
    except OSError:
        pass
    # Created 0600 from the start (no window in which another user could read the token).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"url": url, "token": token}, handle, indent=2)
        handle.write("\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode on open: set it
    return path


def settings() -> tuple[str, str]:
    config = load_config()
    url = os.environ.get(ENV_URL) or config.get("url") or ""
    token = os.environ.get(ENV_TOKEN) or config.get("token") or ""
    if not url or not token:
        raise ClearinghouseError(
            0,
            "not_logged_in",
            f"run `clearinghouse login --url URL --token TOKEN` or set {ENV_URL} and {ENV_TOKEN}",
        )
    return url, token


def make_client(args) -> Client:
    url, token = settings()
    return Client(url, token, timeout=args.timeout)


# --------------------------------------------------------------------------------------------
# output


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    return str(value)


def print_table(
    headers: Sequence[str], rows: Sequence[Sequence[Any]], *, right: set[int] | None = None, out=None
) -> None:
    """Aligned plain text; columns in `right` are right-aligned (numbers)."""
    out = out or sys.stdout
    right = right or set()
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    for n, row in enumerate(cells):
        parts = [
            cell.rjust(widths[i]) if (i in right and n > 0) else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        print("  ".join(parts).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


def print_pairs(pairs: Sequence[tuple[str, Any]], out=None) -> None:
    width = max((len(k) for k, _ in pairs), default=0)
    for key, value in pairs:
        print(f"{key.ljust(width)}  {fmt(value)}", file=out or sys.stdout)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def cost_text(cost: dict | None) -> str:
    """A preview's {"measure","epsilon","delta","rho"} or a query's {"amount","delta"}."""
    cost = cost or {}
    if "amount" in cost:
        text = f"{fmt(cost.get('amount'))}"
        return text + (f" (δ={fmt(cost['delta'])})" if cost.get("delta") else "")
    parts = [
        f"{k}={fmt(cost[k])}"
        for k in ("epsilon", "rho", "delta")
        if cost.get(k) is not None and (k != "delta" or cost[k])
    ]
    measure = f" [{cost['measure']}]" if cost.get("measure") else ""
    return (", ".join(parts) or "-") + measure


def print_release(release: Release) -> None:
    """One column per group key and per aggregate; an aggregate's cells read `value  [lo, hi]`, with
    the value, lo and hi each aligned down the column."""
    group_by, aggregates = release.group_by, release.aggregates
    table = release.table()
    columns = [[fmt(record[g]) for record in table] for g in group_by]
    for name in aggregates:
        parts = [
            (
                fmt(r[name]),
                fmt(r[f"{name}_lo"]),
                fmt(r[f"{name}_hi"]),
                r[f"{name}_lo"] is not None or r[f"{name}_hi"] is not None,
            )
            for r in table
        ]
        wv, wl, wh = (max((len(p[i]) for p in parts), default=0) for i in range(3))
        columns.append(
            [v.rjust(wv) + (f"  [{lo.rjust(wl)}, {hi.rjust(wh)}]" if has else "") for v, lo, hi, has in parts]
        )
    rows = [list(cells) for cells in zip(*columns, strict=True)] if columns else []
    print_table(group_by + aggregates, rows)
    note = " (replayed: the earlier release, no new spending)" if release.replayed else ""
    print(
        f"\nquery {release.id}: {len(rows)} rows, cost {cost_text(release.cost)}{note}; "
        f"[lo, hi] are 95% intervals"
    )


# --------------------------------------------------------------------------------------------
# commands


def cmd_login(args) -> int:
    url = args.url or os.environ.get(ENV_URL)
    token = args.token or os.environ.get(ENV_TOKEN)
    if not url or not token:
        raise ClearinghouseError(0, "invalid_arguments", "give --url and --token")
    if not args.no_verify:
        with Client(url, token, timeout=args.timeout) as client:
            me = client.me()
        print(
            f"logged in to {url.rstrip('/')} as {me.get('username')}"
            + (f" ({me['organisation']}, {me.get('role')})" if me.get("organisation") else "")
        )
    path = save_config(url.rstrip("/"), token)
    print(f"saved to {path}")
    return 0


def cmd_whoami(args) -> int:
    with make_client(args) as client:
        me = client.me()
    if args.json:
        print_json(me)
        return 0
    print_pairs(
        [
            ("user", me.get("username")),
            ("email", me.get("email")),
            ("organisation", me.get("organisation")),
            ("status", me.get("organisation_status")),
            ("role", me.get("role")),
            ("operator", me.get("is_operator")),
            ("capabilities", ", ".join(me.get("capabilities") or []) or "-"),
        ]
    )
    return 0


def cmd_datasets(args) -> int:
    with make_client(args) as client:
        datasets = client.datasets()
    if args.json:
        print_json(datasets)
        return 0
    if not datasets:
        print("no datasets visible to you")
        return 0
    print_table(
        ["DATASET", "NAME", "COLUMNS", "CREATED"],
        [
            [
                f"{d.get('organisation')}/{d.get('slug')}",
                d.get("name") or "",
                len((d.get("schema") or {}).get("columns") or []),
                str(d.get("created_at") or "")[:10],
            ]
            for d in datasets
        ],
        right={2},
    )
    return 0


def cmd_budget(args) -> int:
    with make_client(args) as client:
        budget = client.budget(args.dataset)
    if args.json:
        print_json(budget)
        return 0
    if "left" in budget:
        left = budget["left"]
        print(f"privacy budget left to you on {args.dataset} ({left.get('measure')}):")
        print_pairs(
            [
                ("organisation", left.get("organisation")),
                ("dataset", left.get("dataset")),
                ("analyst", left.get("analyst")),
                ("delta (organisation)", left.get("delta_organisation")),
                ("per query max", left.get("per_query_max")),
            ]
        )
        return 0
    print(f"privacy budget of {args.dataset} ({budget.get('measure')}):")
    print_pairs(
        [
            ("total", budget.get("total")),
            ("spent", budget.get("spent")),
            ("delta total", budget.get("delta_total")),
            ("delta spent", budget.get("delta_spent")),
            ("per query max", budget.get("per_query_max")),
            ("per analyst cap", budget.get("per_analyst_cap")),
            ("max rows (stated, not measured)", budget.get("max_rows")),
        ]
    )
    allocations = budget.get("allocations") or []
    if allocations:
        print()
        print_table(
            ["ORGANISATION", "ALLOCATED", "SPENT", "DELTA", "DELTA SPENT"],
            [
                [
                    a.get("organisation"),
                    a.get("amount"),
                    a.get("spent"),
                    a.get("delta_amount"),
                    a.get("delta_spent"),
                ]
                for a in allocations
            ],
            right={1, 2, 3, 4},
        )
    return 0


def cmd_agreement(args) -> int:
    with make_client(args) as client:
        agreement = client.agreement(args.dataset)
        accepted = None
        if args.accept and not agreement.get("accepted"):
            accepted = client.accept_agreement(args.dataset, agreement["version"])
            agreement["accepted"] = True
    if args.json:
        print_json({**agreement, **({"accepted_at": accepted.get("accepted_at")} if accepted else {})})
        return 0
    print(f"data-use agreement of {args.dataset}, version {agreement.get('version')}:\n")
    print(agreement.get("text", ""))
    print()
    if accepted:
        print(f"accepted version {accepted.get('version')} at {accepted.get('accepted_at')}")
    elif agreement.get("accepted"):
        print("you have accepted this version")
    else:
        print(f"not accepted yet: run `clearinghouse agreement {args.dataset} --accept` to accept it")
    return 0


def _read_spec(path: str) -> dict:
    """A query spec from a JSON file ('-': standard input)."""
    try:
        spec = json.loads(Path(path).read_text(encoding="utf-8")) if path != "-" else json.load(sys.stdin)
    except OSError as exc:
        raise ClearinghouseError(0, "invalid_arguments", f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ClearinghouseError(0, "invalid_arguments", f"{path} is not JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise ClearinghouseError(0, "invalid_arguments", f"{path} must hold a JSON object (a query spec)")
    return spec


def _query_args(args) -> dict:
    privacy: dict[str, float] = {}
    if args.epsilon is not None:
        privacy["epsilon"] = args.epsilon
    if args.rho is not None:
        privacy["rho"] = args.rho
    if args.delta is not None:
        privacy["delta"] = args.delta
    if args.sql is not None:
        if "epsilon" not in privacy and "rho" not in privacy:
            raise ClearinghouseError(
                0, "invalid_arguments", "give the privacy loss: --epsilon E (or --rho R)"
            )
        return {"sql": args.sql, "privacy": privacy}
    spec = _read_spec(args.spec)
    if not privacy and "privacy" not in spec:
        raise ClearinghouseError(0, "invalid_arguments", "give the privacy loss: --epsilon E (or --rho R)")
    return {"spec": spec, "privacy": privacy or None}


def cmd_preview(args) -> int:
    with make_client(args) as client:
        preview = client.preview(args.dataset, **_query_args(args))
    if args.json:
        print_json(preview)
        return 0
    print_table(
        ["AGGREGATE", "TYPE", "COLUMN", "MECHANISM", "SCALE", "±95%"],
        [
            [
                a.get("name"),
                a.get("type"),
                a.get("column"),
                a.get("mechanism"),
                a.get("scale"),
                a.get("half_width_95"),
            ]
            for a in preview.get("aggregates") or []
        ],
        right={4, 5},
    )
    print()
    for a in preview.get("aggregates") or []:
        if a.get("half_width_95") is None and a.get("note"):
            print(f"{a.get('name')}: {a['note']}")
    print()
    pairs = [("cost", cost_text(preview.get("cost")))]
    if preview.get("group_by"):
        pairs.append(("group by", ", ".join(preview["group_by"])))
    if preview.get("public_groups") is not None:
        pairs.append(("groups", preview["public_groups"]))
    left = preview.get("left") or {}
    if left:
        pairs.append(
            (
                "left to you",
                fmt(left.get("organisation"))
                + (f" (per query max {fmt(left['per_query_max'])})" if left.get("per_query_max") else ""),
            )
        )
    pairs.append(("version", preview.get("version")))
    print_pairs(pairs)
    print("\nA preview spends nothing.")
    return 0


def _plan_args(args) -> dict:
    if args.target is None and not args.curve and not args.levels:
        raise ClearinghouseError(
            0, "invalid_arguments", "give --target HALF_WIDTH, or ask for the curve: --curve or --levels"
        )
    levels = None
    if args.levels:
        try:
            levels = [float(x) for x in args.levels.split(",") if x.strip()]
        except ValueError:
            raise ClearinghouseError(
                0, "invalid_arguments", f"--levels takes numbers separated by commas, not {args.levels!r}"
            ) from None
    privacy: dict[str, float] = {}
    if args.delta is not None:
        privacy["delta"] = args.delta
    if args.sql is not None:
        what: dict[str, Any] = {"sql": args.sql}
    else:
        what = {"spec": _read_spec(args.spec)}
    return {**what, "privacy": privacy or None, "target": args.target, "curve": args.curve, "levels": levels}


def cmd_plan(args) -> int:
    with make_client(args) as client:
        plan = client.plan(args.dataset, **_plan_args(args))
    if args.json:
        print_json(plan)
        return 0
    name = "ε" if plan.get("measure") == "epsilon" else "ρ"
    preview = plan.get("preview")
    if preview is not None:
        print(f"least {name} for ±{fmt(plan.get('target_half_width'))} at 95%: {fmt(plan.get('level'))}")
        print(f"cost at that level: {cost_text(preview.get('cost'))}\n")
        print_table(
            ["AGGREGATE", "TYPE", "MECHANISM", "±95%"],
            [
                [a.get("name"), a.get("type"), a.get("mechanism"), a.get("half_width_95")]
                for a in preview.get("aggregates") or []
            ],
            right={3},
        )
        for item in plan.get("unplanned") or []:
            print(f"not planned: {item.get('aggregate')}: {item.get('reason')}")
        for warning in preview.get("warnings") or []:
            print(f"warning ({warning.get('code')}): {warning.get('message')}")
    curve = plan.get("curve")
    if curve:
        names = [
            n
            for n in curve[0].get("half_widths") or {}
            if any(p["half_widths"].get(n) is not None for p in curve)
        ]
        means = list(curve[0].get("min_group_sizes") or {})
        if preview is not None:
            print()
        print_table(
            [
                str(plan.get("measure") or "level").upper(),
                *[f"±{n}" for n in names],
                *[f"{m} n≥" for m in means],
            ],
            [
                [
                    p.get("level"),
                    *[p["half_widths"].get(n) for n in names],
                    *[p["min_group_sizes"].get(m) for m in means],
                ]
                for p in curve
            ],
            right=set(range(1 + len(names) + len(means))),
        )
    left = plan.get("left") or {}
    if left:
        print(f"\nleft to you: {fmt(left.get('organisation'))}")
    print("A plan spends nothing.")
    return 0


def cmd_query(args) -> int:
    with make_client(args) as client:
        release = client.query(args.dataset, **_query_args(args), wait=0 if args.no_wait else args.wait)
    if not release.released:
        if args.json:
            print_json(release.raw)
        else:
            print(
                f"query {release.id} is {release.status}; see it later with `clearinghouse history {args.dataset}`"
                f" ({release.url})"
            )
        return 0
    if args.csv:
        release.to_csv(args.csv)
    if args.json:
        print_json(release.raw)
    else:
        print_release(release)
        if args.csv:
            print(f"wrote {len(release)} rows to {args.csv}")
    return 0


def cmd_history(args) -> int:
    with make_client(args) as client:
        history = client.history(args.dataset)
    if args.json:
        print_json([r.raw for r in history])
        return 0
    if not history:
        print(f"no queries on {args.dataset} yet")
        return 0
    rows = []
    for release in history:
        raw = release.raw
        query = raw.get("sql") or json.dumps(raw.get("spec"), separators=(",", ":"))
        rows.append(
            [
                raw.get("id"),
                raw.get("status"),
                str(raw.get("created_at") or "")[:19].replace("T", " "),
                cost_text(raw.get("cost")),
                raw.get("version"),
                query if len(query) <= 70 else query[:67] + "...",
            ]
        )
    print_table(["ID", "STATUS", "CREATED", "COST", "V", "QUERY"], rows, right={0, 4})
    return 0


# --------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the service's JSON instead of tables")
    common.add_argument(
        "--timeout", type=float, default=60, help="seconds to wait for each answer (default 60)"
    )

    parser = argparse.ArgumentParser(
        prog="clearinghouse",
        description="The Clearinghouse API from a shell.",
        epilog=f"The URL and token come from {ENV_URL} / {ENV_TOKEN}, or from "
        "~/.config/clearinghouse/config.json (see `login`).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    login = sub.add_parser("login", parents=[common], help="store the service URL and API token")
    login.add_argument("--url", help="e.g. https://clearinghouse.example.org")
    login.add_argument("--token", help="an API token (chp_...), created in the portal")
    login.add_argument(
        "--no-verify", action="store_true", help="store without checking them against the service"
    )
    login.set_defaults(func=cmd_login)

    sub.add_parser("whoami", parents=[common], help="who the token belongs to").set_defaults(func=cmd_whoami)
    sub.add_parser("datasets", parents=[common], help="the datasets you may see").set_defaults(
        func=cmd_datasets
    )

    budget = sub.add_parser(
        "budget", parents=[common], help="the privacy budget left to you (owners: all of it)"
    )
    budget.add_argument("dataset", metavar="ORG/SLUG")
    budget.set_defaults(func=cmd_budget)

    agreement = sub.add_parser(
        "agreement", parents=[common], help="show (and accept) a dataset's data-use agreement"
    )
    agreement.add_argument("dataset", metavar="ORG/SLUG")
    agreement.add_argument("--accept", action="store_true", help="accept the current version")
    agreement.set_defaults(func=cmd_agreement)

    for name, func, text in (
        ("preview", cmd_preview, "what a query would cost and how noisy it is (free)"),
        ("query", cmd_query, "release a differentially private query"),
    ):
        command = sub.add_parser(name, parents=[common], help=text)
        command.add_argument("dataset", metavar="ORG/SLUG")
        what = command.add_mutually_exclusive_group(required=True)
        what.add_argument(
            "--sql", help='SQL in the supported subset, e.g. "SELECT educ, COUNT(*) FROM t GROUP BY educ"'
        )
        what.add_argument("--spec", metavar="FILE.json", help="a query spec in JSON ('-': standard input)")
        command.add_argument("--epsilon", type=float, help="the privacy loss ε")
        loss = command.add_mutually_exclusive_group()
        loss.add_argument("--delta", type=float, help="δ, under an approximate-DP policy")
        loss.add_argument("--rho", type=float, help="ρ, under a zero-concentrated-DP policy")
        if name == "query":
            command.add_argument(
                "--csv", metavar="OUT.csv", help="also write the result (with intervals) as CSV"
            )
            command.add_argument("--no-wait", action="store_true", help="submit and return without waiting")
            command.add_argument(
                "--wait", type=float, default=120, help="seconds to wait for the release (default 120)"
            )
        command.set_defaults(func=func)

    plan = sub.add_parser(
        "plan",
        parents=[common],
        help="the least ε (or ρ) for a 95%% half-width, and the accuracy curve (free)",
    )
    plan.add_argument("dataset", metavar="ORG/SLUG")
    what = plan.add_mutually_exclusive_group(required=True)
    what.add_argument("--sql", help="SQL in the supported subset")
    what.add_argument("--spec", metavar="FILE.json", help="a query spec in JSON ('-': standard input)")
    plan.add_argument(
        "--target", type=float, help="the 95%% half-width every count and sum must meet, e.g. 50"
    )
    plan.add_argument("--curve", action="store_true", help="also show half-widths at a few levels")
    plan.add_argument("--levels", metavar="L1,L2,...", help="the curve's levels (ε, or ρ under zCDP)")
    plan.add_argument("--delta", type=float, help="δ, under an approximate-DP policy")
    plan.set_defaults(func=cmd_plan)

    history = sub.add_parser("history", parents=[common], help="your organisation's queries on a dataset")
    history.add_argument("dataset", metavar="ORG/SLUG")
    history.set_defaults(func=cmd_history)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ClearinghouseError as exc:
        print(f"error ({exc.code}): {exc.detail}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
