"""Every API endpoint and portal page × {anonymous, analyst, org admin, other organisation's admin,
operator}, each on an object of the analyst's organisation ("own", org A) and of another
organisation ("foreign", org B).

The matrix is checked against the URL configuration: a new endpoint or page without an entry here
fails `test_every_route_is_in_the_matrix`, so nobody can add one without deciding who may use it.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from tests.factories import SMALL_SCHEMA, World, api_client

ACTORS = ["anonymous", "analyst", "org_admin", "other_admin", "operator"]
Target = str  # "own" (org A) or "foreign" (org B)


@dataclass
class Case:
    method: str
    url: Callable[[World, Target], str]
    # Expected status per actor; a pair means (own, foreign), a single int applies to both.
    expect: dict[str, int | tuple[int, int]]
    data: dict | Callable[[World, Target], dict] = field(default_factory=dict)
    object_scoped: bool = True


def org(w: World, t: Target) -> str:
    return w.side(t).organisation.slug


def _matrix() -> dict[str, list[Case]]:
    u = reverse
    A401 = {"anonymous": 401}

    def everyone(status):
        return {
            **A401,
            "analyst": status,
            "org_admin": status,
            "other_admin": status,
            "operator": status,
        }

    scoped_read = {
        **A401,
        "analyst": (200, 404),
        "org_admin": (200, 404),
        "other_admin": (404, 200),
        "operator": 200,
    }
    return {
        # --- API -------------------------------------------------------------------------------------
        "api:me": [Case("get", lambda w, t: u("api:me"), everyone(200), object_scoped=False)],
        "api:tokens": [
            Case("get", lambda w, t: u("api:tokens"), everyone(200), object_scoped=False),
            Case(
                "post", lambda w, t: u("api:tokens"), everyone(201), {"name": "laptop"}, object_scoped=False
            ),
        ],
        "api:token_revoke": [
            Case(
                "post",
                lambda w, t: u("api:token_revoke", args=[w.side(t).admin_token_id]),
                {**A401, "analyst": 404, "org_admin": (200, 404), "other_admin": (404, 200), "operator": 404},
            )
        ],
        "api:organisations": [
            Case("get", lambda w, t: u("api:organisations"), everyone(200), object_scoped=False),
            Case(
                "post",
                lambda w, t: u("api:organisations"),
                {**A401, "analyst": 409, "org_admin": 409, "other_admin": 409, "operator": 201},
                {
                    "name": "Newcomer",
                    "slug": "newcomer",
                    "country": "DE",
                    "contact_email": "x@newcomer.example.org",
                },
                object_scoped=False,
            ),
        ],
        "api:organisation_directory": [
            Case("get", lambda w, t: u("api:organisation_directory"), everyone(200), object_scoped=False)
        ],
        "api:organisation": [
            Case("get", lambda w, t: u("api:organisation", args=[org(w, t)]), scoped_read),
            Case(
                "patch",
                lambda w, t: u("api:organisation", args=[org(w, t)]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 403,
                },
                {"contact_email": "new@example.org"},
            ),
        ],
        "api:organisation_decide": [
            Case(
                "post",
                lambda w, t: u("api:organisation_decide", args=[org(w, t), "suspend"]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (403, 404),
                    "other_admin": (404, 403),
                    "operator": 200,
                },
                {"reason": "audit"},
            ),
        ],
        "api:memberships": [Case("get", lambda w, t: u("api:memberships", args=[org(w, t)]), scoped_read)],
        "api:invitations": [
            Case(
                "get",
                lambda w, t: u("api:invitations", args=[org(w, t)]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 200,
                },
            ),
            Case(
                "post",
                lambda w, t: u("api:invitations", args=[org(w, t)]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (201, 404),
                    "other_admin": (404, 201),
                    "operator": 403,
                },
                {"email": "someone@example.org", "role": "analyst"},
            ),
        ],
        "api:membership": [
            Case(
                "get", lambda w, t: u("api:membership", args=[w.side(t).steward.membership.pk]), scoped_read
            ),
            Case(
                "patch",
                lambda w, t: u("api:membership", args=[w.side(t).steward.membership.pk]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 403,
                },
                {"role": "analyst"},
            ),
            Case(
                "delete",
                lambda w, t: u("api:membership", args=[w.side(t).steward.membership.pk]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (204, 404),
                    "other_admin": (404, 204),
                    "operator": 403,
                },
            ),
        ],
        "api:invitation_revoke": [
            Case(
                "post",
                lambda w, t: u("api:invitation_revoke", args=[w.side(t).invitation.pk]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 403,
                },
            ),
        ],
        "api:invitation_accept": [
            # The invitation was sent to another address: no actor may take it over.
            Case(
                "post",
                lambda w, t: u("api:invitation_accept"),
                everyone(403),
                lambda w, t: {"token": w.side(t).invitation_token},
            ),
        ],
        "api:join_requests": [
            Case("get", lambda w, t: u("api:join_requests"), everyone(200), object_scoped=False),
            Case(
                "post",
                lambda w, t: u("api:join_requests"),
                {**A401, "analyst": 409, "org_admin": 409, "other_admin": 409, "operator": 201},
                {"organisation": "org-a"},
                object_scoped=False,
            ),
        ],
        "api:join_request_decide": [
            Case(
                "post",
                lambda w, t: u("api:join_request_decide", args=[w.side(t).join_request.pk, "approve"]),
                {**A401, "analyst": 404, "org_admin": (200, 404), "other_admin": (404, 200), "operator": 200},
            ),
        ],
        "api:operator_overview": [
            Case(
                "get",
                lambda w, t: u("api:operator_overview"),
                {**everyone(403), "operator": 200},
                object_scoped=False,
            ),
        ],
        "api:audit_events": [
            Case(
                "get",
                lambda w, t: u("api:audit_events"),
                {**A401, "analyst": 403, "org_admin": 200, "other_admin": 200, "operator": 200},
                object_scoped=False,
            ),
        ],
        "api_schema": [
            Case(
                "get", lambda w, t: u("api_schema"), {**everyone(200), "anonymous": 200}, object_scoped=False
            )
        ],
        "api_docs": [
            Case("get", lambda w, t: u("api_docs"), {**everyone(200), "anonymous": 200}, object_scoped=False)
        ],
        "api_redoc": [
            Case("get", lambda w, t: u("api_redoc"), {**everyone(200), "anonymous": 200}, object_scoped=False)
        ],
        # --- Operations: probes answer anyone (they say only "ok"/"unreachable"); /metrics answers only
        # the scraper's METRICS_TOKEN, never a session or an API token (tests/core/test_metrics.py).
        "healthz": [
            Case("get", lambda w, t: u("healthz"), {**everyone(200), "anonymous": 200}, object_scoped=False)
        ],
        "readyz": [
            Case("get", lambda w, t: u("readyz"), {**everyone(200), "anonymous": 200}, object_scoped=False)
        ],
        "metrics": [Case("get", lambda w, t: u("metrics"), everyone(401), object_scoped=False)],
        "api:datasets": [
            Case("get", lambda w, t: u("api:datasets"), everyone(200), object_scoped=False),
            Case(
                "post",
                lambda w, t: u("api:datasets"),
                {**A401, "analyst": 403, "org_admin": 201, "other_admin": 201, "operator": 404},
                {"name": "New", "slug": "new", "schema": SMALL_SCHEMA},
                object_scoped=False,
            ),
        ],
        "api:dataset": [
            Case("get", lambda w, t: u("api:dataset", args=ds(w, t)), scoped_read),
            Case(
                "patch",
                lambda w, t: u("api:dataset", args=ds(w, t)),
                owner_write(200),
                {"schema": SMALL_SCHEMA},
            ),
        ],
        "api:dataset_versions": [
            Case("get", lambda w, t: u("api:dataset_versions", args=ds(w, t)), scoped_read),
            Case(
                "post",
                lambda w, t: u("api:dataset_versions", args=ds(w, t)),
                owner_write(202),
                lambda w, t: {"file": io.BytesIO(b"age,group\n5,a\n")},
            ),
        ],
        "api:dataset_version": [
            Case("get", lambda w, t: u("api:dataset_version", args=[*ds(w, t), 1]), scoped_read)
        ],
        "api:dataset_version_retry": [
            # The version is ready, so even its owner gets a conflict: the point is who gets past authorization.
            Case("post", lambda w, t: u("api:dataset_version_retry", args=[*ds(w, t), 1]), owner_write(409)),
        ],
        "api:dataset_grants": [
            Case("get", lambda w, t: u("api:dataset_grants", args=ds(w, t)), scoped_read),
            Case(
                "post",
                lambda w, t: u("api:dataset_grants", args=ds(w, t)),
                owner_write(201),
                {"organisation": "org-c", "purpose": "training"},
            ),
        ],
        "api:dataset_grant_revoke": [
            # Operators may revoke (not create) grants: a safety action (datasets.services.dataset_grant_revoke).
            Case(
                "post",
                lambda w, t: u("api:dataset_grant_revoke", args=[w.side(t).grant_id]),
                {**owner_write(200), "operator": 200},
            ),
        ],
        "api:dataset_agreement": [
            Case("get", lambda w, t: u("api:dataset_agreement", args=ds(w, t)), scoped_read),
            Case(
                "post",
                lambda w, t: u("api:dataset_agreement", args=ds(w, t)),
                owner_write(201),
                {"text": "v2"},
            ),
        ],
        "api:dataset_agreement_accept": [
            Case(
                "post",
                lambda w, t: u("api:dataset_agreement_accept", args=ds(w, t)),
                {
                    **A401,
                    "analyst": (201, 404),
                    "org_admin": (201, 404),
                    "other_admin": (404, 201),
                    "operator": 404,
                },
                {"version": 1},
            ),
        ],
        "api:catalogue": [Case("get", lambda w, t: u("api:catalogue"), everyone(200), object_scoped=False)],
        "api:dataset_listing": [
            Case(
                "put",
                lambda w, t: u("api:dataset_listing", args=ds(w, t)),
                owner_write(200),
                {"listed": True},
            )
        ],
        "api:dataset_access_requests": [
            Case("get", lambda w, t: u("api:dataset_access_requests", args=ds(w, t)), scoped_read),
            # The world's datasets are not listed: only their owner (for its own dataset: 400 own_dataset)
            # and operators (who belong to no organisation: 403) find them.
            Case(
                "post",
                lambda w, t: u("api:dataset_access_requests", args=ds(w, t)),
                {
                    **A401,
                    "analyst": (400, 404),
                    "org_admin": (400, 404),
                    "other_admin": (404, 400),
                    "operator": 403,
                },
                {"purpose": "training", "reason": "matrix"},
            ),
        ],
        "api:access_requests": [
            Case("get", lambda w, t: u("api:access_requests"), everyone(200), object_scoped=False)
        ],
        "api:access_request_decide": [
            # Org C's request for the side's dataset: the owner's admins and stewards decide.
            Case(
                "post",
                lambda w, t: u(
                    "api:access_request_decide",
                    args=[
                        w.side(t)
                        .dataset.access_requests.get_or_create(
                            organisation=w.side(t).dataset.grants.get(pk=w.side(t).grant_id).organisation,
                            purpose="training",
                            status="pending",
                            defaults={"reason": "matrix"},
                        )[0]
                        .pk
                    ],
                ),
                owner_write(200),
                {"decision": "approve"},
            ),
        ],
        "api:access_request_withdraw": [
            # The side's organisation's request for the other side's dataset: its members withdraw it;
            # the dataset's owner is told no (403), operators too.
            Case(
                "post",
                lambda w, t: u(
                    "api:access_request_withdraw",
                    args=[
                        w.side("foreign" if t == "own" else "own")
                        .dataset.access_requests.get_or_create(
                            organisation=w.side(t).organisation,
                            purpose="training",
                            status="pending",
                            defaults={"reason": "matrix"},
                        )[0]
                        .pk
                    ],
                ),
                {
                    **A401,
                    "analyst": (200, 403),
                    "org_admin": (200, 403),
                    "other_admin": (403, 200),
                    "operator": 403,
                },
            ),
        ],
        "api:dataset_budget": [
            Case("get", lambda w, t: u("api:dataset_budget", args=ds(w, t)), scoped_read),
            Case(
                "put",
                lambda w, t: u("api:dataset_budget", args=ds(w, t)),
                owner_write(200),
                {"measure": "pure", "total": 20},
            ),
        ],
        "api:dataset_budget_ledger": [
            Case("get", lambda w, t: u("api:dataset_budget_ledger", args=ds(w, t)), scoped_read)
        ],
        "api:dataset_budget_allocation": [
            Case(
                "put",
                lambda w, t: u("api:dataset_budget_allocation", args=[*ds(w, t), "org-c"]),
                owner_write(200),
                {"amount": 2},
            ),
        ],
        "api:queries": [
            Case("get", lambda w, t: u("api:queries", args=ds(w, t)), scoped_read),
            Case(
                "post",
                lambda w, t: u("api:queries", args=ds(w, t)),
                {
                    **A401,
                    "analyst": (202, 404),
                    "org_admin": (202, 404),
                    "other_admin": (404, 202),
                    "operator": 404,
                },
                {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.1}},
            ),
        ],
        "api:query_preview": [
            Case(
                "post",
                lambda w, t: u("api:query_preview", args=ds(w, t)),
                {
                    **A401,
                    "analyst": (200, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 404,
                },
                {"sql": "SELECT COUNT(*) FROM survey", "privacy": {"epsilon": 0.1}},
            ),
        ],
        "api:query_plan": [
            Case(
                "post",
                lambda w, t: u("api:query_plan", args=ds(w, t)),
                {
                    **A401,
                    "analyst": (200, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 404,
                },
                {"sql": "SELECT COUNT(*) FROM survey", "target_half_width": 50},
            )
        ],
        "api:query": [Case("get", lambda w, t: u("api:query", args=[query_of(w, t).pk]), scoped_read)],
        "api:federated_jobs": [
            Case("get", lambda w, t: u("api:federated_jobs"), everyone(200), object_scoped=False),
            Case(
                "post",
                lambda w, t: u("api:federated_jobs"),
                {**everyone(403), "operator": 201},
                {
                    "name": "Spam",
                    "text_column": "SMS",
                    "label_column": "Label",
                    "labels": ["ham", "spam"],
                    "participants": [{"organisation": "org-a"}],
                    "min_clients": 1,
                },
                object_scoped=False,
            ),
        ],
        "api:federated_job": [
            Case("get", lambda w, t: u("api:federated_job", args=[w.side(t).job_id]), scoped_read)
        ],
        "api:federated_job_privacy": [
            Case("get", lambda w, t: u("api:federated_job_privacy", args=[w.side(t).job_id]), scoped_read)
        ],
        "api:federated_job_rounds": [
            Case("get", lambda w, t: u("api:federated_job_rounds", args=[w.side(t).job_id]), scoped_read)
        ],
        "api:federated_job_participation": [
            # The job has run, so even its participant's admin gets a conflict: the point is who gets
            # past authorization.
            Case(
                "post",
                lambda w, t: u("api:federated_job_participation", args=[w.side(t).job_id]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (409, 404),
                    "other_admin": (404, 409),
                    "operator": 403,
                },
                {"decision": "accept"},
            ),
        ],
        "api:federated_job_schedule": [
            Case(
                "post",
                lambda w, t: u("api:federated_job_schedule", args=[w.side(t).job_id]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (403, 404),
                    "other_admin": (404, 403),
                    "operator": 409,
                },
            ),
        ],
        "api:federated_job_cancel": [
            Case(
                "post",
                lambda w, t: u("api:federated_job_cancel", args=[w.side(t).job_id]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (403, 404),
                    "other_admin": (404, 403),
                    "operator": 409,
                },
            ),
        ],
        "api:federated_job_artifact": [
            # Only accepted participants receive the model; operators run jobs but do not get models.
            Case(
                "get",
                lambda w, t: u("api:federated_job_artifact", args=[w.side(t).job_id]),
                {
                    **A401,
                    "analyst": (200, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 403,
                },
            ),
        ],
        "api:federated_job_publish": [
            # Operators publish a private job's model (this one is not private: 409 model_not_private).
            Case(
                "post",
                lambda w, t: u("api:federated_job_publish", args=[w.side(t).job_id]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (403, 404),
                    "other_admin": (404, 403),
                    "operator": 409,
                },
            ),
        ],
        "api:published_models": [
            Case("get", lambda w, t: u("api:published_models"), everyone(200), object_scoped=False),
        ],
        "api:published_model_download": [
            # Only a published model downloads here; the side's job's model is not published.
            Case(
                "get",
                lambda w, t: u("api:published_model_download", args=[model_of(w, t)]),
                {**A401, "analyst": 404, "org_admin": 404, "other_admin": 404, "operator": 404},
            ),
        ],
        "api:federated_job_events": [
            # The ServerApp's callback takes the job's own token only: no user (or anonymous) gets in.
            Case(
                "post",
                lambda w, t: u("api:federated_job_events", args=[w.side(t).job_id]),
                {**everyone(403), "anonymous": 403},
                {"event": "failed", "reason": "forged"},
            ),
        ],
        "api:supernode_keys": [
            Case(
                "get",
                lambda w, t: u("api:supernode_keys", args=[org(w, t)]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 200,
                },
            ),
            Case(
                "post",
                lambda w, t: u("api:supernode_keys", args=[org(w, t)]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (201, 404),
                    "other_admin": (404, 201),
                    "operator": 403,
                },
                lambda w, t: {"name": "gpu-2", "public_key": fresh_public_key()},
            ),
        ],
        "api:supernode_key_revoke": [
            # Operators see every organisation's keys (as the list shows them) but act inside none: 403.
            Case(
                "post",
                lambda w, t: u("api:supernode_key_revoke", args=[w.side(t).node_key_id]),
                {
                    **A401,
                    "analyst": (403, 404),
                    "org_admin": (200, 404),
                    "other_admin": (404, 200),
                    "operator": 403,
                },
            ),
        ],
        # --- Annotation projects (API) ----------------------------------------------------------------
        # Each side's project (`annotation_of`): on a text dataset of the side's, managed by its admin,
        # its analyst the one annotator. Everyone else (the other side, operators) is told it does not
        # exist; annotators read and label, managers also change, run the model and export.
        "api:annotation_projects": [
            Case("get", lambda w, t: u("api:annotation_projects"), everyone(200), object_scoped=False),
            Case(
                "post",
                lambda w, t: u("api:annotation_projects"),
                # the dataset named by its slug: the actor's own organisation's (operators have none)
                {**A401, "analyst": 403, "org_admin": 201, "other_admin": 201, "operator": 404},
                _annotation_create,
                object_scoped=False,
            ),
        ],
        "api:annotation_project": [
            Case("get", lambda w, t: u("api:annotation_project", args=[_ap(w, t)]), annotator_read(200)),
            Case(
                "patch",
                lambda w, t: u("api:annotation_project", args=[_ap(w, t)]),
                manager_write(200),
                {"instructions": "Spam: unsolicited advertising only."},
            ),
        ],
        "api:annotation_project_archive": [
            Case(
                "post", lambda w, t: u("api:annotation_project_archive", args=[_ap(w, t)]), manager_write(200)
            )
        ],
        "api:annotation_next": [
            Case("get", lambda w, t: u("api:annotation_next", args=[_ap(w, t)]), annotator_read(200))
        ],
        "api:annotation_items": [
            Case(
                "get",
                lambda w, t: u("api:annotation_items", args=[_ap(w, t)]) + f"?ids={_item(w, t)}",
                annotator_read(200),
            )
        ],
        "api:annotation_item_label": [
            Case(
                "post",
                lambda w, t: u("api:annotation_item_label", args=[_ap(w, t), _item(w, t)]),
                annotator_read(201),
                {"label": "ham"},
            )
        ],
        "api:annotation_item_skip": [
            Case(
                "post",
                lambda w, t: u("api:annotation_item_skip", args=[_ap(w, t), _item(w, t)]),
                annotator_read(204),
            )
        ],
        "api:annotation_undo": [
            # nothing labelled yet: past authorization, a conflict
            Case("post", lambda w, t: u("api:annotation_undo", args=[_ap(w, t)]), annotator_read(409))
        ],
        "api:annotation_model_runs": [
            Case("get", lambda w, t: u("api:annotation_model_runs", args=[_ap(w, t)]), annotator_read(200)),
            Case(
                "post",
                lambda w, t: u("api:annotation_model_runs", args=[_ap(w, t)]),
                manager_write(409),  # too_few_labels
                {"kind": "propose"},
            ),
        ],
        "api:annotation_model_run": [
            Case(
                "get",
                lambda w, t: u("api:annotation_model_run", args=[_ap(w, t), _annotation_run(w, t)]),
                annotator_read(200),
            )
        ],
        "api:annotation_automatic": [
            Case(
                "post",
                lambda w, t: u("api:annotation_automatic", args=[_ap(w, t)]),
                manager_write(409),  # the run certified no threshold
                lambda w, t: {"run": _annotation_run(w, t)},
            )
        ],
        "api:annotation_duplicates": [
            Case("get", lambda w, t: u("api:annotation_duplicates", args=[_ap(w, t)]), annotator_read(200))
        ],
        "api:annotation_review": [
            Case("get", lambda w, t: u("api:annotation_review", args=[_ap(w, t)]), annotator_read(200))
        ],
        "api:annotation_exports": [
            Case("get", lambda w, t: u("api:annotation_exports", args=[_ap(w, t)]), manager_write(200)),
            Case(
                "post",
                lambda w, t: u("api:annotation_exports", args=[_ap(w, t)]),
                manager_write(409),  # nothing_to_export
                {"name": "Spam labelled"},
            ),
        ],
        "api:annotation_export": [
            Case(
                "get",
                lambda w, t: u("api:annotation_export", args=[_ap(w, t), _annotation_export(w, t)]),
                manager_write(200),
            )
        ],
        # --- Portal ----------------------------------------------------------------------------------
        "portal:datasets": [
            Case("get", lambda w, t: u("portal:datasets"), portal(everyone(200)), object_scoped=False),
            Case(
                "post",
                lambda w, t: u("portal:datasets"),
                portal({"analyst": 403, "org_admin": 302, "other_admin": 302, "operator": 404}),
                {"name": "New", "slug": "new", "schema": json.dumps(SMALL_SCHEMA)},
                object_scoped=False,
            ),
        ],
        "portal:dataset": [Case("get", lambda w, t: u("portal:dataset", args=ds(w, t)), portal(scoped_read))],
        "portal:dataset_version": [
            Case("get", lambda w, t: u("portal:dataset_version", args=[*ds(w, t), 1]), portal(scoped_read))
        ],
        "portal:dataset_schema": [
            Case(
                "post",
                lambda w, t: u("portal:dataset_schema", args=ds(w, t)),
                portal(owner_write(302)),
                {"schema": json.dumps(SMALL_SCHEMA)},
            )
        ],
        "portal:dataset_upload": [
            Case(
                "post",
                lambda w, t: u("portal:dataset_upload", args=ds(w, t)),
                portal(owner_write(302)),
                lambda w, t: {"file": io.BytesIO(b"age,group\n5,a\n")},
            )
        ],
        "portal:dataset_version_retry": [
            Case(
                "post",
                lambda w, t: u("portal:dataset_version_retry", args=[*ds(w, t), 1]),
                portal(owner_write(302)),
            )
        ],
        "portal:dataset_grant": [
            Case(
                "post",
                lambda w, t: u("portal:dataset_grant", args=ds(w, t)),
                portal(owner_write(302)),
                {"organisation": "org-c", "purpose": "training"},
            )
        ],
        # The schema editor shows the columns of a proposal read from the data: the owner's writers only.
        "portal:dataset_schema_edit": [
            Case("get", lambda w, t: u("portal:dataset_schema_edit", args=ds(w, t)), portal(owner_write(200)))
        ],
        # The quality report (derived from the rows) as a file: the owner organisation's members, as
        # on the version page; everyone else, operators included, is told there is none.
        "portal:dataset_version_quality": [
            Case(
                "get",
                lambda w, t: u("portal:dataset_version_quality", args=[*ds(w, t), 1]),
                portal({**scoped_read, "operator": 404}),
            )
        ],
        "portal:dataset_grant_revoke": [
            Case(
                "post",
                lambda w, t: u("portal:dataset_grant_revoke", args=[w.side(t).grant_id]),
                portal({**owner_write(302), "operator": 302}),
            ),
        ],
        "portal:catalogue": [
            Case("get", lambda w, t: u("portal:catalogue"), portal(everyone(200)), object_scoped=False)
        ],
        "portal:access_requests": [
            Case("get", lambda w, t: u("portal:access_requests"), portal(everyone(200)), object_scoped=False)
        ],
        "portal:dataset_access_request": [
            # As the API's (a refused own-dataset request is a message and a redirect here).
            Case(
                "post",
                lambda w, t: u("portal:dataset_access_request", args=ds(w, t)),
                portal(
                    {
                        "analyst": (302, 404),
                        "org_admin": (302, 404),
                        "other_admin": (404, 302),
                        "operator": 403,
                    }
                ),
                {"purpose": "training", "reason": "matrix"},
            )
        ],
        "portal:dataset_listing": [
            Case(
                "post",
                lambda w, t: u("portal:dataset_listing", args=ds(w, t)),
                portal(owner_write(302)),
                {"listed": "true"},
            )
        ],
        "portal:access_request_decide": [
            Case(
                "post",
                lambda w, t: u(
                    "portal:access_request_decide",
                    args=[
                        w.side(t)
                        .dataset.access_requests.get_or_create(
                            organisation=w.side(t).dataset.grants.get(pk=w.side(t).grant_id).organisation,
                            purpose="training",
                            status="pending",
                            defaults={"reason": "matrix"},
                        )[0]
                        .pk
                    ],
                ),
                portal(owner_write(302)),
                {"decision": "approve"},
            )
        ],
        "portal:access_request_withdraw": [
            Case(
                "post",
                lambda w, t: u(
                    "portal:access_request_withdraw",
                    args=[
                        w.side("foreign" if t == "own" else "own")
                        .dataset.access_requests.get_or_create(
                            organisation=w.side(t).organisation,
                            purpose="training",
                            status="pending",
                            defaults={"reason": "matrix"},
                        )[0]
                        .pk
                    ],
                ),
                portal(
                    {
                        "analyst": (302, 403),
                        "org_admin": (302, 403),
                        "other_admin": (403, 302),
                        "operator": 403,
                    }
                ),
            )
        ],
        "portal:query_console": [
            Case("get", lambda w, t: u("portal:query_console", args=ds(w, t)), portal(scoped_read)),
            # A release is queued (no worker here) and the page answers; outsiders get 404.
            Case(
                "post",
                lambda w, t: u("portal:query_console", args=ds(w, t)),
                portal(
                    {
                        "analyst": (200, 404),
                        "org_admin": (200, 404),
                        "other_admin": (404, 200),
                        "operator": 404,
                    }
                ),
                {"sql": "SELECT COUNT(*) FROM survey", "epsilon": "0.1", "action": "preview"},
            ),
        ],
        "portal:budget_dashboard": [
            Case("get", lambda w, t: u("portal:budget_dashboard", args=ds(w, t)), portal(scoped_read)),
            Case(
                "post",
                lambda w, t: u("portal:budget_dashboard", args=ds(w, t)),
                portal(owner_write(302)),
                {"measure": "pure", "total": "20"},
            ),
        ],
        "portal:budget_allocation": [
            Case(
                "post",
                lambda w, t: u("portal:budget_allocation", args=[*ds(w, t), "org-c"]),
                portal(owner_write(302)),
                {"amount": "2"},
            ),
        ],
        # A query's result page and its CSV: who sees the query as api:query (`query_get`); who reads
        # its answer as the API (`query_answer_visible`): operators see the page but get no CSV.
        "portal:query_result": [
            Case(
                "get",
                lambda w, t: u("portal:query_result", args=[*ds(w, t), query_of(w, t).pk]),
                portal(scoped_read),
            )
        ],
        "portal:query_result_csv": [
            Case(
                "get",
                lambda w, t: (
                    (q := query_of(w, t))
                    .__class__.objects.filter(pk=q.pk)
                    .update(
                        status="released",
                        result={
                            "columns": ["count"],
                            "group_by": [],
                            "aggregates": [],
                            "rows": [{"count": 3}],
                            "intervals": [{"count": [1.0, 5.0]}],
                        },
                    )
                    and u("portal:query_result_csv", args=[*ds(w, t), q.pk])
                ),
                portal({**scoped_read, "operator": 404}),
            )
        ],
        # Each signed-in user's own budgets (their organisation's grants; none for operators).
        "portal:my_budgets": [
            Case("get", lambda w, t: u("portal:my_budgets"), portal(everyone(200)), object_scoped=False),
        ],
        "portal:dataset_agreement": [
            Case(
                "post",
                lambda w, t: u("portal:dataset_agreement", args=ds(w, t)),
                portal(owner_write(302)),
                {"text": "v2"},
            )
        ],
        # Federation pages: the same rules as the api:federated_* entries above; a refused action's
        # conflict becomes a message and a redirect (302), a refused read or write 403/404 as there.
        "portal:federated_jobs": [
            Case("get", lambda w, t: u("portal:federated_jobs"), portal(everyone(200)), object_scoped=False)
        ],
        "portal:federated_job_new": [
            Case(
                "get",
                lambda w, t: u("portal:federated_job_new"),
                portal({**everyone(403), "operator": 200}),
                object_scoped=False,
            ),
            Case(
                "post",
                lambda w, t: u("portal:federated_job_new"),
                portal({**everyone(403), "operator": 302}),
                {
                    "name": "Spam",
                    "base_model": "minilm-l6",
                    "text_column": "SMS",
                    "label_column": "Label",
                    "labels": "ham, spam",
                    "strategy": "fedavg",
                    "num_rounds": 3,
                    "min_clients": 1,
                    "participants": ["org-a"],
                    "settings": "",
                },
                object_scoped=False,
            ),
        ],
        "portal:federated_job": [
            Case("get", lambda w, t: u("portal:federated_job", args=[w.side(t).job_id]), portal(scoped_read))
        ],
        "portal:federated_job_participation": [
            # The job has run: its participant's admin gets past authorization to the conflict (a message).
            Case(
                "post",
                lambda w, t: u("portal:federated_job_participation", args=[w.side(t).job_id]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (302, 404),
                        "other_admin": (404, 302),
                        "operator": 403,
                    }
                ),
                {"decision": "accept"},
            ),
        ],
        "portal:federated_job_schedule": [
            Case(
                "post",
                lambda w, t: u("portal:federated_job_schedule", args=[w.side(t).job_id]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (403, 404),
                        "other_admin": (404, 403),
                        "operator": 302,
                    }
                ),
            ),
        ],
        "portal:federated_job_cancel": [
            Case(
                "post",
                lambda w, t: u("portal:federated_job_cancel", args=[w.side(t).job_id]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (403, 404),
                        "other_admin": (404, 403),
                        "operator": 302,
                    }
                ),
            ),
        ],
        "portal:federated_job_model": [
            # Only accepted participants receive the model; operators run jobs but do not get models.
            Case(
                "get",
                lambda w, t: u("portal:federated_job_model", args=[w.side(t).job_id]),
                portal(
                    {
                        "analyst": (200, 404),
                        "org_admin": (200, 404),
                        "other_admin": (404, 200),
                        "operator": 403,
                    }
                ),
            ),
        ],
        "portal:federated_job_publish": [
            Case(
                "post",
                lambda w, t: u("portal:federated_job_publish", args=[w.side(t).job_id]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (403, 404),
                        "other_admin": (404, 403),
                        "operator": 302,
                    }
                ),
            ),
        ],
        "portal:published_models": [
            Case(
                "get", lambda w, t: u("portal:published_models"), portal(everyone(200)), object_scoped=False
            ),
        ],
        "portal:published_model_download": [
            Case(
                "get",
                lambda w, t: u("portal:published_model_download", args=[model_of(w, t)]),
                portal({"analyst": 404, "org_admin": 404, "other_admin": 404, "operator": 404}),
            ),
        ],
        "portal:supernode_keys": [
            # The user's own organisation's keys: org admins only; operators belong to none.
            Case(
                "get",
                lambda w, t: u("portal:supernode_keys"),
                portal({"analyst": 403, "org_admin": 200, "other_admin": 200, "operator": 404}),
                object_scoped=False,
            ),
            Case(
                "post",
                lambda w, t: u("portal:supernode_keys"),
                portal({"analyst": 403, "org_admin": 302, "other_admin": 302, "operator": 404}),
                lambda w, t: {"name": "gpu-2", "public_key": fresh_public_key()},
                object_scoped=False,
            ),
        ],
        "portal:supernode_key_revoke": [
            Case(
                "post",
                lambda w, t: u("portal:supernode_key_revoke", args=[w.side(t).node_key_id]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (302, 404),
                        "other_admin": (404, 302),
                        "operator": 403,
                    }
                ),
            ),
        ],
        # Annotation pages: the same rules as the api:annotation_* entries above (annotators read and
        # label, managers also change, run the model and export; everyone else: 404). A service's
        # conflict is a message and a redirect (302), or the form again with its error (400).
        "portal:annotation_projects": [
            Case(
                "get",
                lambda w, t: u("portal:annotation_projects"),
                portal(everyone(200)),
                object_scoped=False,
            )
        ],
        "portal:annotation_project_new": [
            Case(
                "get",
                lambda w, t: u("portal:annotation_project_new"),
                portal({"analyst": 403, "org_admin": 200, "other_admin": 200, "operator": 404}),
                object_scoped=False,
            ),
            Case(
                "post",
                lambda w, t: u("portal:annotation_project_new"),
                portal({"analyst": 403, "org_admin": 302, "other_admin": 302, "operator": 404}),
                lambda w, t: {
                    **_annotation_create(w, t),
                    "labels": "ham\nspam",
                    "overlap": "10",
                },
                object_scoped=False,
            ),
        ],
        "portal:annotation_project": [
            Case(
                "get",
                lambda w, t: u("portal:annotation_project", args=[_ap(w, t)]),
                portal(annotator_read(200)),
            )
        ],
        "portal:annotation_project_edit": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_project_edit", args=[_ap(w, t)]),
                portal(manager_write(302)),
                {"edit-instructions": "Spam: unsolicited advertising only."},
            )
        ],
        "portal:annotation_archive": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_archive", args=[_ap(w, t)]),
                portal(manager_write(302)),
            )
        ],
        "portal:annotation_automatic": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_automatic", args=[_ap(w, t)]),
                portal(manager_write(302)),
                {"automatic-target_precision": "98", "automatic-confidence_level": "95"},
            )
        ],
        "portal:annotation_automatic_apply": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_automatic_apply", args=[_ap(w, t)]),
                portal(manager_write(302)),  # the run certified no threshold: a message
                lambda w, t: {"run": _annotation_run(w, t)},
            )
        ],
        "portal:annotation_model_runs": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_model_runs", args=[_ap(w, t)]),
                portal(manager_write(400)),  # too_few_labels, on the form
                {"kind": "propose"},
            )
        ],
        "portal:annotation_exports": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_exports", args=[_ap(w, t)]),
                portal(manager_write(400)),  # nothing_to_export, on the form
                {"export-name": "Spam labelled"},
            )
        ],
        "portal:annotation_label": [
            Case(
                "get",
                lambda w, t: u("portal:annotation_label", args=[_ap(w, t)]),
                portal(annotator_read(200)),
            )
        ],
        "portal:annotation_item_label": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_item_label", args=[_ap(w, t), _item(w, t)]),
                portal(annotator_read(302)),
                {"label": "ham"},
            )
        ],
        "portal:annotation_item_skip": [
            Case(
                "post",
                lambda w, t: u("portal:annotation_item_skip", args=[_ap(w, t), _item(w, t)]),
                portal(annotator_read(302)),
            )
        ],
        "portal:annotation_undo": [
            # nothing labelled yet: past authorization, a message
            Case(
                "post",
                lambda w, t: u("portal:annotation_undo", args=[_ap(w, t)]),
                portal(annotator_read(302)),
            )
        ],
        "portal:annotation_duplicates": [
            Case(
                "get",
                lambda w, t: u("portal:annotation_duplicates", args=[_ap(w, t)]),
                portal(annotator_read(200)),
            )
        ],
        "portal:annotation_review": [
            Case(
                "get",
                lambda w, t: u("portal:annotation_review", args=[_ap(w, t)]),
                portal(annotator_read(200)),
            )
        ],
        # --- Portal ----------------------------------------------------------------------------------
        "portal:home": [
            Case(
                "get", lambda w, t: u("portal:home"), {**everyone(302), "anonymous": 200}, object_scoped=False
            )
        ],
        "portal:signup": [
            Case(
                "get",
                lambda w, t: u("portal:signup"),
                {**everyone(302), "anonymous": 200},
                object_scoped=False,
            )
        ],
        "portal:login": [
            Case(
                "get",
                lambda w, t: u("portal:login"),
                {**everyone(302), "anonymous": 200},
                object_scoped=False,
            )
        ],
        "portal:logout": [
            Case(
                "post",
                lambda w, t: u("portal:logout"),
                {**everyone(302), "anonymous": 302},
                object_scoped=False,
            )
        ],
        "portal:dashboard": [
            Case("get", lambda w, t: u("portal:dashboard"), portal(everyone(200)), object_scoped=False)
        ],
        # A member's application or join request is a conflict, shown on the form (200), as the API's 409.
        "portal:organisation_apply": [
            Case(
                "get", lambda w, t: u("portal:organisation_apply"), portal(everyone(200)), object_scoped=False
            ),
            Case(
                "post",
                lambda w, t: u("portal:organisation_apply"),
                portal({**everyone(200), "operator": 302}),
                {
                    "name": "Newcomer",
                    "slug": "newcomer",
                    "country": "DE",
                    "contact_email": "x@newcomer.example.org",
                },
                object_scoped=False,
            ),
        ],
        "portal:organisation_join": [
            Case(
                "get", lambda w, t: u("portal:organisation_join"), portal(everyone(200)), object_scoped=False
            ),
            Case(
                "post",
                lambda w, t: u("portal:organisation_join"),
                portal({**everyone(200), "operator": 302}),
                {"organisation": "org-a", "message": ""},
                object_scoped=False,
            ),
        ],
        "portal:join_request_withdraw": [
            # Only the requester may withdraw; for everyone else the request does not exist.
            Case(
                "post",
                lambda w, t: u("portal:join_request_withdraw", args=[w.side(t).join_request.pk]),
                portal(everyone(404)),
            ),
        ],
        "portal:join_request_decide": [
            Case(
                "post",
                lambda w, t: u("portal:join_request_decide", args=[w.side(t).join_request.pk, "approve"]),
                portal({"analyst": 404, "org_admin": (302, 404), "other_admin": (404, 302), "operator": 302}),
                {"role": "analyst"},
            ),
        ],
        "portal:invitation_accept": [
            Case(
                "get",
                lambda w, t: u("portal:invitation_accept", args=[w.side(t).invitation_token]),
                portal(everyone(200)),
            ),
            Case(
                "post",
                lambda w, t: u("portal:invitation_accept", args=[w.side(t).invitation_token]),
                portal(everyone(403)),
            ),
        ],
        "portal:organisation": [
            Case(
                "get",
                lambda w, t: u("portal:organisation"),
                portal({**everyone(200), "operator": 404}),
                object_scoped=False,
            )
        ],
        "portal:member_role": [
            Case(
                "post",
                lambda w, t: u("portal:member_role", args=[w.side(t).steward.membership.pk]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (302, 404),
                        "other_admin": (404, 302),
                        "operator": 403,
                    }
                ),
                {"role": "analyst"},
            ),
        ],
        "portal:member_remove": [
            Case(
                "post",
                lambda w, t: u("portal:member_remove", args=[w.side(t).steward.membership.pk]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (302, 404),
                        "other_admin": (404, 302),
                        "operator": 403,
                    }
                ),
            ),
        ],
        "portal:invitation_create": [
            Case(
                "post",
                lambda w, t: u("portal:invitation_create"),
                portal({"analyst": 403, "org_admin": 302, "other_admin": 302, "operator": 404}),
                {"email": "new@example.org", "role": "analyst"},
                object_scoped=False,
            ),
        ],
        "portal:invitation_revoke": [
            Case(
                "post",
                lambda w, t: u("portal:invitation_revoke", args=[w.side(t).invitation.pk]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (302, 404),
                        "other_admin": (404, 302),
                        "operator": 403,
                    }
                ),
            ),
        ],
        "portal:tokens": [
            Case("get", lambda w, t: u("portal:tokens"), portal(everyone(200)), object_scoped=False),
            Case(
                "post",
                lambda w, t: u("portal:tokens"),
                portal(everyone(200)),
                {"name": "cli", "expires_in_days": 30},
                object_scoped=False,
            ),
        ],
        "portal:token_revoke": [
            Case(
                "post",
                lambda w, t: u("portal:token_revoke", args=[w.side(t).admin_token_id]),
                portal({"analyst": 404, "org_admin": (302, 404), "other_admin": (404, 302), "operator": 404}),
            ),
        ],
        "portal:operator_organisations": [
            Case(
                "get",
                lambda w, t: u("portal:operator_organisations"),
                portal({**everyone(403), "operator": 200}),
                object_scoped=False,
            ),
        ],
        "portal:operator_organisation": [
            Case(
                "get",
                lambda w, t: u("portal:operator_organisation", args=[org(w, t)]),
                portal({**everyone(403), "operator": 200}),
            ),
        ],
        "portal:operator_organisation_decide": [
            # As api:organisation_decide: organisation_set_status decides (operators only).
            Case(
                "post",
                lambda w, t: u("portal:operator_organisation_decide", args=[org(w, t), "suspend"]),
                portal(
                    {
                        "analyst": (403, 404),
                        "org_admin": (403, 404),
                        "other_admin": (404, 403),
                        "operator": 302,
                    }
                ),
                {"reason": "audit"},
            ),
        ],
        "portal:operator_overview": [
            Case(
                "get",
                lambda w, t: u("portal:operator_overview"),
                portal({**everyone(403), "operator": 200}),
                object_scoped=False,
            ),
        ],
        "portal:audit": [
            Case(
                "get",
                lambda w, t: u("portal:audit"),
                portal({"analyst": 403, "org_admin": 200, "other_admin": 200, "operator": 200}),
                object_scoped=False,
            ),
        ],
    }


def ds(w: World, t: Target) -> list[str]:
    return [org(w, t), w.side(t).dataset.slug]


def fresh_public_key() -> str:
    import tempfile
    from pathlib import Path

    from federation.flower.security import make_supernode_keypair

    with tempfile.TemporaryDirectory() as tmp:
        return make_supernode_keypair(Path(tmp), "node")[1].read_text()


def owner_write(status: int) -> dict:
    """Writes on a dataset: its organisation's admin (a steward too) succeeds; its analysts are
    forbidden; other organisations do not see it; operators see it but may not change it."""
    return {
        "anonymous": 401,
        "analyst": (403, 404),
        "org_admin": (status, 404),
        "other_admin": (404, status),
        "operator": 403,
    }


def model_of(w: World, t: Target) -> int:
    """The id of the side's job's model (stored, not published)."""
    from federation.models import ModelArtifact

    return ModelArtifact.objects.get(job_id=w.side(t).job_id).pk


def query_of(w: World, t: Target):
    """A query on the side's dataset by that side's steward (made directly: no worker runs here); a
    new one each call (its own hash: one pending release per canonical query)."""
    import uuid

    from clearinghouse.queries.models import Query

    side = w.side(t)
    return Query.objects.create(
        dataset=side.dataset,
        version=side.dataset.versions.get(number=1),
        organisation=side.organisation,
        analyst=side.steward,
        spec={},
        query_hash=f"matrix-{t}-{uuid.uuid4().hex}",
        cost=0.0,
    )


def annotator_read(status: int) -> dict:
    """An annotation project's annotators (the side's analyst) and managers (its admin) get `status`;
    the other side, operators: 404, as for a project that does not exist."""
    return {
        "anonymous": 401,
        "analyst": (status, 404),
        "org_admin": (status, 404),
        "other_admin": (404, status),
        "operator": 404,
    }


def manager_write(status: int) -> dict:
    """As `annotator_read`, but an annotator who is not a manager is told 403 `role_forbidden`."""
    return {**annotator_read(status), "analyst": (403, 404)}


def annotation_of(w: World, t: Target):
    """The side's annotation project, made on first use (and kept on the world): on a text dataset of
    the side's (`messages`), managed by its admin, with its analyst as the one annotator; prepared."""
    from tests.annotation.test_api import make_project, make_text_dataset

    projects = w.__dict__.setdefault("annotation_projects", {})
    if t not in projects:
        side = w.side(t)
        projects[t] = make_project(
            manager=side.admin,
            dataset=make_text_dataset(steward=side.steward),
            annotators=[side.analyst.username],
        )
    return projects[t]


def _ap(w: World, t: Target) -> int:
    return annotation_of(w, t).pk


def _item(w: World, t: Target) -> int:
    return annotation_of(w, t).items.order_by("pk").values_list("pk", flat=True)[0]


def _annotation_run(w: World, t: Target) -> int:
    """A finished propose run of the side's project that certified no threshold (made directly: no
    model runs here)."""
    from clearinghouse.annotation.models import ModelRun

    project = annotation_of(w, t)
    run = project.model_runs.first() or ModelRun.objects.create(
        project=project, kind="propose", status="succeeded", labels_used=2
    )
    return run.pk


def _annotation_export(w: World, t: Target) -> int:
    """An export of the side's project, queued (made directly: nothing to export yet)."""
    from clearinghouse.annotation.models import AnnotationExport

    project = annotation_of(w, t)
    export = project.exports.first() or AnnotationExport.objects.create(
        project=project, dataset=project.dataset
    )
    return export.pk


def _annotation_create(w: World, t: Target) -> dict:
    """A second project on the actor's own organisation's `messages` dataset (made for both sides)."""
    annotation_of(w, "own"), annotation_of(w, "foreign")
    return {"dataset": "messages", "name": "Second pass", "text_column": "text", "labels": ["ham", "spam"]}


def portal(expect: dict) -> dict:
    """Portal pages send anonymous visitors to the log-in page."""
    return {**expect, "anonymous": 302}


# Routes deliberately outside the matrix, with the reason.
EXEMPT_NAMESPACES = {"admin": "Django's admin: staff-only, checked by test_admin_is_staff_only"}
MATRIX = _matrix()


def _route_names(resolver: URLResolver, namespace: str = "") -> set[str]:
    names: set[str] = set()
    for pattern in resolver.url_patterns:
        if isinstance(pattern, URLResolver):
            inner = f"{namespace}{pattern.namespace}:" if pattern.namespace else namespace
            if pattern.namespace in EXEMPT_NAMESPACES:
                continue
            names |= _route_names(pattern, inner)
        elif isinstance(pattern, URLPattern):
            assert pattern.name, f"route {pattern.pattern} has no name, so it cannot be in the matrix"
            names.add(f"{namespace}{pattern.name}")
    return names


def test_every_route_is_in_the_matrix():
    routes = _route_names(get_resolver())
    missing = routes - MATRIX.keys()
    assert not missing, f"routes without an authorization-matrix entry: {sorted(missing)}"
    assert not MATRIX.keys() - routes, (
        f"matrix entries for routes that do not exist: {sorted(MATRIX.keys() - routes)}"
    )


def _params():
    for name, cases in MATRIX.items():
        for index, case in enumerate(cases):
            for actor in ACTORS:
                for target in ("own", "foreign") if case.object_scoped else ("own",):
                    yield pytest.param(
                        name, index, actor, target, id=f"{name}-{case.method}-{actor}-{target}"
                    )


def _client(world: World, actor: str, api: bool):
    user = world.actor(actor)
    if api:
        return api_client(user)
    client = Client()
    if user is not None:
        client.force_login(user)
    return client


@pytest.fixture
def eager_dp(settings):
    """No worker runs in this test: previews run in-process, releases stay queued (202)."""
    from clearinghouse.celery import app

    settings.QUERY_WAIT_SECONDS = 0
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = False


@pytest.mark.parametrize("name,index,actor,target", list(_params()))
def test_authorization(world, eager_dp, name, index, actor, target):
    case = MATRIX[name][index]
    expected = case.expect[actor]
    if isinstance(expected, tuple):
        expected = expected[0 if target == "own" else 1]
    url = case.url(world, target)
    data = case.data(world, target) if callable(case.data) else case.data
    is_api = url.startswith("/api/")
    client = _client(world, actor, api=is_api)
    multipart = isinstance(data, dict) and "file" in data
    kwargs = {"format": "multipart" if multipart else "json"} if is_api and case.method != "get" else {}
    response = getattr(client, case.method)(url, data, **kwargs)
    assert response.status_code == expected, (
        f"{case.method.upper()} {url} as {actor} on {target} object: {response.status_code}, expected {expected}"
    )
    if is_api and response.status_code >= 400:
        body = response.json()
        assert set(body) >= {"code", "detail"}, body
    if response.status_code == 404 and target == "foreign":
        # A foreign object's data must not leak through the error.
        assert world.b.organisation.contact_email not in response.content.decode()


def test_admin_is_staff_only(world):
    client = Client()
    client.force_login(world.operator)
    assert client.get("/admin/").status_code == 302


# --- One rule, two interfaces -------------------------------------------------------------------------
# Every action that both the API and the portal offer is done through each, by every actor, on an object
# of the analyst's organisation ("own") and of another ("foreign"). The two must agree: refused by both
# (API 401/403/404; portal 403/404 or the log-in page) or let through by both, and then with the same
# state change (the same audit events: every write records one). A pair that drifts fails here, and a
# write added to either interface without a pair fails `test_every_write_is_paired_or_one_sided`.

# + org A's data steward, org C's admin (C holds query grants), a user of no organisation who asked to join A
AGREE_ACTORS = [*ACTORS, "steward", "grantee", "joiner"]


@dataclass
class Ctx:
    world: World
    actor: str
    target: Target
    prepared: dict

    @property
    def side(self):
        return self.world.side(self.target)

    def ds(self) -> list[str]:
        return ds(self.world, self.target)

    def mine(self) -> str:
        """The acting user's own organisation, for pages that act on it without naming it (org-a for
        those who have none: operators and anonymous visitors)."""
        from clearinghouse.organisations.selectors import membership_of

        user = _agree_user(self.world, self.actor)
        membership = membership_of(user=user) if user is not None else None
        return membership.organisation.slug if membership else "org-a"


@dataclass
class Call:
    method: str
    route: str
    args: Callable[[Ctx], list] = lambda c: []
    data: Callable[[Ctx], dict] | dict = field(default_factory=dict)


@dataclass
class Pair:
    api: Call
    portal: Call
    object_scoped: bool = True
    prepare: Callable[[World], dict] | None = None  # objects the calls need, made once per test


def _draft_jobs(*, accepted: bool) -> Callable[[World], dict]:
    """A draft job per side inviting only that side's organisation (accepted by its admin, or not yet
    decided), so participation, scheduling and cancelling can succeed."""

    def prepare(world: World) -> dict:
        from federation.services import job_create, job_participation_decide

        jobs = {}
        for target in ("own", "foreign"):
            side = world.side(target)
            job = job_create(
                actor=world.operator,
                name=f"Draft {side.organisation.slug}",
                text_column="SMS",
                label_column="Label",
                labels=["ham", "spam"],
                participants=[{"organisation": side.organisation.slug}],
                min_clients=1,
            )
            if accepted:
                job_participation_decide(actor=side.admin, job=job, decision="accept")
            jobs[target] = job.pk
        return jobs

    return prepare


def _invitations_to_joiner(world: World) -> dict:
    from clearinghouse.organisations.services import invitation_create

    return {
        target: invitation_create(
            actor=world.side(target).admin,
            organisation=world.side(target).organisation,
            email=world.a.joiner.email,
            role="analyst",
        )[1]
        for target in ("own", "foreign")
    }


def _job(c: Ctx) -> list:
    return [c.prepared[c.target]]


_SQL = "SELECT COUNT(*) FROM survey"
_JOB_API = {
    "name": "Spam",
    "text_column": "SMS",
    "label_column": "Label",
    "labels": ["ham", "spam"],
    "participants": [{"organisation": "org-a"}],
    "min_clients": 1,
}
_JOB_FORM = {
    "name": "Spam",
    "base_model": "minilm-l6",
    "text_column": "SMS",
    "label_column": "Label",
    "labels": "ham, spam",
    "strategy": "fedavg",
    "num_rounds": 3,
    "min_clients": 1,
    "participants": ["org-a"],
    "settings": "",
}
_APPLY = {"name": "Newcomer", "slug": "newcomer", "country": "DE", "contact_email": "x@newcomer.example.org"}


def _upload(c: Ctx) -> dict:
    return {"file": io.BytesIO(b"age,group\n5,a\n")}


def _steward_membership(c: Ctx) -> list:
    return [c.side.steward.membership.pk]


PAIRS: dict[str, Pair] = {
    # Datasets
    "dataset register": Pair(
        Call("post", "api:datasets", data={"name": "New", "slug": "new", "schema": SMALL_SCHEMA}),
        Call(
            "post", "portal:datasets", data={"name": "New", "slug": "new", "schema": json.dumps(SMALL_SCHEMA)}
        ),
        object_scoped=False,
    ),
    "dataset read": Pair(Call("get", "api:dataset", Ctx.ds), Call("get", "portal:dataset", Ctx.ds)),
    "dataset schema": Pair(
        Call("patch", "api:dataset", Ctx.ds, {"schema": SMALL_SCHEMA}),
        Call("post", "portal:dataset_schema", Ctx.ds, {"schema": json.dumps(SMALL_SCHEMA)}),
    ),
    "dataset upload": Pair(
        Call("post", "api:dataset_versions", Ctx.ds, _upload),
        Call("post", "portal:dataset_upload", Ctx.ds, _upload),
    ),
    "version read": Pair(
        Call("get", "api:dataset_version", lambda c: [*c.ds(), 1]),
        Call("get", "portal:dataset_version", lambda c: [*c.ds(), 1]),
    ),
    # The version is ready: whoever gets past authorization meets the same conflict.
    "version retry": Pair(
        Call("post", "api:dataset_version_retry", lambda c: [*c.ds(), 1]),
        Call("post", "portal:dataset_version_retry", lambda c: [*c.ds(), 1]),
    ),
    "grant create": Pair(
        Call("post", "api:dataset_grants", Ctx.ds, {"organisation": "org-c", "purpose": "training"}),
        Call("post", "portal:dataset_grant", Ctx.ds, {"organisation": "org-c", "purpose": "training"}),
    ),
    "grant revoke": Pair(
        Call("post", "api:dataset_grant_revoke", lambda c: [c.side.grant_id]),
        Call("post", "portal:dataset_grant_revoke", lambda c: [c.side.grant_id]),
    ),
    "agreement publish": Pair(
        Call("post", "api:dataset_agreement", Ctx.ds, {"text": "v2"}),
        Call("post", "portal:dataset_agreement", Ctx.ds, {"text": "v2"}),
    ),
    "agreement accept": Pair(
        Call("post", "api:dataset_agreement_accept", Ctx.ds, {"version": 1}),
        Call("post", "portal:dataset_agreement", Ctx.ds, {"action": "accept", "version": "1"}),
    ),
    # Budgets and queries
    "budget read": Pair(
        Call("get", "api:dataset_budget", Ctx.ds), Call("get", "portal:budget_dashboard", Ctx.ds)
    ),
    "budget set": Pair(
        Call("put", "api:dataset_budget", Ctx.ds, {"measure": "pure", "total": 20}),
        Call("post", "portal:budget_dashboard", Ctx.ds, {"measure": "pure", "total": "20"}),
    ),
    "budget allocate": Pair(
        Call("put", "api:dataset_budget_allocation", lambda c: [*c.ds(), "org-c"], {"amount": 2}),
        Call("post", "portal:budget_allocation", lambda c: [*c.ds(), "org-c"], {"amount": "2"}),
    ),
    "query list": Pair(Call("get", "api:queries", Ctx.ds), Call("get", "portal:query_console", Ctx.ds)),
    "query submit": Pair(
        Call("post", "api:queries", Ctx.ds, {"sql": _SQL, "privacy": {"epsilon": 0.1}}),
        Call("post", "portal:query_console", Ctx.ds, {"sql": _SQL, "epsilon": "0.1", "action": "release"}),
    ),
    "query preview": Pair(
        Call("post", "api:query_preview", Ctx.ds, {"sql": _SQL, "privacy": {"epsilon": 0.1}}),
        Call("post", "portal:query_console", Ctx.ds, {"sql": _SQL, "epsilon": "0.1", "action": "preview"}),
    ),
    "query plan": Pair(
        Call("post", "api:query_plan", Ctx.ds, {"sql": _SQL, "target_half_width": 50}),
        Call("post", "portal:query_console", Ctx.ds, {"sql": _SQL, "target": "50", "action": "plan"}),
    ),
    # Federated jobs
    "job create": Pair(
        Call("post", "api:federated_jobs", data=_JOB_API),
        Call("post", "portal:federated_job_new", data=_JOB_FORM),
        object_scoped=False,
    ),
    "job read": Pair(
        Call("get", "api:federated_job", lambda c: [c.side.job_id]),
        Call("get", "portal:federated_job", lambda c: [c.side.job_id]),
    ),
    "job participation": Pair(
        Call("post", "api:federated_job_participation", _job, {"decision": "accept"}),
        Call("post", "portal:federated_job_participation", _job, {"decision": "accept"}),
        prepare=_draft_jobs(accepted=False),
    ),
    "job schedule": Pair(
        Call("post", "api:federated_job_schedule", _job),
        Call("post", "portal:federated_job_schedule", _job),
        prepare=_draft_jobs(accepted=True),
    ),
    "job cancel": Pair(
        Call("post", "api:federated_job_cancel", _job, {"reason": "no longer needed"}),
        Call("post", "portal:federated_job_cancel", _job, {"reason": "no longer needed"}),
        prepare=_draft_jobs(accepted=True),
    ),
    "job publish": Pair(
        Call("post", "api:federated_job_publish", lambda c: [c.side.job_id]),
        Call("post", "portal:federated_job_publish", lambda c: [c.side.job_id]),
    ),
    "job model": Pair(
        Call("get", "api:federated_job_artifact", lambda c: [c.side.job_id]),
        Call("get", "portal:federated_job_model", lambda c: [c.side.job_id]),
    ),
    "supernode key add": Pair(
        Call(
            "post",
            "api:supernode_keys",
            lambda c: [c.mine()],
            lambda c: {"name": "gpu-2", "public_key": c.prepared["public_key"]},
        ),
        Call(
            "post",
            "portal:supernode_keys",
            data=lambda c: {"name": "gpu-2", "public_key": c.prepared["public_key"]},
        ),
        object_scoped=False,
        prepare=lambda w: {"public_key": fresh_public_key()},
    ),
    "supernode key revoke": Pair(
        Call("post", "api:supernode_key_revoke", lambda c: [c.side.node_key_id]),
        Call("post", "portal:supernode_key_revoke", lambda c: [c.side.node_key_id]),
    ),
    # Organisations, members, invitations, join requests
    "organisation apply": Pair(
        Call("post", "api:organisations", data=_APPLY),
        Call("post", "portal:organisation_apply", data=_APPLY),
        object_scoped=False,
    ),
    "organisation suspend": Pair(
        Call(
            "post",
            "api:organisation_decide",
            lambda c: [c.side.organisation.slug, "suspend"],
            {"reason": "audit"},
        ),
        Call(
            "post",
            "portal:operator_organisation_decide",
            lambda c: [c.side.organisation.slug, "suspend"],
            {"reason": "audit"},
        ),
    ),
    "member role": Pair(
        Call("patch", "api:membership", _steward_membership, {"role": "analyst"}),
        Call("post", "portal:member_role", _steward_membership, {"role": "analyst"}),
    ),
    "member remove": Pair(
        Call("delete", "api:membership", _steward_membership),
        Call("post", "portal:member_remove", _steward_membership),
    ),
    "invitation create": Pair(
        Call(
            "post", "api:invitations", lambda c: [c.mine()], {"email": "new@example.org", "role": "analyst"}
        ),
        Call("post", "portal:invitation_create", data={"email": "new@example.org", "role": "analyst"}),
        object_scoped=False,
    ),
    "invitation revoke": Pair(
        Call("post", "api:invitation_revoke", lambda c: [c.side.invitation.pk]),
        Call("post", "portal:invitation_revoke", lambda c: [c.side.invitation.pk]),
    ),
    # Invitations to the joiner's address: only they may accept one, through either interface.
    "invitation accept": Pair(
        Call("post", "api:invitation_accept", data=lambda c: {"token": c.prepared[c.target]}),
        Call("post", "portal:invitation_accept", lambda c: [c.prepared[c.target]]),
        prepare=_invitations_to_joiner,
    ),
    "join request create": Pair(
        Call("post", "api:join_requests", data={"organisation": "org-a", "message": ""}),
        Call("post", "portal:organisation_join", data={"organisation": "org-a", "message": ""}),
        object_scoped=False,
    ),
    "join request approve": Pair(
        Call(
            "post",
            "api:join_request_decide",
            lambda c: [c.side.join_request.pk, "approve"],
            {"role": "analyst"},
        ),
        Call(
            "post",
            "portal:join_request_decide",
            lambda c: [c.side.join_request.pk, "approve"],
            {"role": "analyst"},
        ),
    ),
    "join request reject": Pair(
        Call(
            "post",
            "api:join_request_decide",
            lambda c: [c.side.join_request.pk, "reject"],
            {"reason": "unknown"},
        ),
        Call(
            "post",
            "portal:join_request_decide",
            lambda c: [c.side.join_request.pk, "reject"],
            {"reason": "unknown"},
        ),
    ),
    "join request withdraw": Pair(
        Call("post", "api:join_request_decide", lambda c: [c.side.join_request.pk, "withdraw"]),
        Call("post", "portal:join_request_withdraw", lambda c: [c.side.join_request.pk]),
    ),
    # Tokens
    "token create": Pair(
        Call("post", "api:tokens", data={"name": "cli"}),
        Call("post", "portal:tokens", data={"name": "cli", "expires_in_days": 30}),
        object_scoped=False,
    ),
    "token revoke": Pair(
        Call("post", "api:token_revoke", lambda c: [c.side.admin_token_id]),
        Call("post", "portal:token_revoke", lambda c: [c.side.admin_token_id]),
    ),
}


def _access_requests():
    from clearinghouse.datasets.models import AccessRequest

    return AccessRequest.objects


def _listed(world: World) -> dict:
    from clearinghouse.datasets.services import dataset_listing_set

    for side in (world.a, world.b):
        dataset_listing_set(actor=side.steward, dataset=side.dataset, listed=True)
    return {}


def _requests_by_c(world: World) -> dict:
    from clearinghouse.accounts.models import User

    grantee = User.objects.get(username="admin_org-c").membership.organisation
    return {
        target: _access_requests()
        .create(dataset=world.side(target).dataset, organisation=grantee, purpose="training", reason="pairs")
        .pk
        for target in ("own", "foreign")
    }


def _requests_by_side(world: World) -> dict:
    return {
        target: _access_requests()
        .create(
            dataset=world.side("foreign" if target == "own" else "own").dataset,
            organisation=world.side(target).organisation,
            purpose="training",
            reason="pairs",
        )
        .pk
        for target in ("own", "foreign")
    }


def _prepared(c: Ctx) -> list:
    return [c.prepared[c.target]]


CATALOGUE_PAIRS: dict[str, Pair] = {  # the catalogue: listing and access requests
    "dataset listing": Pair(
        Call("put", "api:dataset_listing", Ctx.ds, {"listed": True}),
        Call("post", "portal:dataset_listing", Ctx.ds, {"listed": "true"}),
    ),
    "access request create": Pair(
        Call("post", "api:dataset_access_requests", Ctx.ds, {"purpose": "training", "reason": "pairs"}),
        Call("post", "portal:dataset_access_request", Ctx.ds, {"purpose": "training", "reason": "pairs"}),
        prepare=_listed,
    ),
    "access request approve": Pair(
        Call("post", "api:access_request_decide", _prepared, {"decision": "approve", "note": "ok"}),
        Call("post", "portal:access_request_decide", _prepared, {"decision": "approve", "note": "ok"}),
        prepare=_requests_by_c,
    ),
    "access request decline": Pair(
        Call("post", "api:access_request_decide", _prepared, {"decision": "decline"}),
        Call("post", "portal:access_request_decide", _prepared, {"decision": "decline"}),
        prepare=_requests_by_c,
    ),
    "access request withdraw": Pair(
        Call("post", "api:access_request_withdraw", _prepared),
        Call("post", "portal:access_request_withdraw", _prepared),
        prepare=_requests_by_side,
    ),
}
PAIRS.update(CATALOGUE_PAIRS)


def _annotation_projects(world: World) -> dict:
    """Both sides' annotation projects (`annotation_of`), and a `messages` dataset of org C's, so
    that its admin (the `grantee` actor) can create a project through either interface too."""
    from clearinghouse.accounts.models import User
    from tests.annotation.test_api import make_text_dataset

    annotation_of(world, "own"), annotation_of(world, "foreign")
    make_text_dataset(steward=User.objects.get(username="admin_org-c"))
    return {}


def _annotation(c: Ctx) -> list:
    return [_ap(c.world, c.target)]


def _annotation_item(c: Ctx) -> list:
    return [_ap(c.world, c.target), _item(c.world, c.target)]


_ANNOTATION_NEW = {"name": "Second pass", "dataset": "messages", "text_column": "text"}
ANNOTATION_PAIRS: dict[str, Pair] = {  # annotation projects (API: clearinghouse.annotation.apis)
    "annotation project create": Pair(
        Call("post", "api:annotation_projects", data={**_ANNOTATION_NEW, "labels": ["ham", "spam"]}),
        Call(
            "post",
            "portal:annotation_project_new",
            data={**_ANNOTATION_NEW, "labels": "ham\nspam", "overlap": "10"},
        ),
        object_scoped=False,
        prepare=_annotation_projects,
    ),
    "annotation project edit": Pair(
        Call("patch", "api:annotation_project", _annotation, {"instructions": "Advertising is spam."}),
        Call(
            "post",
            "portal:annotation_project_edit",
            _annotation,
            {"edit-instructions": "Advertising is spam."},
        ),
        prepare=_annotation_projects,
    ),
    "annotation target": Pair(
        Call(
            "patch",
            "api:annotation_project",
            _annotation,
            {"target_precision": 0.98, "confidence_level": 0.9},
        ),
        Call(
            "post",
            "portal:annotation_automatic",
            _annotation,
            {"automatic-target_precision": "98", "automatic-confidence_level": "90"},
        ),
        prepare=_annotation_projects,
    ),
    "annotation archive": Pair(
        Call("post", "api:annotation_project_archive", _annotation),
        Call("post", "portal:annotation_archive", _annotation),
        prepare=_annotation_projects,
    ),
    "annotation label": Pair(
        Call("post", "api:annotation_item_label", _annotation_item, {"label": "spam"}),
        Call("post", "portal:annotation_item_label", _annotation_item, {"label": "spam"}),
        prepare=_annotation_projects,
    ),
    "annotation skip": Pair(
        Call("post", "api:annotation_item_skip", _annotation_item),
        Call("post", "portal:annotation_item_skip", _annotation_item),
        prepare=_annotation_projects,
    ),
    "annotation undo": Pair(
        Call("post", "api:annotation_undo", _annotation),
        Call("post", "portal:annotation_undo", _annotation),
        prepare=_annotation_projects,
    ),
    "annotation model run": Pair(
        Call("post", "api:annotation_model_runs", _annotation, {"kind": "propose"}),
        Call("post", "portal:annotation_model_runs", _annotation, {"kind": "propose"}),
        prepare=_annotation_projects,
    ),
    "annotation automatic apply": Pair(
        Call(
            "post",
            "api:annotation_automatic",
            _annotation,
            lambda c: {"run": _annotation_run(c.world, c.target)},
        ),
        Call(
            "post",
            "portal:annotation_automatic_apply",
            _annotation,
            lambda c: {"run": _annotation_run(c.world, c.target)},
        ),
        prepare=_annotation_projects,
    ),
    "annotation export": Pair(
        Call("post", "api:annotation_exports", _annotation, {"name": "Spam labelled"}),
        Call(
            "post",
            "portal:annotation_exports",
            _annotation,
            {
                "export-name": "Spam labelled",
                "export-drop_conflicts": "on",
                "export-include_model_labels": "on",
            },
        ),
        prepare=_annotation_projects,
    ),
}
PAIRS.update(ANNOTATION_PAIRS)

# Writes that exist in one interface only, with the reason; every other write must be in PAIRS.
API_ONLY = {
    ("api:organisation", "patch"): "an organisation's details are changed through the API only",
    (
        "api:federated_job_events",
        "post",
    ): "the ServerApp's callback, authenticated by the job's token: no user's action",
}
PORTAL_ONLY = {
    (
        "portal:logout",
        "post",
    ): "ends the portal session (API tokens are revoked instead: the `token revoke` pair)",
}


def _agree_user(world: World, actor: str):
    if actor == "steward":
        return world.a.steward
    if actor == "joiner":
        return world.a.joiner
    if actor == "grantee":
        from clearinghouse.accounts.models import User

        return User.objects.get(username="admin_org-c")
    return world.actor(actor)


_remote_addresses = iter(f"10.77.{n // 250}.{n % 250 + 1}" for n in range(1_000_000))


def _perform(ctx: Ctx, call: Call, *, api: bool) -> tuple[bool, list[str], str]:
    """Does `call` as the context's actor inside a savepoint that is rolled back afterwards; returns
    (refused, the audit actions it recorded, a description)."""
    from django.db import transaction

    from clearinghouse.audit.models import AuditEvent

    user = _agree_user(ctx.world, ctx.actor)
    url = reverse(call.route, args=call.args(ctx))
    data = call.data(ctx) if callable(call.data) else dict(call.data)
    with transaction.atomic():
        if api:
            # Anonymous requests come from addresses of their own, so the anonymous rate limit (per
            # address) cannot answer 429 for them in a long run.
            client = api_client(user) if user is not None else api_client(None)
            if user is None:
                client.defaults["REMOTE_ADDR"] = next(_remote_addresses)
        else:
            client = Client()
            if user is not None:
                client.force_login(user)
        last = AuditEvent.objects.order_by("-pk").values_list("pk", flat=True).first() or 0
        kwargs = {}
        if api and call.method != "get":
            kwargs["format"] = "multipart" if "file" in data else "json"
        response = getattr(client, call.method)(url, data, **kwargs)
        actions = sorted(AuditEvent.objects.filter(pk__gt=last).values_list("action", flat=True))
        transaction.set_rollback(True)
    status = response.status_code
    if api:
        refused = status in {401, 403, 404}
    else:
        login = reverse("portal:login")
        refused = status in {403, 404} or (
            status == 302 and response.headers.get("Location", "").startswith(login)
        )
    return refused, actions, f"{call.method.upper()} {url} → {status}"


def _agreement_params():
    for name in PAIRS:
        yield pytest.param(name, id=name.replace(" ", "-"))


@pytest.mark.parametrize("name", list(_agreement_params()))
def test_api_and_portal_agree(world, eager_dp, name):
    pair = PAIRS[name]
    prepared = pair.prepare(world) if pair.prepare else {}
    drifts, allowed = [], 0
    for actor in AGREE_ACTORS:
        for target in ("own", "foreign") if pair.object_scoped else ("own",):
            ctx = Ctx(world, actor, target, prepared)
            api = _perform(ctx, pair.api, api=True)
            portal_ = _perform(ctx, pair.portal, api=False)
            if api[:2] != portal_[:2]:
                drifts.append(
                    f"{actor} on {target}: API {api[2]} {'refused' if api[0] else 'let through'}, "
                    f"audit {api[1]}; portal {portal_[2]} {'refused' if portal_[0] else 'let through'}, "
                    f"audit {portal_[1]}"
                )
            allowed += not api[0]
    assert not drifts, f"{name}: the API and the portal disagree:\n" + "\n".join(drifts)
    assert allowed, f"{name}: nobody gets past authorization, so the pair checks nothing"


def test_every_write_is_paired_or_one_sided():
    writes = {
        (route, case.method) for route, cases in MATRIX.items() for case in cases if case.method != "get"
    }
    paired = {(call.route, call.method) for pair in PAIRS.values() for call in (pair.api, pair.portal)}
    assert paired <= {(route, case.method) for route, cases in MATRIX.items() for case in cases}, (
        "a pair names a route or method the matrix does not have"
    )
    unpaired = writes - paired - API_ONLY.keys() - PORTAL_ONLY.keys()
    assert not unpaired, (
        f"writes in one interface only, neither paired nor declared one-sided: {sorted(unpaired)}"
    )
    assert not (API_ONLY.keys() | PORTAL_ONLY.keys()) & paired, "a pair is also declared one-sided"
