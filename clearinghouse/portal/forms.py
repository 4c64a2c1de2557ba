"""Portal forms only collect input; every rule is checked by the services they call."""

from django import forms

from clearinghouse.organisations.roles import Role


class SignupForm(forms.Form):
    username = forms.CharField(max_length=1000)
    email = forms.CharField(max_length=1000)
    full_name = forms.CharField(max_length=1000, required=False)
    password = forms.CharField(widget=forms.PasswordInput, max_length=1000)


class OrganisationApplyForm(forms.Form):
    name = forms.CharField(max_length=1000)
    slug = forms.CharField(
        max_length=1000, help_text="Short identifier: lower-case letters, digits, hyphens."
    )
    country = forms.CharField(max_length=1000, help_text="Two-letter ISO code, e.g. NL.")
    contact_email = forms.CharField(max_length=1000)


class JoinForm(forms.Form):
    organisation = forms.CharField(max_length=1000)
    message = forms.CharField(max_length=10000, required=False, widget=forms.Textarea(attrs={"rows": 3}))


class InviteForm(forms.Form):
    email = forms.CharField(max_length=1000)
    role = forms.ChoiceField(choices=Role.choices)


class RoleForm(forms.Form):
    role = forms.ChoiceField(choices=Role.choices)


class DecisionForm(forms.Form):
    reason = forms.CharField(max_length=10000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    role = forms.ChoiceField(choices=Role.choices, required=False)


class TokenForm(forms.Form):
    name = forms.CharField(max_length=1000)
    expires_in_days = forms.IntegerField(min_value=1, max_value=365, initial=90)


class AuditFilterForm(forms.Form):
    """The audit log's filters (GET), the API's query parameters by the same names."""

    action = forms.CharField(max_length=1000, required=False, help_text='Exact, or a prefix: "dataset."')
    actor = forms.CharField(max_length=1000, required=False, label="Actor (username)")
    organisation = forms.CharField(max_length=1000, required=False, label="Organisation (slug)")
    date_from = forms.DateField(
        required=False,
        label="From",
        widget=forms.DateInput(attrs={"type": "date"}),
        input_formats=["%Y-%m-%d"],
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}), input_formats=["%Y-%m-%d"]
    )
