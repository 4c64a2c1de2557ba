from django.contrib.auth import views as auth_views
from django.urls import include, path, re_path

from clearinghouse.organisations.selectors import ORGANISATION_DECISIONS

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
    path("tokens/", views.tokens_view, name="tokens"),
    path("tokens/<int:token_id>/revoke/", views.token_revoke_view, name="token_revoke"),
    path("operator/", views.operator_overview, name="operator_overview"),
    path("operator/organisations/", views.operator_organisations, name="operator_organisations"),
    path(
        "operator/organisations/<slug:slug>/",
        views.operator_organisation_detail,
        name="operator_organisation",
    ),
    re_path(
        rf"^operator/organisations/(?P<slug>[-a-z0-9]+)/(?P<action>{'|'.join(ORGANISATION_DECISIONS)})/$",
        views.operator_organisation_decide,
        name="operator_organisation_decide",
    ),
    path("audit/", views.audit_view, name="audit"),
    # The apps' pages, in this namespace (`portal:dataset`, ...): the portal imports none of their views.
    path("", include("clearinghouse.datasets.urls")),
    path("", include("clearinghouse.queries.urls")),
    path("", include("federation.urls")),
    path("", include("clearinghouse.annotation.urls")),
]
