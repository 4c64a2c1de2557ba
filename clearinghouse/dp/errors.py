"""Errors of the DP engine: one exception type with a stable machine-readable code."""

from __future__ import annotations

from typing import Any

# Stable codes (the API returns them to analysts; tests pin them). Keep in sync with docs.
CODES = frozenset(
    {
        # spec / schema validation
        "invalid_query",  # neither or both of a spec and SQL given
        "invalid_spec",  # malformed JSON shape, unknown keys, wrong types
        "invalid_schema",  # the table description itself is unusable
        "unknown_column",  # a column the schema does not declare
        "identifier_column",  # the privacy-unit identifier cannot be queried
        "unsupported_aggregate",  # an aggregate type the engine does not offer
        "invalid_aggregate",  # a known aggregate used wrongly (missing column, bad q, ...)
        "unsupported_column_type",  # e.g. SUM over a categorical column, GROUP BY a float
        "invalid_filter",  # a malformed or ill-typed `where` condition
        "duplicate_output_name",  # two aggregates would produce the same output column
        "too_many_aggregates",
        "too_many_groups",  # the public key-set (product of categories) is too large
        "group_by_requires_public_keys",  # no public categories and no δ > 0 to release keys with
        # privacy loss
        "invalid_privacy_loss",  # ε/ρ ≤ 0, NaN, inf, δ outside [0, 1), ...
        "privacy_measure_not_allowed",  # e.g. δ or ρ asked for under a pure-DP policy
        # SQL
        "unsupported_sql",  # outside the documented subset, or not parseable
        "unknown_table",
        # release
        "data_does_not_match_schema",  # the data handed to release() breaks the declared schema
        "dataset_too_large",  # more rows than the policy's public `max_rows`
        "query_not_supported_by_opendp",  # OpenDP refused to build the measurement
        # accuracy planning (planner.py)
        "accuracy_target_invalid",  # a target half-width ≤ 0, not finite, or out of reach
        "accuracy_not_plannable",  # no aggregate of the query has a data-independent half-width
    }
)


class QueryError(ValueError):
    """A query that cannot be previewed or released. `code` is stable; `message` is for people."""

    def __init__(self, code: str, message: str, *, details: dict[str, Any] | None = None):
        if code not in CODES:  # pragma: no cover - programming error
            raise AssertionError(f"unknown QueryError code {code!r}")
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            out["details"] = self.details
        return out
