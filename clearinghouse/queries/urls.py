"""The portal's query pages (a dataset's query console and budget). `clearinghouse.portal.urls`
includes them, by name, into the `portal` namespace, so that the portal imports none of the apps' views."""

from django.urls import path

from . import views

urlpatterns = [
    path("datasets/<slug:organisation>/<slug:slug>/console/", views.query_console, name="query_console"),
    path("datasets/<slug:organisation>/<slug:slug>/budget/", views.budget_dashboard, name="budget_dashboard"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/budget/allocations/<slug:grantee>/",
        views.budget_allocation,
        name="budget_allocation",
    ),
    path("budgets/", views.my_budgets, name="my_budgets"),
    path(
        "datasets/<slug:organisation>/<slug:slug>/queries/<int:query_id>/",
        views.query_result,
        name="query_result",
    ),
    path(
        "datasets/<slug:organisation>/<slug:slug>/queries/<int:query_id>/csv/",
        views.query_result_csv,
        name="query_result_csv",
    ),
]
