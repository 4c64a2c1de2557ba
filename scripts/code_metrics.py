"""Print the structure figures issue 11 asks to report: the longest functions, in-function imports,
and endpoints whose OpenAPI operation has no typed response.

    python scripts/code_metrics.py            # figures for the whole tree
    python scripts/code_metrics.py --top 15   # more of the longest functions
"""

from __future__ import annotations

import argparse
import ast
import pathlib

ROOTS = ("clearinghouse", "federation", "training", "clearinghouse_client")


def _sources(root: pathlib.Path) -> list[pathlib.Path]:
    files: list[pathlib.Path] = []
    for name in ROOTS:
        files += [p for p in (root / name).rglob("*.py") if "migrations" not in p.parts]
    return sorted(files)


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    root = pathlib.Path(__file__).resolve().parent.parent

    lengths: list[tuple[int, str]] = []
    inner_imports = 0
    inner_import_files: dict[str, int] = {}
    for path in _sources(root):
        tree = ast.parse(path.read_text(), str(path))
        rel = str(path.relative_to(root))
        for fn in _functions(tree):
            lengths.append((fn.end_lineno - fn.lineno + 1, f"{rel}:{fn.lineno} {fn.name}"))
            for stmt in ast.walk(fn):
                if isinstance(stmt, ast.Import | ast.ImportFrom):
                    inner_imports += 1
                    inner_import_files[rel] = inner_import_files.get(rel, 0) + 1
    lengths.sort(reverse=True)
    print(f"functions: {len(lengths)}")
    print(f"functions over 60 lines: {sum(1 for n, _ in lengths if n > 60)}")
    print(f"longest {args.top}:")
    for n, where in lengths[: args.top]:
        print(f"  {n:4d}  {where}")
    print(f"in-function imports: {inner_imports} in {len(inner_import_files)} files")

    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "clearinghouse.settings.test")
    import django

    django.setup()
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = untyped = 0
    for path, item in schema["paths"].items():
        for method, op in item.items():
            if method not in {"get", "post", "put", "patch", "delete"}:
                continue
            operations += 1
            responses = op.get("responses", {})
            ok = [r for code, r in responses.items() if str(code).startswith("2")]
            typed = (
                all(
                    code == "204"
                    or (
                        "content" in r
                        and any(
                            "schema" in c
                            and c["schema"] not in ({}, {"type": "object", "additionalProperties": {}})
                            for c in r["content"].values()
                        )
                    )
                    for code, r in responses.items()
                    if str(code).startswith("2")
                )
                and ok
            )
            if not typed:
                untyped += 1
                print(f"  untyped response: {method.upper()} {path}")
    print(f"API operations: {operations}, without a typed success response: {untyped}")


if __name__ == "__main__":
    main()
