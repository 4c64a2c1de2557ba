"""Every endpoint of /api/v1/, in one list so that the authorization matrix test sees them all."""

from django.urls import path, register_converter

from clearinghouse.accounts import apis as accounts
from clearinghouse.annotation import apis as annotation
from clearinghouse.audit import apis as audit
from clearinghouse.datasets import apis as datasets
from clearinghouse.organisations import apis as organisations
from clearinghouse.queries import apis as queries
from federation import apis as federation

app_name = "api"


class _OneOf:
    """A path segment that is one word of a fixed set; the OpenAPI document shows it as that enum
    (`openapi`, read by clearinghouse.core.schema), not as a regular expression."""

    words: tuple[str, ...] = ()

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        if value not in self.words:
            raise ValueError(value)
        return value


def _one_of(name: str, words: tuple[str, ...]) -> None:
    register_converter(
        type(
            f"{name}_converter",
            (_OneOf,),
            {"words": words, "regex": "|".join(words), "openapi": {"type": "string", "enum": list(words)}},
        ),
        name,
    )


_one_of("organisation_action", tuple(organisations.OrganisationDecisionApi.ACTIONS))
_one_of("join_request_action", ("approve", "reject", "withdraw"))

urlpatterns = [
    path("me", accounts.MeApi.as_view(), name="me"),
    path("tokens", accounts.TokenListCreateApi.as_view(), name="tokens"),
    path("tokens/<int:token_id>/revoke", accounts.TokenRevokeApi.as_view(), name="token_revoke"),
    path("organisations", organisations.OrganisationListApplyApi.as_view(), name="organisations"),
    path(
        "organisations/directory",
        organisations.OrganisationDirectoryApi.as_view(),
        name="organisation_directory",
    ),
    path("organisations/<slug:slug>", organisations.OrganisationDetailApi.as_view(), name="organisation"),
    path(
        "organisations/<slug:slug>/<organisation_action:action>",
        organisations.OrganisationDecisionApi.as_view(),
        name="organisation_decide",
    ),
    path(
        "organisations/<slug:slug>/memberships", organisations.MembershipListApi.as_view(), name="memberships"
    ),
    path(
        "organisations/<slug:slug>/invitations",
        organisations.InvitationListCreateApi.as_view(),
        name="invitations",
    ),
    path("memberships/<int:membership_id>", organisations.MembershipDetailApi.as_view(), name="membership"),
    path(
        "invitations/<int:invitation_id>/revoke",
        organisations.InvitationRevokeApi.as_view(),
        name="invitation_revoke",
    ),
    path("invitations/accept", organisations.InvitationAcceptApi.as_view(), name="invitation_accept"),
    path("join-requests", organisations.JoinRequestListCreateApi.as_view(), name="join_requests"),
    path(
        "join-requests/<int:join_request_id>/<join_request_action:action>",
        organisations.JoinRequestDecisionApi.as_view(),
        name="join_request_decide",
    ),
    path("audit-events", audit.AuditEventListApi.as_view(), name="audit_events"),
    path("operator/overview", organisations.OperatorOverviewApi.as_view(), name="operator_overview"),
    path("datasets", datasets.DatasetListRegisterApi.as_view(), name="datasets"),
    path("datasets/<slug:organisation>/<slug:slug>", datasets.DatasetDetailApi.as_view(), name="dataset"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions",
        datasets.VersionListUploadApi.as_view(),
        name="dataset_versions",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions/<int:number>",
        datasets.VersionDetailApi.as_view(),
        name="dataset_version",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions/<int:number>/retry",
        datasets.VersionRetryApi.as_view(),
        name="dataset_version_retry",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/grants",
        datasets.GrantListCreateApi.as_view(),
        name="dataset_grants",
    ),
    path(
        "dataset-grants/<int:grant_id>/revoke", datasets.GrantRevokeApi.as_view(), name="dataset_grant_revoke"
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/agreement",
        datasets.AgreementApi.as_view(),
        name="dataset_agreement",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/budget", queries.BudgetApi.as_view(), name="dataset_budget"
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/budget/ledger",
        queries.BudgetLedgerApi.as_view(),
        name="dataset_budget_ledger",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/budget/allocations/<slug:grantee>",
        queries.AllocationApi.as_view(),
        name="dataset_budget_allocation",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/queries",
        queries.QueryListSubmitApi.as_view(),
        name="queries",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/queries/preview",
        queries.QueryPreviewApi.as_view(),
        name="query_preview",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/queries/plan",
        queries.QueryPlanApi.as_view(),
        name="query_plan",
    ),
    path("queries/<int:query_id>", queries.QueryDetailApi.as_view(), name="query"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/agreement/accept",
        datasets.AgreementAcceptApi.as_view(),
        name="dataset_agreement_accept",
    ),
    path("catalogue", datasets.CatalogueApi.as_view(), name="catalogue"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/listing",
        datasets.DatasetListingApi.as_view(),
        name="dataset_listing",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/access-requests",
        datasets.DatasetAccessRequestListCreateApi.as_view(),
        name="dataset_access_requests",
    ),
    path("access-requests", datasets.AccessRequestListApi.as_view(), name="access_requests"),
    path(
        "access-requests/<int:request_id>/decide",
        datasets.AccessRequestDecideApi.as_view(),
        name="access_request_decide",
    ),
    path(
        "access-requests/<int:request_id>/withdraw",
        datasets.AccessRequestWithdrawApi.as_view(),
        name="access_request_withdraw",
    ),
    path("federated-jobs", federation.JobListCreateApi.as_view(), name="federated_jobs"),
    path("federated-jobs/<int:job_id>", federation.JobDetailApi.as_view(), name="federated_job"),
    path(
        "federated-jobs/<int:job_id>/participation",
        federation.JobParticipationApi.as_view(),
        name="federated_job_participation",
    ),
    path(
        "federated-jobs/<int:job_id>/schedule",
        federation.JobScheduleApi.as_view(),
        name="federated_job_schedule",
    ),
    path(
        "federated-jobs/<int:job_id>/cancel", federation.JobCancelApi.as_view(), name="federated_job_cancel"
    ),
    path(
        "federated-jobs/<int:job_id>/publish",
        federation.JobPublishApi.as_view(),
        name="federated_job_publish",
    ),
    path(
        "federated-jobs/<int:job_id>/rounds", federation.JobRoundsApi.as_view(), name="federated_job_rounds"
    ),
    path("models", federation.PublishedModelListApi.as_view(), name="published_models"),
    path(
        "models/<int:model_id>/download",
        federation.PublishedModelDownloadApi.as_view(),
        name="published_model_download",
    ),
    path(
        "federated-jobs/<int:job_id>/artifact",
        federation.JobArtifactApi.as_view(),
        name="federated_job_artifact",
    ),
    path("federated-jobs/<int:job_id>/events", federation.JobEventApi.as_view(), name="federated_job_events"),
    path(
        "federated-jobs/<int:job_id>/privacy",
        federation.JobPrivacyApi.as_view(),
        name="federated_job_privacy",
    ),
    path(
        "organisations/<slug:slug>/supernode-keys",
        federation.SuperNodeKeyListCreateApi.as_view(),
        name="supernode_keys",
    ),
    path(
        "supernode-keys/<int:key_id>/revoke",
        federation.SuperNodeKeyRevokeApi.as_view(),
        name="supernode_key_revoke",
    ),
    # Annotation projects (clearinghouse.annotation)
    path("annotation/projects", annotation.ProjectListCreateApi.as_view(), name="annotation_projects"),
    path(
        "annotation/projects/<int:project_id>",
        annotation.ProjectDetailApi.as_view(),
        name="annotation_project",
    ),
    path(
        "annotation/projects/<int:project_id>/archive",
        annotation.ProjectArchiveApi.as_view(),
        name="annotation_project_archive",
    ),
    path("annotation/projects/<int:project_id>/next", annotation.NextApi.as_view(), name="annotation_next"),
    path(
        "annotation/projects/<int:project_id>/items", annotation.ItemsApi.as_view(), name="annotation_items"
    ),
    path(
        "annotation/projects/<int:project_id>/items/<int:item_id>/label",
        annotation.ItemLabelApi.as_view(),
        name="annotation_item_label",
    ),
    path(
        "annotation/projects/<int:project_id>/items/<int:item_id>/skip",
        annotation.ItemSkipApi.as_view(),
        name="annotation_item_skip",
    ),
    path("annotation/projects/<int:project_id>/undo", annotation.UndoApi.as_view(), name="annotation_undo"),
    path(
        "annotation/projects/<int:project_id>/model-runs",
        annotation.ModelRunListStartApi.as_view(),
        name="annotation_model_runs",
    ),
    path(
        "annotation/projects/<int:project_id>/model-runs/<int:run_id>",
        annotation.ModelRunDetailApi.as_view(),
        name="annotation_model_run",
    ),
    path(
        "annotation/projects/<int:project_id>/automatic",
        annotation.AutomaticApi.as_view(),
        name="annotation_automatic",
    ),
    path(
        "annotation/projects/<int:project_id>/duplicates",
        annotation.DuplicatesApi.as_view(),
        name="annotation_duplicates",
    ),
    path(
        "annotation/projects/<int:project_id>/review",
        annotation.ReviewApi.as_view(),
        name="annotation_review",
    ),
    path(
        "annotation/projects/<int:project_id>/exports",
        annotation.ExportListStartApi.as_view(),
        name="annotation_exports",
    ),
    path(
        "annotation/projects/<int:project_id>/exports/<int:export_id>",
        annotation.ExportDetailApi.as_view(),
        name="annotation_export",
    ),
]
