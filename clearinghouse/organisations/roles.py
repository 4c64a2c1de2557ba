"""Roles within an organisation and what each may do: the one place that maps one to the other."""

from __future__ import annotations

from django.db import models


class Role(models.TextChoices):
    ORG_ADMIN = "org_admin", "Organisation admin"
    DATA_STEWARD = "data_steward", "Data steward"
    ANALYST = "analyst", "Analyst"


MANAGE_MEMBERS = "manage_members"
MANAGE_ORGANISATION = "manage_organisation"
MANAGE_DATASETS = "manage_datasets"
RUN_QUERIES = "run_queries"
VIEW_AUDIT = "view_audit"
MANAGE_FEDERATION = "manage_federation"  # accept federated jobs, register SuperNode keys

ROLE_CAPABILITIES: dict[str, frozenset[str]] = {
    Role.ORG_ADMIN: frozenset(
        {MANAGE_MEMBERS, MANAGE_ORGANISATION, VIEW_AUDIT, MANAGE_DATASETS, RUN_QUERIES, MANAGE_FEDERATION}
    ),
    Role.DATA_STEWARD: frozenset({MANAGE_DATASETS, RUN_QUERIES}),
    Role.ANALYST: frozenset({RUN_QUERIES}),
}
