"""The portal's dataset pages. `clearinghouse.portal.urls` includes them, by name, into the `portal`
namespace (`portal:dataset`, ...), so that the portal imports none of the apps' views."""

from django.urls import path

from . import views

urlpatterns = [
    path("datasets/", views.dataset_list_view, name="datasets"),
    path("datasets/<slug:organisation>/<slug:slug>/", views.dataset_detail_view, name="dataset"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/schema/", views.dataset_schema_view, name="dataset_schema"
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
]
