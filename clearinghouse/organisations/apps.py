from django.apps import AppConfig


class OrganisationsConfig(AppConfig):
    name = "clearinghouse.organisations"
    label = "organisations"
