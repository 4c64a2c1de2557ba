"""The budget page's forms. They only collect what the steward typed (every field is text, so a
refused value is shown back as typed); `ledger.budget_set` and `ledger.allocation_set` check every
rule, and their errors are put on the matching field (`portal.shortcuts.form_error`)."""

from __future__ import annotations

from typing import Any

from django import forms

from .models import PrivacyMeasure, TrainingPolicy

# One line each, shown next to the choice.
MEASURE_HELP: dict[str, str] = {
    PrivacyMeasure.PURE: "ε only: the strongest guarantee; every release's ε adds up.",
    PrivacyMeasure.APPROX: "ε plus a small failure probability δ: allows releases that need δ "
    "(e.g. group keys that are not public).",
    PrivacyMeasure.ZCDP: "ρ (zero-concentrated DP): Gaussian noise, tighter when many queries "
    "compose; costs add up in ρ.",
}


TRAINING_HELP: dict[str, str] = {
    TrainingPolicy.FORBIDDEN: "No federated job may train on this dataset.",
    TrainingPolicy.DP: "Jobs train only with DP-SGD; each job's (ε, δ) is paid from this budget when it is "
    "scheduled (needs approximate DP).",
    TrainingPolicy.ANY: "Jobs may also train without DP (a training grant suffices); such a model carries "
    "no privacy guarantee.",
}


def _text(**kwargs: Any) -> forms.CharField:
    return forms.CharField(required=False, max_length=100, strip=True, **kwargs)


class BudgetPolicyForm(forms.Form):
    measure = _text(widget=forms.Select(choices=PrivacyMeasure.choices))
    total = _text()
    delta_total = _text()
    per_query_max = _text()
    per_analyst_cap = _text()
    max_rows = _text()
    training = _text(widget=forms.Select(choices=TrainingPolicy.choices))

    def policy(self) -> dict[str, Any]:
        """The fields as `budget_set` takes them; what does not parse is passed on as typed, so that
        the service says what is wrong with it. Empty caps mean none; an empty row bound keeps the
        current one; an empty δ is 0; an empty training policy keeps the current one."""
        data = self.cleaned_data
        return {
            "measure": data["measure"],
            "total": _number(data["total"]),
            "delta_total": _number(data["delta_total"], empty=0.0),
            "per_query_max": _number(data["per_query_max"]),
            "per_analyst_cap": _number(data["per_analyst_cap"]),
            "max_rows": _number(data["max_rows"], whole=True),
            # Empty keeps the policy in force (a form saved before the field existed changes nothing).
            "training": data["training"] or None,
        }


class AllocationForm(forms.Form):
    amount = _text()
    delta_amount = _text()

    def allocation(self) -> dict[str, Any]:
        data = self.cleaned_data
        return {
            "amount": _number(data["amount"]),
            "delta_amount": _number(data["delta_amount"], empty=0.0),
        }


def _number(text: str, *, whole: bool = False, empty: Any = None) -> Any:
    if not text:
        return empty
    try:
        return int(text) if whole else float(text)
    except ValueError:
        return text
