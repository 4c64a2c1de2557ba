"""The portal's annotation pages. `clearinghouse.portal.urls` includes them, by name, into the `portal`
namespace (`portal:annotation_project`, ...), so that the portal imports none of the apps' views."""

from django.urls import path

from . import views

urlpatterns = [
    path("annotation/", views.project_list_view, name="annotation_projects"),
    path("annotation/new/", views.project_new_view, name="annotation_project_new"),
    path("annotation/<int:project_id>/", views.project_detail_view, name="annotation_project"),
    path("annotation/<int:project_id>/edit/", views.project_edit_view, name="annotation_project_edit"),
    path("annotation/<int:project_id>/archive/", views.project_archive_view, name="annotation_archive"),
    path("annotation/<int:project_id>/automatic/", views.automatic_view, name="annotation_automatic"),
    path(
        "annotation/<int:project_id>/automatic/apply/",
        views.automatic_apply_view,
        name="annotation_automatic_apply",
    ),
    path("annotation/<int:project_id>/model-runs/", views.model_run_view, name="annotation_model_runs"),
    path("annotation/<int:project_id>/exports/", views.export_view, name="annotation_exports"),
    path("annotation/<int:project_id>/label/", views.label_view, name="annotation_label"),
    path(
        "annotation/<int:project_id>/items/<int:item_id>/label/",
        views.item_label_view,
        name="annotation_item_label",
    ),
    path(
        "annotation/<int:project_id>/items/<int:item_id>/skip/",
        views.item_skip_view,
        name="annotation_item_skip",
    ),
    path("annotation/<int:project_id>/undo/", views.undo_view, name="annotation_undo"),
    path("annotation/<int:project_id>/duplicates/", views.duplicates_view, name="annotation_duplicates"),
    path("annotation/<int:project_id>/review/", views.review_view, name="annotation_review"),
]
