"""Portal forms of the dataset pages: they turn form fields into the services' arguments (every rule
on a dataset is the services' to check)."""

from __future__ import annotations

from django import forms


class AgreementAcceptForm(forms.Form):
    version = forms.IntegerField(min_value=1, max_value=2**31 - 1)
