"""The lock order that keeps writes free of deadlocks (see clearinghouse.audit.services.audit_lock),
checked over the source: a function that locks rows takes the audit chain head first, and row locks
are FOR NO KEY UPDATE (a plain FOR UPDATE blocks every insert that refers to the row)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = sorted(
    {
        *ROOT.glob("clearinghouse/*/services.py"),
        *ROOT.glob("clearinghouse/*/ledger.py"),
        *ROOT.glob("clearinghouse/*/worker.py"),
        ROOT / "federation" / "services.py",
    }
)


def _calls(node: ast.AST, name: str) -> list[ast.Call]:
    return [
        n
        for n in ast.walk(node)
        if isinstance(n, ast.Call) and getattr(n.func, "attr", getattr(n.func, "id", None)) == name
    ]


def _row_locks() -> list[tuple[str, ast.FunctionDef, ast.Call]]:
    found = []
    for path in SOURCES:
        tree = ast.parse(path.read_text(), filename=str(path))
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            for call in _calls(function, "select_for_update"):
                if "AuditChainHead" not in ast.unparse(call):
                    found.append((f"{path.relative_to(ROOT)}:{call.lineno}", function, call))
    return found


def test_there_are_row_locks_to_check():
    assert len(_row_locks()) >= 20


def test_every_row_lock_is_for_no_key_update():
    plain = [
        where
        for where, _, call in _row_locks()
        if not any(k.arg == "no_key" and getattr(k.value, "value", False) is True for k in call.keywords)
    ]
    assert not plain, f"select_for_update without no_key=True: {plain}"


def test_every_row_lock_comes_after_the_audit_head():
    late = []
    for where, function, call in _row_locks():
        heads = [c.lineno for c in _calls(function, "audit_lock")]
        if not heads or min(heads) > call.lineno:
            late.append(f"{where} ({function.name})")
    assert not late, f"rows locked before (or without) audit_lock(): {late}"


def test_row_locks_with_joins_lock_only_their_own_table():
    wide = []
    for where, function, call in _row_locks():
        statement = next(
            n
            for n in ast.walk(function)
            if isinstance(n, ast.stmt)
            and not isinstance(n, (ast.FunctionDef, ast.With, ast.If, ast.For, ast.Try))
            and call in list(ast.walk(n))
        )
        if "select_related(" in ast.unparse(statement) and not any(k.arg == "of" for k in call.keywords):
            wide.append(where)
    assert not wide, f"select_for_update joined with select_related but without of=('self',): {wide}"
