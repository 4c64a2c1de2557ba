"""`clearinghouse`: the Clearinghouse API from a shell.

    clearinghouse login --url https://clearinghouse.example.org --token chp_...
    clearinghouse datasets
    clearinghouse agreement org-a/pums --accept
    clearinghouse preview org-a/pums --sql "SELECT educ, COUNT(*) FROM pums GROUP BY educ" --epsilon 0.5
    clearinghouse plan org-a/pums --sql "SELECT educ, COUNT(*) FROM pums GROUP BY educ" --target 50 --curve
    clearinghouse query org-a/pums --sql "SELECT educ, COUNT(*) FROM pums GROUP BY educ" --epsilon 0.5 --csv out.csv

Annotation projects (labelling your organisation's own text dataset, with a model's help):

    clearinghouse annotation create org-a/sms --name "SMS spam" --text-column text --labels ham,spam \
        --instructions-file guide.txt --overlap 0.1 --annotator alice --annotator bob
    clearinghouse annotation projects
    clearinghouse annotation label 7                  # one item at a time: 1/2 (a label), a, s, u, q
    clearinghouse annotation label 7 --from-csv answers.csv     # ROW,LABEL lines instead of the keyboard
    clearinghouse annotation propose 7 --wait         # proposals; the queue asks the least sure first
    clearinghouse annotation auto 7 --target-precision 0.98 --confidence 0.95   # then again with --apply
    clearinghouse annotation review-run 7 --wait && clearinghouse annotation review 7
    clearinghouse annotation duplicates 7
    clearinghouse annotation export 7 --name "SMS labelled" --drop-duplicates --wait
    clearinghouse annotation show 7

The URL and token come from CLEARINGHOUSE_URL / CLEARINGHOUSE_TOKEN when set, otherwise from
~/.config/clearinghouse/config.json (written by `login`, mode 0600). Errors are printed as
`error (<code>): <detail>` on stderr, with exit status 1. The token is never printed.
"""

from __future__ import annotations

import argparse
import csv
import io
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
# annotation projects


def _dataset_text(value: Any) -> str:
    """A dataset as the API shows it: "org/slug", or {organisation, slug, ...}."""
    if isinstance(value, dict):
        if value.get("organisation") and value.get("slug"):
            return f"{value['organisation']}/{value['slug']}"
        return str(value.get("slug") or value.get("name") or value.get("id") or "-")
    return fmt(value)


def _names(values: Any) -> str:
    """Usernames from a list of strings or of {username, ...}."""
    names = [v.get("username") or str(v.get("id")) if isinstance(v, dict) else str(v) for v in values or []]
    return ", ".join(names) or "-"


def _share(value: Any) -> str:
    return "-" if value is None else f"{float(value):.1%}"


def _read_text(path: str) -> str:
    """A text file ('-': standard input)."""
    try:
        return Path(path).read_text(encoding="utf-8") if path != "-" else sys.stdin.read()
    except OSError as exc:
        raise ClearinghouseError(0, "invalid_arguments", f"cannot read {path}: {exc.strerror}") from None


def _split_list(values: Sequence[str] | None) -> list[str]:
    """`--labels a,b` / `--annotator u --annotator v,w` → ["a", "b"] / ["u", "v", "w"]."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def _instructions(args) -> str | None:
    if args.instructions_file is not None:
        return _read_text(args.instructions_file)
    return args.instructions


def print_project(project: dict) -> None:
    progress = project.get("progress") or {}
    status = project.get("status")
    if project.get("error_code"):
        status = f"{status} ({project['error_code']})"
    pairs = [
        ("project", f"{project.get('id')}  {project.get('name') or ''}".rstrip()),
        ("dataset", _dataset_text(project.get("dataset"))),
        ("version", project.get("version")),
        ("status", status),
        ("text column", project.get("text_column")),
        ("labels", ", ".join(project.get("labels") or []) or "-"),
        ("annotators", _names(project.get("annotators"))),
        ("overlap", _share(project.get("overlap"))),
        ("target precision", project.get("target_precision")),
        ("confidence level", project.get("confidence_level")),
    ]
    if progress:
        pairs += [
            (
                "done",
                f"{fmt(progress.get('done'))} / {fmt(progress.get('total', project.get('item_count')))}",
            ),
            ("labelled by model", progress.get("auto")),
            ("remaining", progress.get("remaining")),
            ("human labels", progress.get("human_labels")),
            ("overlap done", f"{fmt(progress.get('overlap_done'))} / {fmt(progress.get('overlap_items'))}"),
            ("agreement (Cohen's κ)", progress.get("kappa")),
            ("flagged for review", progress.get("flagged")),
        ]
    else:
        pairs.append(("items", project.get("item_count")))
    duplicates = project.get("duplicate_summary") or {}
    if duplicates:
        pairs.append(
            (
                "duplicates",
                f"{fmt(duplicates.get('exact_items'))} exact, {fmt(duplicates.get('near_items'))} near "
                f"items in {fmt(duplicates.get('groups'))} groups",
            )
        )
    print_pairs(pairs)
    per_label = progress.get("per_label") or {}
    if per_label:
        print()
        print_table(["LABEL", "ITEMS"], [[label, n] for label, n in per_label.items()], right={1})
    if project.get("instructions"):
        print(f"\ninstructions:\n{project['instructions'].rstrip()}")


def print_run(run: dict) -> None:
    status = run.get("status")
    if run.get("error_code"):
        status = f"{status} ({run['error_code']})"
    pairs = [
        ("model run", run.get("id")),
        ("kind", run.get("kind")),
        ("status", status),
        ("labels used", run.get("labels_used")),
    ]
    if run.get("kind", "propose") == "propose":
        pairs += [
            ("threshold", run.get("threshold")),
            ("estimated precision", run.get("estimated_precision")),
            ("precision lower bound", run.get("precision_lower_bound")),
            ("coverage", _share(run.get("coverage"))),
        ]
    pairs += [
        (str(k).replace("_", " "), v)
        for k, v in (run.get("metrics") or {}).items()
        if not isinstance(v, (dict, list))
    ]
    pairs.append(("finished", str(run.get("finished_at") or "")[:19].replace("T", " ") or None))
    print_pairs(pairs)


def cmd_annotation_projects(args) -> int:
    with make_client(args) as client:
        projects = client.annotation_projects()
    if args.json:
        print_json(projects)
        return 0
    if not projects:
        print("no annotation projects visible to you")
        return 0
    rows = [
        [
            p.get("id"),
            p.get("name") or "",
            _dataset_text(p.get("dataset")),
            p.get("status"),
            p.get("item_count"),
            ", ".join(p.get("labels") or []),
        ]
        for p in projects
    ]
    print_table(["ID", "NAME", "DATASET", "STATUS", "ITEMS", "LABELS"], rows, right={0, 4})
    return 0


def cmd_annotation_create(args) -> int:
    labels = _split_list([args.labels])
    with make_client(args) as client:
        project = client.annotation_project_create(
            args.dataset,
            name=args.name,
            text_column=args.text_column,
            labels=labels,
            instructions=_instructions(args) or "",
            overlap=args.overlap,
            annotators=_split_list(args.annotator) if args.annotator else None,
            version=args.version,
            slug=args.slug,
        )
    if args.json:
        print_json(project)
        return 0
    print_project(project)
    if project.get("status") == "preparing":
        print(
            f"\nthe items are being prepared in a worker: see `clearinghouse annotation show {project.get('id')}`"
        )
    return 0


def cmd_annotation_show(args) -> int:
    with make_client(args) as client:
        project = client.annotation_project(args.project)
    if args.json:
        print_json(project)
    else:
        print_project(project)
    return 0


def cmd_annotation_update(args) -> int:
    fields: dict[str, Any] = {}
    instructions = _instructions(args)
    if instructions is not None:
        fields["instructions"] = instructions
    if args.annotator is not None:
        fields["annotators"] = _split_list(args.annotator)
    if args.target_precision is not None:
        fields["target_precision"] = args.target_precision
    if args.confidence is not None:
        fields["confidence_level"] = args.confidence
    if not fields:
        raise ClearinghouseError(
            0,
            "invalid_arguments",
            "give what to change: --instructions(-file), --annotator, --target-precision or --confidence",
        )
    with make_client(args) as client:
        project = client.annotation_project_update(args.project, **fields)
    if args.json:
        print_json(project)
    else:
        print_project(project)
    return 0


def cmd_annotation_archive(args) -> int:
    with make_client(args) as client:
        project = client.annotation_archive(args.project)
    if args.json:
        print_json(project)
    else:
        print(f"project {project.get('id')} is {project.get('status')}")
    return 0


def _read_answers(path: str, labels: list[str]) -> dict[int, str]:
    """`ROW,LABEL` lines (a header is allowed) → {row: label}; an empty label means skip."""
    text = _read_text(path)
    answers: dict[int, str] = {}
    for n, record in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not record or not "".join(record).strip():
            continue
        try:
            row = int(record[0])
        except ValueError:
            if n == 1:
                continue  # a header
            raise ClearinghouseError(
                0, "invalid_arguments", f"{path} line {n}: the first column is an item's row number"
            ) from None
        value = record[1].strip() if len(record) > 1 else ""
        if value and value not in labels:
            raise ClearinghouseError(
                0,
                "invalid_arguments",
                f"{path} line {n}: {value!r} is not one of the project's labels ({', '.join(labels)})",
            )
        answers[row] = value
    return answers


def _label_from_csv(client: Client, args, labels: list[str]) -> dict[str, Any]:
    """Answers the queue from the file: an item whose row it lists gets that label (an empty one: a
    skip), any other is skipped; stops when every row of the file was answered or the queue is empty."""
    answers = _read_answers(args.from_csv, labels)
    pending = set(answers)
    seen: set[int] = set()
    done = {"labelled": 0, "skipped": 0, "refused": []}
    progress: dict = {}
    while pending and (args.limit is None or done["labelled"] < args.limit):
        answer = client.annotation_next(args.project, review=args.review)
        item, progress = answer.get("item"), answer.get("progress") or progress
        if not item or item["id"] in seen:
            break
        seen.add(item["id"])
        value = answers.get(item.get("row"), "")
        pending.discard(item.get("row"))
        if not value:
            client.annotation_skip(args.project, item["id"])
            done["skipped"] += 1
            continue
        try:
            client.annotation_label(args.project, item["id"], value)
        except ClearinghouseError as exc:
            if exc.status != 409:
                raise
            done["refused"].append({"row": item.get("row"), "code": exc.code})
            continue
        done["labelled"] += 1
    done["unanswered_rows"] = sorted(pending)
    done["progress"] = client.annotation_project(args.project).get("progress") or progress
    return done


KEYS = "a: accept the proposal, s: skip, u: undo your last label, q: quit"


def _label_interactively(client: Client, args, project: dict, labels: list[str]) -> dict[str, Any]:
    """One item at a time: its text and the model's proposal; reads a label's number (or name), a, s,
    u or q from standard input."""
    if project.get("instructions"):
        print(f"instructions:\n{project['instructions'].rstrip()}\n")
    menu = "  ".join(f"{i}: {label}" for i, label in enumerate(labels, start=1))
    print(f"{menu}\n{KEYS}")
    done = {"labelled": 0, "skipped": 0, "undone": 0, "refused": []}
    progress: dict = {}
    while args.limit is None or done["labelled"] < args.limit:
        answer = client.annotation_next(args.project, review=args.review)
        item, progress = answer.get("item"), answer.get("progress") or progress
        if not item:
            print("\nnothing left in your queue")
            break
        proposal = item.get("proposal") or {}
        print(
            f"\n[{fmt(progress.get('done'))}/{fmt(progress.get('total'))}] item {item['id']} (row {item.get('row')})"
            + ("  FLAGGED: likely label error" if item.get("flagged") else "")
        )
        print(item.get("text") or "")
        notes = []
        if proposal.get("label"):
            notes.append(f"proposal: {proposal['label']} ({fmt(proposal.get('confidence'))})")
        if item.get("given_label"):
            notes.append(f"labelled: {item['given_label']}")
        if notes:
            print("  ".join(notes))
        action = None
        while action is None:
            try:
                choice = input(f"[1-{len(labels)}/a/s/u/q] ").strip()
            except EOFError:
                choice = "q"
            if choice.isdigit() and 1 <= int(choice) <= len(labels):
                action = ("label", labels[int(choice) - 1])
            elif choice in labels:
                action = ("label", choice)
            elif choice == "a" and proposal.get("label"):
                action = ("label", proposal["label"])
            elif choice in {"s", "u", "q"}:
                action = (choice, None)
            else:
                print(f"{menu}\n{KEYS}" + ("  (no proposal to accept)" if choice == "a" else ""))
        if action[0] == "q":
            break
        if action[0] == "s":
            client.annotation_skip(args.project, item["id"])
            done["skipped"] += 1
        elif action[0] == "u":
            undone = client.annotation_undo(args.project)
            done["undone"] += 1
            print(f"undone: {undone.get('label')} on item {undone.get('item')}")
        else:
            try:
                client.annotation_label(args.project, item["id"], action[1])
            except ClearinghouseError as exc:
                if exc.status != 409:
                    raise
                print(f"not recorded ({exc.code}): {exc.detail}")
                done["refused"].append({"row": item.get("row"), "code": exc.code})
                continue
            done["labelled"] += 1
    done["progress"] = progress
    return done


def cmd_annotation_label(args) -> int:
    with make_client(args) as client:
        project = client.annotation_project(args.project)
        labels = list(project.get("labels") or [])
        if args.from_csv:
            done = _label_from_csv(client, args, labels)
        else:
            done = _label_interactively(client, args, project, labels)
            done["progress"] = client.annotation_project(args.project).get("progress") or done["progress"]
    if args.json:
        print_json(done)
        return 0
    progress = done["progress"] or {}
    text = f"labelled {done['labelled']}, skipped {done['skipped']}"
    if done.get("undone"):
        text += f", undid {done['undone']}"
    print(f"{text}; project {args.project}: {fmt(progress.get('done'))} of {fmt(progress.get('total'))} done")
    for refused in done["refused"]:
        print(f"row {refused['row']}: not recorded ({refused['code']})")
    if done.get("unanswered_rows"):
        rows = done["unanswered_rows"]
        listed = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        print(f"{len(rows)} rows of {args.from_csv} were not in your queue: {listed}")
    return 0


def _cmd_model_run(args, kind: str) -> int:
    with make_client(args) as client:
        run = client.annotation_model_run(
            args.project,
            kind=kind,
            wait=args.wait,
            timeout=args.wait_timeout,
            federated_model=getattr(args, "federated_model", None),
        )
    if args.json:
        print_json(run)
        return 0
    print_run(run)
    if run.get("status") not in {"succeeded", "failed"}:
        print(f"\nit runs in a worker: see `clearinghouse annotation runs {args.project}`")
    return 0


def cmd_annotation_propose(args) -> int:
    return _cmd_model_run(args, "propose")


def cmd_annotation_review_run(args) -> int:
    return _cmd_model_run(args, "review")


def cmd_annotation_runs(args) -> int:
    with make_client(args) as client:
        runs = client.annotation_model_runs(args.project)
    if args.json:
        print_json(runs)
        return 0
    if not runs:
        print(f"no model runs on project {args.project} yet")
        return 0
    print_table(
        ["ID", "KIND", "STATUS", "LABELS", "THRESHOLD", "PRECISION", "LOWER BOUND", "COVERAGE", "CREATED"],
        [
            [
                r.get("id"),
                r.get("kind"),
                r.get("status"),
                r.get("labels_used"),
                r.get("threshold"),
                r.get("estimated_precision"),
                r.get("precision_lower_bound"),
                _share(r.get("coverage")),
                str(r.get("created_at") or "")[:19].replace("T", " "),
            ]
            for r in runs
        ],
        right={0, 3, 4, 5, 6, 7},
    )
    return 0


def cmd_annotation_auto(args) -> int:
    """Sets the target precision (and confidence level), calibrates a threshold on the human-labelled
    items (a new propose run unless --run), shows its precision and coverage; --apply labels by model."""
    fields: dict[str, Any] = {"target_precision": args.target_precision}
    if args.confidence is not None:
        fields["confidence_level"] = args.confidence
    with make_client(args) as client:
        if args.run is not None:  # a finished run, calibrated for this target already: nothing to change
            run = client.annotation_model_run_get(args.project, args.run)
            calibrated = (run.get("target_precision"), run.get("confidence_level"))
            if calibrated[0] != args.target_precision or (
                args.confidence is not None and calibrated[1] != args.confidence
            ):
                raise ClearinghouseError(
                    0,
                    "invalid_arguments",
                    f"model run {args.run} was calibrated for precision {fmt(calibrated[0])} at confidence "
                    f"{fmt(calibrated[1])}: leave out --run to calibrate a new run for these",
                )
        else:
            client.annotation_project_update(args.project, **fields)
            run = client.annotation_model_run(args.project, "propose", wait=True, timeout=args.wait_timeout)
        if run.get("status") != "succeeded":
            raise ClearinghouseError(
                0,
                "run_not_finished",
                f"model run {run.get('id')} is still {run.get('status')}: try again later",
            )
        applied = client.annotation_automatic(args.project, run["id"]) if args.apply else None
    if args.json:
        print_json({"run": run, **(applied or {})})
        return 0
    print_run(run)
    print()
    if run.get("threshold") is None:
        print(
            f"no threshold reaches precision {fmt(args.target_precision)} with the human labels so far: "
            "label more items (the random calibration sample counts most)"
        )
    elif applied is not None:
        progress = applied.get("progress") or {}
        print(
            f"labelled {fmt(applied.get('labelled'))} items by model (confidence ≥ {fmt(run['threshold'])}); "
            f"{fmt(progress.get('done'))} of {fmt(progress.get('total'))} done"
        )
    else:
        print(f"nothing labelled yet: add --apply (with --run {run.get('id')}) to label these items by model")
    return 0


def cmd_annotation_duplicates(args) -> int:
    with make_client(args) as client:
        groups = client.annotation_duplicates(args.project)
    if args.json:
        print_json(groups)
        return 0
    if not groups:
        print(f"no duplicate items in project {args.project}")
        return 0
    print_table(
        ["GROUP", "KIND", "ITEMS", "LABELS", "CONFLICTING"],
        [
            [
                g.get("group"),
                g.get("kind"),
                " ".join(str(i) for i in g.get("item_ids") or []),
                ", ".join(str(v) for v in g.get("labels") or []) or "-",
                bool(g.get("conflicting")),
            ]
            for g in groups
        ],
        right={0},
    )
    return 0


def cmd_annotation_review(args) -> int:
    with make_client(args) as client:
        items = client.annotation_review(args.project)
    if args.json:
        print_json(items)
        return 0
    if not items:
        print(f"no items flagged in project {args.project}")
        return 0
    print_table(
        ["ITEM", "ROW", "LABEL", "SOURCE", "PROPOSED", "SCORE"],
        [
            [
                i.get("id"),
                i.get("row"),
                i.get("final_label") or "-",
                i.get("final_source") or "-",
                i.get("proposed_label") or "-",
                i.get("flag_score"),
            ]
            for i in items
        ],
        right={0, 1, 5},
    )
    print(f"\nreview them with `clearinghouse annotation label {args.project} --review`")
    return 0


def print_export(export: dict) -> None:
    status = export.get("status")
    if export.get("error_code"):
        status = f"{status} ({export['error_code']})"
    print_pairs(
        [
            ("export", export.get("id")),
            ("dataset", _dataset_text(export.get("dataset"))),
            ("version", export.get("version")),
            ("status", status),
            ("rows", export.get("rows")),
            ("duplicates dropped", export.get("drop_duplicates")),
            ("conflicts dropped", export.get("drop_conflicts")),
            ("model labels", export.get("include_model_labels")),
        ]
    )


def cmd_annotation_export(args) -> int:
    with make_client(args) as client:
        export = client.annotation_export(
            args.project,
            args.name,
            slug=args.slug or "",
            label_column=args.label_column or "",
            drop_duplicates=args.drop_duplicates,
            drop_conflicts=not args.keep_conflicts,
            include_model_labels=not args.no_model_labels,
            wait=args.wait,
            timeout=args.wait_timeout,
        )
    if args.json:
        print_json(export)
        return 0
    print_export(export)
    if export.get("status") not in {"succeeded", "failed"}:
        print(f"\nit is written by a worker: see `clearinghouse annotation exports {args.project}`")
    return 0


def cmd_annotation_exports(args) -> int:
    with make_client(args) as client:
        exports = client.annotation_exports(args.project)
    if args.json:
        print_json(exports)
        return 0
    if not exports:
        print(f"no exports of project {args.project} yet")
        return 0
    print_table(
        ["ID", "DATASET", "VERSION", "STATUS", "ROWS", "CREATED"],
        [
            [
                e.get("id"),
                _dataset_text(e.get("dataset")),
                e.get("version"),
                e.get("status"),
                e.get("rows"),
                str(e.get("created_at") or "")[:19].replace("T", " "),
            ]
            for e in exports
        ],
        right={0, 2, 4},
    )
    return 0


def add_annotation_parser(sub, common: argparse.ArgumentParser) -> None:
    annotation = sub.add_parser(
        "annotation", help="annotation projects: label a text dataset, with a model's help"
    )
    verbs = annotation.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(name: str, func, text: str, project: bool = True) -> argparse.ArgumentParser:
        command = verbs.add_parser(name, parents=[common], help=text, description=text)
        if project:
            command.add_argument("project", type=int, metavar="PROJECT", help="the project's id")
        command.set_defaults(func=func)
        return command

    def wait_options(command: argparse.ArgumentParser, what: str) -> None:
        command.add_argument("--wait", action="store_true", help=f"wait until the {what} ends")
        command.add_argument(
            "--wait-timeout", type=float, default=600, help="seconds to wait at most (default 600)"
        )

    def instructions_options(command: argparse.ArgumentParser) -> None:
        given = command.add_mutually_exclusive_group()
        given.add_argument(
            "--instructions-file", metavar="FILE", help="the instructions ('-': standard input)"
        )
        given.add_argument("--instructions", help="the instructions, as text")

    verb("projects", cmd_annotation_projects, "the projects you manage or label for", project=False)

    create = verb("create", cmd_annotation_create, "a project on your organisation's dataset", project=False)
    create.add_argument("dataset", metavar="ORG/SLUG", help="your organisation's dataset (or its slug)")
    create.add_argument("--name", required=True)
    create.add_argument("--slug", help="the project's slug (default: from the name)")
    create.add_argument("--text-column", required=True, help="the column of texts to label")
    create.add_argument("--labels", required=True, metavar="A,B,...", help="the label set (2 to 50)")
    instructions_options(create)
    create.add_argument(
        "--overlap", type=float, help="share of items labelled by two annotators, for agreement (0 to 0.5)"
    )
    create.add_argument(
        "--annotator", action="append", metavar="USER", help="a member who labels (repeat, or U1,U2)"
    )
    create.add_argument("--version", type=int, help="the dataset's version (default: its latest ready one)")

    verb("show", cmd_annotation_show, "a project and its progress")

    update = verb("update", cmd_annotation_update, "change a project's instructions, annotators or target")
    instructions_options(update)
    update.add_argument(
        "--annotator", action="append", metavar="USER", help="the annotators, all of them (repeat, or U1,U2)"
    )
    update.add_argument("--target-precision", type=float, help="precision automatic labelling must reach")
    update.add_argument("--confidence", type=float, help="confidence level of that precision's lower bound")

    verb("archive", cmd_annotation_archive, "archive a project")

    label = verb(
        "label",
        cmd_annotation_label,
        "label items one at a time: a label's number, a (accept the proposal), s (skip), u (undo), q (quit)",
    )
    label.add_argument(
        "--from-csv",
        metavar="FILE",
        help="answer from ROW,LABEL lines instead of the keyboard (other items are skipped; "
        "an empty label skips)",
    )
    label.add_argument("--review", action="store_true", help="the items flagged as likely label errors")
    label.add_argument("--limit", type=int, help="stop after this many labels")

    propose = verb(
        "propose", cmd_annotation_propose, "train on the labels so far and propose a label for every item"
    )
    wait_options(propose, "model run")
    propose.add_argument(
        "--federated-model",
        type=int,
        metavar="MODEL",
        help="propose with this federated model of the consortium (same label set) instead of the labels so far",
    )
    review_run = verb("review-run", cmd_annotation_review_run, "look for likely label errors")
    wait_options(review_run, "model run")
    verb("runs", cmd_annotation_runs, "a project's model runs")

    auto = verb(
        "auto",
        cmd_annotation_auto,
        "calibrate a confidence threshold for a target precision; --apply labels the items above it",
    )
    auto.add_argument("--target-precision", type=float, required=True, help="e.g. 0.98")
    auto.add_argument(
        "--confidence", type=float, help="confidence level of the precision's lower bound (e.g. 0.95)"
    )
    auto.add_argument(
        "--run", type=int, metavar="RUN", help="use this finished propose run (default: a new one)"
    )
    auto.add_argument("--apply", action="store_true", help="label the items above the threshold by model")
    auto.add_argument(
        "--wait-timeout", type=float, default=600, help="seconds to wait for the model run (default 600)"
    )

    verb("duplicates", cmd_annotation_duplicates, "groups of exact and near duplicate items")
    verb("review", cmd_annotation_review, "the items flagged as likely label errors")

    export = verb("export", cmd_annotation_export, "export the labels as a new dataset of your organisation")
    export.add_argument("--name", required=True, help="the new dataset's name")
    export.add_argument("--slug", help="the new dataset's slug (default: from the name)")
    export.add_argument(
        "--label-column",
        help="the label column's name (default: label, or annotation_label if that is taken)",
    )
    export.add_argument(
        "--drop-duplicates", action="store_true", help="keep one item of each duplicate group"
    )
    export.add_argument(
        "--keep-conflicts",
        action="store_true",
        help="keep duplicates whose labels conflict (dropped by default)",
    )
    export.add_argument("--no-model-labels", action="store_true", help="only items labelled by people")
    wait_options(export, "export")
    verb("exports", cmd_annotation_exports, "a project's exports")


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

    add_annotation_parser(sub, common)
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
