"""Portal forms of the annotation pages. They read what was typed once (a label per line, a percentage,
a probability) and hand the services their arguments; every rule on a project, a label or an export
is the services' to check, and their errors come back onto the field they name (`form_error`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms

from clearinghouse.datasets.models import Dataset, VersionStatus
from clearinghouse.datasets.selectors import dataset_list
from clearinghouse.organisations.models import Organisation
from clearinghouse.organisations.selectors import membership_active, membership_list

from .models import INSTRUCTIONS_MAX, LABEL_MAX_LENGTH, LABELS_MAX, AnnotationProject, RunKind

MAX_LABELS_TEXT = LABELS_MAX * (LABEL_MAX_LENGTH + 2)  # the most labels, one per line


def _lines(text: str) -> list[str]:
    """One entry per line, trimmed; empty lines dropped (a duplicate is the service's to refuse)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def own_datasets(*, actor: Any) -> list[Dataset]:
    """The actor's own organisation's datasets with a ready version: the ones a project can label."""
    membership = membership_active(user=actor)
    if membership is None:
        return []
    return list(
        dataset_list(actor=actor)
        .filter(organisation_id=membership.organisation_id, versions__status=VersionStatus.READY)
        .distinct()
        .order_by("name")
    )


def text_columns(dataset: Dataset) -> list[str]:
    """The columns the dataset's schema declares as text (the ones a project may label)."""
    return [
        str(column.get("name"))
        for column in (dataset.schema or {}).get("columns", [])
        if column.get("type") == "text"
    ]


def _member_choices(*, actor: Any, organisation: Organisation | None) -> list[tuple[str, str]]:
    if organisation is None:
        return []
    return [
        (m.user.username, f"{m.user.get_full_name() or m.user.username} ({m.get_role_display()})")
        for m in membership_list(actor=actor, organisation=organisation)
    ]


def _choices(form: forms.Form, name: str, choices: list[tuple[str, str]]) -> None:
    """Sets a choice field's choices, read per form (datasets and members change while it runs)."""
    field = form.fields[name]
    assert isinstance(field, forms.ChoiceField)
    field.choices = choices


class ProjectForm(forms.Form):
    """A new project: `project_create_arguments()` are `project_create`'s keyword arguments."""

    name = forms.CharField(max_length=120)
    dataset = forms.ChoiceField(help_text="One of your organisation's datasets with a ready version.")
    text_column = forms.CharField(max_length=63, help_text="The column holding the text to label.")
    labels = forms.CharField(
        max_length=MAX_LABELS_TEXT,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": "ham\nspam"}),
        help_text="One label per line, in the order of their shortcut keys (2 to 50).",
    )
    instructions = forms.CharField(
        required=False,
        max_length=INSTRUCTIONS_MAX,
        widget=forms.Textarea(attrs={"rows": 4}),
        help_text="What annotators read next to every item.",
    )
    overlap = forms.FloatField(
        label="Overlap (%)",
        initial=10,
        help_text="The share of items labelled by two annotators, for agreement (Cohen's κ): 0 to 50.",
    )
    annotators = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Members of your organisation who label (managers always may).",
    )

    def __init__(self, data: Any = None, *, actor: Any):
        super().__init__(data)
        membership = membership_active(user=actor)
        self.datasets = {d.slug: d for d in own_datasets(actor=actor)}
        _choices(self, "dataset", [(slug, f"{d.name} ({slug})") for slug, d in self.datasets.items()])
        organisation = membership.organisation if membership else None
        _choices(self, "annotators", _member_choices(actor=actor, organisation=organisation))
        # The text columns of every offered dataset, suggested as the column field is typed.
        self.column_suggestions = sorted({c for d in self.datasets.values() for c in text_columns(d)})

    def clean_dataset(self) -> Dataset:
        return self.datasets[self.cleaned_data["dataset"]]

    def clean_labels(self) -> list[str]:
        return _lines(self.cleaned_data["labels"])

    def clean_overlap(self) -> float:
        return self.cleaned_data["overlap"] / 100  # a percentage typed, a share for the service

    def project_create_arguments(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "dataset": data["dataset"],
            "name": data["name"],
            "text_column": data["text_column"].strip(),
            "labels": data["labels"],
            "instructions": data["instructions"],
            "overlap": data["overlap"],
            "annotators": list(data["annotators"]),
        }


class ProjectEditForm(forms.Form):
    """A project's instructions and annotators (`project_update`)."""

    instructions = forms.CharField(
        required=False, max_length=INSTRUCTIONS_MAX, widget=forms.Textarea(attrs={"rows": 4})
    )
    annotators = forms.MultipleChoiceField(required=False, widget=forms.CheckboxSelectMultiple)

    def __init__(self, data: Any = None, *, actor: Any, project: AnnotationProject):
        initial = {
            "instructions": project.instructions,
            "annotators": [user.username for user in project.annotators.all()],
        }
        super().__init__(data, initial=initial, prefix="edit")
        _choices(self, "annotators", _member_choices(actor=actor, organisation=project.organisation))

    def project_update_arguments(self) -> dict[str, Any]:
        return {
            "instructions": self.cleaned_data["instructions"],
            "annotators": list(self.cleaned_data["annotators"]),
        }


def _percent(share: float) -> str:
    """A share as the percentage typed back into the form: 0.95 -> "95", 0.975 -> "97.5"."""
    return f"{share * 100:.6g}"


class AutomaticForm(forms.Form):
    """The automatic labelling's target: a precision and the confidence of its lower bound, typed as
    percentages (98, 95); the service checks they lie in (0, 1)."""

    target_precision = forms.FloatField(
        label="Target precision (%)",
        help_text="Items the model is at least this precise on are labelled automatically (e.g. 98).",
    )
    confidence_level = forms.FloatField(
        label="Confidence level (%)",
        initial=95,
        help_text="How sure the estimated precision's lower bound must be (e.g. 95).",
    )

    def __init__(self, data: Any = None, *, project: AnnotationProject):
        initial = {"confidence_level": _percent(project.confidence_level)}
        if project.target_precision is not None:
            initial["target_precision"] = _percent(project.target_precision)
        super().__init__(data, initial=initial, prefix="automatic")

    def clean_target_precision(self) -> float:
        return self.cleaned_data["target_precision"] / 100

    def clean_confidence_level(self) -> float:
        return self.cleaned_data["confidence_level"] / 100


class AutomaticApplyForm(forms.Form):
    """Which run's threshold to apply (the one the page showed)."""

    run = forms.IntegerField(min_value=1, max_value=2**31 - 1, widget=forms.HiddenInput)


class ModelRunForm(forms.Form):
    kind = forms.ChoiceField(choices=RunKind.choices)
    federated_model = forms.TypedChoiceField(
        required=False,
        coerce=int,
        empty_value=None,
        label="Propose with",
        help_text="The consortium's federated models trained for this label set (a head over the "
        "mean-pooled sentence vector) propose without any label; otherwise a model is fitted on the "
        "labels so far.",
    )

    def __init__(self, *args: Any, models: Sequence[Any] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["federated_model"]
        assert isinstance(field, forms.TypedChoiceField)
        field.choices = [("", "A model fitted on the labels so far")] + [
            (model.pk, f"Federated model {model.pk}: {model.job.name}") for model in models
        ]


class LabelForm(forms.Form):
    label = forms.CharField(max_length=LABEL_MAX_LENGTH, strip=False)


class ExportForm(forms.Form):
    """A new dataset from the project's labels (`export_start`)."""

    name = forms.CharField(max_length=120, label="Name of the new dataset")
    drop_duplicates = forms.BooleanField(required=False, label="Drop duplicates (keep one of each group)")
    drop_conflicts = forms.BooleanField(
        required=False, initial=True, label="Drop duplicates whose labels conflict"
    )
    include_model_labels = forms.BooleanField(
        required=False, initial=True, label="Include the model's automatic labels"
    )

    def __init__(self, data: Any = None):
        super().__init__(data, prefix="export")

    def export_start_arguments(self) -> dict[str, Any]:
        return dict(self.cleaned_data)
