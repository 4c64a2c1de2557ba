from django.contrib.auth import views as auth_views
from django.urls import path, re_path

from clearinghouse.datasets import views as datasets
from clearinghouse.queries import views as queries
from federation import views as federation

from . import views

app_name = "portal"

urlpatterns = [
    path("", views.home, name="home"),
    path("signup/", views.signup, name="signup"),
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="portal/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("dashboard/", views.dashboard, name="dashboard"),
    path("organisations/apply/", views.organisation_apply_view, name="organisation_apply"),
    path("organisations/join/", views.organisation_join, name="organisation_join"),
    path(
        "join-requests/<int:join_request_id>/withdraw/",
        views.join_request_withdraw_view,
        name="join_request_withdraw",
    ),
    re_path(
        r"^join-requests/(?P<join_request_id>[0-9]+)/(?P<action>approve|reject)/$",
        views.join_request_decide_view,
        name="join_request_decide",
    ),
    path("invitations/<str:token>/", views.invitation_accept_view, name="invitation_accept"),
    path("organisation/", views.organisation_view, name="organisation"),
    path("organisation/members/<int:membership_id>/role/", views.member_role_view, name="member_role"),
    path("organisation/members/<int:membership_id>/remove/", views.member_remove_view, name="member_remove"),
    path("organisation/invitations/", views.invitation_create_view, name="invitation_create"),
    path(
        "organisation/invitations/<int:invitation_id>/revoke/",
        views.invitation_revoke_view,
        name="invitation_revoke",
    ),
    path("organisation/supernode-keys/", federation.supernode_keys_view, name="supernode_keys"),
    path(
        "organisation/supernode-keys/<int:key_id>/revoke/",
        federation.supernode_key_revoke_view,
        name="supernode_key_revoke",
    ),
    path("tokens/", views.tokens_view, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke_view, name="token_revoke"),
    path("operator/organisations/", views.operator_organisations, name="operator_organisations"),
    path(
        "operator/organisations/<slug:slug>/",
        views.operator_organisation_detail,
        name="operator_organisation",
    ),
    re_path(
        r"^operator/organisations/(?P<slug>[-a-z0-9]+)/(?P<action>approve|reject|suspend|reinstate)/$",
        views.operator_organisation_decide,
        name="operator_organisation_decide",
    ),
    path("audit/", views.audit_view, name="audit"),
    path("datasets/", datasets.dataset_list_view, name="datasets"),
    path("datasets/<slug:organisation>/<slug:slug>/", datasets.dataset_detail_view, name="dataset"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/schema/",
        datasets.dataset_schema_view,
        name="dataset_schema",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/upload/",
        datasets.dataset_upload_view,
        name="dataset_upload",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions/<int:number>/",
        datasets.dataset_version_view,
        name="dataset_version",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions/<int:number>/retry/",
        datasets.dataset_version_retry_view,
        name="dataset_version_retry",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/grants/", datasets.dataset_grant_view, name="dataset_grant"
    ),
    path(
        "dataset-grants/<int:grant_id>/revoke/",
        datasets.dataset_grant_revoke_view,
        name="dataset_grant_revoke",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/agreement/",
        datasets.dataset_agreement_view,
        name="dataset_agreement",
    ),
    path("datasets/<slug:organisation>/<slug:slug>/console/", queries.query_console, name="query_console"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/budget/", queries.budget_dashboard, name="budget_dashboard"
    ),
    path("federation/jobs/", federation.job_list_view, name="federated_jobs"),
    path("federation/jobs/new/", federation.job_new_view, name="federated_job_new"),
    path("federation/jobs/<int:job_id>/", federation.job_detail_view, name="federated_job"),
    path(
        "federation/jobs/<int:job_id>/participation/",
        federation.job_participation_view,
        name="federated_job_participation",
    ),
    path(
        "federation/jobs/<int:job_id>/schedule/", federation.job_schedule_view, name="federated_job_schedule"
    ),
    path("federation/jobs/<int:job_id>/cancel/", federation.job_cancel_view, name="federated_job_cancel"),
    path("federation/jobs/<int:job_id>/model/", federation.job_model_view, name="federated_job_model"),
]
