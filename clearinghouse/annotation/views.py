"""Portal pages of annotation projects: the actor's projects and the new-project form, a project's page
(progress, agreement, model runs, automatic labelling, duplicates, exports), the labelling page (one
item at a time, with shortcut keys) and the duplicates and review lists.

Everything works without JavaScript: every action is a plain form that posts and redirects;
`annotation/label.js` only binds keys to those forms' buttons. Reads go through
annotation.selectors, writes through annotation.services, which decide who may do what (another
organisation's project is a 404); the pages only hide what would be refused anyway. Texts are never
stored: the pages ask a worker for the texts of the items they show (`item_texts`, at most a page).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clearinghouse.core.errors import ApplicationError, NotFound, PermissionDenied
from clearinghouse.datasets.selectors import dataset_register_organisation
from clearinghouse.organisations.roles import MANAGE_DATASETS
from clearinghouse.organisations.selectors import require_capability, user_capabilities
from clearinghouse.portal.shortcuts import PAGE_SIZE, form_error, paginate, service_errors

from .forms import (
    AutomaticApplyForm,
    AutomaticForm,
    ExportForm,
    LabelForm,
    ModelRunForm,
    ProjectEditForm,
    ProjectForm,
)
from .models import AnnotationItem, AnnotationProject, ProjectStatus, RunKind, RunStatus
from .selectors import (
    duplicate_groups,
    export_list,
    federated_models_usable,
    item_get,
    item_human_labels,
    item_texts,
    items_get,
    model_run_get,
    model_run_latest,
    model_run_list,
    project_get,
    project_is_manager,
    project_list,
    project_progress,
    queue_next,
    review_list,
)
from .services import (
    automatic_apply,
    export_start,
    item_skip,
    label_record,
    label_undo,
    model_run_start,
    project_archive,
    project_create,
    project_update,
)

# Shortcut keys of the labels, in order: digits, then letters other than the page's own keys
# (a accept, s skip, u undo).
SHORTCUT_KEYS = [*"123456789", *"bcdefghijklmnopqrtvwxyz"]


@login_required
@require_GET
@service_errors
def project_list_view(request: HttpRequest) -> HttpResponse:
    projects = paginate(request, project_list(actor=request.user))
    can_create = MANAGE_DATASETS in user_capabilities(user=request.user)
    return render(request, "annotation/list.html", {"projects": projects, "can_create": can_create})


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def project_new_view(request: HttpRequest) -> HttpResponse:
    # Managers of their own organisation's datasets only (operators have none: 404).
    require_capability(
        actor=request.user,
        organisation=dataset_register_organisation(actor=request.user),
        capability=MANAGE_DATASETS,
    )
    form = ProjectForm(request.POST or None, actor=request.user)
    if request.method == "POST" and form.is_valid():
        try:
            project = project_create(actor=request.user, **form.project_create_arguments())
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"Project {project.name} created; its items are being prepared.")
            return redirect("portal:annotation_project", project_id=project.pk)
    return render(request, "annotation/new.html", {"form": form})


def _project_page(
    request: HttpRequest,
    project: AnnotationProject,
    *,
    status: int = 200,
    **forms: Any,
) -> HttpResponse:
    """The project's page, with the forms given (bound ones show their errors) or fresh ones."""
    manager = project_is_manager(actor=request.user, project=project)
    runs = paginate(request, model_run_list(actor=request.user, project=project), param="runs")
    latest = model_run_latest(project=project, kind=RunKind.PROPOSE)
    context: dict[str, Any] = {
        "project": project,
        "manager": manager,
        "progress": project_progress(project=project),
        "runs": runs,
        "latest_run": latest,
        "duplicates": project.duplicate_summary or {},
        "refresh": project.status == ProjectStatus.PREPARING
        or any(run.status in (RunStatus.QUEUED, RunStatus.RUNNING) for run in runs),
        "run_form": forms.get("run_form")
        or ModelRunForm(models=federated_models_usable(actor=request.user, project=project)),
    }
    if manager:
        exports = paginate(request, export_list(actor=request.user, project=project), param="exports")
        context.update(
            exports=exports,
            automatic_form=forms.get("automatic_form") or AutomaticForm(project=project),
            apply_form=AutomaticApplyForm(initial={"run": latest.pk}) if latest else None,
            export_form=forms.get("export_form") or ExportForm(),
            edit_form=forms.get("edit_form") or ProjectEditForm(actor=request.user, project=project),
        )
        context["refresh"] = context["refresh"] or any(e.status in ("queued", "running") for e in exports)
    return render(request, "annotation/project.html", context, status=status)


@login_required
@require_GET
@service_errors
def project_detail_view(request: HttpRequest, project_id: int) -> HttpResponse:
    return _project_page(request, project_get(actor=request.user, project_id=project_id))


def _project_form_post(
    request: HttpRequest,
    project: AnnotationProject,
    name: str,
    form: forms.Form,
    act: Callable[[dict[str, Any]], str],
) -> HttpResponse:
    """A project page's form, posted: `act(data)` runs the service and returns the success message;
    a form or service error shows the page again with the error on the form (400)."""
    if form.is_valid():
        try:
            message = act(form.cleaned_data)
        except (NotFound, PermissionDenied):
            raise
        except ApplicationError as exc:
            form_error(form, exc)
        else:
            messages.success(request, message)
            return redirect("portal:annotation_project", project_id=project.pk)
    return _project_page(request, project, status=400, **{name: form})


@login_required
@require_POST
@service_errors
def project_edit_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    form = ProjectEditForm(request.POST, actor=request.user, project=project)

    def act(data: dict[str, Any]) -> str:
        project_update(actor=request.user, project=project, **form.project_update_arguments())
        return "Instructions and annotators saved."

    return _project_form_post(request, project, "edit_form", form, act)


@login_required
@require_POST
@service_errors
def automatic_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    form = AutomaticForm(request.POST, project=project)

    def act(data: dict[str, Any]) -> str:
        project_update(
            actor=request.user,
            project=project,
            target_precision=data["target_precision"],
            confidence_level=data["confidence_level"],
        )
        return "Target saved: the next model run calibrates its threshold to it."

    return _project_form_post(request, project, "automatic_form", form, act)


@login_required
@require_POST
@service_errors
def automatic_apply_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    form = AutomaticApplyForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose the model run whose threshold to apply.")
        return redirect("portal:annotation_project", project_id=project.pk)
    run = model_run_get(actor=request.user, project=project, run_id=form.cleaned_data["run"])
    labelled = automatic_apply(actor=request.user, project=project, run=run)
    messages.success(request, f"{labelled} item{'s' if labelled != 1 else ''} labelled by the model.")
    return redirect("portal:annotation_project", project_id=project.pk)


@login_required
@require_POST
@service_errors
def model_run_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)

    def act(data: dict[str, Any]) -> str:
        run = model_run_start(
            actor=request.user,
            project=project,
            kind=data["kind"],
            federated_model_id=data.get("federated_model"),
        )
        return f"Model run {run.pk} queued ({run.get_kind_display().lower()})."

    usable = federated_models_usable(actor=request.user, project=project)
    return _project_form_post(request, project, "run_form", ModelRunForm(request.POST, models=usable), act)


@login_required
@require_POST
@service_errors
def export_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    form = ExportForm(request.POST)

    def act(data: dict[str, Any]) -> str:
        export = export_start(actor=request.user, project=project, **form.export_start_arguments())
        return f"Export queued: the labels become the new dataset {export.dataset.name}."

    return _project_form_post(request, project, "export_form", form, act)


@login_required
@require_POST
@service_errors
def project_archive_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    project_archive(actor=request.user, project=project)
    messages.success(request, f"Project {project.name} archived.")
    return redirect("portal:annotation_project", project_id=project.pk)


# --- Labelling ----------------------------------------------------------------------------------------


def _review(request: HttpRequest) -> bool:
    return (request.GET.get("review") or request.POST.get("review")) == "1"


def _label_page_url(project_id: int, *, review: bool, item_id: int | None = None) -> str:
    url = reverse("portal:annotation_label", kwargs={"project_id": project_id})
    query = [*(["review=1"] if review else []), *([f"item={item_id}"] if item_id else [])]
    return url + ("?" + "&".join(query) if query else "")


def _texts(project: AnnotationProject, items: list[AnnotationItem]) -> tuple[dict[int, str], str]:
    """The items' texts from a worker, and why not when none answered (the page still shows)."""
    if not items:
        return {}, ""
    try:
        return item_texts(project=project, items=items, timeout=settings.ANNOTATION_TEXTS_WAIT_SECONDS), ""
    except (NotFound, PermissionDenied):
        raise
    except ApplicationError as exc:
        return {}, exc.message


@login_required
@require_GET
@service_errors
def label_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    review = _review(request)
    item: AnnotationItem | None = None
    if project.status == ProjectStatus.READY:
        wanted = request.GET.get("item", "")
        if wanted.isdecimal():  # the item an undo brought back
            item = item_get(actor=request.user, project=project, item_id=int(wanted))
        else:
            item = queue_next(actor=request.user, project=project, review=review)
    texts, texts_error = _texts(project, [item] if item else [])
    buttons = [
        {"label": label, "key": SHORTCUT_KEYS[index] if index < len(SHORTCUT_KEYS) else ""}
        for index, label in enumerate(project.labels)
    ]
    context = {
        "project": project,
        "review": review,
        "item": item,
        "text": texts.get(item.pk) if item else None,
        "texts_error": texts_error,
        "buttons": buttons,
        "proposal": item.proposed_label if item and item.proposed_label in project.labels else "",
        # The review queue: what people said of the item (two who disagree, or one the model doubts).
        "given": item_human_labels(item=item) if review and item else [],
        "progress": project_progress(project=project),
        "manager": project_is_manager(actor=request.user, project=project),
    }
    return render(request, "annotation/label.html", context, status=503 if texts_error else 200)


def _labelling_done(request: HttpRequest, project_id: int, action) -> HttpResponse:
    """Runs a labelling action; a refusal that is not about access (a label outside the set, an item
    someone finished meanwhile) is a message on the labelling page, which then serves the next item."""
    review = _review(request)
    try:
        message = action()
    except (NotFound, PermissionDenied):
        raise
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect(_label_page_url(project_id, review=review))
    if isinstance(message, tuple):  # (message, the item to show next)
        messages.info(request, message[0])
        return redirect(_label_page_url(project_id, review=review, item_id=message[1]))
    if message:
        messages.info(request, message)
    return redirect(_label_page_url(project_id, review=review))


@login_required
@require_POST
@service_errors
def item_label_view(request: HttpRequest, project_id: int, item_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    item = item_get(actor=request.user, project=project, item_id=item_id)
    form = LabelForm(request.POST)

    def act() -> str:
        if not form.is_valid():
            return "Choose one of the project's labels."
        label_record(actor=request.user, project=project, item=item, value=form.cleaned_data["label"])
        return ""

    return _labelling_done(request, project.pk, act)


@login_required
@require_POST
@service_errors
def item_skip_view(request: HttpRequest, project_id: int, item_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    item = item_get(actor=request.user, project=project, item_id=item_id)

    def act() -> str:
        item_skip(actor=request.user, project=project, item=item)
        return f"Item {item.pk} skipped."

    return _labelling_done(request, project.pk, act)


@login_required
@require_POST
@service_errors
def undo_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)

    def act() -> tuple[str, int]:
        label = label_undo(actor=request.user, project=project)
        return f"Undone: {label.value} on item {label.item_id}. Label it again.", label.item_id

    return _labelling_done(request, project.pk, act)


# --- Lists --------------------------------------------------------------------------------------------


@login_required
@require_GET
@service_errors
def duplicates_view(request: HttpRequest, project_id: int) -> HttpResponse:
    """One row per item of a duplicate group, a page of at most PAGE_SIZE items with their texts."""
    project = project_get(actor=request.user, project_id=project_id)
    groups = duplicate_groups(actor=request.user, project=project)
    rows = [
        {
            "group": group["group"],
            "kind": group["kind"],
            "item_id": item["id"],
            "row": item["row"],
            "label": item["label"],
            "conflicting": group["conflicting"],
            "first": index == 0,
            "size": len(group["items"]),
        }
        for group in groups
        for index, item in enumerate(group["items"])
    ]
    page = paginate(request, rows)
    shown = items_get(actor=request.user, project=project, item_ids=[row["item_id"] for row in page])
    texts, texts_error = _texts(project, shown[:PAGE_SIZE])
    for row in page:
        row["text"] = texts.get(row["item_id"])
    return render(
        request,
        "annotation/duplicates.html",
        {"project": project, "rows": page, "groups": len(groups), "texts_error": texts_error},
    )


@login_required
@require_GET
@service_errors
def review_view(request: HttpRequest, project_id: int) -> HttpResponse:
    project = project_get(actor=request.user, project_id=project_id)
    page = paginate(request, review_list(actor=request.user, project=project))
    items = list(page)
    texts, texts_error = _texts(project, items)
    rows = [{"item": item, "text": texts.get(item.pk)} for item in items]
    return render(
        request,
        "annotation/review.html",
        {"project": project, "page": page, "rows": rows, "texts_error": texts_error},
    )
