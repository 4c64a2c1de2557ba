"""The portal's dataset pages. `clearinghouse.portal.urls` includes them, by name, into the `portal`
namespace (`portal:dataset`, ...), so that the portal imports none of the apps' views."""

from django.urls import path

from . import views, views_catalogue

urlpatterns = [
    path("datasets/", views.dataset_list_view, name="datasets"),
    path("datasets/<slug:organisation>/<slug:slug>/", views.dataset_detail_view, name="dataset"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/schema/", views.dataset_schema_view, name="dataset_schema"
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/schema/edit/",
        views.dataset_schema_edit_view,
        name="dataset_schema_edit",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/upload/", views.dataset_upload_view, name="dataset_upload"
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions/<int:number>/",
        views.dataset_version_view,
        name="dataset_version",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions/<int:number>/quality.json",
        views.dataset_version_quality_view,
        name="dataset_version_quality",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/versions/<int:number>/retry/",
        views.dataset_version_retry_view,
        name="dataset_version_retry",
    ),
    path("datasets/<slug:organisation>/<slug:slug>/grants/", views.dataset_grant_view, name="dataset_grant"),
    path(
        "dataset-grants/<int:grant_id>/revoke/", views.dataset_grant_revoke_view, name="dataset_grant_revoke"
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/agreement/",
        views.dataset_agreement_view,
        name="dataset_agreement",
    ),
    # The catalogue and access requests (views_catalogue).
    path("catalogue/", views_catalogue.catalogue_view, name="catalogue"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/access-requests/",
        views_catalogue.dataset_access_request_view,
        name="dataset_access_request",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/listing/",
        views_catalogue.dataset_listing_view,
        name="dataset_listing",
    ),
    path("access-requests/", views_catalogue.access_requests_view, name="access_requests"),
    path(
        "access-requests/<int:request_id>/decide/",
        views_catalogue.access_request_decide_view,
        name="access_request_decide",
    ),
    path(
        "access-requests/<int:request_id>/withdraw/",
        views_catalogue.access_request_withdraw_view,
        name="access_request_withdraw",
    ),
]
