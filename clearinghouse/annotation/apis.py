"""The annotation projects' API (/api/v1/annotation/...): thin views over `selectors` (who may see
what, the texts from a worker) and `services` (every write, audited).

Who: a project's managers (its organisation's admins and stewards) and its annotators; anyone else
(other organisations, operators, members not listed) gets 404 `not_found`, as for a project that does
not exist. Texts come only from `next` and `items?ids=`, read by a worker for those items at that
moment (nothing of a text is stored); every other body carries item ids, rows and labels only.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.urls import reverse
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from clearinghouse.core.apis import ErrorSerializer, StrictCharField, paginated, text_field, validated
from clearinghouse.core.schema import ERROR_DESCRIPTIONS
from clearinghouse.datasets.selectors import dataset_get, dataset_register_organisation

from .models import (
    LABELS_MAX,
    AnnotationExport,
    AnnotationItem,
    AnnotationProject,
    DuplicateKind,
    ExportStatus,
    FlagReason,
    LabelSource,
    ModelRun,
    ProjectStatus,
    RunKind,
    RunStatus,
)
from .selectors import (
    duplicate_groups,
    export_get,
    export_list,
    item_get,
    item_texts,
    model_run_get,
    model_run_list,
    project_get,
    project_is_manager,
    project_list,
    project_progress,
    project_require_manager,
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

# The kinds of a duplicate group (`selectors.duplicate_groups`); documented as an enum of its own
# (SPECTACULAR_SETTINGS' ENUM_NAME_OVERRIDES).
DUPLICATE_KINDS = [DuplicateKind.EXACT.value, DuplicateKind.NEAR.value]

# Why an item is in the review queue.
FLAG_REASONS = [FlagReason.DISAGREEMENT.value, FlagReason.LABEL_ERROR.value]

# The most items one `items?ids=` request asks a worker to read.
ITEMS_PER_REQUEST = 50

TEXTS_UNAVAILABLE = OpenApiResponse(
    ErrorSerializer,
    description="`texts_unavailable`: no worker read the items' texts in time; try again.",
)


def _errors(**descriptions: str) -> dict:
    """Documented error answers: status (`e400`) → the codes this operation answers with it."""
    return {
        int(code[1:]): OpenApiResponse(
            ErrorSerializer, description=f"{ERROR_DESCRIPTIONS[int(code[1:])]} {text}"
        )
        for code, text in descriptions.items()
    }


NOT_VISIBLE = "`not_found`: no such project (or item), or you are neither its manager nor its annotator."
MANAGERS_ONLY = "`role_forbidden`: an annotator who is not one of the project's managers."


def _project(request, project_id: int) -> AnnotationProject:
    return project_get(actor=request.user, project_id=project_id)


# --- Output ------------------------------------------------------------------------------------------


class ProgressOutputSerializer(serializers.Serializer):
    """`selectors.project_progress`."""

    class Meta:
        ref_name = "AnnotationProgress"

    total = serializers.IntegerField(help_text="Items in the project.")
    done = serializers.IntegerField(help_text="Items with a final label (people's or the model's).")
    auto = serializers.IntegerField(help_text="Items labelled automatically by the model.")
    reviewed = serializers.IntegerField(help_text="Items whose label a manager settled in review.")
    remaining = serializers.IntegerField()
    human_labels = serializers.IntegerField()
    overlap_items = serializers.IntegerField(help_text="Items to be labelled by two annotators.")
    overlap_done = serializers.IntegerField(help_text="Overlap items that have both labels.")
    kappa = serializers.FloatField(allow_null=True, help_text="Cohen's κ on the overlap items so far.")
    per_label = serializers.DictField(child=serializers.IntegerField(), help_text="Final labels per label.")
    flagged = serializers.IntegerField(help_text="Items flagged as likely label errors.")
    proposed = serializers.IntegerField(help_text="Items with a label proposed by the model.")


class DuplicateSummarySerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationDuplicateSummary"

    exact_items = serializers.IntegerField()
    near_items = serializers.IntegerField()
    groups = serializers.IntegerField()


class ProjectOutputSerializer(serializers.Serializer):
    """`project_body`: a project as lists show it."""

    class Meta:
        ref_name = "AnnotationProjectOutput"

    id = serializers.IntegerField()
    url = serializers.CharField()
    organisation = serializers.CharField()
    name = serializers.CharField()
    slug = serializers.CharField()
    dataset = serializers.CharField(help_text="'owner/slug' of the dataset whose rows are the items.")
    version = serializers.IntegerField(help_text="The dataset version's number.")
    text_column = serializers.CharField()
    labels = serializers.ListField(child=serializers.CharField())
    instructions = serializers.CharField()
    overlap = serializers.FloatField(help_text="The share of items labelled by two annotators.")
    target_precision = serializers.FloatField(
        allow_null=True, help_text="Automatic labelling's target precision, in (0, 1)."
    )
    confidence_level = serializers.FloatField()
    annotators = serializers.ListField(child=serializers.CharField(), help_text="Usernames.")
    status = serializers.ChoiceField(choices=ProjectStatus.choices)
    error_code = serializers.CharField(allow_null=True)
    item_count = serializers.IntegerField()
    duplicate_summary = DuplicateSummarySerializer(allow_null=True)
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()


class ProjectDetailOutputSerializer(ProjectOutputSerializer):
    """`project_body(detail=True)`: one project with its progress."""

    class Meta:
        ref_name = "AnnotationProjectDetailOutput"

    manager = serializers.BooleanField(help_text="Whether you manage the project (else you annotate).")
    progress = ProgressOutputSerializer()


def project_body(project: AnnotationProject, *, actor: Any, detail: bool = False) -> dict:
    body: dict[str, Any] = {
        "id": project.pk,
        "url": reverse("api:annotation_project", args=[project.pk]),
        "organisation": project.organisation.slug,
        "name": project.name,
        "slug": project.slug,
        "dataset": f"{project.dataset.organisation.slug}/{project.dataset.slug}",
        "version": project.version.number,
        "text_column": project.text_column,
        "labels": list(project.labels),
        "instructions": project.instructions,
        "overlap": project.overlap,
        "target_precision": project.target_precision,
        "confidence_level": project.confidence_level,
        "annotators": sorted(user.username for user in project.annotators.all()),
        "status": project.status,
        "error_code": project.error_code or None,
        "item_count": project.item_count,
        "duplicate_summary": project.duplicate_summary or None,
        "created_by": project.created_by.username if project.created_by else None,
        "created_at": project.created_at,
    }
    if detail:
        body["manager"] = project_is_manager(actor=actor, project=project)
        body["progress"] = project_progress(project=project)
    return body


class ProposalOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationProposal"

    label = serializers.CharField()  # type: ignore[assignment]  # the body's key (DRF's metaclass takes it off Field.label)
    confidence = serializers.FloatField(allow_null=True)


def _proposal(item: AnnotationItem) -> dict | None:
    if not item.proposed_label:
        return None
    return {"label": item.proposed_label, "confidence": item.confidence}


class ItemTextOutputSerializer(serializers.Serializer):
    """An item to label: its text (read by a worker just now), the model's proposal."""

    class Meta:
        ref_name = "AnnotationItemWithText"

    id = serializers.IntegerField()
    row = serializers.IntegerField(help_text="The row's index in the project's dataset version.")
    text = serializers.CharField(allow_null=True, help_text="The row's text (null: an empty cell).")
    proposal = ProposalOutputSerializer(allow_null=True, help_text="The model's label, if it proposed one.")
    flagged = serializers.BooleanField(
        help_text="In the review queue (people disagree, or a likely label error)."
    )
    flag_reason = serializers.ChoiceField(choices=FLAG_REASONS, allow_null=True)
    given_label = serializers.CharField(
        allow_null=True, help_text="A flagged item's current label, the one under review; else null."
    )


def item_text_body(item: AnnotationItem, texts: dict[int, str]) -> dict:
    return {
        "id": item.pk,
        "row": item.row,
        "text": texts.get(item.pk),
        "proposal": _proposal(item),
        "flagged": item.flagged,
        "flag_reason": item.flag_reason or None,
        "given_label": (item.final_label or None) if item.flagged else None,
    }


class ItemOutputSerializer(serializers.Serializer):
    """An item without its text (the review queue)."""

    class Meta:
        ref_name = "AnnotationItemOutput"

    id = serializers.IntegerField()
    row = serializers.IntegerField()
    proposal = ProposalOutputSerializer(allow_null=True)
    flagged = serializers.BooleanField()
    flag_reason = serializers.ChoiceField(choices=FLAG_REASONS, allow_null=True)
    flag_score = serializers.FloatField(allow_null=True, help_text="Lower: reviewed first.")
    suggested_label = serializers.CharField(allow_null=True, help_text="The label the model would give.")
    final_label = serializers.CharField(allow_null=True)
    final_source = serializers.ChoiceField(choices=LabelSource.choices, allow_null=True)
    human_count = serializers.IntegerField()
    duplicate_group = serializers.IntegerField(allow_null=True)
    duplicate_kind = serializers.ChoiceField(choices=DuplicateKind.choices, allow_null=True)


def item_body(item: AnnotationItem) -> dict:
    return {
        "id": item.pk,
        "row": item.row,
        "proposal": _proposal(item),
        "flagged": item.flagged,
        "flag_reason": item.flag_reason or None,
        "flag_score": item.flag_score,
        "suggested_label": item.suggested_label or None,
        "final_label": item.final_label or None,
        "final_source": item.final_source or None,
        "human_count": item.human_count,
        "duplicate_group": item.duplicate_group,
        "duplicate_kind": item.duplicate_kind or None,
    }


class ModelRunOutputSerializer(serializers.Serializer):
    """`run_body`."""

    class Meta:
        ref_name = "AnnotationModelRunOutput"

    id = serializers.IntegerField()
    url = serializers.CharField()
    kind = serializers.ChoiceField(choices=RunKind.choices)
    status = serializers.ChoiceField(choices=RunStatus.choices)
    labels_used = serializers.IntegerField(help_text="Human labels the model was fitted on.")
    federated_model = serializers.IntegerField(
        allow_null=True, help_text="The federated model it proposed with (none: fitted on the labels)."
    )
    metrics = serializers.JSONField(help_text="The run's measurements (out-of-sample scores, flagged items).")
    target_precision = serializers.FloatField(allow_null=True)
    confidence_level = serializers.FloatField(allow_null=True)
    threshold = serializers.FloatField(
        allow_null=True, help_text="The lowest confidence certified to reach the target precision."
    )
    estimated_precision = serializers.FloatField(allow_null=True)
    precision_lower_bound = serializers.FloatField(allow_null=True)
    coverage = serializers.FloatField(
        allow_null=True, help_text="The share of unlabelled items at or above the threshold."
    )
    error_code = serializers.CharField(allow_null=True)
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


def run_body(run: ModelRun) -> dict:
    return {
        "id": run.pk,
        "url": reverse("api:annotation_model_run", args=[run.project_id, run.pk]),
        "kind": run.kind,
        "status": run.status,
        "labels_used": run.labels_used,
        "federated_model": run.federated_model_id,
        "metrics": run.metrics or {},
        "target_precision": run.target_precision,
        "confidence_level": run.confidence_level,
        "threshold": run.threshold,
        "estimated_precision": run.estimated_precision,
        "precision_lower_bound": run.precision_lower_bound,
        "coverage": run.coverage,
        "error_code": run.error_code or None,
        "created_by": run.created_by.username if run.created_by else None,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
    }


class ExportOutputSerializer(serializers.Serializer):
    """`export_body`."""

    class Meta:
        ref_name = "AnnotationExportOutput"

    id = serializers.IntegerField()
    url = serializers.CharField()
    dataset = serializers.CharField(help_text="'owner/slug' of the new dataset the export writes.")
    version = serializers.IntegerField(allow_null=True, help_text="Its version's number, once recorded.")
    status = serializers.ChoiceField(choices=ExportStatus.choices)
    drop_duplicates = serializers.BooleanField()
    drop_conflicts = serializers.BooleanField()
    include_model_labels = serializers.BooleanField()
    rows = serializers.IntegerField(allow_null=True, help_text="Rows written (once succeeded).")
    error_code = serializers.CharField(allow_null=True)
    created_by = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


def export_body(export: AnnotationExport) -> dict:
    return {
        "id": export.pk,
        "url": reverse("api:annotation_export", args=[export.project_id, export.pk]),
        "dataset": f"{export.dataset.organisation.slug}/{export.dataset.slug}",
        "version": export.version.number if export.version else None,
        "status": export.status,
        "drop_duplicates": export.drop_duplicates,
        "drop_conflicts": export.drop_conflicts,
        "include_model_labels": export.include_model_labels,
        "rows": export.rows,
        "error_code": export.error_code or None,
        "created_by": export.created_by.username if export.created_by else None,
        "created_at": export.created_at,
        "started_at": export.started_at,
        "finished_at": export.finished_at,
    }


class DuplicateItemOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationDuplicateItem"

    id = serializers.IntegerField()
    row = serializers.IntegerField()
    label = serializers.CharField(allow_null=True, help_text="Its final label, if it has one.")  # type: ignore[assignment]  # the body's key (DRF's metaclass takes it off Field.label)


class DuplicateGroupOutputSerializer(serializers.Serializer):
    """One group of `selectors.duplicate_groups` (texts: `items?ids=`)."""

    class Meta:
        ref_name = "AnnotationDuplicateGroup"

    group = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=DUPLICATE_KINDS, help_text="near: some item is a near duplicate.")
    item_ids = serializers.ListField(child=serializers.IntegerField())
    items = DuplicateItemOutputSerializer(many=True)
    labels = serializers.ListField(
        child=serializers.CharField(), help_text="The distinct final labels of the group's items."
    )
    conflicting = serializers.BooleanField(help_text="Whether the group's items carry different labels.")


def duplicate_group_body(group: dict) -> dict:
    items = [{"id": i["id"], "row": i["row"], "label": i["label"] or None} for i in group["items"]]
    return {
        "group": group["group"],
        "kind": group["kind"],
        "item_ids": [i["id"] for i in items],
        "items": items,
        "labels": sorted({i["label"] for i in items if i["label"]}),
        "conflicting": group["conflicting"],
    }


# --- Projects ----------------------------------------------------------------------------------------


class ProjectListCreateApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationProjectInput"

        dataset = StrictCharField(
            max_length=200,
            help_text="'owner/slug', or the slug of one of your organisation's datasets.",
        )
        version = serializers.IntegerField(
            required=False,
            allow_null=True,
            default=None,
            min_value=1,
            max_value=2**31 - 1,
            help_text="The ready version whose rows are the items (default: the latest ready one).",
        )
        name = text_field()
        slug = text_field(required=False, default="", help_text="Default: from the name.")
        text_column = text_field()
        labels = serializers.ListField(
            child=text_field(), max_length=1000, help_text=f"2 to {LABELS_MAX} distinct labels."
        )
        instructions = text_field(required=False, default="")
        overlap = serializers.FloatField(
            required=False, default=0.1, help_text="The share of items labelled by two annotators (0 to 0.5)."
        )
        annotators = serializers.ListField(
            child=text_field(),
            required=False,
            default=list,
            max_length=1000,
            help_text="Usernames of members of your organisation.",
        )

    @extend_schema(responses=ProjectOutputSerializer(many=True), operation_id="annotation_projects_list")
    def get(self, request):
        return paginated(
            queryset=project_list(actor=request.user),
            body=lambda project: project_body(project, actor=request.user),
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer,
        responses={
            201: ProjectDetailOutputSerializer,
            **_errors(
                e400="`unknown_column`, `column_not_text`, `labels_too_few`, `labels_too_many`, "
                "`labels_duplicate`, `label_invalid`, `overlap_out_of_range`, `annotator_not_member`.",
                e403="`role_forbidden`: only your organisation's admins and stewards create projects; "
                "`not_owner`: an operator naming a member's dataset.",
                e404="`not_found`: no such dataset of your organisation.",
                e409="`no_ready_version`, `slug_taken`.",
            ),
        },
        operation_id="annotation_projects_create",
    )
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        owner, _, slug = data.pop("dataset").rpartition("/")
        if not owner:
            owner = dataset_register_organisation(actor=request.user).slug
        dataset = dataset_get(actor=request.user, organisation_slug=owner, dataset_slug=slug)
        project = project_create(
            actor=request.user,
            dataset=dataset,
            version_number=data.pop("version"),
            annotators=list(data.pop("annotators")),
            **data,
        )
        return Response(
            project_body(project, actor=request.user, detail=True), status=status.HTTP_201_CREATED
        )


class ProjectDetailApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationProjectUpdateInput"

        instructions = text_field(required=False)
        annotators = serializers.ListField(
            child=text_field(), required=False, max_length=1000, help_text="The whole list (usernames)."
        )
        target_precision = serializers.FloatField(required=False, help_text="In (0, 1), e.g. 0.98.")
        confidence_level = serializers.FloatField(
            required=False, help_text="The confidence of the precision's lower bound, in (0, 1)."
        )

    @extend_schema(
        responses={200: ProjectDetailOutputSerializer, **_errors(e404=NOT_VISIBLE)},
        operation_id="annotation_projects_get",
    )
    def get(self, request, project_id: int):
        return Response(project_body(_project(request, project_id), actor=request.user, detail=True))

    @extend_schema(
        request=InputSerializer,
        responses={
            200: ProjectDetailOutputSerializer,
            **_errors(
                e400="`threshold_out_of_range` (a target precision or confidence level outside (0, 1)), "
                "`annotator_not_member`.",
                e403=MANAGERS_ONLY,
                e404=NOT_VISIBLE,
                e409="`project_not_ready`.",
            ),
        },
        operation_id="annotation_projects_update",
    )
    def patch(self, request, project_id: int):
        project = _project(request, project_id)
        data = validated(self.InputSerializer, request.data)
        project = project_update(actor=request.user, project=project, **data)
        return Response(project_body(project, actor=request.user, detail=True))


class ProjectArchiveApi(APIView):
    @extend_schema(
        request=None,
        responses={
            200: ProjectDetailOutputSerializer,
            **_errors(e403=MANAGERS_ONLY, e404=NOT_VISIBLE, e409="`already_archived`."),
        },
        operation_id="annotation_projects_archive",
    )
    def post(self, request, project_id: int):
        project = _project(request, project_id)
        project = project_archive(actor=request.user, project=project)
        return Response(project_body(project, actor=request.user, detail=True))


# --- Labelling ---------------------------------------------------------------------------------------


class NextOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationNextOutput"

    item = ItemTextOutputSerializer(allow_null=True, help_text="Null: nothing left in your queue.")
    progress = ProgressOutputSerializer()


class NextApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationNextInput"

        review = serializers.BooleanField(
            required=False, default=False, help_text="The review queue (likely label errors) instead."
        )

    @extend_schema(
        parameters=[InputSerializer],
        responses={
            200: NextOutputSerializer,
            503: TEXTS_UNAVAILABLE,
            **_errors(e404=NOT_VISIBLE, e409="`project_not_ready`."),
        },
        operation_id="annotation_next",
        description="The next item for you to label (calibration items interleaved with those the model "
        "is least sure of), with its text.",
    )
    def get(self, request, project_id: int):
        project = _project(request, project_id)
        review = validated(self.InputSerializer, request.query_params)["review"]
        item = queue_next(actor=request.user, project=project, review=review)
        body = None
        if item is not None:
            texts = item_texts(project=project, items=[item], timeout=settings.ANNOTATION_TEXTS_WAIT_SECONDS)
            body = item_text_body(item, texts)
        return Response({"item": body, "progress": project_progress(project=project)})


class LabelOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationLabelOutput"

    id = serializers.IntegerField()
    item = serializers.IntegerField()
    label = serializers.CharField()  # type: ignore[assignment]  # the body's key (DRF's metaclass takes it off Field.label)
    source = serializers.ChoiceField(choices=LabelSource.choices)  # type: ignore[assignment]  # the body's key (DRF's metaclass takes it off Field.source)


class ItemLabelApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationLabelInput"

        label = text_field(trim_whitespace=False, help_text="One of the project's labels, exactly.")  # type: ignore[assignment]  # the body's key (DRF's metaclass takes it off Field.label)

    @extend_schema(
        request=InputSerializer,
        responses={
            201: LabelOutputSerializer,
            **_errors(
                e400="`label_not_in_set`.",
                e404=NOT_VISIBLE,
                e409="`item_complete` (it has all the people's labels it needs), `project_not_ready`.",
            ),
        },
        operation_id="annotation_items_label",
    )
    def post(self, request, project_id: int, item_id: int):
        project = _project(request, project_id)
        item = item_get(actor=request.user, project=project, item_id=item_id)
        value = validated(self.InputSerializer, request.data)["label"]
        label = label_record(actor=request.user, project=project, item=item, value=value)
        body = {"id": label.pk, "item": label.item_id, "label": label.value, "source": label.source}
        return Response(body, status=status.HTTP_201_CREATED)


class ItemSkipApi(APIView):
    @extend_schema(
        request=None,
        responses={204: None, **_errors(e404=NOT_VISIBLE, e409="`project_not_ready`.")},
        operation_id="annotation_items_skip",
    )
    def post(self, request, project_id: int, item_id: int):
        project = _project(request, project_id)
        item = item_get(actor=request.user, project=project, item_id=item_id)
        item_skip(actor=request.user, project=project, item=item)
        return Response(status=status.HTTP_204_NO_CONTENT)


class UndoOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationUndoOutput"

    item = serializers.IntegerField(
        help_text="The item whose label was taken back (it is in your queue again)."
    )
    label = serializers.CharField(help_text="The label taken back.")  # type: ignore[assignment]  # the body's key (DRF's metaclass takes it off Field.label)


class UndoApi(APIView):
    @extend_schema(
        request=None,
        responses={
            200: UndoOutputSerializer,
            **_errors(e404=NOT_VISIBLE, e409="`nothing_to_undo`, `project_not_ready`."),
        },
        operation_id="annotation_undo",
        description="Takes back your latest label in the project.",
    )
    def post(self, request, project_id: int):
        project = _project(request, project_id)
        label = label_undo(actor=request.user, project=project)
        return Response({"item": label.item_id, "label": label.value})


class IdListField(StrictCharField):
    """Comma-separated item ids, e.g. `1,2,3`: up to `ITEMS_PER_REQUEST`, each once."""

    def to_internal_value(self, data: Any) -> list[int]:  # type: ignore[override]
        text = super().to_internal_value(data)
        try:
            ids = [int(part) for part in text.split(",")]
        except ValueError:
            raise serializers.ValidationError("Comma-separated item ids, e.g. 1,2,3.") from None
        if not 1 <= len(ids) <= ITEMS_PER_REQUEST:
            raise serializers.ValidationError(f"From 1 to {ITEMS_PER_REQUEST} item ids.")
        if any(not 1 <= item_id < 2**31 for item_id in ids) or len(set(ids)) != len(ids):
            raise serializers.ValidationError("Item ids are positive whole numbers, each given once.")
        return ids


class ItemsOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationItemsOutput"

    items = ItemTextOutputSerializer(many=True, help_text="In the order asked for.")


class ItemsApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationItemsInput"

        ids = IdListField(
            max_length=1000, help_text=f"Comma-separated item ids (at most {ITEMS_PER_REQUEST}), e.g. 1,2,3."
        )

    @extend_schema(
        parameters=[InputSerializer],
        responses={
            200: ItemsOutputSerializer,
            503: TEXTS_UNAVAILABLE,
            **_errors(e400="`invalid`: `ids` malformed.", e404=NOT_VISIBLE),
        },
        operation_id="annotation_items_get",
        description="Items with their texts, read by a worker for this request (e.g. a duplicate group).",
    )
    def get(self, request, project_id: int):
        project = _project(request, project_id)
        ids = validated(self.InputSerializer, request.query_params)["ids"]
        items = [item_get(actor=request.user, project=project, item_id=item_id) for item_id in ids]
        texts = item_texts(project=project, items=items, timeout=settings.ANNOTATION_TEXTS_WAIT_SECONDS)
        return Response({"items": [item_text_body(item, texts) for item in items]})


# --- Model runs, automatic labelling -----------------------------------------------------------------


class ModelRunListStartApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationModelRunInput"

        kind = serializers.ChoiceField(
            choices=RunKind.choices,
            default=RunKind.PROPOSE,
            help_text="`propose`: fit on the labels so far and propose a label for every item; "
            "`review`: find likely label errors among the labelled items.",
        )
        federated_model = serializers.IntegerField(
            required=False,
            allow_null=True,
            min_value=1,
            help_text="`propose` only: propose with this federated model of the consortium (an id from "
            "`GET /api/v1/models` or a job's artifact) trained for the same label set, instead of "
            "fitting on the labels so far.",
        )

    @extend_schema(
        responses={200: ModelRunOutputSerializer(many=True), **_errors(e404=NOT_VISIBLE)},
        operation_id="annotation_model_runs_list",
    )
    def get(self, request, project_id: int):
        project = _project(request, project_id)
        return paginated(
            queryset=model_run_list(actor=request.user, project=project),
            body=run_body,
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer,
        responses={
            202: ModelRunOutputSerializer,
            **_errors(
                e403=MANAGERS_ONLY,
                e404=NOT_VISIBLE,
                e409="`too_few_labels` (a proposal needs labels of two classes at least), "
                "`run_in_progress`, `project_not_ready`.",
            ),
        },
        operation_id="annotation_model_runs_start",
    )
    def post(self, request, project_id: int):
        project = _project(request, project_id)
        data = validated(self.InputSerializer, request.data)
        run = model_run_start(
            actor=request.user,
            project=project,
            kind=data["kind"],
            federated_model_id=data.get("federated_model"),
        )
        return Response(run_body(run), status=status.HTTP_202_ACCEPTED)


class ModelRunDetailApi(APIView):
    @extend_schema(
        responses={200: ModelRunOutputSerializer, **_errors(e404=NOT_VISIBLE)},
        operation_id="annotation_model_runs_get",
    )
    def get(self, request, project_id: int, run_id: int):
        project = _project(request, project_id)
        return Response(run_body(model_run_get(actor=request.user, project=project, run_id=run_id)))


class AutomaticOutputSerializer(serializers.Serializer):
    class Meta:
        ref_name = "AnnotationAutomaticOutput"

    labelled = serializers.IntegerField(help_text="Items the model labelled now.")
    progress = ProgressOutputSerializer()


class AutomaticApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationAutomaticInput"

        run = serializers.IntegerField(
            min_value=1, max_value=2**31 - 1, help_text="A succeeded `propose` run with a threshold."
        )

    @extend_schema(
        request=InputSerializer,
        responses={
            200: AutomaticOutputSerializer,
            **_errors(
                e403=MANAGERS_ONLY,
                e404=NOT_VISIBLE + " Or no such model run.",
                e409="`no_threshold` (the run certified none at the target precision), `run_not_usable` "
                "(not a finished propose run), `project_not_ready`.",
            ),
        },
        operation_id="annotation_automatic_apply",
        description="Labels, with the run's proposals, the items no person labelled whose confidence "
        "reaches the run's threshold.",
    )
    def post(self, request, project_id: int):
        project = _project(request, project_id)
        data = validated(self.InputSerializer, request.data)
        run = model_run_get(actor=request.user, project=project, run_id=data["run"])
        labelled = automatic_apply(actor=request.user, project=project, run=run)
        return Response({"labelled": labelled, "progress": project_progress(project=project)})


# --- Quality: duplicates, review ---------------------------------------------------------------------


class DuplicatesApi(APIView):
    @extend_schema(
        responses={200: DuplicateGroupOutputSerializer(many=True), **_errors(e404=NOT_VISIBLE)},
        operation_id="annotation_duplicates_list",
    )
    def get(self, request, project_id: int):
        project = _project(request, project_id)
        return paginated(
            queryset=duplicate_groups(actor=request.user, project=project),
            body=duplicate_group_body,
            request=request,
            view=self,
        )


class ReviewApi(APIView):
    @extend_schema(
        responses={200: ItemOutputSerializer(many=True), **_errors(e404=NOT_VISIBLE)},
        operation_id="annotation_review_list",
        description="Items flagged as likely label errors, most likely first (no texts: `items?ids=`).",
    )
    def get(self, request, project_id: int):
        project = _project(request, project_id)
        return paginated(
            queryset=review_list(actor=request.user, project=project),
            body=item_body,
            request=request,
            view=self,
        )


# --- Exports -----------------------------------------------------------------------------------------


class ExportListStartApi(APIView):
    class InputSerializer(serializers.Serializer):
        class Meta:
            ref_name = "AnnotationExportInput"

        name = text_field(help_text="The new dataset's name.")
        slug = text_field(
            required=False, default="", help_text="The new dataset's slug (default: from the name)."
        )
        label_column = text_field(
            required=False,
            default="",
            help_text="The label column's name (default: `label`, or `annotation_label` when the data has a "
            "`label`); `<name>_source`, `<name>_confidence` and `<name>_model_run` hold its provenance.",
        )
        drop_duplicates = serializers.BooleanField(
            required=False, default=False, help_text="Keep one item of each duplicate group."
        )
        drop_conflicts = serializers.BooleanField(
            required=False, default=True, help_text="Leave out duplicate groups whose labels disagree."
        )
        include_model_labels = serializers.BooleanField(
            required=False, default=True, help_text="Export the model's labels too (else people's only)."
        )

    @extend_schema(
        responses={200: ExportOutputSerializer(many=True), **_errors(e403=MANAGERS_ONLY, e404=NOT_VISIBLE)},
        operation_id="annotation_exports_list",
    )
    def get(self, request, project_id: int):
        project = _project(request, project_id)
        project_require_manager(actor=request.user, project=project)
        return paginated(
            queryset=export_list(actor=request.user, project=project),
            body=export_body,
            request=request,
            view=self,
        )

    @extend_schema(
        request=InputSerializer,
        responses={
            202: ExportOutputSerializer,
            **_errors(
                e400="`label_column_taken`, `label_column_invalid`; the new dataset's name or slug refused "
                "(as when registering a dataset).",
                e403=MANAGERS_ONLY,
                e404=NOT_VISIBLE,
                e409="`nothing_to_export` (no item has a label yet), `export_in_progress`, `project_not_ready`, "
                "a dataset slug taken.",
            ),
        },
        operation_id="annotation_exports_start",
        description="Writes the labelled rows, with the label and its provenance (source, model run, "
        "confidence), as the first version of a new dataset of your organisation.",
    )
    def post(self, request, project_id: int):
        project = _project(request, project_id)
        export = export_start(
            actor=request.user, project=project, **validated(self.InputSerializer, request.data)
        )
        return Response(export_body(export), status=status.HTTP_202_ACCEPTED)


class ExportDetailApi(APIView):
    @extend_schema(
        responses={200: ExportOutputSerializer, **_errors(e403=MANAGERS_ONLY, e404=NOT_VISIBLE)},
        operation_id="annotation_exports_get",
    )
    def get(self, request, project_id: int, export_id: int):
        project = _project(request, project_id)
        project_require_manager(actor=request.user, project=project)
        return Response(export_body(export_get(actor=request.user, project=project, export_id=export_id)))
