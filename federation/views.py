"""Portal pages of federated fine-tuning: the jobs a user may see, a job's progress (rounds, a plot,
the model), the operators' job form and actions, members' participation, and their SuperNode keys.

Everything works without JavaScript: a job that is scheduled or running refreshes its own page.
Reads go through federation.selectors, writes through federation.services, which decide who may do
what; the pages only hide buttons that would be refused anyway.
"""

from __future__ import annotations

import shlex
from typing import Any

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from clearinghouse.core.errors import ApplicationError, Conflict, ValidationFailed
from clearinghouse.organisations.selectors import require_operator

# The portal's public helpers, shared so every page reports service errors the same way.
from clearinghouse.portal.charts import Chart, Line, line_chart
from clearinghouse.portal.shortcuts import form_error, my_membership, paginate, service_errors

from .forms import JobForm, SuperNodeKeyForm
from .models import FederatedJob, JobRound, JobState
from .selectors import (
    job_artifact,
    job_artifact_file,
    job_evaluation_shared,
    job_flower_run_id_visible,
    job_get,
    job_list,
    job_model_unpublishable,
    job_my_participation,
    job_participants,
    job_participation_open_to,
    job_privacy_guarantee,
    job_receives_model,
    job_round_members_visible,
    job_round_record,
    job_rounds,
    published_model_file,
    published_model_guarantee,
    published_models,
    supernode_key_get,
    supernode_key_list,
)
from .services import (
    job_cancel,
    job_create,
    job_model_publish,
    job_participation_decide,
    job_privacy_preview,
    job_schedule,
    supernode_key_add,
    supernode_key_revoke,
)

# The states in which a job is still changing on its own (the page reloads itself every 10 s).
PROGRESSING_STATES = frozenset({JobState.SCHEDULED, JobState.RUNNING})
# What a member types where the command needs something only they know.
KEY_FILE_PLACEHOLDER = "keys/gpu-1.key"
DATA_FILE_PLACEHOLDER = "/path/to/your-data.csv"
FLEET_ADDRESS_PLACEHOLDER = "superlink-host:9093"  # when the service has no SuperLink configured


@login_required
@require_GET
@service_errors
def job_list_view(request: HttpRequest) -> HttpResponse:
    jobs = paginate(request, job_list(actor=request.user))
    return render(request, "federation/jobs.html", {"jobs": jobs})


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def job_new_view(request: HttpRequest) -> HttpResponse:
    require_operator(actor=request.user)
    form = JobForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            job = job_create(actor=request.user, **form.job_create_arguments())
        except ApplicationError as exc:
            form_error(form, exc)
        else:
            messages.success(
                request, f"Job {job.name} created as a draft; the invited organisations decide now."
            )
            return redirect("portal:federated_job", job_id=job.pk)
    return render(request, "federation/job_new.html", {"form": form})


def _round_rows(rounds: list[JobRound], *, actor: Any) -> list[dict[str, Any]]:
    """Each round with its dropouts, and each of the viewer's own organisation's members' held-out
    accuracy (when it reported one; `job_round_members_visible`)."""
    rows = []
    for r in rounds:
        record = job_round_record(job_round=r)
        members = job_round_members_visible(actor=actor, record=record)
        rows.append(
            {
                "round": r,
                "dropouts": [dropout.label for dropout in record.dropouts],
                "client_accuracies": [
                    (member.label, member.evaluate_accuracy)
                    for member in members
                    if member.evaluate_accuracy is not None
                ],
            }
        )
    return rows


def _round_plot(rounds: list[JobRound]) -> Chart | None:
    """Accuracy (0 to 1, left axis) and loss (right axis) per round, as two lines with a marker per
    round, so even a single round shows (the portal's one chart helper, `portal.charts`)."""
    if not rounds:
        return None
    loss_max = max((r.loss for r in rounds if r.loss is not None), default=0.0)
    return line_chart(
        chart_id="round-plot",
        title="Accuracy and loss per round",
        lines=[
            Line(
                "accuracy", [(r.number, r.accuracy) for r in rounds if r.accuracy is not None], markers=True
            ),
            Line(
                "loss",
                [(r.number, r.loss) for r in rounds if r.loss is not None],
                dashed=True,
                markers=True,
                right=True,
            ),
        ],
        x_label="round",
        y_label="accuracy",
        right_label="loss",
        y_range=(0.0, 1.0),
        right_range=(0.0, loss_max * 1.05 if loss_max > 0 else 1.0),
        integer_x=True,
    )


def _evaluation_rows(evaluation: dict[str, Any] | None) -> list[tuple[str, float]]:
    """The final evaluation's numbers (the confusion matrix is left to the API), per-class F1 last."""
    if not isinstance(evaluation, dict):
        return []
    rows = [
        (name.replace("_", " "), value)
        for name, value in evaluation.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    ]
    per_class = evaluation.get("per_class_f1")
    if isinstance(per_class, dict):
        rows += [
            (f"F1 of {label}", value) for label, value in per_class.items() if isinstance(value, (int, float))
        ]
    return rows


def _agent_command(job: FederatedJob, organisation_slug: str) -> str:
    """The member agent's command line for this job, with the job's own columns and labels."""
    command = [
        "python",
        "-m",
        "federation.agent",
        "run",
        "--superlink",
        settings.FLOWER_FLEET_ADDRESS or FLEET_ADDRESS_PLACEHOLDER,
        "--root-certificates",
        "ca.crt",
        "--auth-key",
        KEY_FILE_PLACEHOLDER,
        "--data",
        DATA_FILE_PLACEHOLDER,
        "--text-column",
        job.text_column,
        "--label-column",
        job.label_column,
        "--labels",
        ",".join(job.labels),
        "--organisation",
        organisation_slug,
    ]
    if job.base_model != "minilm-l6":  # the agent's preflight loads minilm-l6 unless told otherwise
        command += ["--base-model", job.base_model]
    return " ".join(shlex.quote(part) for part in command)


@login_required
@require_GET
@service_errors
def job_detail_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_get(actor=request.user, job_id=job_id)
    rounds = list(job_rounds(job=job))
    mine = job_my_participation(actor=request.user, job=job)
    artifact = job_artifact(job=job)  # None until the run's model is stored
    context = {
        "job": job,
        "participants": job_participants(job=job),
        "my_participation": mine,
        "rounds": _round_rows(rounds, actor=request.user),
        "plot": _round_plot(rounds),
        "evaluation": _evaluation_rows(job_evaluation_shared(job.final_evaluation)),
        "artifact": artifact,
        "refresh": job.state in PROGRESSING_STATES,
        "can_decide": job_participation_open_to(actor=request.user, job=job),
        "can_download": artifact is not None and job_receives_model(actor=request.user, job=job),
        "flower_run_id": job_flower_run_id_visible(actor=request.user, job=job),
        "agent_command": _agent_command(job, mine.organisation.slug) if mine is not None else "",
        # What each participating dataset pays (a private job) or why one cannot take part, as
        # `GET .../privacy` answers; and the guarantee the stored model carries.
        "privacy": job_privacy_preview(job=job) if not job.is_final or job.is_private else None,
        "guarantee": job_privacy_guarantee(artifact.report) if artifact is not None else {},
        # Operators may publish a private job's model to the consortium (`job_model_publish` decides).
        "can_publish": getattr(request.user, "is_operator", False)
        and job_model_unpublishable(job=job, artifact=artifact) is None,
    }
    return render(request, "federation/job.html", context)


@login_required
@require_POST
@service_errors
def job_participation_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_get(actor=request.user, job_id=job_id)
    # An empty dataset field keeps the dataset named before (the service changes only what it is given).
    participant = job_participation_decide(
        actor=request.user,
        job=job,
        decision=request.POST.get("decision", ""),
        dataset=request.POST.get("dataset", "").strip() or None,
        data_description=request.POST.get("data_description"),
    )
    messages.success(
        request,
        f"{participant.organisation.name} {participant.get_status_display().lower()} the job {job.name}.",
    )
    return redirect("portal:federated_job", job_id=job.pk)


@login_required
@require_POST
@service_errors
def job_schedule_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_schedule(actor=request.user, job=job_get(actor=request.user, job_id=job_id))
    messages.success(request, f"Job {job.name} scheduled: it is being submitted to the SuperLink.")
    return redirect("portal:federated_job", job_id=job.pk)


@login_required
@require_POST
@service_errors
def job_cancel_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_cancel(
        actor=request.user,
        job=job_get(actor=request.user, job_id=job_id),
        reason=request.POST.get("reason", ""),
    )
    messages.success(request, f"Job {job.name} cancelled.")
    return redirect("portal:federated_job", job_id=job.pk)


@login_required
@require_POST
@service_errors
def job_publish_view(request: HttpRequest, job_id: int) -> HttpResponse:
    job = job_get(actor=request.user, job_id=job_id)
    job_model_publish(actor=request.user, job=job)
    messages.success(
        request, f"The model of {job.name} is published: every member organisation may download it."
    )
    return redirect("portal:federated_job", job_id=job.pk)


@login_required
@require_GET
@service_errors
def published_models_view(request: HttpRequest) -> HttpResponse:
    models = paginate(request, published_models(actor=request.user))
    rows = [(model, published_model_guarantee(model)) for model in models]
    return render(request, "federation/models.html", {"models": models, "rows": rows})


@login_required
@require_GET
@service_errors
def published_model_download_view(request: HttpRequest, model_id: int) -> FileResponse:
    file, name = published_model_file(actor=request.user, model_id=model_id)
    return FileResponse(file, as_attachment=True, filename=name, content_type="application/octet-stream")


@login_required
@require_GET
@service_errors
def job_model_view(request: HttpRequest, job_id: int) -> FileResponse:
    job = job_get(actor=request.user, job_id=job_id)
    file, name = job_artifact_file(actor=request.user, job=job)
    return FileResponse(file, as_attachment=True, filename=name, content_type="application/octet-stream")


@login_required
@require_http_methods(["GET", "POST"])
@service_errors
def supernode_keys_view(request: HttpRequest) -> HttpResponse:
    organisation = my_membership(request).organisation
    keys = supernode_key_list(actor=request.user, organisation=organisation)  # org admins only
    form = SuperNodeKeyForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            key = supernode_key_add(actor=request.user, organisation=organisation, **form.cleaned_data)
        except (ValidationFailed, Conflict) as exc:
            form_error(form, exc)
        else:
            messages.success(request, f"Key {key.name} added; it is being registered with the SuperLink.")
            return redirect("portal:supernode_keys")
    return render(
        request, "federation/supernode_keys.html", {"organisation": organisation, "keys": keys, "form": form}
    )


@login_required
@require_POST
@service_errors
def supernode_key_revoke_view(request: HttpRequest, key_id: int) -> HttpResponse:
    key = supernode_key_revoke(actor=request.user, key=supernode_key_get(actor=request.user, key_id=key_id))
    messages.success(request, f"Key {key.name} revoked.")
    return redirect("portal:supernode_keys")
