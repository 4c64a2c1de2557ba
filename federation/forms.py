"""Portal forms of the federation pages. They only turn form fields into the services' arguments
(comma-separated lists, a JSON object); every rule on a job or a key is the services' to check."""

from __future__ import annotations

import json

from django import forms

from clearinghouse.organisations.selectors import organisation_directory

from .models import Strategy


def _comma_separated(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


class JobForm(forms.Form):
    name = forms.CharField(max_length=200)
    base_model = forms.CharField(
        max_length=500,
        initial="minilm-l6",
        help_text="A known model name (minilm-l6) or a model directory on the SuperLink host.",
    )
    text_column = forms.CharField(
        max_length=200, help_text="The column with the text, in every member's file."
    )
    label_column = forms.CharField(max_length=200, help_text="The column with the label.")
    labels = forms.CharField(
        max_length=10000, help_text="The label set, comma-separated, in order: ham, spam"
    )
    strategy = forms.ChoiceField(choices=Strategy.choices, initial=Strategy.FEDAVG)
    num_rounds = forms.IntegerField(min_value=1, max_value=1000, initial=3)
    min_clients = forms.IntegerField(
        min_value=1,
        max_value=1000,
        initial=2,
        help_text="A round fails when fewer members return a model update.",
    )
    participants = forms.MultipleChoiceField(
        choices=(),
        widget=forms.SelectMultiple(attrs={"size": 6}),
        help_text="The approved organisations to invite (Ctrl/Cmd-click for several).",
    )
    settings = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "placeholder": '{"lora-r": 8, "batch-size": 16}'}),
        help_text="Optional further training settings, as a JSON object.",
    )
    # A private job: all three empty means not private (the service checks the values).
    epsilon = forms.FloatField(
        required=False,
        label="Privacy: target ε per dataset (optional)",
        help_text="Train with DP-SGD so each participating dataset's rows are (ε, δ)-DP in the model, "
        "paid from its privacy budget when the job is scheduled; empty: not private.",
    )
    delta = forms.FloatField(
        required=False,
        label="Privacy: δ per dataset",
        help_text="The failure probability, below 1/rows of every dataset (e.g. 1e-5); needed with ε.",
    )
    max_grad_norm = forms.FloatField(
        required=False,
        label="Privacy: clipping norm C",
        help_text="Each example's gradient is clipped to this L2 norm before the noise (empty: 1.0).",
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Read per form, not at import: organisations are approved while the service runs.
        self.fields["participants"].choices = [
            (o.slug, f"{o.name} ({o.slug})") for o in organisation_directory()
        ]

    def clean_labels(self) -> list[str]:
        labels = _comma_separated(self.cleaned_data["labels"])
        if len(labels) < 2:  # as the API's input: a classifier needs at least two classes
            raise forms.ValidationError("Give at least two labels, comma-separated.")
        return labels

    def clean_settings(self) -> dict:
        text = self.cleaned_data["settings"].strip()
        if not text:
            return {}
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(
                f"Not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})."
            ) from None
        if not isinstance(value, dict):
            raise forms.ValidationError('Settings must be a JSON object, e.g. {"lora-r": 8}.')
        return value

    def job_create_arguments(self) -> dict:
        """The cleaned form as `job_create`'s keyword arguments."""
        data = dict(self.cleaned_data)
        data["participants"] = [{"organisation": slug} for slug in data["participants"]]
        privacy = {key: data.pop(key) for key in ("epsilon", "delta", "max_grad_norm")}
        given = {key: value for key, value in privacy.items() if value is not None}
        data["privacy"] = given or None
        return data


class SuperNodeKeyForm(forms.Form):
    name = forms.CharField(max_length=100, help_text="Which machine runs this SuperNode, e.g. gpu-1.")
    public_key = forms.CharField(
        max_length=4000,
        widget=forms.Textarea(attrs={"rows": 3}),
        help_text="The contents of the .pub file: one line starting ecdsa-sha2-nistp384.",
    )
