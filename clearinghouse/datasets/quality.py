"""The quality report (`ingest.check`'s `report`, stored on the version) as tables for the version
page: what was read and stored, one row per declared column with what each check found (and the
first line numbers it holds), the text columns' lengths, and the file-level findings.

Pure (no Django): `report_tables(report)` takes the stored dict and never raises. Reports written by
older releases lack keys, or are the short report of a refused file (`nul_bytes`); whatever is
missing is simply left out (None), so every version's page renders.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The per-column checks, in the order the page shows them: (report key, column heading, what it means).
CHECKS: tuple[tuple[str, str, str], ...] = (
    ("nulls_not_allowed", "Empty where required", "empty values in a column declared not nullable"),
    ("type_errors", "Type errors", "values that do not parse as the column's type"),
    ("out_of_bounds", "Out of bounds", "numbers outside the declared lower and upper bounds"),
    ("unknown_categories", "Not in the schema's categories", "values not among the declared categories"),
    ("too_long", "Too long", "text longer than the declared maximum length"),
)
TEXT_LENGTH_KEYS = ("min", "median", "p90", "max", "mean")
REPAIRS = {
    "none": "none (rows breaking the schema refuse the file)",
    "drop": "drop the rows that break the schema",
    "clamp": "clamp numbers to their bounds and cut text to its maximum length; drop what cannot be fixed",
}


@dataclass(frozen=True)
class Finding:
    """One check on one column: how many values it found and the first line numbers of the file it
    holds (the header is line 1); `more` when there are more than those lines."""

    count: int
    lines: list[int] = field(default_factory=list)

    @property
    def more(self) -> bool:
        return self.count > len(self.lines)


@dataclass(frozen=True)
class ColumnRow:
    name: str
    nulls: int | None
    findings: list[Finding | None]  # one per `QualityTables.checks`, None where it does not apply
    problems: int  # the values the checks found in this column, all together


@dataclass(frozen=True)
class TextLengths:
    name: str
    values: list[float | int | None]  # one per TEXT_LENGTH_KEYS


@dataclass(frozen=True)
class QualityTables:
    rows_read: int | None = None
    rows_stored: int | None = None
    violations: int | None = None
    duplicate_rows: int | None = None
    repair: str | None = None  # a sentence
    repaired: list[tuple[str, int]] = field(default_factory=list)  # (what, how many)
    contribution_limit: tuple[int, int] | None = None  # (max rows per person, rows dropped)
    ignored_columns: list[str] = field(default_factory=list)
    checks: list[tuple[str, str]] = field(default_factory=list)  # (heading, meaning) of the shown checks
    columns: list[ColumnRow] = field(default_factory=list)
    text_lengths: list[TextLengths] = field(default_factory=list)
    nul_bytes: dict[str, Any] | None = None  # count, first_line / columns (a refused file)

    @property
    def empty(self) -> bool:
        return self == QualityTables()


def _count(value: Any) -> int | None:
    """A non-negative integer count, or None (bools and anything else are not counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _number(value: Any) -> float | int | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _finding(value: Any) -> Finding | None:
    if not isinstance(value, Mapping):
        return None
    count = _count(value.get("count"))
    if count is None:
        return None
    raw_lines = value.get("first_lines")
    lines = [n for n in raw_lines if _count(n) is not None] if isinstance(raw_lines, list) else []
    return Finding(count=count, lines=lines)


def _columns(report: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[ColumnRow], list[TextLengths]]:
    stored = report.get("columns")
    if not isinstance(stored, Mapping):
        return [], [], []
    entries = {str(name): entry for name, entry in stored.items() if isinstance(entry, Mapping)}
    # Only the checks some column ran get a table column (a schema without text has no "Too long").
    shown = [check for check in CHECKS if any(check[0] in entry for entry in entries.values())]
    rows, lengths = [], []
    for name, entry in entries.items():
        findings = [_finding(entry.get(key)) for key, _, _ in shown]
        rows.append(
            ColumnRow(
                name=name,
                nulls=_count(entry.get("nulls")),
                findings=findings,
                problems=sum(f.count for f in findings if f is not None),
            )
        )
        text = entry.get("text_length")
        if isinstance(text, Mapping):
            lengths.append(TextLengths(name, [_number(text.get(key)) for key in TEXT_LENGTH_KEYS]))
    return [(heading, meaning) for _, heading, meaning in shown], rows, lengths


def _repaired(report: Mapping[str, Any]) -> list[tuple[str, int]]:
    repaired = report.get("repaired")
    if not isinstance(repaired, Mapping):
        return []
    labels = {
        "dropped_rows": "rows dropped",
        "clamped_values": "numbers clamped to their bounds",
        "truncated_values": "texts cut to their maximum length",
    }
    return [
        (label, count) for key, label in labels.items() if (count := _count(repaired.get(key))) is not None
    ]


def _contribution_limit(report: Mapping[str, Any]) -> tuple[int, int] | None:
    limit = report.get("contribution_limit")
    if not isinstance(limit, Mapping):
        return None
    per_person, dropped = _count(limit.get("max_rows_per_person")), _count(limit.get("dropped_rows"))
    return (per_person, dropped) if per_person is not None and dropped is not None else None


def _nul_bytes(report: Mapping[str, Any]) -> dict[str, Any] | None:
    nul = report.get("nul_bytes")
    count = _count(nul.get("count")) if isinstance(nul, Mapping) else None
    if not isinstance(nul, Mapping) or count is None:
        return None
    columns = nul.get("columns")
    per_column = []
    if isinstance(columns, Mapping):
        for name, value in columns.items():
            if (hits := _count(value)) is not None:
                per_column.append((str(name), hits))
    return {"count": count, "first_line": _count(nul.get("first_line")), "columns": sorted(per_column)}


def report_tables(report: Any) -> QualityTables:
    """The stored quality report as the version page's tables (an empty `QualityTables` for no report)."""
    if not isinstance(report, Mapping):
        return QualityTables()
    checks, columns, text_lengths = _columns(report)
    repair = report.get("repair")
    ignored = report.get("ignored_columns")
    return QualityTables(
        rows_read=_count(report.get("rows_read")),
        rows_stored=_count(report.get("rows_stored")),
        violations=_count(report.get("violations")),
        duplicate_rows=_count(report.get("duplicate_rows")),
        repair=REPAIRS.get(repair) if isinstance(repair, str) else None,
        repaired=_repaired(report),
        contribution_limit=_contribution_limit(report),
        ignored_columns=[str(name) for name in ignored] if isinstance(ignored, list) else [],
        checks=checks,
        columns=columns,
        text_lengths=text_lengths,
        nul_bytes=_nul_bytes(report),
    )
