"""The portal's federation pages (jobs, participation, the model, SuperNode keys).
`clearinghouse.portal.urls` includes them, by name, into the `portal` namespace, so that the portal
imports none of the apps' views."""

from django.urls import path

from . import views

urlpatterns = [
    path("organisation/supernode-keys/", views.supernode_keys_view, name="supernode_keys"),
    path(
        "organisation/supernode-keys/<int:key_id>/revoke/",
        views.supernode_key_revoke_view,
        name="supernode_key_revoke",
    ),
    path("federation/jobs/", views.job_list_view, name="federated_jobs"),
    path("federation/jobs/new/", views.job_new_view, name="federated_job_new"),
    path("federation/jobs/<int:job_id>/", views.job_detail_view, name="federated_job"),
    path(
        "federation/jobs/<int:job_id>/participation/",
        views.job_participation_view,
        name="federated_job_participation",
    ),
    path("federation/jobs/<int:job_id>/schedule/", views.job_schedule_view, name="federated_job_schedule"),
    path("federation/jobs/<int:job_id>/cancel/", views.job_cancel_view, name="federated_job_cancel"),
    path("federation/jobs/<int:job_id>/model/", views.job_model_view, name="federated_job_model"),
    path("federation/jobs/<int:job_id>/publish/", views.job_publish_view, name="federated_job_publish"),
    path("federation/models/", views.published_models_view, name="published_models"),
    path(
        "federation/models/<int:model_id>/download/",
        views.published_model_download_view,
        name="published_model_download",
    ),
]
